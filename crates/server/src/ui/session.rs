//! Dashboard sessions: a team token exchanged at sign-in for a random session id in a cookie
//! (`HttpOnly; SameSite=Strict; Path=/ui`, `Secure` when the API is served over TLS), valid
//! 12 h. The store keeps only the id's SHA-256 and the token it was opened with, so revoking
//! the token, signing out or the clock ends the session server-side; nothing secret is in the
//! cookie beyond the id itself.

use super::{Api, Layout, UiError, UiResult, UiState, render_with, see_other};
use crate::error::ApiError;
use askama::Template;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;
use stackyard_core::ApiToken;
use stackyard_core::ids::{TokenDigest, random_hex, sha256_hex};
use stackyard_core::model::{Principal, Via};
use stackyard_core::store::Store;
use std::time::Duration;

pub const SESSION_COOKIE: &str = "stackyard_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// A signed-in dashboard user: whose session, and the API as they may use it.
pub struct Session {
    pub principal: Principal,
    pub api: Api,
}

pub fn routes<S: Store>() -> Router<UiState<S>> {
    Router::new()
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", axum::routing::post(sign_out))
}

/// The session id the request's cookie carries, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

fn digest(id: &str) -> TokenDigest {
    TokenDigest(sha256_hex(id.as_bytes()))
}

impl<S: Store> FromRequestParts<UiState<S>> for Session {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, ui: &UiState<S>) -> UiResult<Self> {
        let id = cookie(&parts.headers).ok_or(UiError::SignIn)?;
        let principal = ui
            .app
            .store
            .session_principal(&digest(id), crate::now())
            .await
            .map_err(|e| UiError::Api(store_failure(&e)))?
            .ok_or(UiError::SignIn)?;
        let principal = Principal {
            via: Via::Dashboard,
            ..principal
        };
        Ok(Session {
            api: Api::new(ui.api.clone(), principal.clone()),
            principal,
        })
    }
}

fn store_failure(e: &stackyard_core::store::StoreError) -> super::ApiFailure {
    let err = ApiError::store("fetch_failed", e);
    super::ApiFailure::refused(err.status, err.code, &err.message)
}

#[derive(Template)]
#[template(path = "ui/sign_in.html")]
struct SignInPage {
    layout: Layout,
    error: Option<String>,
}

async fn sign_in_page() -> Response {
    render_with(
        StatusCode::OK,
        &SignInPage {
            layout: Layout::anonymous(),
            error: None,
        },
    )
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
}

/// `POST /ui/sign-in`: the token is checked exactly as a bearer token would be; a session row
/// is written only for a live one.
async fn sign_in<S: Store>(State(ui): State<UiState<S>>, Form(form): Form<SignInForm>) -> UiResult {
    let token = form.token.trim();
    let refused = |message: &str| {
        render_with(
            StatusCode::UNAUTHORIZED,
            &SignInPage {
                layout: Layout::anonymous(),
                error: Some(message.to_owned()),
            },
        )
    };
    if token.is_empty() || token.len() > 512 {
        return Ok(refused("Paste a team API token."));
    }
    let store = &ui.app.store;
    let Some(principal) = store
        .authenticate(&ApiToken::from_presented(token).digest())
        .await
        .map_err(|e| UiError::Api(store_failure(&e)))?
    else {
        return Ok(refused("That token is not valid or has been revoked."));
    };
    let id = random_hex(32);
    let now = crate::now();
    let ttl_ms = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
    store
        .create_session(
            &digest(&id),
            principal.token.id,
            now,
            now.saturating_add_ms(ttl_ms),
        )
        .await
        .map_err(|e| UiError::Api(store_failure(&e)))?;
    let secure = if ui.app.config.tls_cert.is_some() {
        "; Secure"
    } else {
        ""
    };
    let set = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    Ok(with_cookie(see_other("/ui/stacks"), &set))
}

/// `POST /ui/sign-out`: the row goes, so the cookie is worthless even if kept.
async fn sign_out<S: Store>(State(ui): State<UiState<S>>, headers: HeaderMap) -> UiResult {
    if let Some(id) = cookie(&headers) {
        ui.app
            .store
            .delete_session(&digest(id))
            .await
            .map_err(|e| UiError::Api(store_failure(&e)))?;
    }
    let clear = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0");
    Ok(with_cookie(see_other("/ui/sign-in"), &clear))
}

fn with_cookie(mut res: Response, cookie: &str) -> Response {
    match HeaderValue::from_str(cookie) {
        Ok(v) => {
            res.headers_mut().insert(header::SET_COOKIE, v);
            res
        }
        Err(_) => UiError::Internal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; stackyard_session=abc"),
        );
        assert_eq!(cookie(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("stackyard_session="),
        );
        assert_eq!(cookie(&h), None, "an empty value is no session");
        assert_eq!(cookie(&HeaderMap::new()), None);
    }
}
