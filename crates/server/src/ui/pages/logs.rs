//! A service's log lines (`/ui/stacks/{slug}/logs?service=…`), live: the page names the
//! services to switch between and an element `app.js` fills from the stream proxy
//! (`/ui/stacks/{slug}/logs/{svc}/stream`), which is the API's `GET /stacks/{slug}/logs/{svc}`
//! answered as it comes (server-sent events, unbuffered).

use crate::ui::encode;
use crate::ui::{Layout, Nav, Session, UiError, UiResult, UiState, render};
use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::Method;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use stackyard_api::StackDetail;
use stackyard_core::store::Store;

pub fn routes<S: Store>() -> Router<UiState<S>> {
    Router::new()
        .route("/stacks/{slug}/logs", get(page))
        .route("/stacks/{slug}/logs/{svc}/stream", get(stream))
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    service: Option<String>,
}

/// One entry of the service switcher.
struct Tab {
    name: String,
    /// Its page, the name percent-encoded.
    href: String,
    status: &'static str,
    current: bool,
}

#[derive(Template)]
#[template(path = "ui/logs.html")]
struct LogsPage {
    layout: Layout,
    slug: String,
    name: String,
    tabs: Vec<Tab>,
    /// The service shown; `None` when the stack has none yet.
    service: Option<String>,
    /// The stream proxy's URL for `service`.
    stream: String,
}

/// Which of `services` to show: the one asked for, else the first. `None` when the one asked for
/// is not among them (or there are none).
fn pick<'a>(services: &'a [String], asked: Option<&str>) -> Option<&'a str> {
    match asked.filter(|s| !s.is_empty()) {
        Some(a) => services.iter().map(String::as_str).find(|s| *s == a),
        None => services.first().map(String::as_str),
    }
}

fn page_url(slug: &str, service: &str) -> String {
    format!(
        "/ui/stacks/{}/logs?service={}",
        encode(slug),
        encode(service)
    )
}

fn stream_url(slug: &str, service: &str) -> String {
    format!(
        "/ui/stacks/{}/logs/{}/stream",
        encode(slug),
        encode(service)
    )
}

async fn page(session: Session, Path(slug): Path<String>, Query(q): Query<PageQuery>) -> UiResult {
    let stack: StackDetail = session
        .api
        .get(&format!("/api/v1/stacks/{}", encode(&slug)))
        .await?;
    let names: Vec<String> = stack.services.iter().map(|s| s.name.clone()).collect();
    let service = match pick(&names, q.service.as_deref()) {
        Some(s) => Some(s.to_owned()),
        None if names.is_empty() => None,
        None => return Err(UiError::NotFound),
    };
    let tabs = stack
        .services
        .iter()
        .map(|s| Tab {
            href: page_url(&stack.stack_id, &s.name),
            status: s.status.as_str(),
            current: service.as_deref() == Some(s.name.as_str()),
            name: s.name.clone(),
        })
        .collect();
    let stream = service
        .as_deref()
        .map(|s| stream_url(&stack.stack_id, s))
        .unwrap_or_default();
    Ok(render(&LogsPage {
        layout: Layout::new(&session, Nav::Stacks),
        slug: stack.stack_id,
        name: stack.name,
        tabs,
        service,
        stream,
    }))
}

#[derive(Debug, Default, Deserialize)]
struct StreamQuery {
    follow: Option<String>,
}

/// The API path a stream request is forwarded to, every part percent-encoded.
fn api_stream_path(slug: &str, svc: &str, follow: Option<&str>) -> String {
    let mut path = format!("/stacks/{}/logs/{}", encode(slug), encode(svc));
    if let Some(f) = follow {
        path.push_str(&format!("?follow={}", encode(f)));
    }
    path
}

/// `GET /ui/stacks/{slug}/logs/{svc}/stream`: the API's log stream as this user, answered as
/// is (status, headers, the body streamed as it comes; a refusal is the API's envelope).
async fn stream(
    session: Session,
    Path((slug, svc)): Path<(String, String)>,
    Query(q): Query<StreamQuery>,
) -> UiResult<Response> {
    let path = api_stream_path(&slug, &svc, q.follow.as_deref());
    Ok(session
        .api
        .raw(Method::GET, &path, &[], Body::empty())
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_first_service_is_shown_unless_another_is_asked_for() {
        let s = names(&["web", "api"]);
        assert_eq!(pick(&s, None), Some("web"));
        assert_eq!(pick(&s, Some("")), Some("web"));
        assert_eq!(pick(&s, Some("api")), Some("api"));
        assert_eq!(pick(&s, Some("db")), None);
        assert_eq!(pick(&[], None), None);
    }

    #[test]
    fn urls_percent_encode_what_the_user_sent() {
        assert_eq!(
            page_url("stk-a1", "web"),
            "/ui/stacks/stk-a1/logs?service=web"
        );
        assert_eq!(
            stream_url("stk-a1", "a/b c"),
            "/ui/stacks/stk-a1/logs/a%2Fb%20c/stream"
        );
        assert_eq!(
            api_stream_path("stk-a1", "web", None),
            "/stacks/stk-a1/logs/web"
        );
        assert_eq!(
            api_stream_path("../x", "web", Some("false&x=1")),
            "/stacks/..%2Fx/logs/web?follow=false%26x%3D1"
        );
    }
}
