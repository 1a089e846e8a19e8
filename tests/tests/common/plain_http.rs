//! Plain HTTP/1.1 to quipd's admin listener: one request per connection,
//! read to the end. Small on purpose: the tests check what goes over the
//! wire (status, headers, body), which a client library would hide.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `method path` with an optional `Authorization` value: the status, the
/// head (status line and headers) and the body; an error when the
/// connection is refused or closed without a response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> std::io::Result<(u16, String, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no response within 10 s"))??;
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!("no response: {raw:?}")));
    };
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    Ok((status, head.to_owned(), body.to_owned()))
}
