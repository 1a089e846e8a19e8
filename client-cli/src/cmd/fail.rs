//! How a failed command ends: an exit status per kind of failure (the table
//! in [`EXIT_CODES`], also in `--help` and the README), and the error on
//! stderr as one line of text or, with `--json`, one JSON object.

use std::process::ExitCode;

use quip_client::ClientError;
use quip_protocol::v1::ErrorCode;
use serde_json::json;

/// The exit statuses, as `quip --help` lists them.
pub const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  any other failure (a local file, an unexpected answer, INTERNAL)
  2  usage: a wrong command line, or an argument the server refused
     (INVALID_ARGUMENT, BODY_TOO_LARGE)
  3  auth: not logged in, a token the server no longer accepts
     (UNAUTHENTICATED, or the session was logged out or expired), a wrong
     username or password (INVALID_CREDENTIALS)
  4  not found or forbidden: no such user, chat or media, or not yours
     (NOT_FOUND, FORBIDDEN)
  5  conflict: USERNAME_TAKEN, IDEMPOTENCY_CONFLICT, LIMIT_EXCEEDED,
     HASH_MISMATCH
  6  unavailable: cannot connect (no answer, untrusted certificate), the
     connection was lost, the server is shutting down (UNAVAILABLE,
     TOO_EARLY, UPLOAD_INCOMPLETE)
  7  rate limited: RATE_LIMITED (retry_after_ms says when to retry)
With --json an error is one JSON object on stderr:
  {\"type\":\"error\",\"exit\":4,\"code\":\"NOT_FOUND\",\"message\":\"...\"}
with \"hint\" and \"retry_after_ms\" when there are any. \"code\" is the
server's error code, or one of USAGE, NOT_LOGGED_IN, SESSION_ENDED,
CANNOT_CONNECT, CONNECTION_CLOSED, PROTOCOL, IO, ERROR.";

/// The kinds of failure, each with its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Other = 1,
    Usage = 2,
    Auth = 3,
    NotFound = 4,
    Conflict = 5,
    Unavailable = 6,
    RateLimited = 7,
}

/// Not logged in: the profile has no token.
#[derive(Debug, thiserror::Error)]
#[error("not logged in: run 'quip login USER' (or 'quip register USER') first")]
pub struct NotLoggedIn;

/// The server ended this device's session (logged out elsewhere, token
/// expired or revoked): logging in again is the only way on.
#[derive(Debug, thiserror::Error)]
#[error("the server ended this session ({0}): log in again")]
pub struct SessionEnded(pub String);

/// A command line clap accepts but that makes no sense.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// What is reported about a failure.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    /// The server's error code name, or the client's name for the kind.
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
    pub retry_after_ms: Option<u32>,
}

impl Failure {
    pub fn of(e: &anyhow::Error) -> Self {
        // One line, whatever the causes' messages contain.
        let message = format!("{e:#}").replace(['\r', '\n'], " ");
        let mut f = Self {
            exit: Exit::Other,
            code: "ERROR".into(),
            message,
            hint: None,
            retry_after_ms: None,
        };
        for cause in e.chain() {
            if let Some(c) = cause.downcast_ref::<ClientError>() {
                f.client(c);
                return f;
            }
            if cause.is::<NotLoggedIn>() {
                (f.exit, f.code) = (Exit::Auth, "NOT_LOGGED_IN".into());
                return f;
            }
            if cause.is::<SessionEnded>() {
                (f.exit, f.code) = (Exit::Auth, "SESSION_ENDED".into());
                return f;
            }
            if cause.is::<Usage>() {
                (f.exit, f.code) = (Exit::Usage, "USAGE".into());
                return f;
            }
            if cause.is::<std::io::Error>() {
                f.code = "IO".into();
                return f;
            }
        }
        f
    }

    fn client(&mut self, e: &ClientError) {
        match e {
            ClientError::Server {
                code, retry_after_ms, ..
            } => {
                self.exit = exit_for(*code);
                self.code = code.as_str_name().to_owned();
                self.retry_after_ms = (*retry_after_ms > 0).then_some(*retry_after_ms);
                if *code == ErrorCode::Unauthenticated {
                    self.hint = Some("log in again: quip login USER".into());
                }
            }
            ClientError::Connect(text) => {
                (self.exit, self.code) = (Exit::Unavailable, "CANNOT_CONNECT".into());
                self.hint = certificate_hint(text);
            }
            ClientError::Closed(_) | ClientError::ZeroRttRejected => {
                (self.exit, self.code) = (Exit::Unavailable, "CONNECTION_CLOSED".into());
            }
            ClientError::Protocol(_) => self.code = "PROTOCOL".into(),
            ClientError::Io(_) => self.code = "IO".into(),
            _ => {}
        }
    }

    /// Prints the failure on stderr and gives the exit status.
    pub fn report(self, json: bool) -> ExitCode {
        if json {
            let mut v = json!({"type": "error", "exit": self.exit as u8, "code": self.code, "message": self.message});
            if let Some(h) = &self.hint {
                v["hint"] = json!(h);
            }
            if let Some(ms) = self.retry_after_ms {
                v["retry_after_ms"] = json!(ms);
            }
            eprintln!("{v}");
        } else {
            match &self.hint {
                Some(h) => eprintln!("quip: error: {} (hint: {h})", self.message),
                None => eprintln!("quip: error: {}", self.message),
            }
        }
        ExitCode::from(self.exit as u8)
    }
}

/// The exit status for a server error code.
pub fn exit_for(code: ErrorCode) -> Exit {
    use ErrorCode as E;
    match code {
        E::InvalidArgument | E::BodyTooLarge => Exit::Usage,
        E::Unauthenticated | E::InvalidCredentials => Exit::Auth,
        E::NotFound | E::Forbidden => Exit::NotFound,
        E::UsernameTaken | E::IdempotencyConflict | E::LimitExceeded | E::HashMismatch => Exit::Conflict,
        E::Unavailable | E::TooEarly | E::UploadIncomplete | E::SlowConsumer => Exit::Unavailable,
        E::RateLimited => Exit::RateLimited,
        _ => Exit::Other,
    }
}

/// What to do about a certificate the client does not trust.
fn certificate_hint(text: &str) -> Option<String> {
    if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        Some(
            "the server's certificate is not signed by a CA this client trusts; for a dev server pass \
             --ca <data-dir>/dev-cert.pem (or set QUIP_CA to it)"
                .into(),
        )
    } else if text.contains("NotValidForName") {
        Some("the certificate is not valid for this host name: connect with a name it was issued for".into())
    } else if text.contains("Expired") {
        Some("the server's certificate has expired (or this machine's clock is wrong)".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each documented status is produced by the codes the table names.
    #[test]
    fn every_server_code_has_its_documented_status() {
        for (code, exit) in [
            (ErrorCode::InvalidArgument, 2),
            (ErrorCode::Unauthenticated, 3),
            (ErrorCode::InvalidCredentials, 3),
            (ErrorCode::NotFound, 4),
            (ErrorCode::Forbidden, 4),
            (ErrorCode::UsernameTaken, 5),
            (ErrorCode::Unavailable, 6),
            (ErrorCode::RateLimited, 7),
            (ErrorCode::Internal, 1),
        ] {
            assert_eq!(exit_for(code) as u8, exit, "{code:?}");
            assert!(EXIT_CODES.contains(code.as_str_name()), "{code:?} documented");
        }
    }

    #[test]
    fn an_untrusted_certificate_gets_a_hint() {
        let e = anyhow::Error::new(ClientError::Connect(
            "the cryptographic handshake failed: error 42: invalid peer certificate: UnknownIssuer".into(),
        ));
        let f = Failure::of(&e);
        assert_eq!((f.exit, f.code.as_str()), (Exit::Unavailable, "CANNOT_CONNECT"));
        assert!(f.hint.unwrap().contains("--ca <data-dir>/dev-cert.pem"));
    }
}
