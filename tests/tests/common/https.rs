//! A minimal HTTPS/1.1 client for tests of quipd's HTTPS endpoints: one
//! request per connection (Connection: close), the response read whole.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TestServer;

/// A response: the status code, lowercased header lines, the body.
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (lowercase), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A TLS connection to quipd's HTTPS listener.
pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens a TLS connection to the HTTPS listener at `https`, trusting `ca`.
pub async fn connect(https: SocketAddr, ca: &Path) -> TlsStream {
    let pem = std::fs::read(ca).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// A request head declaring `content_length` body bytes (which the caller
/// may then send only part of).
pub fn head(method: &str, path: &str, headers: &[(&str, &str)], content_length: usize) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {content_length}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Reads until the server closes the connection, for at most `within`:
/// the response, or `None` if the connection was still open (or no whole
/// response head came). A reset after the response counts as closed.
pub async fn read_until_closed(s: &mut TlsStream, within: Duration) -> Option<Response> {
    let mut raw = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed.ok()?;
    parse(&raw)
}

/// Sends `method path` with extra header lines and a body.
pub async fn request(server: &TestServer, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut s = connect(server.https, &server.ca).await;
    s.write_all(head(method, path, headers, body.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .expect("response in time");
    parse(&raw).expect("a whole response head")
}

fn parse(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8(raw[..split].to_vec()).ok()?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok())?;
    let mut body = raw[split + 4..].to_vec();
    if headers.to_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Some(Response {
        status,
        headers: headers.to_lowercase(),
        body,
    })
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// GET `path`.
pub async fn get(server: &TestServer, path: &str) -> Response {
    request(server, "GET", path, &[], &[]).await
}
