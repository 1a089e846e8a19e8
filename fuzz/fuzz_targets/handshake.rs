//! The connection handshake: arbitrary bytes as a connection's first frame
//! (decoded exactly as the QUIC transport decodes it) and structured Hellos
//! with arbitrary versions and tokens, against a real session and store.
//!
//! Invariants, beyond "no panic":
//! - the answer is a Welcome or an Error with the request's id, never both
//!   and never anything else;
//! - a Welcome names version 1 and only follows a Hello offering 1;
//! - a Welcome for a user comes only with that user's valid token; any
//!   other token is refused with UNAUTHENTICATED and close code 5;
//! - a refused handshake always says which close code follows.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use quip_protocol::v1::{self, ErrorCode};
use quip_protocol::{Body, CloseCode, Envelope, FrameDecoder, MAX_FRAME};
use quip_server::Config;
use quip_server::hub::Closer;
use quip_server::service::accounts;
use quip_server::session::{Session, Shared};
use quip_server::store::Store;

struct World {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    token: String,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (shared, token) = rt.block_on(async {
            let store: Arc<dyn Store> = quip_server::store::open_in(dir.path(), None, 64).unwrap();
            let (token, hash) = accounts::new_token();
            let phc = accounts::hash_password("fuzz password 1").unwrap();
            quip_server::store::write(&*store, move |t| {
                accounts::register(t, "ann", &phc, "fuzz", &hash, i64::MAX / 2).map(|_| ())
            })
            .await
            .unwrap();
            let config = Config::for_tests(dir.path());
            let media = Arc::new(quip_server::media::MediaStore::open(&config).unwrap());
            (Arc::new(Shared::new(store, Arc::new(config), media)), token)
        });
        World {
            rt,
            shared,
            token,
            _dir: dir,
        }
    })
}

#[derive(Debug, Arbitrary)]
enum Input {
    /// A first frame's bytes, as they arrive on the control stream.
    Bytes(Vec<u8>),
    /// A Hello: versions offered, and the real token, a mangled one or junk.
    Hello {
        id: u64,
        versions: Vec<u32>,
        token: TokenChoice,
        client: String,
        background: bool,
    },
}

#[derive(Debug, Arbitrary)]
enum TokenChoice {
    None,
    Valid,
    Flipped(u8),
    Other(String),
}

fuzz_target!(|input: Input| {
    let w = world();
    w.rt.block_on(async {
        let (env, valid_token) = match input {
            Input::Bytes(bytes) => {
                let mut dec = FrameDecoder::new(MAX_FRAME);
                dec.extend(&bytes);
                match dec.decode() {
                    Ok(Some(env)) => {
                        let valid = matches!(&env.body, Some(Body::Hello(h)) if h.token == w.token);
                        (env, valid)
                    }
                    // Incomplete or malformed: the transport answers with a framing error.
                    _ => return,
                }
            }
            Input::Hello {
                id,
                versions,
                token,
                client,
                background,
            } => {
                let (token, valid) = match token {
                    TokenChoice::None => (String::new(), false),
                    TokenChoice::Valid => (w.token.clone(), true),
                    TokenChoice::Flipped(i) => {
                        let mut t = w.token.clone().into_bytes();
                        let at = usize::from(i) % t.len();
                        t[at] = if t[at] == b'A' { b'B' } else { b'A' };
                        (String::from_utf8(t).unwrap(), false)
                    }
                    TokenChoice::Other(s) => {
                        let valid = s == w.token;
                        (s, valid)
                    }
                };
                let hello = v1::Hello {
                    versions,
                    token,
                    client,
                    background,
                };
                (Envelope::new(id, Body::Hello(hello)), valid)
            }
        };
        let offered_v1 = matches!(&env.body, Some(Body::Hello(h)) if h.versions.contains(&1));
        let had_token = matches!(&env.body, Some(Body::Hello(h)) if !h.token.is_empty());
        let id = env.id;
        let closer = Closer::new();
        let (tx, _rx) = quip_server::hub::push_queue(16);
        let session = Session::new(w.shared.clone(), closer, tx, "127.0.0.1".parse().unwrap());
        match session.hello(env).await {
            Ok(welcome) => {
                assert_eq!(welcome.id, id);
                let Some(Body::Welcome(wel)) = welcome.body else {
                    panic!("{welcome:?}")
                };
                assert!(offered_v1, "welcomed without offering version 1");
                assert_eq!(wel.version, 1);
                if had_token {
                    assert!(valid_token, "a wrong token was accepted");
                    assert_eq!(wel.user, "ann");
                } else {
                    assert!(wel.user.is_empty());
                }
            }
            Err(refused) => {
                let (e, code) = *refused;
                assert_eq!(e.id, id);
                let Some(Body::Error(err)) = e.body else {
                    panic!("{e:?}")
                };
                let expected = if !matches!(code, CloseCode::ProtocolError) && !offered_v1 {
                    ErrorCode::UnsupportedVersion
                } else if code == CloseCode::LoggedOut {
                    ErrorCode::Unauthenticated
                } else {
                    ErrorCode::try_from(err.code).unwrap()
                };
                assert_eq!(err.code, expected as i32, "{err:?} with close {code:?}");
                if code == CloseCode::LoggedOut {
                    assert!(had_token && !valid_token, "a valid token was refused");
                }
            }
        }
        session.disconnect(quip_server::presence::Ended::Closed);
    });
});
