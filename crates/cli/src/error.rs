//! The client's one error type and the exit-code contract. Every failure, local or from the
//! server, ends as a [`CliError`] whose [`Exit`] class is the process exit code, so scripts can
//! branch on the class without parsing text.

use serde_json::{Map, Value, json};
use std::fmt;
use std::process::ExitCode;

/// Exit code classes. The numbers are a public contract (README, `stackyard --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 1: anything not covered below: validation errors (400), unauthorized (401), a local
    /// file that cannot be read.
    Other,
    /// 2: the command line itself is wrong (clap's own errors also exit 2).
    Usage,
    /// 3: the stack, service or version does not exist (404).
    NotFound,
    /// 4: a conflict or failed precondition (409, 412, 422), or the stack changed under us.
    Conflict,
    /// 5: the server failed or could not be reached (5xx, 429 after retries, connection
    /// errors), or a deploy ended `failed`: trying again later may work.
    Server,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Other => 1,
            Exit::Usage => 2,
            Exit::NotFound => 3,
            Exit::Conflict => 4,
            Exit::Server => 5,
        }
    }

    /// The class an HTTP error status falls in.
    pub fn for_status(status: u16) -> Exit {
        match status {
            404 => Exit::NotFound,
            409 | 412 | 422 => Exit::Conflict,
            429 | 500..=599 => Exit::Server,
            _ => Exit::Other,
        }
    }
}

/// A failure to report to the user.
///
/// Invariant: no field ever holds an env value or a token; callers build messages from key
/// names and the server's own (value-free) envelope only.
#[derive(Debug, Clone)]
pub struct CliError {
    pub exit: Exit,
    /// One human sentence.
    pub message: String,
    /// The server's error code (`version_mismatch`, …) or a client-side one (`connection_failed`).
    pub code: Option<String>,
    pub status: Option<u16>,
    /// What to do next, in CLI terms (a command to run).
    pub hint: Option<String>,
    /// The rest of the server's envelope, when the error came from the server (boxed: most
    /// errors are local and do not need it).
    pub envelope: Option<Box<Envelope>>,
}

/// The parts of an error envelope beyond code and message.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The server's `agent_action`: what to do next, in API terms.
    pub agent_action: Option<String>,
    pub request_id: Option<String>,
    /// Other top-level fields (e.g. `current_version`).
    pub extra: Map<String, Value>,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
            code: None,
            status: None,
            hint: None,
            envelope: None,
        }
    }

    pub fn agent_action(&self) -> Option<&str> {
        self.envelope.as_ref()?.agent_action.as_deref()
    }

    pub fn request_id(&self) -> Option<&str> {
        self.envelope.as_ref()?.request_id.as_deref()
    }

    /// A field of the server's envelope beyond the standard ones.
    pub fn extra(&self, key: &str) -> Option<&Value> {
        self.envelope.as_ref()?.extra.get(key)
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Usage, message).with_code("usage")
    }

    pub fn other(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Other, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> CliError {
        self.code = Some(code.into());
        self
    }

    /// Builds the error for a non-2xx response from its envelope. A body that is not our
    /// envelope (a proxy's HTML page, say) still yields a usable error from the status alone.
    ///
    /// Read as a JSON object field by field rather than as `stackyard_api::ErrorEnvelope`: an
    /// error is reported whatever shape its body has (a partial envelope still gives its
    /// message), and the fields beyond code, message, request id and `agent_action` are kept
    /// as sent, because `--json` errors pass them on ([`CliError::to_json`]).
    pub fn from_response(status: u16, body: &[u8]) -> CliError {
        let parsed: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
        let mut e = CliError::new(Exit::for_status(status), "");
        e.status = Some(status);
        if let Some(mut map) = parsed {
            let take = |map: &mut Map<String, Value>, k: &str| match map.remove(k) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            };
            e.code = take(&mut map, "error");
            e.message = take(&mut map, "message").unwrap_or_default();
            let agent_action = take(&mut map, "agent_action");
            let request_id = take(&mut map, "request_id");
            map.remove("ok");
            e.envelope = Some(Box::new(Envelope {
                agent_action,
                request_id,
                extra: map,
            }));
        }
        if e.message.is_empty() {
            e.message = format!("the server answered HTTP {status}");
        }
        e
    }

    /// The error as one JSON document (for `--json`): the server's envelope shape plus the
    /// exit code and the CLI hint.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("ok".into(), json!(false));
        m.insert(
            "error".into(),
            json!(self.code.clone().unwrap_or_else(|| "error".into())),
        );
        m.insert("message".into(), json!(self.message));
        if let Some(a) = self.agent_action() {
            m.insert("agent_action".into(), json!(a));
        }
        if let Some(h) = &self.hint {
            m.insert("hint".into(), json!(h));
        }
        if let Some(s) = self.status {
            m.insert("status".into(), json!(s));
        }
        if let Some(r) = self.request_id() {
            m.insert("request_id".into(), json!(r));
        }
        if let Some(env) = &self.envelope {
            for (k, v) in &env.extra {
                m.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        m.insert("exit_code".into(), json!(self.exit.code()));
        Value::Object(m)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// `?` on I/O inside the client: the message says what was being done, the error says why.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, CliError>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|e| CliError::other(format!("{}: {e}", what())))
    }
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_exit_classes() {
        assert_eq!(Exit::for_status(404), Exit::NotFound);
        for s in [409, 412, 422] {
            assert_eq!(Exit::for_status(s), Exit::Conflict);
        }
        for s in [429, 500, 502, 503] {
            assert_eq!(Exit::for_status(s), Exit::Server);
        }
        for s in [400, 401, 402, 413] {
            assert_eq!(Exit::for_status(s), Exit::Other);
        }
    }

    #[test]
    fn envelope_fields_are_kept_and_extra_fields_survive() {
        let body = br#"{"ok":false,"error":"version_mismatch","message":"The env version is 3.","request_id":"r1","agent_action":"GET it.","current_version":3}"#;
        let e = CliError::from_response(412, body);
        assert_eq!(e.exit, Exit::Conflict);
        assert_eq!(e.code.as_deref(), Some("version_mismatch"));
        assert_eq!(e.agent_action(), Some("GET it."));
        assert_eq!(e.extra("current_version"), Some(&json!(3)));
        let j = e.to_json();
        assert_eq!(j["exit_code"], 4);
        assert_eq!(j["current_version"], 3);
    }

    #[test]
    fn a_body_that_is_not_an_envelope_still_gives_a_message() {
        let e = CliError::from_response(502, b"<html>bad gateway</html>");
        assert_eq!(e.exit, Exit::Server);
        assert!(e.message.contains("502"));
    }
}
