//! The HTTP client: requests with the token, the error envelope turned into [`CliError`],
//! bounded retries, streamed multipart uploads, and server-sent event streams. Bodies are the
//! wire contract's types (`stackyard-api`): JSON requests are sent from them and answers read
//! into them ([`Api::send_json`], [`Api::get`]), so an answer of another shape is one clear
//! error rather than a field silently missing.
//!
//! Retry rule: only requests that are safe to repeat are retried — `GET`, `DELETE`, and writes
//! that carry an `Idempotency-Key` (the server replays the first answer to a repeat). They are
//! retried on 429 and 503, waiting the server's `Retry-After`, and on connection failures (not
//! TLS refusals: an untrusted certificate stays untrusted), at most [`MAX_RETRIES`] times. A `Retry-After` longer than [`MAX_RETRY_WAIT`] (a daily rate
//! limit, say) is reported instead of slept through.

use crate::config::{Settings, Token};
use crate::error::{CliError, Exit, Result};
use crate::output::Out;
use crate::tls;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

pub const MAX_RETRIES: u32 = 3;
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// Cap on an error body we read: envelopes are small, and a misbehaving proxy must not make us
/// buffer a large page.
const MAX_ERROR_BODY: usize = 256 * 1024;
/// Chunk size of streamed uploads: with the socket buffer, what an upload holds in memory.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// A multipart body that can be rebuilt for each attempt: text fields plus files streamed from
/// disk (never read into memory whole).
#[derive(Debug, Clone, Default)]
pub struct Upload {
    pub fields: Vec<(String, String)>,
    pub files: Vec<UploadFile>,
}

#[derive(Debug, Clone)]
pub struct UploadFile {
    /// The form field name (the service name).
    pub field: String,
    pub file_name: String,
    pub path: PathBuf,
    pub len: u64,
}

impl Upload {
    pub fn total_len(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }

    fn form(&self) -> Result<reqwest::multipart::Form> {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in &self.fields {
            form = form.text(k.clone(), v.clone());
        }
        for f in &self.files {
            let file = std::fs::File::open(&f.path).map_err(|e| {
                CliError::other(format!(
                    "cannot reopen the packed tarball of {}: {e}",
                    f.field
                ))
            })?;
            let part = reqwest::multipart::Part::stream_with_length(file_body(file), f.len)
                .file_name(f.file_name.clone())
                .mime_str("application/gzip")
                .map_err(|e| CliError::other(format!("cannot build the upload: {e}")))?;
            form = form.part(f.field.clone(), part);
        }
        Ok(form)
    }
}

/// A file as a body stream of [`UPLOAD_CHUNK`]-sized pieces.
fn file_body(file: std::fs::File) -> reqwest::Body {
    let file = tokio::fs::File::from_std(file);
    let chunks = futures_util::stream::try_unfold(file, |mut f| async move {
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((buf, f)))
    });
    reqwest::Body::wrap_stream(chunks)
}

#[derive(Debug, Clone)]
pub enum Payload {
    Empty,
    /// A JSON body, rendered once from its request type and sent as is by every attempt.
    Json(String),
    Form(Arc<Upload>),
}

/// One API request, kept whole so it can be sent again.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub payload: Payload,
    pub idempotency_key: Option<String>,
    pub headers: Vec<(&'static str, String)>,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>) -> Request {
        Request {
            method,
            path: path.into(),
            query: Vec::new(),
            payload: Payload::Empty,
            idempotency_key: None,
            headers: Vec::new(),
        }
    }

    pub fn get(path: impl Into<String>) -> Request {
        Request::new(Method::GET, path)
    }

    pub fn query(mut self, k: &str, v: impl Into<String>) -> Request {
        self.query.push((k.to_owned(), v.into()));
        self
    }

    /// A JSON body: one of `stackyard_api`'s request types.
    pub fn json(mut self, body: &impl Serialize) -> Request {
        self.payload = Payload::Json(stackyard_api::to_json_string(body, 0));
        self
    }

    pub fn form(mut self, upload: Arc<Upload>) -> Request {
        self.payload = Payload::Form(upload);
        self
    }

    /// Gives the request a fresh `Idempotency-Key`, which also makes it retryable: one key per
    /// invocation, reused by every retry of it.
    pub fn idempotent(mut self) -> Request {
        self.idempotency_key = Some(new_idempotency_key());
        self
    }

    pub fn header(mut self, k: &'static str, v: impl Into<String>) -> Request {
        self.headers.push((k, v.into()));
        self
    }

    fn retryable(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD | Method::DELETE)
            || self.idempotency_key.is_some()
    }
}

/// A random key for one invocation: 128 bits, so two invocations never share one.
pub fn new_idempotency_key() -> String {
    format!("cli-{}", stackyard_core::ids::random_hex(16))
}

/// The server, as one team's token sees it.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<Token>,
    http: reqwest::Client,
    out: Out,
}

impl Api {
    /// The client for `settings`: an https:// server's certificate must chain to the system's
    /// roots or to one of `--cacert`'s (read here, so a bad file fails before any request).
    pub fn new(settings: &Settings, out: &Out) -> Result<Api> {
        tls::install_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("stackyard-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            // Event streams get a keep-alive comment every 15 s; a minute of silence means the
            // connection is dead, and followers reconnect.
            .read_timeout(Duration::from_secs(60));
        if let Some(path) = &settings.cacert {
            builder = builder.tls_certs_merge(tls::read_cacert(path)?);
        }
        let http = builder
            .build()
            .map_err(|e| CliError::other(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Api {
            base: settings.url.clone(),
            token: settings.token.clone(),
            http,
            out: out.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn build(&self, req: &Request) -> Result<reqwest::RequestBuilder> {
        let mut url = reqwest::Url::parse(&format!("{}{}", self.base, req.path))
            .map_err(|e| CliError::usage(format!("cannot build a URL from {}: {e}", self.base)))?;
        if !req.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&req.query);
        }
        let mut b = self.http.request(req.method.clone(), url);
        let mut headers = HeaderMap::new();
        if let Some(t) = &self.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose())).map_err(|_| {
                CliError::usage("the API token contains characters that cannot be sent in a header")
                    .with_hint("run `stackyard login` again with the token exactly as it was given")
            })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        if let Some(k) = &req.idempotency_key
            && let Ok(v) = HeaderValue::from_str(k)
        {
            headers.insert("idempotency-key", v);
        }
        for (k, v) in &req.headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                headers.insert(*k, v);
            }
        }
        b = b.headers(headers);
        b = match &req.payload {
            Payload::Empty => b,
            Payload::Json(v) => b.header(CONTENT_TYPE, "application/json").body(v.clone()),
            Payload::Form(u) => b.multipart(u.form()?),
        };
        Ok(b)
    }

    /// Sends `req`, retrying as the module doc says. Returns only 2xx responses; anything else
    /// is the server's error as a [`CliError`].
    pub async fn send(&self, req: &Request) -> Result<reqwest::Response> {
        let retryable = req.retryable();
        let mut attempt = 0u32;
        loop {
            let result = self.build(req)?.send().await;
            let res = match result {
                Ok(res) => res,
                Err(e) => {
                    if retryable && attempt < MAX_RETRIES && transport_retryable(&e) {
                        attempt += 1;
                        let wait = Duration::from_millis(250 << attempt);
                        self.out.note(&format!(
                            "cannot reach the server ({}); retrying in {} ms ({attempt}/{MAX_RETRIES})",
                            error_chain(&e),
                            wait.as_millis()
                        ));
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(self.transport_error(&e));
                }
            };
            let status = res.status().as_u16();
            if res.status().is_success() {
                return Ok(res);
            }
            let header_wait = retry_after(res.headers());
            let body = read_capped(res).await;
            let err = CliError::from_response(status, &body);
            // A repeat that arrives while the first attempt (whose answer we lost) still runs:
            // the server will have the answer shortly.
            let in_progress = attempt > 0
                && status == 409
                && err.code.as_deref() == Some("idempotency_in_progress");
            if retryable && attempt < MAX_RETRIES && (status == 429 || status == 503 || in_progress)
            {
                let wait = header_wait
                    .or_else(|| err.extra("retry_after_seconds").and_then(Value::as_u64))
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1));
                if wait <= MAX_RETRY_WAIT {
                    attempt += 1;
                    self.out.note(&format!(
                        "the server is busy ({status} {}); retrying in {} s ({attempt}/{MAX_RETRIES})",
                        err.code.as_deref().unwrap_or("unavailable"),
                        wait.as_secs()
                    ));
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(no_token_hint(err));
        }
    }

    /// Sends `req` and reads the 2xx answer as `T`: the route's answer type in
    /// `stackyard_api`, or `serde_json::Value` for a document passed on as sent.
    pub async fn send_json<T: DeserializeOwned>(&self, req: &Request) -> Result<T> {
        let res = self.send(req).await?;
        let body = res.bytes().await.map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&body).map_err(|e| unexpected_answer(&e))
    }

    /// `GET path`, read as `T` (see [`Api::send_json`]).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send_json(&Request::get(path)).await
    }

    pub fn transport_error(&self, e: &reqwest::Error) -> CliError {
        if let Some(why) = tls::untrusted_certificate(e) {
            // Not a fault to retry later (exit 1, not 5): the client's trust settings or the
            // server's certificate must change.
            return CliError::other(format!(
                "the server's TLS certificate is not trusted ({why}); pass --cacert FILE with the CA that signed it"
            ))
            .with_code("untrusted_certificate")
            .with_hint(format!(
                "STACKYARD_CACERT=FILE works too; if that CA is already given, check which certificate {} serves",
                self.base
            ));
        }
        CliError::new(
            Exit::Server,
            format!(
                "cannot reach the server at {}: {}",
                self.base,
                error_chain(e)
            ),
        )
        .with_code("connection_failed")
        .with_hint(
            "check that `stackyard serve` is running there, or point --url / STACKYARD_URL at it",
        )
    }
}

/// A 2xx answer that is not JSON, or JSON of another shape than the route's type. The error
/// names where the body stopped matching, never what it held (it may hold env values).
pub fn unexpected_answer(e: &serde_json::Error) -> CliError {
    let at = if e.line() > 0 {
        format!(" (line {}, column {})", e.line(), e.column())
    } else {
        String::new()
    };
    if e.is_data() {
        CliError::new(
            Exit::Server,
            format!("the server's answer is not what this client expects{at}"),
        )
        .with_code("unexpected_answer")
        .with_hint("the server may run another version of stackyard than this client; use the same version on both")
    } else {
        CliError::new(Exit::Server, "the server's answer is not JSON")
            .with_hint("check that the URL points at a stackyard server")
    }
}

/// The server's 401, with what to do when no token is configured.
fn no_token_hint(e: CliError) -> CliError {
    if e.status == Some(401) && e.hint.is_none() {
        CliError {
            hint: Some("run `stackyard login`, or set STACKYARD_TOKEN".into()),
            ..e
        }
    } else {
        e
    }
}

/// A connection that failed before or while the request was sent: safe to repeat for
/// retryable requests (the server dedupes writes by their key). A TLS refusal (an untrusted
/// certificate, a server that does not speak TLS) would only fail the same way again.
fn transport_retryable(e: &reqwest::Error) -> bool {
    (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
        && tls::tls_error(e).is_none()
        && tls::untrusted_certificate(e).is_none()
}

/// The root cause of an error, which is what a person can act on ("tcp connect error:
/// Connection refused (os error 111)" rather than the layers of request context above it).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

fn retry_after(h: &HeaderMap) -> Option<u64> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn read_capped(mut res: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_BODY {
            break;
        }
    }
    body
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Incremental `text/event-stream` parser (the WHATWG rules we need: `data`, `id`, `event`
/// fields, comments, LF or CRLF line ends, an event per blank line).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
    id: Option<String>,
    event: Option<String>,
}

/// Longest line accepted; a stream that never ends a line is broken, not something to buffer.
const MAX_SSE_LINE: usize = 16 * 1024 * 1024;

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>> {
        let mut events = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line, &mut events);
            } else {
                self.line.push(b);
                if self.line.len() > MAX_SSE_LINE {
                    return Err(CliError::new(
                        Exit::Server,
                        "the server sent an event stream line that never ends",
                    ));
                }
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(SseEvent {
                    id: self.id.clone(),
                    event: self.event.take(),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// An open event stream.
pub struct SseStream {
    res: reqwest::Response,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseStream {
    pub fn new(res: reqwest::Response) -> SseStream {
        SseStream {
            res,
            parser: SseParser::default(),
            ready: Default::default(),
        }
    }

    /// The next event; `Ok(None)` when the server closed the stream, `Err` when the connection
    /// broke.
    pub async fn next(&mut self) -> std::result::Result<Option<SseEvent>, StreamBroke> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(Some(e));
            }
            match self.res.chunk().await {
                Ok(Some(chunk)) => self.ready.extend(
                    self.parser
                        .feed(&chunk)
                        .map_err(|e| StreamBroke(e.message))?,
                ),
                Ok(None) => return Ok(None),
                Err(e) => return Err(StreamBroke(error_chain(&e))),
            }
        }
    }
}

/// A stream that ended without the server closing it properly.
#[derive(Debug, Clone)]
pub struct StreamBroke(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks_and_line_ends() {
        let mut p = SseParser::default();
        let mut got = p.feed(b": keep-alive\n\nid: 1\nevent: stack.st").unwrap();
        assert!(got.is_empty());
        got.extend(
            p.feed(b"atus\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\n")
                .unwrap(),
        );
        assert_eq!(
            got,
            vec![
                SseEvent {
                    id: Some("1".into()),
                    event: Some("stack.status".into()),
                    data: "{\"a\":1}".into()
                },
                // The id carries over to later events, as the spec says (last event id).
                SseEvent {
                    id: Some("1".into()),
                    event: None,
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn sse_line_without_space_and_empty_data() {
        let mut p = SseParser::default();
        let got = p.feed(b"data:[end]\n\ndata\n\n").unwrap();
        assert_eq!(got[0].data, "[end]");
        assert_eq!(got[1].data, "");
    }

    #[test]
    fn only_safe_requests_are_retryable() {
        assert!(Request::get("/x").retryable());
        assert!(Request::new(Method::DELETE, "/x").retryable());
        assert!(!Request::new(Method::POST, "/x").retryable());
        assert!(!Request::new(Method::PATCH, "/x").retryable());
        assert!(Request::new(Method::PATCH, "/x").idempotent().retryable());
    }

    #[test]
    fn idempotency_keys_differ_per_invocation() {
        assert_ne!(new_idempotency_key(), new_idempotency_key());
        assert!(new_idempotency_key().len() <= 255);
    }
}
