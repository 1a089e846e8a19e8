//! Accounts, devices and sessions.
//!
//! Passwords are hashed with argon2id (memory-hard, so a stolen database is
//! slow to brute-force). Session tokens are 256 random bits, so a plain
//! SHA-256 of the token is a safe lookup key: the database holds no usable
//! token, and checking one costs a hash, not an argon2 run.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::ServiceError;
use crate::keys;
use crate::records::{self, DeviceRecord, SessionRecord, UserRecord};
use crate::store::{ReadTxn, Txn};

/// The prefix of every token, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "qp1_";

/// Checks a username: 3–32 of `[a-z0-9_.-]`, starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<(), ServiceError> {
    let ok_len = (3..=32).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.len() > 32 {
        // Not echoed: an error message must not carry whatever a client sends.
        Err(ServiceError::InvalidArgument(format!(
            "invalid username: {} bytes, at most 32 are allowed",
            name.len()
        )))
    } else if ok_len && ok_chars && ok_first {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(format!(
            "invalid username {name:?}: use 3-32 characters from a-z, 0-9, '_', '.', '-', starting with a letter or digit"
        )))
    }
}

/// Checks a password's length (8–1024 bytes).
pub fn validate_password(pw: &str) -> Result<(), ServiceError> {
    if (8..=1024).contains(&pw.len()) {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument("password must be 8 to 1024 bytes".into()))
    }
}

/// Checks a device name (at most 64 bytes).
pub fn validate_device_name(name: &str) -> Result<(), ServiceError> {
    if name.len() <= 64 {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(
            "device_name must be at most 64 bytes".into(),
        ))
    }
}

/// Hashes a password with argon2id and a random salt. CPU- and memory-heavy:
/// call it off the async executor.
pub fn hash_password(pw: &str) -> Result<String, ServiceError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServiceError::Internal(format!("password hashing failed: {e}")))
}

/// Checks a password against a stored PHC string. Heavy, like [`hash_password`].
pub fn verify_password(pw: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
}

/// A PHC string of a random password, verified against when the user does
/// not exist, so a login takes as long for unknown users as for known ones.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not-a-real-password-0123456789").expect("hashing works"))
}

/// A fresh random token and the hash it is stored under.
pub fn new_token() -> (String, [u8; 32]) {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let hash = token_hash(&token);
    (token, hash)
}

/// The lookup key of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Creates an account and its first device and session.
/// Returns `(user_id, device_id)`.
pub fn register(
    txn: &mut dyn Txn,
    username: &str,
    password_phc: &str,
    device_name: &str,
    token_hash: &[u8; 32],
    now_ms: i64,
) -> Result<(u64, u32), ServiceError> {
    let ukey = keys::user(username);
    if txn.get(&ukey)?.is_some() {
        return Err(ServiceError::UsernameTaken(username.to_owned()));
    }
    let ctr = keys::counter("user");
    let uid = records::get_u64(txn, &ctr)? + 1;
    txn.set(&ctr, &uid.to_be_bytes());
    let user = UserRecord {
        id: uid,
        username: username.to_owned(),
        password_phc: password_phc.to_owned(),
        created_ms: now_ms,
        last_device: 0,
        ..UserRecord::default()
    };
    txn.set(&keys::user_id(uid), username.as_bytes());
    let device = add_device(txn, user, device_name, token_hash, now_ms)?;
    Ok((uid, device))
}

/// Reads a user for login.
pub fn find_user(txn: &mut dyn ReadTxn, username: &str) -> Result<Option<UserRecord>, ServiceError> {
    Ok(records::get(txn, &keys::user(username))?)
}

/// Creates a new device and session for an existing user (after the password
/// was verified). Returns the device id.
pub fn login(
    txn: &mut dyn Txn,
    username: &str,
    device_name: &str,
    token_hash: &[u8; 32],
    now_ms: i64,
) -> Result<(u64, u32), ServiceError> {
    // Re-read inside the write: the device counter may have moved since the
    // password check.
    let user: UserRecord = records::get(txn, &keys::user(username))?.ok_or(ServiceError::InvalidCredentials)?;
    // Checked here too, in the write: an account disabled while its
    // password was being checked gets no new session.
    if user.disabled {
        return Err(account_disabled());
    }
    let uid = user.id;
    let device = add_device(txn, user, device_name, token_hash, now_ms)?;
    Ok((uid, device))
}

fn add_device(
    txn: &mut dyn Txn,
    mut user: UserRecord,
    device_name: &str,
    token_hash: &[u8; 32],
    now_ms: i64,
) -> Result<u32, ServiceError> {
    user.last_device += 1;
    let device = user.last_device;
    txn.set(&keys::user(&user.username), &prost::Message::encode_to_vec(&user));
    let dev = DeviceRecord {
        name: device_name.to_owned(),
        acked_pos: 0,
        created_ms: now_ms,
    };
    txn.set(&keys::device(user.id, device), &prost::Message::encode_to_vec(&dev));
    let sess = SessionRecord {
        user_id: user.id,
        device_id: device,
        created_ms: now_ms,
    };
    txn.set(&keys::session(token_hash), &prost::Message::encode_to_vec(&sess));
    Ok(device)
}

/// Looks a session up by token hash.
pub fn session(txn: &mut dyn ReadTxn, token_hash: &[u8; 32]) -> Result<Option<SessionRecord>, ServiceError> {
    Ok(records::get(txn, &keys::session(token_hash))?)
}

/// The username of a user id.
pub fn username(txn: &mut dyn ReadTxn, uid: u64) -> Result<Option<String>, ServiceError> {
    let key = keys::user_id(uid);
    match txn.get(&key)? {
        None => Ok(None),
        Some(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| ServiceError::Internal(format!("username of user {uid} is not UTF-8"))),
    }
}

/// Revokes a session.
pub fn logout(txn: &mut dyn Txn, token_hash: &[u8; 32]) -> Result<(), ServiceError> {
    txn.clear(&keys::session(token_hash));
    Ok(())
}

/// A login to an account the operator disabled.
pub fn account_disabled() -> ServiceError {
    ServiceError::Forbidden("account disabled".into())
}

/// Every account, in name order.
pub fn list_users(txn: &mut dyn ReadTxn) -> Result<Vec<UserRecord>, ServiceError> {
    let (from, to) = keys::users();
    txn.range(&from, &to, usize::MAX, false)?
        .iter()
        .map(|(k, v)| records::decode(k, v).map_err(ServiceError::from))
        .collect()
}

/// A user's devices, by id.
pub fn devices(txn: &mut dyn ReadTxn, uid: u64) -> Result<Vec<(u32, DeviceRecord)>, ServiceError> {
    let (from, to) = keys::devices(uid);
    txn.range(&from, &to, usize::MAX, false)?
        .iter()
        .map(|(k, v)| {
            let id = keys::device_of(k).ok_or_else(|| ServiceError::Internal("malformed device key".into()))?;
            Ok((id, records::decode(k, v)?))
        })
        .collect()
}

/// Every live session (token) of a user, as (token hash, device). Scans
/// every session: for the operator's commands, not for requests.
pub fn sessions_of(txn: &mut dyn ReadTxn, uid: u64) -> Result<Vec<([u8; 32], u32)>, ServiceError> {
    let (from, to) = keys::sessions();
    let mut out = Vec::new();
    for (k, v) in txn.range(&from, &to, usize::MAX, false)? {
        let s: SessionRecord = records::decode(&k, &v)?;
        if s.user_id == uid
            && let Some(hash) = keys::token_hash_of(&k)
        {
            out.push((hash, s.device_id));
        }
    }
    Ok(out)
}

/// Revokes a user's sessions (of one device, or all): their tokens stop
/// working. Returns what was revoked, as (token hash, device).
pub fn revoke_sessions(txn: &mut dyn Txn, uid: u64, device: Option<u32>) -> Result<Vec<([u8; 32], u32)>, ServiceError> {
    let mut revoked = sessions_of(txn, uid)?;
    revoked.retain(|(_, d)| device.is_none_or(|want| want == *d));
    for (hash, _) in &revoked {
        txn.clear(&keys::session(hash));
    }
    Ok(revoked)
}

/// Changes a user's record with `f`; `NotFound` for an unknown name.
pub fn update_user(
    txn: &mut dyn Txn,
    username: &str,
    f: impl FnOnce(&mut UserRecord),
) -> Result<UserRecord, ServiceError> {
    let key = keys::user(username);
    let mut user: UserRecord =
        records::get(txn, &key)?.ok_or_else(|| ServiceError::NotFound(format!("no user {username:?}")))?;
    f(&mut user);
    txn.set(&key, &prost::Message::encode_to_vec(&user));
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["bob", "alice_01", "a.b-c", "0day"] {
            validate_username(ok).unwrap();
        }
        for bad in ["", "ab", "Bob", "-bob", "bob!", "é23", &"a".repeat(33)] {
            assert!(validate_username(bad).is_err(), "{bad:?} accepted");
        }
        // An oversized name is not echoed back.
        let long = "x".repeat(100_000);
        let e = validate_username(&long).unwrap_err().to_string();
        assert!(e.len() < 100, "{e}");
        assert!(e.contains("100000 bytes"), "{e}");
    }

    #[test]
    fn tokens_are_random_and_hash_consistently() {
        let (t1, h1) = new_token();
        let (t2, h2) = new_token();
        assert_ne!(t1, t2);
        assert!(t1.starts_with(TOKEN_PREFIX));
        assert_eq!(t1.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(token_hash(&t1), h1);
        assert_ne!(h1, h2);
    }

    #[test]
    fn password_hash_verifies() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
    }
}
