//! The one error type at the HTTP edge. Handlers return `ApiError`; the envelope middleware
//! (`middleware::envelope`) renders it with the request id, so every 4xx/5xx — ours or the
//! framework's — leaves as `{"ok": false, "error", "message", "request_id", …}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use stackyard_api::ErrorEnvelope;
use stackyard_core::store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub agent_action: Option<String>,
    pub retry_after: Option<u64>,
    /// On 412 `version_mismatch`: the env version the stack is at.
    pub current_version: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            agent_action: None,
            retry_after: None,
            current_version: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "No stack with that id exists for this caller.")
            .with_action("Check the stack id; a stack is only visible to the team (or, for anonymous stacks, the anonymous caller) that created it.")
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            .with_action("Send a valid API token as `Authorization: Bearer <token>`; create one with `stackyard admin create-team` or POST /api/v1/tokens.")
    }

    /// A retryable 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(retry_after);
        e.agent_action = Some(format!(
            "Retry the same request after {retry_after} second(s); nothing was changed."
        ));
        e
    }

    /// Maps a storage failure to the route's 503 code. The store's message is logged, never sent.
    /// Stored data that does not decode (a sealed value that does not open: the wrong key, or a
    /// row moved or edited by hand) is no outage: retrying cannot help, so it is a 500.
    pub fn store(code: &'static str, err: &StoreError) -> Self {
        if let StoreError::Corrupt(_) = err {
            tracing::error!(error = %err, code, "stored data does not decode");
            return Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Stored data this request needs could not be read.",
            )
            .with_action("Do not retry; the operator finds the cause in the server's log.");
        }
        tracing::warn!(error = %err, code, "storage failure");
        let message = match err {
            StoreError::LockTimeout => {
                "The stack is busy: waiting for its lock took longer than the limit."
            }
            _ => "The database is unavailable right now.",
        };
        Self::unavailable(code, message, 1)
    }

    /// 403 `vault_requires_auth`: the vault (and `vault://` references) need a team token.
    pub fn vault_requires_auth() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "vault_requires_auth",
            "The vault belongs to a team: it needs a team token.",
        )
        .with_action("Send a team API token as `Authorization: Bearer <token>`.")
    }

    /// A release whose `vault://` references cannot be resolved (nothing was written).
    pub fn vault_ref(err: &stackyard_core::vault::VaultRefError) -> Self {
        use stackyard_core::vault::VaultRefError;
        match err {
            VaultRefError::RequiresAuth => Self::vault_requires_auth(),
            VaultRefError::Missing { key, env } => Self::bad_request(
                "vault_ref_failed",
                format!("`vault://{key}` has no value in the vault env `{env}`."),
            )
            .with_action(format!(
                "Set it with PUT /api/v1/vault/{env}/{key} (or `stackyard vault set {env} {key}`), or change the env value."
            )),
        }
    }

    pub fn with_action(mut self, action: impl Into<String>) -> Self {
        self.agent_action = Some(action.into());
        self
    }

    pub fn with_current_version(mut self, version: i64) -> Self {
        self.current_version = Some(version);
        self
    }

    /// The error a bare framework response with this status stands for.
    pub fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status.as_u16() {
            400 => ("invalid_body", "The request could not be read."),
            401 => ("unauthorized", "A valid API token is required."),
            404 => ("not_found", "No route matches this method and path."),
            405 => (
                "method_not_allowed",
                "This route does not accept that HTTP method.",
            ),
            408 => ("request_timeout", "The request took too long to arrive."),
            411 => ("length_required", "The request needs a Content-Length."),
            413 => (
                "payload_too_large",
                "The request body is larger than the 50 MiB limit.",
            ),
            415 => (
                "unsupported_media_type",
                "The request has the wrong Content-Type for this route.",
            ),
            422 => (
                "invalid_body",
                "The request body does not have the expected shape.",
            ),
            431 => ("headers_too_large", "The request headers are too large."),
            s if s >= 500 => ("internal_error", "The server failed to handle the request."),
            _ => ("invalid_request", "The request was rejected."),
        };
        Self::new(status, code, message)
    }

    /// The final response, with the envelope body and headers.
    pub fn render(&self, request_id: &str) -> Response {
        let body = ErrorEnvelope {
            agent_action: self.agent_action.clone(),
            retry_after_seconds: self.retry_after,
            current_version: self.current_version,
            ..ErrorEnvelope::new(self.code, &self.message, request_id)
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(r) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(r));
        }
        res
    }
}

/// A handler's error travels to the envelope middleware as a response extension; the body is
/// filled in there, where the request id is known.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        res.extensions_mut().insert(self);
        res
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
