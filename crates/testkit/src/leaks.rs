//! No secret in any test server's output: every server a test starts — a `stackyard serve`
//! child ([`crate::process`]) or one in the test process (its `tracing` output, captured by
//! [`capture_in_process_logs`]) — has its output checked when it stops, and a leak fails the
//! test that owned it. A leak is an API token (`sy_…`), a database or cache URL, or any value a
//! test registered as a secret with [`register`] (the env values and tokens it sends).

use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

/// Shorter values are too likely to occur in a log by chance to count as leaked there.
const MIN_SECRET_LEN: usize = 8;
/// An API token: the prefix and 64 hex digits (`ApiToken::generate`).
const TOKEN_PREFIX: &str = "sy_";
const TOKEN_HEX_DIGITS: usize = 64;
/// Connection URL schemes a log must never show.
const URL_SCHEMES: &[&str] = &["postgres://", "postgresql://", "redis://", "rediss://"];

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Registers a value a test sends (an env value, a token) as one no server may print; returns it.
pub fn register(secret: &str) -> &str {
    if secret.len() >= MIN_SECRET_LEN {
        let mut secrets = lock(&SECRETS);
        if !secrets.iter().any(|s| s == secret) {
            secrets.push(secret.to_owned());
        }
    }
    secret
}

/// Registers every string value of a JSON document (a request body a test sends).
pub fn register_json(value: &serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            register(s);
        }
        serde_json::Value::Array(items) => items.iter().for_each(register_json),
        serde_json::Value::Object(map) => map.values().for_each(register_json),
        _ => {}
    }
}

/// What in `line` looks leaked, each described without repeating the secret whole.
pub fn leaks_in(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    for scheme in URL_SCHEMES {
        if line.contains(scheme) {
            found.push(format!("a `{scheme}` URL"));
        }
    }
    let mut rest = line;
    while let Some(i) = rest.find(TOKEN_PREFIX) {
        let after = &rest[i + TOKEN_PREFIX.len()..];
        let run = after.chars().take_while(char::is_ascii_hexdigit).count();
        if run >= TOKEN_HEX_DIGITS {
            found.push("an API token".to_owned());
        }
        rest = after;
    }
    for secret in lock(&SECRETS).iter() {
        if line.contains(secret.as_str()) {
            let shown: String = secret.chars().take(3).collect();
            found.push(format!("the registered secret `{shown}…`"));
        }
    }
    found
}

/// Panics, naming the line, if any of `lines` (a server's output) leaks. Does nothing while the
/// thread is already panicking (a second panic would abort and hide the first).
pub fn assert_no_leaks<'a>(lines: impl IntoIterator<Item = &'a str>, whence: &str) {
    if std::thread::panicking() {
        return;
    }
    for line in lines {
        let found = leaks_in(line);
        assert!(
            found.is_empty(),
            "{whence} printed {}: {}",
            found.join(", "),
            redact(line)
        );
    }
}

/// The line with every registered secret and token body replaced, for the failure message.
fn redact(line: &str) -> String {
    let mut out = line.to_owned();
    for secret in lock(&SECRETS).iter() {
        out = out.replace(secret.as_str(), "[secret]");
    }
    out
}

/// Installs, once per test process, a `tracing` subscriber at `debug` for Stackyard's crates
/// that keeps every line an in-process server logs, for [`check_captured`].
pub fn capture_in_process_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::new("info,stackyard=debug,stackyard_server=debug,stackyard_runtime_local=debug,stackyard_store_sql=debug,stackyard_store_sqlite=debug,stackyard_store_postgres=debug");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| Captured)
            .try_init();
    });
}

/// Checks (and forgets) what in-process servers logged so far; see [`assert_no_leaks`].
pub fn check_captured(whence: &str) {
    let text = String::from_utf8_lossy(&std::mem::take(&mut *lock(&CAPTURED))).into_owned();
    assert_no_leaks(text.lines(), whence);
}

struct Captured;

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&CAPTURED).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_urls_and_registered_values_are_leaks_and_their_prefixes_are_not() {
        assert!(leaks_in("request done status=200").is_empty());
        assert!(leaks_in("token sy_abc (id 3)").is_empty(), "a short prefix");
        assert!(leaks_in("database sy_t_1796457655196_67c28042").is_empty());
        let token = format!("auth sy_{}", "0123456789abcdef".repeat(4));
        assert_eq!(leaks_in(&token), ["an API token"]);
        assert_eq!(
            leaks_in("connecting to postgres://u@h/db"),
            ["a `postgres://` URL"]
        );
        register("hunter2-but-longer");
        assert_eq!(
            leaks_in("value=hunter2-but-longer"),
            ["the registered secret `hun…`"]
        );
        assert!(redact("x hunter2-but-longer y").contains("[secret]"));
        register("short");
        assert!(leaks_in("short").is_empty());
    }
}
