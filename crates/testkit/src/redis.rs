//! A Redis for tests: `STACKYARD_TEST_REDIS_URL` when set, else the local server at
//! 127.0.0.1:6379, else a private `redis-server` started from the machine's binary on a free
//! port. Only when none of that works do Redis tests skip, printing why; under `CI=true` a skip
//! is a failure. Tests share the server, so each one uses its own key prefix (`key_prefix`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A prefix no other test (or run) uses.
pub fn key_prefix() -> String {
    format!(
        "sytest:{}:{}:",
        std::process::id(),
        stackyard_core::ids::random_hex(6)
    )
}

/// Whether something at `addr` answers `PING` with `+PONG`.
fn pings(addr: &str) -> bool {
    let Some(sock) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    ping_addr(sock)
}

fn ping_addr(sock: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&sock, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// `host:port` of a `redis://host:port/...` URL.
fn host_port(url: &str) -> Option<String> {
    let rest = url.strip_prefix("redis://")?;
    let rest = rest.rsplit('@').next()?;
    Some(rest.split('/').next()?.to_owned())
}

struct Private(Child);

impl Drop for Private {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn private_server() -> Result<(String, Private), String> {
    let port = crate::free_port().map_err(|e| format!("no free port: {e}"))?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))?;
    let guard = Private(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pings(&addr) {
        if Instant::now() > deadline {
            return Err("the private redis-server did not answer within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((format!("redis://{addr}"), guard))
}

/// The Redis URL tests should use, or `None` (having printed why) when there is none.
pub fn url() -> Option<String> {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    static PRIVATE: Mutex<Option<Private>> = Mutex::new(None);
    let found = URL.get_or_init(|| {
        let mut why = Vec::new();
        if let Ok(u) = std::env::var("STACKYARD_TEST_REDIS_URL") {
            if host_port(&u).is_some_and(|hp| pings(&hp)) {
                return Ok(u);
            }
            why.push("STACKYARD_TEST_REDIS_URL does not answer PING".to_owned());
        }
        if pings("127.0.0.1:6379") {
            return Ok("redis://127.0.0.1:6379".into());
        }
        why.push("nothing answers at 127.0.0.1:6379".into());
        match private_server() {
            Ok((u, guard)) => {
                *PRIVATE.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
                Ok(u)
            }
            Err(e) => {
                why.push(e);
                Err(why.join("; "))
            }
        }
    });
    match found {
        Ok(u) => Some(u.clone()),
        Err(why) => {
            assert!(
                !crate::under_ci(),
                "Redis tests cannot run under CI=true: {why}"
            );
            eprintln!("skipping a Redis test: {why}");
            None
        }
    }
}
