//! The web dashboard at `/ui/` (dashboard.md): server-rendered pages (askama templates compiled
//! into the binary), one stylesheet, vendored htmx 2.x and a small script of our own, all
//! embedded. It signs in with a team token into a server-side session (`session`) and then does
//! everything through the API router in-process (`api`): the same handlers, validation and
//! audit as the API, with the session's principal in place of a bearer token, so the dashboard
//! can never do what the API would refuse.
//!
//! Every answer carries a strict CSP (no inline script or style), `X-Frame-Options: DENY` and
//! `no-store`; every mutating request must come from our own origin (`guard`), on top of the
//! `SameSite=Strict` session cookie.

mod api;
mod assets;
mod pages;
mod session;

pub use api::{Api, ApiFailure};
pub use session::{SESSION_COOKIE, SESSION_TTL, Session};

use crate::state::AppState;
use askama::Template;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use stackyard_core::store::Store;

/// What every dashboard handler holds: the server's state (the store, for sessions) and the
/// API router the pages call in-process.
pub struct UiState<S: Store> {
    pub app: AppState<S>,
    pub api: Router,
}

impl<S: Store> Clone for UiState<S> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            api: self.api.clone(),
        }
    }
}

/// The dashboard's routes, to be nested under `/ui`; `api` is the finished API router.
pub fn router<S: Store>(app: AppState<S>, api: Router) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/stacks") }))
        .route("/static/{file}", get(assets::serve))
        .merge(session::routes())
        .merge(pages::routes())
        .fallback(|| async { UiError::NotFound })
        .layer(axum::middleware::from_fn(guard))
        .with_state(UiState { app, api })
}

/// The policy every dashboard answer carries. `connect-src 'self'` is what the event streams
/// need; nothing is ever loaded from elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
                   object-src 'none'";

/// Refuses a mutating request that is not from our own origin (CSRF), then sets the security
/// headers on whatever is answered.
async fn guard(req: Request, next: Next) -> Response {
    let mut res = if is_safe(req.method()) || same_origin(req.headers()) {
        next.run(req).await
    } else {
        UiError::CrossSite.into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // Pages show a team's state (and, once revealed, a secret): never kept by a cache.
    // Static files set their own long lifetime.
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a mutating request comes from a page of ours: `Sec-Fetch-Site: same-origin` when the
/// browser sends it (all current ones do), else an `Origin` naming the host the request was
/// sent to. Neither: refused, since a form we did not serve is all that would lack both.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// What the top of every page needs: who is signed in, which tab is current, where the
/// embedded files are.
#[derive(Debug, Clone)]
pub struct Layout {
    pub team: String,
    pub nav: Nav,
    pub assets: &'static assets::Assets,
}

/// The tab a page belongs to (marked `aria-current`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Stacks,
    Audit,
    Tokens,
    None,
}

impl Layout {
    pub fn new(session: &Session, nav: Nav) -> Self {
        Self {
            team: session.principal.team.name.clone(),
            nav,
            assets: assets::get(),
        }
    }

    /// The layout of a page shown to nobody signed in (sign-in, errors).
    pub fn anonymous() -> Self {
        Self {
            team: String::new(),
            nav: Nav::None,
            assets: assets::get(),
        }
    }

    /// `aria-current="page"` on the current tab's link.
    pub fn current(&self, nav: Nav) -> &'static str {
        if self.nav == nav { "page" } else { "false" }
    }
}

/// Renders a page. A template that does not render is our bug, never the caller's: logged,
/// answered with the generic error page.
pub fn render<T: Template>(t: &T) -> Response {
    render_with(StatusCode::OK, t)
}

pub fn render_with<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "dashboard template failed to render");
            UiError::Internal.into_response()
        }
    }
}

/// The sentence a page shows for `?notice=<code>` after a form's redirect. Fixed texts only:
/// nothing from the query string is echoed.
pub fn notice(code: &str) -> Option<&'static str> {
    Some(match code {
        "deleted" => "The stack was deleted.",
        "deleting" => {
            "The stack is being deleted; it disappears from the list when its teardown ends."
        }
        "redeploying" => "A new release is building.",
        "restarting" => "The services are restarting, one after another.",
        "env_saved" => "Saved as a new env version. Redeploy to apply it.",
        "rolled_back" => "Rolled back as a new env version. Redeploy to apply it.",
        "env_unchanged" => {
            "Nothing changed: the env already was that way, so no version was written."
        }
        "promoted" => "Promoted.",
        "promotion_requested" => "Promotion requested; it waits for an approval.",
        "promotion_approved" => "Promotion approved; run it with \"Promote now\".",
        "promotion_rejected" => "Promotion rejected.",
        "domain_added" => "Domain added. Create the DNS record shown, then verify.",
        "domain_verified" => "Domain checked.",
        "domain_removed" => "Domain removed.",
        "token_revoked" => "Token revoked.",
        _ => return None,
    })
}

/// A 303 to `to` (after a form post, so a reload does not post again).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Why a dashboard request was not answered with its page. Rendered as a page, never as the
/// API's JSON envelope; messages are the API's own (which never echo a secret) or fixed text.
#[derive(Debug)]
pub enum UiError {
    /// No live session: back to the sign-in page.
    SignIn,
    /// A mutating request from another origin.
    CrossSite,
    NotFound,
    /// The API refused or failed; its status, code and message are shown.
    Api(ApiFailure),
    /// Our own failure (logged where it happened).
    Internal,
}

impl From<ApiFailure> for UiError {
    fn from(f: ApiFailure) -> Self {
        match f.status {
            StatusCode::UNAUTHORIZED => UiError::SignIn,
            _ => UiError::Api(f),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage {
    layout: Layout,
    title: String,
    message: String,
    code: String,
    request_id: String,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, title, message, code, request_id) = match self {
            UiError::SignIn => return see_other("/ui/sign-in"),
            UiError::CrossSite => (
                StatusCode::FORBIDDEN,
                "Refused",
                "This form was not sent from a Stackyard page, so it was refused.".to_owned(),
                "cross_site_request".to_owned(),
                String::new(),
            ),
            UiError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page.".to_owned(),
                "not_found".to_owned(),
                String::new(),
            ),
            UiError::Api(f) => (
                f.status,
                "That did not work",
                f.envelope.message,
                f.envelope.error,
                f.envelope.request_id,
            ),
            UiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The dashboard could not show this page; the server's log says why.".to_owned(),
                "internal".to_owned(),
                String::new(),
            ),
        };
        let page = ErrorPage {
            layout: Layout::anonymous(),
            title: title.to_owned(),
            message,
            code,
            request_id,
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, "error").into_response(),
        }
    }
}

pub type UiResult<T = Response> = Result<T, UiError>;

/// Percent-encodes a path segment or query value (everything but unreserved characters):
/// whatever a page puts into an API or dashboard URL.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An API time (`2026-12-06T01:48:24.123Z`) as the pages show it: `2026-12-06 01:48 UTC`.
pub fn when(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => rfc3339.to_owned(),
    }
}
