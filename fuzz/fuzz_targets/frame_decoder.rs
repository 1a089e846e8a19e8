//! Feeds arbitrary bytes, in arbitrary chunks, to the frame decoder.
//!
//! Invariants, beyond "no panic":
//! - chunking never changes the result: the frames (and whether an error
//!   came) equal those of feeding everything at once;
//! - no frame longer than the limit is ever yielded;
//! - until the first error, consumed + buffered bytes = fed bytes;
//! - every accepted envelope re-encodes to a frame that decodes to itself.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quip_protocol::{Envelope, FrameDecoder, encode_frame};

#[derive(Debug, Arbitrary)]
struct Input {
    limit: u8,
    chunks: Vec<u8>,
    data: Vec<u8>,
}

fn limit(choice: u8) -> usize {
    match choice % 4 {
        0 => 16,
        1 => 256,
        2 => 4096,
        _ => quip_protocol::MAX_FRAME,
    }
}

fn decode_all(dec: &mut FrameDecoder, out: &mut Vec<Envelope>) -> bool {
    loop {
        match dec.decode() {
            Ok(Some(e)) => out.push(e),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|input: Input| {
    let max = limit(input.limit);

    let mut whole = FrameDecoder::new(max);
    whole.extend(&input.data);
    let mut expected = Vec::new();
    let whole_ok = decode_all(&mut whole, &mut expected);

    let mut dec = FrameDecoder::new(max);
    let mut got = Vec::new();
    let mut ok = true;
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut rest = &input.data[..];
    let mut sizes = input.chunks.iter().map(|&c| usize::from(c).max(1)).cycle();
    while ok && !rest.is_empty() {
        let n = if input.chunks.is_empty() { rest.len() } else { sizes.next().unwrap().min(rest.len()) };
        dec.extend(&rest[..n]);
        fed += n;
        rest = &rest[n..];
        loop {
            let before = dec.buffered();
            match dec.decode() {
                Ok(Some(e)) => {
                    let used = before - dec.buffered();
                    assert!(used <= prost::length_delimiter_len(max) + max, "frame over the limit");
                    consumed += used;
                    got.push(e);
                }
                Ok(None) => {
                    assert_eq!(consumed + dec.buffered(), fed, "byte accounting");
                    break;
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
    }
    assert_eq!(ok, whole_ok, "chunking changed whether an error occurred");
    assert_eq!(got, expected, "chunking changed the frames");

    for env in &got {
        let mut buf = BytesMut::new();
        if encode_frame(env, quip_protocol::MAX_FRAME, &mut buf).is_ok() {
            let mut again = FrameDecoder::new(quip_protocol::MAX_FRAME);
            again.extend(&buf);
            assert_eq!(again.decode().unwrap().as_ref(), Some(env), "re-encoded frame round-trips");
        }
    }
});
