//! `Idempotency-Key` handling shared by every route that accepts it. The reservation is made
//! before the change; the record is completed by the store inside the change's own transaction,
//! so a committed change always has its record.

use crate::error::ApiError;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use stackyard_core::store::{Housekeeping, IDEMPOTENCY_TTL, IdempotencyBegin, IdempotencyRequest};
use std::time::Duration;

pub const HEADER: &str = "idempotency-key";
pub const REPLAY_HEADER: &str = "idempotent-replay";
/// A reservation older than this whose request never finished (its server died) may be taken over.
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// A reserved key; complete it through the store call that makes the change, or `abandon` it.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub scope: String,
    pub key: String,
}

pub enum Start {
    /// No key was sent.
    None,
    Reserved(Reservation),
    /// The first request's response, to send as is.
    Replay(Response),
}

/// The key the client sent, validated: 1–255 visible ASCII characters.
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()));
    match s {
        Some(s) => Ok(Some(s.to_owned())),
        None => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 visible ASCII characters.",
        )),
    }
}

/// Looks the key up and reserves it. `request_hash` identifies the request's meaning (route and
/// parsed body), so a replay with the same content but a new multipart boundary still matches;
/// it is only computed when a key was sent, so requests without one never hash their body.
pub async fn start<S: Housekeeping>(
    store: &S,
    headers: &HeaderMap,
    scope: String,
    request_hash: impl FnOnce() -> String,
    unavailable_code: &'static str,
) -> Result<Start, ApiError> {
    let Some(key) = key_from(headers)? else {
        return Ok(Start::None);
    };
    let begun = store
        .idempotency_begin(IdempotencyRequest {
            scope: &scope,
            key: &key,
            request_hash: &request_hash(),
            now: crate::now(),
            ttl: IDEMPOTENCY_TTL,
            stale_after: STALE_AFTER,
        })
        .await
        .map_err(|e| ApiError::store(unavailable_code, &e))?;
    match begun {
        IdempotencyBegin::Started => Ok(Start::Reserved(Reservation { scope, key })),
        IdempotencyBegin::Replay { status, body } => Ok(Start::Replay(replay(status, body))),
        IdempotencyBegin::Mismatch => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
        )
        .with_action("Use a new Idempotency-Key for a different request.")),
        IdempotencyBegin::InProgress => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_in_progress",
            "A request with this Idempotency-Key is still being processed.",
        )
        .with_action("Wait a moment and retry with the same Idempotency-Key to get its result.")),
    }
}

/// Frees a reservation whose request failed, so a retry runs again. Failing to free it only
/// delays the retry until the reservation goes stale, so errors are logged, not returned.
pub async fn abandon<S: Housekeeping>(store: &S, reservation: Option<&Reservation>) {
    if let Some(r) = reservation
        && let Err(e) = store.idempotency_abandon(&r.scope, &r.key).await
    {
        tracing::warn!(error = %e, "could not release an idempotency reservation");
    }
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut res = (status, body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(REPLAY_HEADER, HeaderValue::from_static("true"));
    res
}
