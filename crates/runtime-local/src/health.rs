//! The readiness probe: a service is ready when its port accepts a TCP connection or, when the
//! manifest names a `health` path, when a GET of that path answers 2xx or 3xx.
//!
//! The HTTP probe is a hand-written one-request exchange rather than an HTTP client: it needs
//! only the status line, and this keeps it independent of pooling and of the app's keep-alive
//! behaviour.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes read while looking for the status line.
const STATUS_LINE_MAX: usize = 256;

/// Probes `127.0.0.1:port` once. `Err` says, for the failure message, what went wrong.
pub(crate) async fn probe(port: u16, health: Option<&str>) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_inner(port, health)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the probe of port {port} got no answer within {}s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

async fn probe_inner(port: u16, health: Option<&str>) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("nothing accepted connections on port {port} ({e})"))?;
    let Some(path) = health.filter(|p| is_request_target(p)) else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: stackyard-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {path} could not be sent ({e})"))?;
    let mut head = Vec::with_capacity(STATUS_LINE_MAX);
    let mut buf = [0u8; STATUS_LINE_MAX];
    while !head.contains(&b'\n') && head.len() < STATUS_LINE_MAX {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("GET {path} failed ({e})"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    match status_code(&head) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(code) => Err(format!("GET {path} answered {code}")),
        None => Err(format!(
            "GET {path} did not answer with an HTTP status line"
        )),
    }
}

/// A path we can put in a request line as is; the manifest parser already guarantees this,
/// so anything else falls back to the TCP check rather than sending a broken request.
fn is_request_target(p: &str) -> bool {
    p.starts_with('/')
        && !p
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// The status code of an `HTTP/1.x NNN ...` status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = words.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 302\r\nLocation: /"), Some(302));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20"), None);
        assert_eq!(status_code(b""), None);
    }

    async fn serve_once(answer: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn probes_tcp_and_http() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let bad = serve_once(b"HTTP/1.1 503 Unavailable\r\n\r\n").await;
        assert_eq!(probe(ok, None).await, Ok(()));
        assert_eq!(probe(ok, Some("/healthz")).await, Ok(()));
        let err = probe(bad, Some("/healthz")).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        // A port nobody listens on.
        let free = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = probe(free, None).await.unwrap_err();
        assert!(err.contains(&format!("port {free}")), "{err}");
    }
}
