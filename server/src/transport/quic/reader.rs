//! Reading request frames from QUIC streams, with a per-connection bound
//! on the bytes of unfinished frames (see [`MAX_BUFFERED_PER_CONNECTION`]).

use super::*;

/// Bytes of partial frames held by one connection's streams.
#[derive(Debug, Default)]
pub(super) struct Budget(AtomicUsize);

/// A request stream's frame reader, charging its partial frame to the
/// connection's [`Budget`] (released when the reader is dropped).
pub(super) struct StreamReader {
    /// Always present; an Option only so [`StreamReader::into_raw`] can
    /// take it from a type with a destructor.
    recv: Option<quinn::RecvStream>,
    dec: FrameDecoder,
    budget: Arc<Budget>,
    held: usize,
}

impl StreamReader {
    pub(super) fn new(recv: quinn::RecvStream, budget: Arc<Budget>, max_frame: usize) -> Self {
        Self {
            recv: Some(recv),
            dec: FrameDecoder::new(max_frame),
            budget,
            held: 0,
        }
    }

    /// Re-counts this stream's buffered bytes; whether the connection is within budget.
    fn account(&mut self) -> bool {
        let now = self.dec.buffered();
        let total = if now >= self.held {
            self.budget.0.fetch_add(now - self.held, Ordering::Relaxed) + (now - self.held)
        } else {
            self.budget.0.fetch_sub(self.held - now, Ordering::Relaxed) - (self.held - now)
        };
        self.held = now;
        total <= MAX_BUFFERED_PER_CONNECTION
    }
}

impl StreamReader {
    /// The rest of the stream as raw bytes (a media upload): what the frame
    /// decoder already read past the last frame, then the stream.
    pub(super) fn into_raw(mut self) -> (BytesMut, quinn::RecvStream) {
        let leftover = std::mem::take(self.dec.buffer_mut());
        self.account();
        let recv = self.recv.take().expect("present until into_raw");
        (leftover, recv)
    }
}

impl RequestSource for StreamReader {
    /// The next frame: `Ok(None)` at a clean end of stream.
    async fn next(&mut self) -> Result<Option<Envelope>, ReadError> {
        loop {
            let decoded = self.dec.decode();
            let within = self.account();
            if let Some(env) = decoded? {
                return Ok(Some(env));
            }
            if !within {
                return Err(ReadError::OverBudget);
            }
            // Grow the buffer only as data arrives: an idle stream keeps a
            // small one, and a declared length is never allocated up front.
            let want = self.dec.wanted().unwrap_or(0).clamp(512, READ_STEP);
            self.dec.buffer_mut().reserve(want);
            let recv = self.recv.as_mut().expect("present until into_raw");
            match recv.read_buf(self.dec.buffer_mut()).await {
                Ok(0) | Err(_) => {
                    self.dec.finish()?;
                    return Ok(None);
                }
                Ok(_) => {}
            }
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        self.budget.0.fetch_sub(self.held, Ordering::Relaxed);
    }
}
