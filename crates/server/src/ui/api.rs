//! The dashboard's way to do anything: a request to the API router, in-process, carrying the
//! session's principal (`auth::SessionPrincipal`) where a client would send its token. The
//! answer is read back as the same `stackyard_api` types the CLI reads.

use crate::auth::SessionPrincipal;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stackyard_api::ErrorEnvelope;
use stackyard_core::model::Principal;
use tower::ServiceExt;

/// Larger than any JSON body the API answers with (an env map is at most 64 KiB).
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// The API as one signed-in dashboard user sees it.
#[derive(Clone)]
pub struct Api {
    router: Router,
    principal: Principal,
}

/// A 4xx/5xx from the API: its status and envelope.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub envelope: ErrorEnvelope,
}

impl ApiFailure {
    /// A failure of the dashboard itself, shown like the API's.
    fn internal(message: &str) -> Self {
        Self::refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A refusal of the dashboard's own (a form the API never saw), shown like the API's.
    pub fn refused(status: StatusCode, code: &str, message: &str) -> Self {
        Self {
            status,
            envelope: ErrorEnvelope::new(code, message, ""),
        }
    }

    /// The form's own 400 `invalid_form`.
    pub fn form(message: &str) -> Self {
        Self::refused(StatusCode::BAD_REQUEST, "invalid_form", message)
    }

    /// Whether the page that sent the request shows this in place (a 4xx other than a lost
    /// session) rather than the error page.
    pub fn is_refusal(&self) -> bool {
        self.status.is_client_error() && self.status != StatusCode::UNAUTHORIZED
    }

    pub fn code(&self) -> &str {
        &self.envelope.error
    }
}

impl Api {
    pub fn new(router: Router, principal: Principal) -> Self {
        Self { router, principal }
    }

    /// `method path` with `headers` and `body` as this user: the API's answer as it is (event
    /// streams pass through unread).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Body,
    ) -> Result<Response, ApiFailure> {
        let mut req = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let mut req = req
            .body(body)
            .map_err(|_| ApiFailure::internal("A request could not be built."))?;
        req.extensions_mut()
            .insert(SessionPrincipal(self.principal.clone()));
        match self.router.clone().oneshot(req).await {
            Ok(res) => Ok(res),
            Err(never) => match never {},
        }
    }

    /// `GET path` → `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiFailure> {
        self.call(Method::GET, path, None::<&()>, &[]).await
    }

    /// `method path` with `body` as JSON (when given) and extra `headers` → `T`.
    pub async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        headers: &[(HeaderName, String)],
    ) -> Result<T, ApiFailure> {
        let mut sent = Vec::with_capacity(headers.len() + 1);
        for (name, value) in headers {
            let value = HeaderValue::from_str(value)
                .map_err(|_| ApiFailure::internal("A header could not be sent."))?;
            sent.push((name.clone(), value));
        }
        let body = match body {
            Some(b) => {
                sent.push((
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ));
                Body::from(
                    serde_json::to_vec(b)
                        .map_err(|_| ApiFailure::internal("A request could not be encoded."))?,
                )
            }
            None => Body::empty(),
        };
        read(self.raw(method, path, &sent, body).await?).await
    }
}

/// Reads an API answer: `T` on success, the envelope otherwise.
pub async fn read<T: DeserializeOwned>(res: Response) -> Result<T, ApiFailure> {
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|_| ApiFailure::internal("The API's answer could not be read."))?;
    if status.is_success() {
        serde_json::from_slice(&bytes).map_err(|e| {
            tracing::error!(error = %e, "the dashboard could not read an API answer");
            ApiFailure::internal("The API's answer could not be read.")
        })
    } else {
        let envelope = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            ErrorEnvelope::new("internal", "The API answered with an error.", "")
        });
        Err(ApiFailure { status, envelope })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_session_or_an_outage_is_not_shown_as_a_refusal() {
        let f = |status| ApiFailure::refused(status, "x", "x");
        assert!(f(StatusCode::BAD_REQUEST).is_refusal());
        assert!(f(StatusCode::NOT_FOUND).is_refusal());
        assert!(!f(StatusCode::UNAUTHORIZED).is_refusal());
        assert!(!f(StatusCode::SERVICE_UNAVAILABLE).is_refusal());
    }
}
