//! The store's key encoding (server/src/keys.rs): what `spec/storage.md`
//! section 3 promises about it.
//!
//! Invariants:
//! - byte order is numeric order: for two keys of the same kind, comparing
//!   the encoded keys gives the same answer as comparing their numbers;
//! - keys of different kinds never compare into each other's ranges: no
//!   encoded key of one kind starts with the tag of another;
//! - ids decode back from the keys that embed them last
//!   (`chat_of_user_chat`, `user_of_cursor`);
//! - a direct chat's key is the same from either side.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use quip_server::keys;

#[derive(Debug, Arbitrary, Clone, Copy)]
enum Kind {
    Message,
    Log,
    Cursor,
    UserChat,
    UserChannel,
    Hidden,
    Block,
}

fn key(kind: Kind, a: u64, b: u64) -> Vec<u8> {
    match kind {
        Kind::Message => keys::message(a, b),
        Kind::Log => keys::log(a, b),
        Kind::Cursor => keys::cursor(a, b),
        Kind::UserChat => keys::user_chat(a, b),
        Kind::UserChannel => keys::user_channel(a, b),
        Kind::Hidden => keys::hidden(a, 7, b),
        Kind::Block => keys::block(a, b),
    }
}

const TAGS: [&[u8]; 15] = [
    b"user/", b"uid/", b"sess/", b"dev/", b"dm/", b"chat/", b"msg/", b"idem/", b"cur/", b"uchat/", b"log/", b"ragg/",
    b"uchan/", b"block/", b"hide/",
];

fn tag_of(k: &[u8]) -> usize {
    let hits: Vec<usize> = (0..TAGS.len()).filter(|&i| k.starts_with(TAGS[i])).collect();
    assert_eq!(hits.len(), 1, "{} matches tags {hits:?}", k.escape_ascii());
    hits[0]
}

fuzz_target!(|input: (Kind, Kind, [u64; 4], String, String)| {
    let (k1, k2, [a, b, c, d], name1, name2) = input;
    let x = key(k1, a, b);
    let y = key(k1, c, d);
    assert_eq!(x.cmp(&y), (a, b).cmp(&(c, d)), "order of {k1:?} keys");
    let z = key(k2, c, d);
    assert_eq!(
        tag_of(&x) == tag_of(&z),
        std::mem::discriminant(&k1) == std::mem::discriminant(&k2)
    );
    match k1 {
        Kind::UserChat | Kind::UserChannel | Kind::Message | Kind::Log | Kind::Block => {
            assert_eq!(keys::chat_of_user_chat(&x), Some(b))
        }
        Kind::Cursor => assert_eq!(keys::user_of_cursor(&x), Some(b)),
        Kind::Hidden => assert_eq!(keys::chat_of_user_chat(&x), Some(b)),
    }
    assert_eq!(keys::direct(a, b), keys::direct(b, a));
    // Variable-length parts come last and cannot forge another kind's key.
    let u1 = keys::user(&name1);
    let u2 = keys::user(&name2);
    assert_eq!(tag_of(&u1), 0);
    assert_eq!(u1.cmp(&u2), name1.as_bytes().cmp(name2.as_bytes()));
    let i = keys::idempotency(a, b, &name1);
    assert_eq!(tag_of(&i), 7);
    assert!(keys::counter(&name2).starts_with(b"ctr/"));
});
