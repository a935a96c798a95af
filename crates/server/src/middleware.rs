//! The envelope middleware: request ids, the request span, metrics, early size checks, and the
//! rendering of every error response — ours (`ApiError` extensions) and the framework's (bare
//! 4xx/5xx) — as the JSON envelope.

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::any::Any;
use std::time::Instant;
use tracing::Instrument;

/// Request bodies are capped at 50 MiB in total (spec).
pub const MAX_BODY_BYTES: usize = 50 * 1024 * 1024;

/// Total bytes of request headers we accept. hyper is configured with a larger read buffer
/// (see `http`), so oversized headers reach us and get a proper envelope instead of a bare
/// connection-level 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The request id of the current request, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Keeps the caller's id when it is short and plain, so it can be correlated in their logs.
fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| s.to_owned())
}

pub async fn envelope(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(sane_request_id)
        .unwrap_or_else(|| format!("req_{}", stackyard_core::ids::random_hex(10)));
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!("request", request_id = %request_id, %method, route = %route);
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");

    let res = async {
        if let Some(early) = early_rejection(&req) {
            return early.into_response_with_id(&request_id);
        }
        let mut res = next.run(req).await;
        if let Some(err) = res.extensions_mut().remove::<ApiError>() {
            log_error(&err);
            err.render(&request_id)
        } else if (res.status().is_client_error() || res.status().is_server_error())
            && !is_json(&res)
        {
            let err = ApiError::from_status(res.status());
            log_error(&err);
            err.render(&request_id)
        } else {
            res
        }
    }
    .instrument(span.clone())
    .await;

    let mut res = res;
    // An error may leave part of the request body unread; the connection cannot be reused
    // safely then, so say so instead of letting the client's next request hit a closed socket.
    if has_body && (res.status().is_client_error() || res.status().is_server_error()) {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = res.status().as_u16().to_string();
    metrics::counter!("stackyard_http_requests_total", "method" => method.to_string(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("stackyard_http_request_seconds", "method" => method.to_string(), "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

fn log_error(err: &ApiError) {
    if err.status.is_server_error() {
        tracing::warn!(
            status = err.status.as_u16(),
            code = err.code,
            "request failed"
        );
    } else {
        tracing::debug!(
            status = err.status.as_u16(),
            code = err.code,
            "request rejected"
        );
    }
}

fn is_json(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Rejections decided from the head alone, before any body is read.
fn early_rejection(req: &Request) -> Option<ApiError> {
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "The request headers are {header_bytes} bytes; the limit is {MAX_HEADER_BYTES}."
            ),
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Some(
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is larger than the 50 MiB limit.",
            )
            .with_action("Send smaller tarballs: exclude build outputs and dependencies you can install at start-up."),
        );
    }
    None
}

impl ApiError {
    fn into_response_with_id(self, request_id: &str) -> Response {
        log_error(&self);
        self.render(request_id)
    }
}

/// A panicking handler answers 500 with the envelope (filled in by `envelope`); the panic
/// payload is logged, never sent.
pub fn panic_response(payload: Box<dyn Any + Send + 'static>) -> Response {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %detail, "handler panicked");
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res
}
