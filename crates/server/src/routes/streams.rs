//! Server-sent event streams: a service's logs (`/stacks/:slug/logs/:svc`, compat) and a stack's
//! status events (`/stacks/:slug/events`, resumable with `Last-Event-ID`).

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::routes::{load_stack, parse_slug};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use stackyard_api::{SseEvent, StackEventData};
use stackyard_core::ServiceName;
use stackyard_core::model::{StackEvent, StackId};
use stackyard_core::runtime::Logs;
use stackyard_core::store::Store;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

/// Lines of backlog a logs stream starts with (compat).
const LOG_BACKLOG: usize = 200;
/// How often an events stream looks for new rows. Events are rows (written by whichever server
/// ran the job), so polling is what lets any server follow any stack.
const EVENT_POLL: Duration = Duration::from_millis(200);

fn sse<St>(events: St) -> Response
where
    St: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

#[derive(Debug, Default, Deserialize)]
pub struct LogsQuery {
    follow: Option<bool>,
}

#[utoipa::path(get, path = "/stacks/{slug}/logs/{svc}", tag = "stacks",
    description = "A service's stdout/stderr as server-sent events, one `data:` per line: the last 200 lines, then new ones; `?follow=false` ends with `data: [end]`. Auth optional.",
    security((), ("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"),
        ("svc" = String, Path, description = "The service's name"),
        ("follow" = Option<bool>, Query, description = "`false`: send the backlog, then `data: [end]`; default `true`")),
    responses((status = 200, description = "Server-sent events, one `data:` per log line", content_type = "text/event-stream", body = SseEvent,
            headers(("Cache-Control" = String, description = "`no-cache`"), ("X-Accel-Buffering" = String, description = "`no`"))),
        (status = 404, description = "`not_found`: no stack with that id for this caller, or no service by that name"),
        (status = 503, description = "`fetch_failed`: the store is unavailable, or the runtime cannot reach the service's logs")))]
pub async fn logs<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    Path((slug, svc)): Path<(String, String)>,
    QueryParams(q): QueryParams<LogsQuery>,
) -> ApiResult<Response> {
    let detail = load_stack(&state, caller.access(), &parse_slug(&slug)?).await?;
    let no_service = || {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "This stack has no service by that name.",
        )
        .with_action("Use one of the service names listed by GET /stacks/<id>.")
    };
    let svc = ServiceName::parse(&svc).map_err(|_| no_service())?;
    if !detail.services.iter().any(|s| s.name == svc) {
        return Err(no_service());
    }
    let follow = q.follow.unwrap_or(true);
    let Logs {
        backlog,
        follow: live,
    } = state
        .runtime
        .logs(&detail.stack.slug, &svc, LOG_BACKLOG, follow)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "the runtime could not fetch a service's logs");
            ApiError::unavailable(
                "fetch_failed",
                "The runtime cannot reach this service's logs right now.",
                1,
            )
        })?
        // No logs yet (still building, or a runtime that keeps none): an empty backlog.
        .unwrap_or_default();
    let line = |text: String| Ok(Event::default().data(text.replace('\r', "")));
    let backlog = stream::iter(backlog.into_iter().map(move |l| line(l.text)));
    if !follow {
        let end = stream::once(async { Ok(Event::default().data("[end]")) });
        return Ok(sse(backlog.chain(end)));
    }
    let live = match live {
        Some(s) => s.map(move |l| line(l.text)).boxed(),
        // Nothing to follow yet (e.g. the noop runtime): keep the stream open.
        None => stream::pending().boxed(),
    };
    Ok(sse(backlog.chain(live)))
}

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    after: Option<i64>,
}

#[utoipa::path(get, path = "/stacks/{slug}/events", tag = "stacks",
    description = "Status changes as server-sent events (`stack.status`, `service.status`, `release.created`, `release.status`, `env.version`, `build.step`, `restart.requested`, `stack.deleted`), each a JSON `data:` (`StackEventData`) with an `event:` name and an `id:`; `Last-Event-ID` (or `?after=`) resumes. The stream ends after `stack.deleted`. Auth optional.",
    security((), ("bearer" = [])),
    params(("slug" = String, Path, description = "The stack's id (`stk-…`)"),
        ("after" = Option<i64>, Query, description = "Resume after this event id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (wins over `?after=`)")),
    responses((status = 200, description = "Server-sent events; each `data:` is a `StackEventData` as JSON", content_type = "text/event-stream", body = SseEvent,
            headers(("Cache-Control" = String, description = "`no-cache`"), ("X-Accel-Buffering" = String, description = "`no`"))),
        (status = 404, description = "`not_found`: no stack with that id for this caller"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn events<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    Path(slug): Path<String>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<EventsQuery>,
) -> ApiResult<Response> {
    let detail = load_stack(&state, caller.access(), &parse_slug(&slug)?).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(q.after)
        .unwrap_or(0);
    Ok(sse(follow_events(state, detail.stack.id, after)))
}

struct Cursor<S: Store> {
    state: AppState<S>,
    stack: StackId,
    after: i64,
    buffered: VecDeque<StackEvent>,
    done: bool,
}

fn follow_events<S: Store>(
    state: AppState<S>,
    stack: StackId,
    after: i64,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let cursor = Cursor {
        state,
        stack,
        after,
        buffered: VecDeque::new(),
        done: false,
    };
    stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.buffered.pop_front() {
                c.after = e.id;
                c.done = e.kind == "stack.deleted";
                let data = stackyard_api::to_json_string(&StackEventData::from(&e), 128);
                let event = Event::default()
                    .id(e.id.to_string())
                    .event(e.kind.clone())
                    .data(data);
                return Some((Ok(event), c));
            }
            if c.done {
                return None;
            }
            match c.state.store.list_events(c.stack, c.after, 100).await {
                Ok(events) if !events.is_empty() => c.buffered.extend(events),
                Ok(_) => tokio::time::sleep(EVENT_POLL).await,
                Err(e) => {
                    // A passing database error: keep the stream and try again.
                    tracing::warn!(error = %e, "could not read stack events");
                    tokio::time::sleep(EVENT_POLL * 5).await;
                }
            }
        }
    })
}
