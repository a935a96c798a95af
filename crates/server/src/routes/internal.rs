//! Routes for Stackyard's own machinery, not for API clients, and so not in the OpenAPI
//! document: `GET /internal/artifacts/:digest`, where a pod's init container downloads its
//! service's tarball (`kubernetes.md`, "Code without an image registry").
//!
//! No bearer token: the URL's signature is the credential (`stackyard_core::artifact_url`).
//! The signature is checked before the artifact is looked up, so the answers tell nothing
//! about which digests exist to a caller without a valid URL.

use crate::artifacts::Artifact;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use stackyard_core::artifact_url::UrlRefused;
use stackyard_core::store::Store;

/// The query of a signed artifact URL.
#[derive(Debug, serde::Deserialize)]
pub struct SignedQuery {
    /// Unix seconds after which the URL is refused.
    pub expires: i64,
    /// Hex HMAC-SHA256 over `"<digest>\n<expires>"`.
    pub sig: String,
}

/// A digest as the URLs carry it: 64 lowercase hex characters.
fn is_url_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "No artifact with that digest is stored.",
    )
}

fn refused(why: UrlRefused) -> ApiError {
    match why {
        UrlRefused::Expired => ApiError::new(
            StatusCode::FORBIDDEN,
            "artifact_url_expired",
            "This artifact URL has expired.",
        )
        .with_action("Fetch it again with the current URL: the runtime re-signs every stack's artifact URLs (the `sy-artifacts` Secret) every few minutes."),
        UrlRefused::BadSignature => ApiError::new(
            StatusCode::FORBIDDEN,
            "artifact_url_invalid",
            "This artifact URL's signature is not valid for this artifact.",
        )
        .with_action("Use the URL exactly as Stackyard issued it."),
    }
}

/// The tarball of `digest`, streamed, for a URL signed by a server sharing this one's master
/// key. 400 for a malformed digest or query, 403 for an expired or wrong signature, 404 for
/// an artifact neither this server's data directory nor the store holds (or a server with no
/// signer), 503 when the store does not answer.
pub async fn artifact<S: Store>(
    State(state): State<AppState<S>>,
    Path(digest): Path<String>,
    query: Result<Query<SignedQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Some(signer) = state.artifact_signer.clone() else {
        return Err(not_found());
    };
    if !is_url_digest(&digest) {
        return Err(ApiError::bad_request(
            "invalid_digest",
            "The artifact digest must be 64 lowercase hexadecimal characters (its SHA-256).",
        ));
    }
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "An artifact URL needs `expires` (unix seconds) and `sig` (hex): {}",
                e.body_text()
            ),
        )
    })?;
    signer
        .verify(&digest, q.expires, &q.sig, crate::now())
        .map_err(refused)?;
    let found = state
        .artifacts
        .open(&state.store, &digest)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "could not read an artifact blob");
            ApiError::unavailable(
                "fetch_failed",
                "The artifact could not be read from the database right now.",
                1,
            )
        })?;
    let (len, body) = match found.ok_or_else(not_found)? {
        Artifact::File { file, len } => (len, Body::from_stream(file_chunks(file))),
        Artifact::Bytes(bytes) => (bytes.len() as u64, Body::from(bytes)),
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/gzip"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
            // The URL is a credential and the tarball a tenant's code: no shared cache keeps it.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        body,
    )
        .into_response())
}

/// The file's bytes in chunks, read as the client takes them.
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 64 * 1024;
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = bytes::BytesMut::with_capacity(CHUNK);
        match file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.freeze()), Some(file))),
            // Ends the stream after the error: the client sees a body shorter than announced.
            Err(e) => {
                tracing::warn!(error = %e, "could not read an artifact file while sending it");
                Some((Err(e), None))
            }
        }
    })
}
