//! Feeds arbitrary bytes, in arbitrary reads, to the frame decoder.
//!
//! Invariants, beyond "no panic":
//! - (a) every accepted envelope re-encodes (`encode_frame`) to a frame that
//!   decodes back to an equal envelope, byte-for-byte stable;
//! - (b) until the first error, bytes consumed by yielded frames plus
//!   `buffered()` equal the bytes fed, and every frame ends exactly where the
//!   length prefix says;
//! - (c) no frame whose body is longer than the limit is ever yielded;
//! - (d) chunking never changes the result: the frames and the first error
//!   equal those of feeding everything at once.
//!
//! Beyond those, the decoder is checked against a small reference model of
//! spec/protocol.md section 3 (written from the spec, not from codec.rs): a
//! frame is yielded as soon as its last byte arrives and an error is reported
//! as soon as it is detectable (an oversized prefix before any body byte),
//! `wanted()` names exactly the bytes missing from the head frame, and
//! `finish()` reports a truncated frame iff bytes are left over.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use quip_protocol::{Envelope, FrameDecoder, FrameError, MAX_FRAME, decode_envelope, encode_frame};

/// The decoder's frame limit.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Limit {
    Zero,
    Tiny,
    Small,
    Medium,
    Max,
}

impl Limit {
    fn bytes(self) -> usize {
        match self {
            Limit::Zero => 0,
            Limit::Tiny => 16,
            Limit::Small => 256,
            Limit::Medium => 4096,
            Limit::Max => MAX_FRAME,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    limit: Limit,
    /// Append through `buffer_mut()` (as the server reads) instead of `extend`.
    via_buffer_mut: bool,
    /// Sizes of successive reads, cycled; 0 is an empty read. No non-zero
    /// size: everything in one read.
    chunks: Vec<u8>,
    /// The stream's bytes: the rest of the input, as is.
    data: &'a [u8],
}

/// Most bytes a length prefix may take (spec: "1 to 5 bytes").
const MAX_PREFIX: usize = 5;

/// A frame the reference model finds in the stream.
#[derive(Debug)]
struct RefFrame {
    /// Stream offset of its length prefix.
    start: usize,
    prefix: usize,
    len: usize,
    env: Envelope,
}

impl RefFrame {
    fn end(&self) -> usize {
        self.start + self.prefix + self.len
    }
}

/// How the stream continues after the reference model's last frame.
#[derive(Debug)]
enum RefTail {
    /// Nothing more: a frame boundary at the end of the stream.
    Clean,
    /// An incomplete frame at `start`; `header` once its prefix is complete.
    Partial {
        start: usize,
        header: Option<(usize, usize)>,
    },
    /// The frame at `start` is invalid; that is detectable once `at` bytes of
    /// the stream have arrived. `header` when the prefix is valid.
    Error {
        start: usize,
        at: usize,
        header: Option<(usize, usize)>,
        err: FrameError,
    },
}

enum Header {
    Incomplete,
    Malformed,
    Complete { prefix: usize, len: u64 },
}

/// Reads a protobuf base-128 varint of at most five bytes.
fn ref_header(buf: &[u8]) -> Header {
    let mut len = 0u64;
    for i in 0..MAX_PREFIX {
        let Some(&b) = buf.get(i) else {
            return Header::Incomplete;
        };
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Header::Complete { prefix: i + 1, len };
        }
    }
    Header::Malformed
}

/// The reference model: the frames of `data` under `max`, then the tail.
fn reference(data: &[u8], max: usize) -> (Vec<RefFrame>, RefTail) {
    let mut frames = Vec::new();
    let mut start = 0;
    loop {
        if start == data.len() {
            return (frames, RefTail::Clean);
        }
        let (prefix, len) = match ref_header(&data[start..]) {
            Header::Incomplete => return (frames, RefTail::Partial { start, header: None }),
            Header::Malformed => {
                let err = FrameError::MalformedLength;
                return (
                    frames,
                    RefTail::Error {
                        start,
                        at: start + MAX_PREFIX,
                        header: None,
                        err,
                    },
                );
            }
            Header::Complete { prefix, len } => (prefix, len),
        };
        let len = usize::try_from(len).expect("a five-byte varint fits a 64-bit usize");
        if len > max {
            let err = FrameError::TooLarge { len, max };
            return (
                frames,
                RefTail::Error {
                    start,
                    at: start + prefix,
                    header: None,
                    err,
                },
            );
        }
        let end = start + prefix + len;
        if end > data.len() {
            return (
                frames,
                RefTail::Partial {
                    start,
                    header: Some((prefix, len)),
                },
            );
        }
        // The bare-envelope decoder is the oracle for the body.
        match decode_envelope(&data[start + prefix..end], max) {
            Ok(env) => frames.push(RefFrame {
                start,
                prefix,
                len,
                env,
            }),
            Err(err) => {
                assert!(
                    matches!(err, FrameError::MalformedEnvelope(_)),
                    "body within the limit: {err:?}"
                );
                let header = Some((prefix, len));
                return (
                    frames,
                    RefTail::Error {
                        start,
                        at: end,
                        header,
                        err,
                    },
                );
            }
        }
        start = end;
    }
}

/// Decodes until the decoder wants more bytes or fails.
fn drain(dec: &mut FrameDecoder, out: &mut Vec<Envelope>) -> Result<(), FrameError> {
    while let Some(env) = dec.decode()? {
        out.push(env);
    }
    Ok(())
}

/// (a): an accepted envelope survives encode_frame -> FrameDecoder unchanged.
fn check_round_trip(env: &Envelope) {
    let n = env.encoded_len();
    let mut frame = BytesMut::new();
    encode_frame(env, n, &mut frame).expect("an envelope fits a limit of its own length");
    if n > 0 {
        let mut refused = BytesMut::new();
        assert_eq!(
            encode_frame(env, n - 1, &mut refused),
            Err(FrameError::TooLarge { len: n, max: n - 1 }),
            "encoder limit off by one"
        );
        assert!(refused.is_empty(), "a refused frame appended bytes");
    }
    let mut dec = FrameDecoder::new(n);
    dec.extend(&frame);
    let again = dec
        .decode()
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is complete");
    assert_eq!(&again, env, "re-encoded frame did not round-trip");
    assert_eq!(dec.buffered(), 0, "re-encoded frame left bytes behind");
    assert_eq!(dec.decode(), Ok(None));
    assert_eq!(dec.finish(), Ok(()));
    let mut frame2 = BytesMut::new();
    encode_frame(&again, n, &mut frame2).expect("same envelope, same length");
    assert_eq!(frame, frame2, "re-encoding is not stable");
}

fuzz_target!(|input: Input<'_>| {
    let max = input.limit.bytes();
    let data = input.data;
    let (ref_frames, ref_tail) = reference(data, max);

    // Everything in one read.
    let mut whole = FrameDecoder::new(max);
    whole.extend(data);
    let mut whole_frames = Vec::new();
    let whole_result = drain(&mut whole, &mut whole_frames);

    // The same bytes in the reads the input asks for.
    let mut dec = FrameDecoder::new(max);
    let mut frames: Vec<Envelope> = Vec::new();
    let mut result = Ok(());
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut sizes = input.chunks.iter().map(|&c| usize::from(c)).cycle();
    let one_read = input.chunks.iter().all(|&c| c == 0);
    // At least one read, even of an empty stream.
    let mut first = true;
    while result.is_ok() && (first || fed < data.len()) {
        first = false;
        let n = if one_read {
            data.len()
        } else {
            sizes.next().expect("cycled non-empty").min(data.len() - fed)
        };
        let read = &data[fed..fed + n];
        if input.via_buffer_mut {
            dec.buffer_mut().extend_from_slice(read);
        } else {
            dec.extend(read);
        }
        fed += n;
        loop {
            let before = dec.buffered();
            match dec.decode() {
                Ok(Some(env)) => {
                    let used = before - dec.buffered();
                    let k = frames.len();
                    let r = ref_frames
                        .get(k)
                        .expect("decoder yielded a frame the reference model has not");
                    // (c) and (b): the frame is where its prefix says, within the limit.
                    assert!(r.len <= max, "frame body of {} bytes passed a limit of {max}", r.len);
                    assert!(
                        used <= MAX_PREFIX + max,
                        "frame of {used} bytes passed a limit of {max}"
                    );
                    assert_eq!(r.start, consumed, "frame {k} does not start where the previous ended");
                    assert_eq!(used, r.prefix + r.len, "frame {k} consumed the wrong number of bytes");
                    assert!(r.end() <= fed, "frame {k} yielded before its last byte arrived");
                    assert_eq!(env, r.env, "frame {k} differs from the bare-envelope decoding");
                    consumed += used;
                    frames.push(env);
                }
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        match &result {
            Ok(()) => {
                // (b) byte accounting.
                assert_eq!(consumed + dec.buffered(), fed, "byte accounting");
                // Nothing decodable is held back.
                let due = ref_frames.iter().filter(|f| f.end() <= fed).count();
                assert_eq!(frames.len(), due, "a complete frame was not yielded");
                // wanted(): the bytes missing from the head frame, once its header is known.
                let head = match ref_frames.get(frames.len()) {
                    Some(f) => Some((f.start, Some((f.prefix, f.len)))),
                    None => match &ref_tail {
                        RefTail::Clean => None,
                        RefTail::Partial { start, header } | RefTail::Error { start, header, .. } => {
                            Some((*start, *header))
                        }
                    },
                };
                let expected_wanted = match head {
                    Some((start, Some((prefix, len)))) if start + prefix <= fed => Some(start + prefix + len - fed),
                    _ => None,
                };
                assert_eq!(dec.wanted(), expected_wanted, "wanted() after {fed} bytes");
                if let RefTail::Error { at, err, .. } = &ref_tail {
                    assert!(*at > fed, "{err:?} not reported once detectable ({fed} of {at} bytes)");
                }
            }
            Err(e) => {
                assert_eq!(frames.len(), ref_frames.len(), "error before a valid frame");
                match &ref_tail {
                    RefTail::Error { at, err, .. } => {
                        assert_eq!(e, err, "wrong error");
                        assert!(*at <= fed, "error reported before it was detectable");
                    }
                    other => panic!("decoder failed with {e:?}, reference model ends {other:?}"),
                }
            }
        }
    }

    // (d) chunking changes nothing.
    assert_eq!(frames, whole_frames, "chunking changed the frames");
    assert_eq!(result, whole_result, "chunking changed the first error");
    assert_eq!(frames.len(), ref_frames.len());

    // End of stream.
    if result.is_ok() {
        assert_eq!(fed, data.len());
        assert_eq!(dec.buffered(), whole.buffered());
        let expected = if dec.buffered() == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: dec.buffered(),
            })
        };
        assert_eq!(dec.finish(), expected, "finish()");
        assert_eq!(whole.finish(), expected, "finish() of the one-read decoder");
        assert_eq!(matches!(ref_tail, RefTail::Clean), expected.is_ok());
    }

    // (a) what was accepted round-trips.
    for env in &frames {
        check_round_trip(env);
    }
});
