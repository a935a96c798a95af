//! The stacks list (`/ui/stacks`, filtered by status and env, paged) and the new-stack form
//! (`/ui/stacks/new`), which hands its upload to `POST /stacks/new`.

use crate::middleware::MAX_BODY_BYTES;
use crate::ui::api::read;
use crate::ui::{
    Layout, Nav, Session, UiError, UiResult, UiState, encode, render, render_with, see_other, when,
};
use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Multipart, Query};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use futures_util::future::join_all;
use serde::Deserialize;
use stackyard_api::{CreatedStack, StackDetail, StackList};
use stackyard_core::ServiceName;
use stackyard_core::ids::random_hex;
use stackyard_core::model::ServiceStatus;
use stackyard_core::store::Store;

/// Rows per page: each row also reads its stack (services, live release), in-process.
const PAGE: usize = 20;

pub fn routes<S: Store>() -> Router<UiState<S>> {
    Router::new().route("/stacks", get(list)).route(
        "/stacks/new",
        get(new_page)
            .post(create)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
    )
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    status: String,
    #[serde(default)]
    env: String,
    cursor: Option<String>,
    notice: Option<String>,
}

/// One row: the list's item and what its stack's own read adds.
struct Row {
    slug: String,
    name: String,
    env: String,
    status: &'static str,
    healthy: usize,
    services: usize,
    live: String,
    created: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "ui/stacks.html")]
struct StacksPage {
    layout: Layout,
    rows: Vec<Row>,
    total: i64,
    status: String,
    env: String,
    statuses: &'static [&'static str],
    next: Option<String>,
    /// This page's own URL, which its list re-reads to stay current.
    here: String,
    notice: Option<&'static str>,
}

const STATUSES: &[&str] = &[
    "building",
    "deploying",
    "healthy",
    "degraded",
    "failed",
    "deleting",
];

async fn list(session: Session, Query(q): Query<ListQuery>) -> UiResult {
    let mut path = format!("/api/v1/stacks?limit={PAGE}");
    for (name, value) in [("status", &q.status), ("env", &q.env)] {
        if !value.is_empty() {
            path.push_str(&format!("&{name}={}", encode(value)));
        }
    }
    if let Some(c) = q.cursor.as_deref().filter(|c| !c.is_empty()) {
        path.push_str(&format!("&cursor={}", encode(c)));
    }
    let page: StackList = session.api.get(&path).await?;
    let here = format!(
        "/ui/stacks?status={}&env={}&cursor={}",
        encode(&q.status),
        encode(&q.env),
        encode(q.cursor.as_deref().unwrap_or(""))
    );
    let paths: Vec<String> = page
        .items
        .iter()
        .map(|s| format!("/api/v1/stacks/{}", s.stack_id))
        .collect();
    let details = join_all(paths.iter().map(|p| session.api.get::<StackDetail>(p))).await;
    let rows = page
        .items
        .iter()
        .zip(details)
        .map(|(s, d)| {
            // A stack deleted between the two reads still shows, without its services.
            let d = d.ok();
            let services = d.as_ref().map(|d| d.services.as_slice()).unwrap_or(&[]);
            Row {
                slug: s.stack_id.clone(),
                name: s.name.clone(),
                env: s.env.clone(),
                status: s.status.as_str(),
                healthy: services
                    .iter()
                    .filter(|v| v.status == ServiceStatus::Healthy)
                    .count(),
                services: services.len(),
                live: d
                    .as_ref()
                    .and_then(|d| d.release.as_ref())
                    .map(|r| format!("{} ({})", r.name, r.status.as_str()))
                    .unwrap_or_default(),
                created: when(&s.created_at),
                expires: d
                    .and_then(|d| d.expires_at)
                    .map(|e| when(&e))
                    .unwrap_or_default(),
            }
        })
        .collect();
    Ok(render(&StacksPage {
        layout: Layout::new(&session, Nav::Stacks),
        rows,
        total: page.total,
        status: q.status,
        env: q.env,
        statuses: STATUSES,
        next: page.next_cursor,
        here,
        notice: q.notice.as_deref().and_then(crate::ui::notice),
    }))
}

#[derive(Template)]
#[template(path = "ui/new_stack.html")]
struct NewStackPage {
    layout: Layout,
    error: Option<crate::ui::ApiFailure>,
}

async fn new_page(session: Session) -> Response {
    render(&NewStackPage {
        layout: Layout::new(&session, Nav::Stacks),
        error: None,
    })
}

/// `POST /ui/stacks/new`: the form's fields become `POST /stacks/new`'s, each tarball named
/// after its file (`web.tar.gz` → service `web`), then the new stack's page follows it live.
/// The API validates everything; a refusal is shown on the form.
async fn create(session: Session, mut form: Multipart) -> UiResult {
    let boundary = format!("stackyard-{}", random_hex(16));
    let mut body = Vec::new();
    let refuse = |message: &str| {
        let failure = crate::ui::ApiFailure::form(message);
        render_with(
            StatusCode::BAD_REQUEST,
            &NewStackPage {
                layout: Layout::new(&session, Nav::Stacks),
                error: Some(failure),
            },
        )
    };
    while let Ok(Some(field)) = form.next_field().await {
        let Some(name) = field.name().map(str::to_owned) else {
            continue;
        };
        let file_name = field.file_name().map(str::to_owned);
        let Ok(bytes) = field.bytes().await else {
            return Ok(refuse("The upload could not be read; try again."));
        };
        match name.as_str() {
            "name" | "env" | "manifest" => part(&mut body, &boundary, &name, None, &bytes),
            "tarballs" => {
                let file = file_name.unwrap_or_default();
                if file.is_empty() && bytes.is_empty() {
                    continue;
                }
                let stem = file
                    .strip_suffix(".tar.gz")
                    .or_else(|| file.strip_suffix(".tgz"))
                    .unwrap_or("");
                let Ok(service) = ServiceName::parse(stem) else {
                    return Ok(refuse(
                        "Name each tarball after its service, as in web.tar.gz or api.tgz.",
                    ));
                };
                part(&mut body, &boundary, service.as_str(), Some(&file), &bytes);
            }
            _ => {}
        }
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type = HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
        .map_err(|_| UiError::Internal)?;
    let res = session
        .api
        .raw(
            Method::POST,
            "/stacks/new",
            &[(header::CONTENT_TYPE, content_type)],
            Body::from(body),
        )
        .await?;
    match read::<CreatedStack>(res).await {
        Ok(created) => Ok(see_other(&format!("/ui/stacks/{}", created.stack_id))),
        Err(f) if f.is_refusal() => Ok(render_with(
            f.status,
            &NewStackPage {
                layout: Layout::new(&session, Nav::Stacks),
                error: Some(f),
            },
        )),
        Err(f) => Err(f.into()),
    }
}

/// Appends one `multipart/form-data` part. `name` is one of our own field names or a parsed
/// service name, and `file` was matched against one, so neither needs quoting.
fn part(body: &mut Vec<u8>, boundary: &str, name: &str, file: Option<&str>, bytes: &[u8]) {
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    match file {
        Some(f) => body.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                 Content-Type: application/gzip\r\n\r\n"
            )
            .as_bytes(),
        ),
        None => body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
        ),
    }
    body.extend_from_slice(bytes);
    body.extend_from_slice(b"\r\n");
}
