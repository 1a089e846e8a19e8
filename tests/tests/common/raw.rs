//! Raw protocol streams, below the client library: for tests that send
//! what no well-behaved client would (garbage, bad handshakes, frames cut
//! short) and read exactly what the server answers.

use std::time::Duration;

use bytes::BytesMut;
use quip_client::Client;
use quip_protocol::{CloseCode, Envelope, FrameDecoder, encode_frame};
use tokio::io::AsyncReadExt;

use super::TestServer;

/// One envelope as a frame's bytes.
pub fn frame(env: &Envelope) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_frame(env, quip_protocol::MAX_FRAME, &mut b).unwrap();
    b.to_vec()
}

/// Frames read from a raw stream until it ends (or is silent for 5 s).
pub async fn read_all(recv: &mut quinn::RecvStream) -> Vec<Envelope> {
    let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
    let mut out = Vec::new();
    loop {
        while let Ok(Some(e)) = dec.decode() {
            out.push(e);
        }
        dec.buffer_mut().reserve(4096);
        match tokio::time::timeout(Duration::from_secs(5), recv.read_buf(dec.buffer_mut())).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return out,
        }
    }
}

/// The code the server closed `conn` with (waits up to 5 s).
pub async fn close_code(conn: &quinn::Connection) -> Option<CloseCode> {
    match tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(c) => CloseCode::from_code(c.error_code.into_inner()),
        _ => None,
    }
}

/// Sends `bytes` on the first stream of a fresh connection (then ends the
/// stream if `finish`); returns the frames answered on that stream and the
/// close code.
pub async fn exchange(server: &TestServer, bytes: &[u8], finish: bool) -> (Vec<Envelope>, Option<CloseCode>) {
    let (_ep, conn) = Client::connect_raw(&server.options()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let frames = read_all(&mut recv).await;
    (frames, close_code(&conn).await)
}
