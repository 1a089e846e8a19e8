//! Length-prefixed framing: `varint(len) ‖ Envelope` on QUIC streams.
//!
//! Decoding is two-phase, as in mini-redis: first the header is checked
//! (complete? within the limit?) without touching the body, then the body is
//! decoded. That separates "need more bytes" (`Ok(None)`) from "protocol
//! error" (`Err`), and an oversized frame is refused from its first bytes, so
//! a peer cannot make us buffer more than `max_frame` per stream.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

use crate::v1::Envelope;

/// The most bytes a length prefix may take. A u32 needs at most five varint
/// bytes; limits are far below 4 GiB, so a longer prefix is malformed.
const MAX_PREFIX: usize = 5;

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is not a valid varint of at most five bytes.
    #[error("malformed frame length prefix")]
    MalformedLength,
    /// The declared (or, when encoding, actual) length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The body is not a valid protobuf `Envelope`.
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame that were received.
        buffered: usize,
    },
}

/// Appends one frame holding `env` to `out`.
///
/// Fails (and appends nothing) when the encoded envelope exceeds `max_frame`,
/// so a sender notices an oversized frame before the peer has to reject it.
pub fn encode_frame(env: &Envelope, max_frame: usize, out: &mut BytesMut) -> Result<(), FrameError> {
    let len = env.encoded_len();
    if len > max_frame {
        return Err(FrameError::TooLarge { len, max: max_frame });
    }
    out.reserve(prost::length_delimiter_len(len) + len);
    env.encode_length_delimited(out).expect("reserved enough capacity");
    Ok(())
}

/// Encodes one frame into its own buffer, to share it cheaply (e.g. one pushed
/// event sent to several devices).
pub fn frame_bytes(env: &Envelope, max_frame: usize) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::new();
    encode_frame(env, max_frame, &mut out)?;
    Ok(out.freeze())
}

/// The Envelope bytes of a frame made by [`frame_bytes`], without the length
/// prefix: what a QUIC datagram or a WebSocket message carries, since those
/// delimit messages themselves. Shares the frame's buffer.
pub fn frame_body(frame: &Bytes) -> Bytes {
    let mut rest: &[u8] = frame;
    match prost::decode_length_delimiter(&mut rest) {
        Ok(_) => frame.slice(frame.len() - rest.len()..),
        Err(_) => frame.clone(),
    }
}

/// Decodes a bare Envelope (no length prefix), as carried by transports that
/// frame messages themselves (QUIC datagrams, WebSocket binary messages).
pub fn decode_envelope(body: &[u8], max_frame: usize) -> Result<Envelope, FrameError> {
    if body.len() > max_frame {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: max_frame,
        });
    }
    Envelope::decode(body).map_err(|e| FrameError::MalformedEnvelope(e.to_string()))
}

/// Reads the length prefix at the start of `buf`.
///
/// `Ok(None)`: the prefix is incomplete. `Ok(Some((prefix_len, body_len)))`:
/// complete and within `max_frame`.
fn parse_header(buf: &[u8], max_frame: usize) -> Result<Option<(usize, usize)>, FrameError> {
    let mut len: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(MAX_PREFIX) {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let len = usize::try_from(len).map_err(|_| FrameError::MalformedLength)?;
            if len > max_frame {
                return Err(FrameError::TooLarge { len, max: max_frame });
            }
            return Ok(Some((i + 1, len)));
        }
    }
    if buf.len() >= MAX_PREFIX {
        Err(FrameError::MalformedLength)
    } else {
        Ok(None)
    }
}

/// Incremental frame decoder for one stream.
///
/// Feed it bytes as they arrive (`buffer_mut` to read straight into it, or
/// `extend`), then call [`decode`](Self::decode) until it returns `Ok(None)`.
/// At end of stream call [`finish`](Self::finish): leftover bytes are a
/// truncated frame.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The receive buffer, for reading into directly.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes complete the frame at the head of the buffer, when
    /// its header is known; lets a reader size its next read.
    pub fn wanted(&self) -> Option<usize> {
        match parse_header(&self.buf, self.max_frame) {
            Ok(Some((p, l))) => Some((p + l).saturating_sub(self.buf.len())),
            _ => None,
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// After an `Err` the stream is unusable: framing is lost.
    pub fn decode(&mut self) -> Result<Option<Envelope>, FrameError> {
        let Some((prefix, len)) = parse_header(&self.buf, self.max_frame)? else {
            return Ok(None);
        };
        if self.buf.len() < prefix + len {
            return Ok(None);
        }
        self.buf.advance(prefix);
        let body = self.buf.split_to(len);
        Envelope::decode(&body[..])
            .map(Some)
            .map_err(|e| FrameError::MalformedEnvelope(e.to_string()))
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_body_strips_the_length_prefix() {
        let env = Envelope::error(300, crate::v1::ErrorCode::Internal, "x".repeat(200));
        let frame = frame_bytes(&env, 1 << 20).unwrap();
        let body = frame_body(&frame);
        assert_eq!(body.len(), env.encoded_len());
        assert_eq!(decode_envelope(&body, 1 << 20).unwrap(), env);
    }
    use crate::v1::{Content, Hello, SendRequest, envelope::Body};
    use proptest::prelude::*;

    fn send(id: u64, text: &str) -> Envelope {
        Envelope::new(
            id,
            Body::Send(SendRequest {
                to_user: "bob".into(),
                client_msg_id: format!("m{id}"),
                content: Some(Content {
                    text: text.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn round_trips_several_frames_split_anywhere() {
        let frames: Vec<Envelope> = (1..=5).map(|i| send(i, &"x".repeat(i as usize * 100))).collect();
        let mut wire = BytesMut::new();
        for f in &frames {
            encode_frame(f, 1 << 20, &mut wire).unwrap();
        }
        // Feed one byte at a time: every split point must work.
        let mut dec = FrameDecoder::new(1 << 20);
        let mut out = Vec::new();
        for b in wire.iter() {
            dec.extend(&[*b]);
            while let Some(env) = dec.decode().unwrap() {
                out.push(env);
            }
        }
        assert_eq!(out, frames);
        dec.finish().unwrap();
    }

    #[test]
    fn oversized_frame_is_refused_from_its_header() {
        let mut dec = FrameDecoder::new(100);
        // Header declares 1000 bytes; only the prefix has arrived.
        let mut prefix = BytesMut::new();
        prost::encode_length_delimiter(1000, &mut prefix).unwrap();
        dec.extend(&prefix);
        assert_eq!(dec.decode(), Err(FrameError::TooLarge { len: 1000, max: 100 }));
    }

    #[test]
    fn encoder_refuses_oversized_frames() {
        let env = send(1, &"y".repeat(200));
        let mut out = BytesMut::new();
        assert!(matches!(
            encode_frame(&env, 100, &mut out),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_prefix_and_body_are_errors() {
        let mut dec = FrameDecoder::new(1 << 20);
        dec.extend(&[0xff; 6]);
        assert_eq!(dec.decode(), Err(FrameError::MalformedLength));

        let mut dec = FrameDecoder::new(1 << 20);
        // Length 3, then a field with wire type 7 (invalid).
        dec.extend(&[3, 0x0f, 0x01, 0x02]);
        assert!(matches!(dec.decode(), Err(FrameError::MalformedEnvelope(_))));
    }

    #[test]
    fn truncated_stream_is_detected() {
        let mut wire = BytesMut::new();
        encode_frame(&send(1, "hello"), 1 << 20, &mut wire).unwrap();
        let mut dec = FrameDecoder::new(1 << 20);
        dec.extend(&wire[..wire.len() - 1]);
        assert_eq!(dec.decode(), Ok(None));
        assert!(matches!(dec.finish(), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn unknown_body_decodes_as_none() {
        // Field 999 (an unknown oneof variant from a newer peer), length-delimited, empty.
        let mut body = Vec::new();
        prost::encoding::encode_key(999, prost::encoding::WireType::LengthDelimited, &mut body);
        body.push(0);
        let env = decode_envelope(&body, 1 << 20).unwrap();
        assert_eq!(env.body, None);
    }

    #[test]
    fn hello_round_trips_bare() {
        let env = Envelope::new(
            1,
            Body::Hello(Hello {
                versions: vec![1],
                token: "t".into(),
                client: "test".into(),
                background: false,
            }),
        );
        let bytes = env.encode_to_vec();
        assert_eq!(decode_envelope(&bytes, 1 << 20).unwrap(), env);
    }

    #[test]
    fn spec_example_frames_decode() {
        // spec/protocol.md, "Framing": Envelope{id: 1, ping: {}}.
        let mut dec = FrameDecoder::new(MAX_FRAME_FOR_TESTS);
        dec.extend(&[0x05, 0x08, 0x01, 0xa2, 0x01, 0x00]);
        assert_eq!(
            dec.decode().unwrap(),
            Some(Envelope::new(1, Body::Ping(crate::v1::PingRequest {})))
        );
        // Envelope{id: 1, hello: {versions: [1], token: "t", client: "c"}}.
        dec.extend(&[
            13, 0x08, 0x01, 0x12, 0x09, 0x0a, 0x01, 0x01, 0x12, 0x01, 0x74, 0x1a, 0x01, 0x63,
        ]);
        let hello = Envelope::new(
            1,
            Body::Hello(Hello {
                versions: vec![1],
                token: "t".into(),
                client: "c".into(),
                background: false,
            }),
        );
        assert_eq!(dec.decode().unwrap(), Some(hello.clone()));
        let mut out = BytesMut::new();
        encode_frame(&hello, MAX_FRAME_FOR_TESTS, &mut out).unwrap();
        assert_eq!(out[0], 13, "encoding matches the spec byte for byte");
        assert_eq!(&out[1..5], &[0x08, 0x01, 0x12, 0x09]);
    }

    const MAX_FRAME_FOR_TESTS: usize = 1 << 20;

    proptest! {
        /// Whatever bytes arrive, the decoder never panics, never yields a
        /// frame longer than the limit, and, until it reports an error,
        /// accounts for every byte: what it consumed plus what it still
        /// buffers equals what it was given.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), max in 1usize..256) {
            let mut dec = FrameDecoder::new(max);
            dec.extend(&data);
            let mut consumed = 0usize;
            loop {
                let before = dec.buffered();
                match dec.decode() {
                    Ok(Some(_)) => {
                        let used = before - dec.buffered();
                        let prefix = prost::length_delimiter_len(max);
                        prop_assert!(used <= prefix + max, "frame of {} bytes passed a limit of {}", used, max);
                        consumed += used;
                    }
                    Ok(None) => {
                        prop_assert_eq!(consumed + dec.buffered(), data.len());
                        break;
                    }
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn encoded_frames_round_trip(ids in proptest::collection::vec(any::<u64>(), 1..20), text in ".{0,64}") {
            let frames: Vec<Envelope> = ids.iter().map(|&i| send(i, &text)).collect();
            let mut wire = BytesMut::new();
            for f in &frames { encode_frame(f, 1 << 20, &mut wire).unwrap(); }
            let mut dec = FrameDecoder::new(1 << 20);
            dec.extend(&wire);
            let mut out = Vec::new();
            while let Some(e) = dec.decode().unwrap() { out.push(e); }
            prop_assert_eq!(out, frames);
        }
    }
}
