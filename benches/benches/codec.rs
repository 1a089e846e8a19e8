//! Criterion micro-benchmarks of the frame codec: encoding a typical event
//! frame, and decoding a stream of them fed in network-sized chunks.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quip_protocol::v1;
use quip_protocol::{Body, Envelope, FrameDecoder, MAX_FRAME, encode_frame};

/// A pushed message event with ~100 bytes of text, as most frames are.
fn event() -> Envelope {
    Envelope::new(
        0,
        Body::Event(v1::Event {
            pos: 123_456,
            kind: Some(v1::event::Kind::Message(v1::Message {
                chat_id: 42,
                seq: 9_876,
                sender: "alice".into(),
                sender_device: 2,
                recipient: "bob".into(),
                client_msg_id: "0f3c9a7e5b1d4c2a8e6f0b3d5a7c9e1f".into(),
                sent_at_ms: 1_795_000_000_000,
                content: Some(v1::Content {
                    text: "x".repeat(100),
                    ..Default::default()
                }),
                group_event: None,
                content_omitted: false,
            })),
        }),
    )
}

fn codec(c: &mut Criterion) {
    let env = event();
    let mut one = BytesMut::new();
    encode_frame(&env, MAX_FRAME, &mut one).unwrap();
    let frame_len = one.len();

    let mut g = c.benchmark_group("codec");
    g.sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_event_frame", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            encode_frame(std::hint::black_box(&env), MAX_FRAME, &mut buf).unwrap();
        });
    });

    // 1,000 frames back to back, arriving in 1,350-byte reads (a QUIC packet's worth).
    let mut stream = BytesMut::new();
    for _ in 0..1000 {
        encode_frame(&env, MAX_FRAME, &mut stream).unwrap();
    }
    g.throughput(Throughput::Bytes((frame_len * 1000) as u64));
    g.bench_function("decode_1000_frames_in_1350_byte_reads", |b| {
        b.iter(|| {
            let mut dec = FrameDecoder::new(MAX_FRAME);
            let mut n = 0;
            for chunk in stream.chunks(1350) {
                dec.extend(chunk);
                while let Some(e) = dec.decode().unwrap() {
                    std::hint::black_box(e);
                    n += 1;
                }
            }
            assert_eq!(n, 1000);
        });
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
