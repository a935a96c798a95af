//! A deliberately cheap HTTP/1.1 load loop: N keep-alive connections, each sending one fixed
//! `GET` and reading its response (head plus `Content-Length` bytes) back to back.
//!
//! It shares the machine with what it measures, so it does as little as a client can: the
//! request bytes are built once, each exchange is one `write` and (usually) one `read` into a
//! reused buffer, the response head is scanned only for its status and `Content-Length`, and
//! there is no per-request timer (a stuck connection is abandoned at the end instead).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The load loop's flags, shared by the benchmarks that run it.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Keep-alive connections of the load loop (and of wrk, where it runs).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Measured time per target.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured load before each target's measured time.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Threads of the load loop's runtime (and wrk's `-t`).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;
/// How long workers get to finish their last exchange once the run is over.
const FINISH_GRACE: Duration = Duration::from_secs(5);
const READ_BUF: usize = 16 * 1024;

/// What one run measured (warm-up excluded).
pub(crate) struct LoadResult {
    /// 2xx responses completed in the measured window.
    pub ok: u64,
    /// Non-2xx answers, broken connections and connect failures in the window.
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of every 2xx exchange, sorted, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

#[derive(Default)]
struct WorkerResult {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

/// The bytes of `GET path` with `Host: host` and `headers`.
pub(crate) fn get(host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Runs `connections` workers on `runtime` sending `request` (see [`get`]) to `addr`: `warmup`
/// unmeasured, then `duration` measured. `sample` is called as the measured window opens and
/// as it closes; both results are returned with the measurements.
pub(crate) async fn run<S>(
    runtime: &tokio::runtime::Handle,
    addr: SocketAddr,
    request: &str,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    sample: impl Fn() -> S,
) -> (LoadResult, S, S) {
    let request: Arc<[u8]> = request.as_bytes().into();
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let workers: Vec<_> = (0..connections)
        .map(|_| runtime.spawn(worker(addr, request.clone(), phase.clone())))
        .collect();
    tokio::time::sleep(warmup).await;
    phase.store(MEASURE, Ordering::Relaxed);
    let started = Instant::now();
    let opened = sample();
    tokio::time::sleep(duration).await;
    phase.store(STOP, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let closed = sample();

    let mut result = LoadResult {
        ok: 0,
        errors: 0,
        elapsed,
        latencies_us: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + FINISH_GRACE;
    for w in workers {
        let abort = w.abort_handle();
        match tokio::time::timeout_at(deadline, w).await {
            Ok(Ok(r)) => {
                result.ok += r.ok;
                result.errors += r.errors;
                result.latencies_us.extend(r.latencies_us);
            }
            // A worker stuck on an upstream that never answered.
            _ => {
                abort.abort();
                result.errors += 1;
            }
        }
    }
    result.latencies_us.sort_unstable();
    (result, opened, closed)
}

async fn worker(addr: SocketAddr, request: Arc<[u8]>, phase: Arc<AtomicU8>) -> WorkerResult {
    let mut out = WorkerResult {
        latencies_us: Vec::with_capacity(1 << 16),
        ..WorkerResult::default()
    };
    let mut buf = vec![0u8; READ_BUF];
    let mut conn: Option<TcpStream> = None;
    loop {
        if phase.load(Ordering::Relaxed) == STOP {
            break;
        }
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn.insert(s)
                }
                Err(_) => {
                    if phase.load(Ordering::Relaxed) == MEASURE {
                        out.errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let t = Instant::now();
        let answer = exchange(stream, &request, &mut buf).await;
        let measured = phase.load(Ordering::Relaxed) == MEASURE;
        match answer {
            Ok(Exchange { ok: true, reusable }) => {
                if measured {
                    out.ok += 1;
                    out.latencies_us
                        .push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                }
                if !reusable {
                    conn = None;
                }
            }
            Ok(Exchange {
                ok: false,
                reusable,
            }) => {
                if measured {
                    out.errors += 1;
                }
                if !reusable {
                    conn = None;
                }
            }
            Err(_) => {
                if measured {
                    out.errors += 1;
                }
                conn = None;
            }
        }
    }
    out
}

struct Exchange {
    /// The status was 2xx.
    ok: bool,
    /// The server did not ask to close the connection.
    reusable: bool,
}

/// Sends `request` and reads one response to its end.
async fn exchange(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> io::Result<Exchange> {
    s.write_all(request).await?;
    let mut have = 0;
    let head = loop {
        if have == buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // A head ending can straddle reads: look again from a little before the new bytes.
        let from = have.saturating_sub(3);
        have += n;
        if let Some(end) = find_head_end(&buf[from..have]) {
            break parse_head(&buf[..from + end])?;
        }
    };
    let total = head.len + head.body_len;
    if have > total {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more bytes than one response",
        ));
    }
    let mut left = total - have;
    while left > 0 {
        let n = s.read(&mut buf[..left.min(READ_BUF)]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left -= n;
    }
    Ok(Exchange {
        ok: (200..300).contains(&head.status),
        reusable: !head.close,
    })
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// Bytes of the head including the blank line.
    len: usize,
    status: u16,
    body_len: usize,
    close: bool,
}

/// The offset just past the `\r\n\r\n` that ends a response head.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Status, `Content-Length` and `Connection: close` of a complete head (`head` ends with the
/// blank line). Bodies without a length (chunked, or until close) are not supported: the
/// upstreams this loop drives always send `Content-Length`.
fn parse_head(head: &[u8]) -> io::Result<Head> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let text = std::str::from_utf8(head).map_err(|_| bad("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("not an HTTP/1.x status line"))?;
    let mut body_len = None;
    let mut close = status_line.starts_with("HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body_len = Some(value.parse().map_err(|_| bad("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked responses are not supported by the load loop"));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body_len = match body_len {
        Some(n) => n,
        // 1xx, 204 and 304 have no body.
        None if status < 200 || status == 204 || status == 304 => 0,
        None => return Err(bad("response without Content-Length")),
    };
    Ok(Head {
        len: head.len(),
        status,
        body_len,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: x\r\n\r\nok";
        let end = find_head_end(raw).unwrap();
        assert_eq!(&raw[end..], b"ok");
        let h = parse_head(&raw[..end]).unwrap();
        assert_eq!(
            h,
            Head {
                len: end,
                status: 200,
                body_len: 2,
                close: false
            }
        );
        let h = parse_head(b"HTTP/1.0 502 Bad Gateway\r\nContent-Length: 10\r\n\r\n").unwrap();
        assert_eq!((h.status, h.body_len, h.close), (502, 10, true));
        let h = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        assert!(h.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert_eq!(parse_head(b"HTTP/1.1 204 No\r\n\r\n").unwrap().body_len, 0);
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn the_loop_counts_answers_over_keep_alive_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        have.extend_from_slice(&buf[..n]);
                        while let Some(end) = find_head_end(&have) {
                            have.drain(..end);
                            // Split across two writes, to exercise the reassembly.
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                            let _ = s.write_all(b"ngth: 5\r\n\r\nhello").await;
                        }
                    }
                });
            }
        });
        let (r, (), ()) = run(
            &tokio::runtime::Handle::current(),
            addr,
            &get("x.test", "/", &[]),
            4,
            Duration::from_millis(50),
            Duration::from_millis(200),
            || (),
        )
        .await;
        assert!(r.ok > 10, "{} ok", r.ok);
        assert_eq!(r.errors, 0);
        assert_eq!(r.latencies_us.len() as u64, r.ok);
    }
}
