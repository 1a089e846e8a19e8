//! Interoperability: an independent QUIC implementation (s2n-quic, AWS's,
//! with its own packet handling, loss recovery and TLS integration) speaks
//! the Quip protocol to quipd, so the server is not only correct against
//! its own QUIC stack (quinn).

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use quip_protocol::v1;
use quip_protocol::{ALPN, Body, Envelope, FrameDecoder, MAX_FRAME, encode_frame};
use s2n_quic::client::Connect;
use s2n_quic::stream::{ReceiveStream, SendStream};

/// A Quip client built on s2n-quic, speaking frames by hand.
struct S2nClient {
    _client: s2n_quic::Client,
    conn: s2n_quic::connection::Handle,
    acceptor: s2n_quic::connection::StreamAcceptor,
    send: SendStream,
    recv: ReceiveStream,
    dec: FrameDecoder,
    next_id: u64,
}

async fn read_frame(recv: &mut ReceiveStream, dec: &mut FrameDecoder) -> Option<Envelope> {
    loop {
        if let Some(env) = dec.decode().expect("well-formed frames") {
            return Some(env);
        }
        let chunk = recv.receive().await.ok()??;
        dec.extend(&chunk);
    }
}

impl S2nClient {
    async fn connect(server: &TestServer) -> Self {
        let tls = s2n_quic::provider::tls::rustls::Client::builder()
            .with_certificate(server.ca.as_path())
            .unwrap()
            .with_application_protocols([ALPN].iter())
            .unwrap()
            .build()
            .unwrap();
        let client = s2n_quic::Client::builder()
            .with_tls(tls)
            .unwrap()
            .with_io("127.0.0.1:0")
            .unwrap()
            .start()
            .unwrap();
        let addr: std::net::SocketAddr = server.addr.parse().unwrap();
        let mut conn = client
            .connect(Connect::new(addr).with_server_name("localhost"))
            .await
            .expect("s2n-quic handshake with quipd (TLS 1.3, ALPN quip/1)");
        conn.keep_alive(true).unwrap();
        let stream = conn.open_bidirectional_stream().await.unwrap();
        let (recv, send) = stream.split();
        let (handle, acceptor) = conn.split();
        Self {
            _client: client,
            conn: handle,
            acceptor,
            send,
            recv,
            dec: FrameDecoder::new(MAX_FRAME),
            next_id: 1,
        }
    }

    async fn request(&mut self, body: Body) -> Body {
        let id = self.next_id;
        self.next_id += 1;
        let mut buf = BytesMut::new();
        encode_frame(&Envelope::new(id, body), MAX_FRAME, &mut buf).unwrap();
        self.send.send(buf.freeze()).await.unwrap();
        let reply = read_frame(&mut self.recv, &mut self.dec).await.expect("a reply");
        assert_eq!(reply.id, id);
        reply.body.expect("a body")
    }

    /// The next pushed event, from whichever push lane the server opened.
    async fn next_event(&mut self) -> v1::Event {
        let mut lane = tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept_receive_stream())
            .await
            .expect("a push lane within 5 s")
            .unwrap()
            .expect("connection open");
        let mut dec = FrameDecoder::new(MAX_FRAME);
        let env = read_frame(&mut lane, &mut dec).await.expect("an event frame");
        let Some(Body::Event(e)) = env.body else {
            panic!("{env:?}")
        };
        e
    }
}

#[tokio::test]
async fn an_s2n_quic_client_talks_to_quipd() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (bob, _) = server.user("bob").await;

    let mut alice = S2nClient::connect(&server).await;
    let hello = alice
        .request(Body::Hello(v1::Hello {
            versions: vec![1],
            token: String::new(),
            client: "s2n-quic interop".into(),
            background: false,
        }))
        .await;
    let Body::Welcome(w) = hello else { panic!("{hello:?}") };
    assert_eq!(w.version, 1);
    let auth = alice
        .request(Body::Register(v1::RegisterRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
            device_name: "s2n".into(),
        }))
        .await;
    assert!(matches!(auth, Body::Auth(ref a) if a.user == "alice"), "{auth:?}");

    // s2n-quic → quinn.
    let sent = alice
        .request(Body::Send(v1::SendRequest {
            to_user: "bob".into(),
            client_msg_id: "interop-1".into(),
            content: Some(v1::Content {
                text: "hello from s2n-quic".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await;
    let Body::Sent(sent) = sent else { panic!("{sent:?}") };
    let (_, m) = next_message(&bob).await;
    assert_eq!((m.seq, text(&m)), (sent.seq, "hello from s2n-quic"));

    // quinn → s2n-quic, pushed on a server-opened lane.
    bob.send_text("alice", "hello back").await.unwrap();
    // Presence is asynchronous: bob's "online" may come first.
    let e = loop {
        let e = alice.next_event().await;
        if !matches!(e.kind, Some(v1::event::Kind::Presence(_))) {
            break e;
        }
    };
    let Some(v1::event::Kind::Message(m)) = e.kind else {
        panic!("{e:?}")
    };
    assert_eq!((m.sender.as_str(), text(&m), m.seq), ("bob", "hello back", 2));
    let acked = alice.request(Body::Ack(v1::AckRequest { pos: e.pos })).await;
    assert!(matches!(acked, Body::Acked(ref a) if a.pos == e.pos), "{acked:?}");
    alice.conn.close(0u32.into());
    server.stop().await;
}
