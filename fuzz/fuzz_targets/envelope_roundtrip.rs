//! Decodes arbitrary bytes as a bare Envelope (as WebSocket transports carry
//! them) and checks what is accepted.
//!
//! Invariants, beyond "no panic":
//! - the limit is exact: the same bytes under a limit one byte smaller are
//!   refused as `TooLarge` before decoding;
//! - the bytes framed with a length prefix give the same result through
//!   `FrameDecoder` as through `decode_envelope`;
//! - an accepted envelope's `encode_to_vec` decodes back to an equal
//!   envelope, and that encoding is a fixed point (re-encoding is stable);
//! - `encode_frame` writes `varint(len) ‖ encode_to_vec`, and two such frames
//!   fed one byte at a time to `FrameDecoder` give the envelope back twice
//!   and end on a frame boundary.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use quip_protocol::{FrameDecoder, FrameError, MAX_FRAME, decode_envelope, encode_frame};

fuzz_target!(|data: &[u8]| {
    let result = decode_envelope(data, MAX_FRAME);
    if data.len() > MAX_FRAME {
        assert_eq!(
            result,
            Err(FrameError::TooLarge {
                len: data.len(),
                max: MAX_FRAME
            })
        );
        return;
    }
    if let Some(smaller) = data.len().checked_sub(1) {
        assert_eq!(
            decode_envelope(data, smaller),
            Err(FrameError::TooLarge {
                len: data.len(),
                max: smaller
            }),
            "limit off by one"
        );
    }

    // The same bytes as one frame's body.
    let mut framed = BytesMut::new();
    prost::encode_length_delimiter(data.len(), &mut framed).expect("BytesMut grows");
    framed.extend_from_slice(data);
    let mut dec = FrameDecoder::new(data.len());
    dec.extend(&framed);
    assert_eq!(
        dec.decode(),
        result.clone().map(Some),
        "framed and bare decoding disagree"
    );

    let env = match result {
        Ok(env) => env,
        Err(e) => {
            assert!(matches!(e, FrameError::MalformedEnvelope(_)), "unexpected error {e:?}");
            return;
        }
    };
    assert_eq!(dec.buffered(), 0);

    // encode_to_vec -> decode is the identity on what was accepted.
    let bytes = env.encode_to_vec();
    assert_eq!(
        bytes.len(),
        env.encoded_len(),
        "encoded_len disagrees with encode_to_vec"
    );
    let again = decode_envelope(&bytes, bytes.len()).expect("a re-encoded envelope decodes");
    assert_eq!(again, env, "encode_to_vec did not round-trip");
    assert_eq!(again.encode_to_vec(), bytes, "re-encoding is not stable");

    // encode_frame -> FrameDecoder, two frames, one byte per read.
    let mut wire = BytesMut::new();
    encode_frame(&env, bytes.len(), &mut wire).expect("fits a limit of its own length");
    let prefix = prost::length_delimiter_len(bytes.len());
    assert_eq!(wire.len(), prefix + bytes.len());
    assert_eq!(
        &wire[prefix..],
        &bytes[..],
        "encode_frame body differs from encode_to_vec"
    );
    let single = wire.clone();
    wire.extend_from_slice(&single);

    let mut dec = FrameDecoder::new(bytes.len());
    let mut out = Vec::new();
    for b in wire.iter() {
        dec.extend(std::slice::from_ref(b));
        while let Some(e) = dec.decode().expect("an encoded frame decodes") {
            out.push(e);
        }
    }
    assert_eq!(
        out,
        [env.clone(), env],
        "encode_frame -> FrameDecoder did not round-trip"
    );
    assert_eq!(dec.finish(), Ok(()));
});
