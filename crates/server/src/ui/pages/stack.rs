//! One stack's page (`/ui/stacks/{slug}`): its status, services (with the last log lines of a
//! failed one), releases, family and domains, kept current by the stack's events
//! (`/ui/stacks/{slug}/events`, a proxy of the API's stream), and the forms that act on it:
//! redeploy, restart, delete, promote (and decide a promote's approval), add/verify/remove a
//! domain. Each form is one API call; success answers 303 back to the page with a notice, an
//! API refusal (4xx) re-renders the page with the API's message.

use crate::ui::api::read;
use crate::ui::{ApiFailure, Layout, Nav, Session, UiResult, UiState, render_with, see_other};
use crate::ui::{encode, when};
use askama::Template;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use stackyard_api::{
    AddDomainRequest, DeletedStack, DomainAnswer, DomainList, DomainRemoved, Family,
    PromoteRequest, PromotionDecided, PromotionList, Redeployed, ReleaseList, RestartRequest,
    Restarted, StackDetail,
};
use stackyard_core::store::Store;

/// Log lines shown under a failed or crashed service.
const LOG_LINES: usize = 20;
/// The most of a `follow=false` logs answer read (200 lines of backlog fit many times over).
const MAX_LOG_BYTES: usize = 1 << 20;

pub fn routes<S: Store>() -> Router<UiState<S>> {
    Router::new()
        .route("/stacks/{slug}", get(page))
        .route("/stacks/{slug}/events", get(events))
        .route("/stacks/{slug}/redeploy", post(redeploy))
        .route("/stacks/{slug}/restart", post(restart))
        .route("/stacks/{slug}/delete", post(delete))
        .route("/stacks/{slug}/promote", post(promote))
        .route("/stacks/{slug}/promotions/{id}/approve", post(approve))
        .route("/stacks/{slug}/promotions/{id}/reject", post(reject))
        .route("/stacks/{slug}/domains", post(add_domain))
        .route("/stacks/{slug}/domains/{id}/verify", post(verify_domain))
        .route("/stacks/{slug}/domains/{id}/remove", post(remove_domain))
}

struct ServiceRow {
    name: String,
    status: &'static str,
    url: Option<String>,
    restarts: i64,
    last_exit: String,
    error: String,
    /// Failed or crashed: its last log lines (`Err`: why they could not be read).
    logs: Option<Result<Vec<String>, String>>,
}

struct ReleaseRow {
    name: String,
    status: &'static str,
    env_version: i64,
    created: String,
    live: bool,
}

struct MemberRow {
    slug: String,
    name: String,
    env: String,
    status: String,
    url: Option<String>,
    is_root: bool,
    last_deploy: String,
    /// The stack this page is about.
    current: bool,
}

/// A promote of this family that waits for a decision (`pending`) or to be run (`approved`).
struct ApprovalRow {
    id: String,
    source: String,
    to: String,
    status: String,
    created: String,
    expires: String,
}

struct DomainRow {
    id: String,
    hostname: String,
    status: String,
    txt_name: String,
    txt_value: String,
    cname_name: String,
    cname_value: String,
    last_check: String,
    check_error: String,
    cert_expires: String,
    cert_error: String,
}

/// A section read besides the stack: its rows, or why they could not be read (the rest of the
/// page still shows).
type Section<T> = Result<Vec<T>, String>;

#[derive(Template)]
#[template(path = "ui/stack.html")]
struct StackPage {
    layout: Layout,
    slug: String,
    name: String,
    env: String,
    status: &'static str,
    tier: String,
    created: String,
    updated: String,
    expires: String,
    stack_error: String,
    env_version: i64,
    services: Vec<ServiceRow>,
    releases: Section<ReleaseRow>,
    family: Section<MemberRow>,
    /// Envs the family already has, other than this stack's (suggested promote targets).
    family_envs: Vec<String>,
    approvals: Section<ApprovalRow>,
    domains: Section<DomainRow>,
    notice: Option<&'static str>,
    error: Option<ApiFailure>,
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    notice: Option<String>,
}

async fn page(session: Session, Path(slug): Path<String>, Query(q): Query<PageQuery>) -> UiResult {
    let notice = q.notice.as_deref().and_then(crate::ui::notice);
    show(&session, &slug, StatusCode::OK, notice, None).await
}

/// Renders the page with `status`: 200, or the API's status with its refusal in `error`.
async fn show(
    session: &Session,
    slug: &str,
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<ApiFailure>,
) -> UiResult {
    let s = encode(slug);
    let detail: StackDetail = session.api.get(&format!("/api/v1/stacks/{s}")).await?;
    let (releases_path, family_path, domains_path) = (
        format!("/stacks/{s}/releases"),
        format!("/api/v1/stacks/{s}/family"),
        format!("/api/v1/stacks/{s}/domains"),
    );
    let (releases, family, promotions, domains, services) = tokio::join!(
        session.api.get::<ReleaseList>(&releases_path),
        session.api.get::<Family>(&family_path),
        session.api.get::<PromotionList>("/api/v1/promotions"),
        session.api.get::<DomainList>(&domains_path),
        service_rows(session, &detail),
    );
    let releases = releases.map_err(message).map(|list| {
        list.items
            .iter()
            .map(|r| ReleaseRow {
                name: r.release.name.clone(),
                status: r.release.status.as_str(),
                env_version: r.release.env_version,
                created: when(&r.release.created_at),
                live: r.release.status.as_str() == "live",
            })
            .collect()
    });
    let family = family.map_err(message);
    let family_envs = match &family {
        Ok(f) => f
            .family
            .iter()
            .filter(|m| m.env != detail.env)
            .map(|m| m.env.clone())
            .collect(),
        Err(_) => Vec::new(),
    };
    let approvals = match (&family, promotions) {
        (Ok(f), Ok(list)) => Ok(list
            .items
            .into_iter()
            .filter(|a| {
                !a.expired
                    && matches!(a.status.as_str(), "pending" | "approved")
                    && f.family.iter().any(|m| m.slug == a.source)
            })
            .map(|a| ApprovalRow {
                created: when(&a.created_at),
                expires: when(&a.expires_at),
                id: a.id,
                source: a.source,
                to: a.to,
                status: a.status,
            })
            .collect()),
        (Err(e), _) => Err(e.clone()),
        (_, Err(f)) => Err(message(f)),
    };
    let family = family.map(|f| {
        f.family
            .into_iter()
            .map(|m| MemberRow {
                current: m.slug == detail.stack_id,
                last_deploy: m.last_deploy_at.as_deref().map(when).unwrap_or_default(),
                slug: m.slug,
                name: m.name,
                env: m.env,
                status: m.status,
                url: m.url,
                is_root: m.is_root,
            })
            .collect()
    });
    let domains = domains.map_err(message).map(|list| {
        list.items
            .into_iter()
            .map(|d| DomainRow {
                txt_name: d.verification.txt.record_name,
                txt_value: d.verification.txt.record_value,
                cname_name: d.verification.cname.record_name,
                cname_value: d.verification.cname.record_value,
                last_check: d.last_check_at.as_deref().map(when).unwrap_or_default(),
                check_error: d.last_check_err.unwrap_or_default(),
                cert_expires: d
                    .certificate_expires_at
                    .as_deref()
                    .map(when)
                    .unwrap_or_default(),
                cert_error: d.certificate_error.unwrap_or_default(),
                id: d.id,
                hostname: d.hostname,
                status: d.status,
            })
            .collect()
    });
    Ok(render_with(
        status,
        &StackPage {
            layout: Layout::new(session, Nav::Stacks),
            slug: detail.stack_id.clone(),
            name: detail.name.clone(),
            env: detail.env.clone(),
            status: detail.status.as_str(),
            tier: detail.tier.clone(),
            created: when(&detail.created_at),
            updated: when(&detail.updated_at),
            expires: detail.expires_at.as_deref().map(when).unwrap_or_default(),
            stack_error: detail.error.clone().unwrap_or_default(),
            env_version: detail.env_version,
            services,
            releases,
            family,
            family_envs,
            approvals,
            domains,
            notice,
            error,
        },
    ))
}

/// What a section shows when its read failed.
fn message(f: ApiFailure) -> String {
    f.envelope.message
}

/// The services, with the last log lines of each failed or crashed one (read concurrently).
async fn service_rows(session: &Session, detail: &StackDetail) -> Vec<ServiceRow> {
    let logs = futures_util::future::join_all(detail.services.iter().map(|svc| async move {
        match svc.status.as_str() {
            "failed" | "crashed" => {
                Some(last_log_lines(session, &detail.stack_id, &svc.name).await)
            }
            _ => None,
        }
    }))
    .await;
    detail
        .services
        .iter()
        .zip(logs)
        .map(|(svc, logs)| ServiceRow {
            name: svc.name.clone(),
            status: svc.status.as_str(),
            url: svc.url.clone(),
            restarts: svc.restarts,
            last_exit: svc.last_exit.clone().unwrap_or_default(),
            error: svc.error.clone().unwrap_or_default(),
            logs,
        })
        .collect()
}

/// A service's backlog (`?follow=false`), its last `LOG_LINES` lines.
async fn last_log_lines(
    session: &Session,
    slug: &str,
    service: &str,
) -> Result<Vec<String>, String> {
    let unreadable = || "Its log lines could not be read.".to_owned();
    let path = format!(
        "/stacks/{}/logs/{}?follow=false",
        encode(slug),
        encode(service)
    );
    let res = session
        .api
        .raw(Method::GET, &path, &[], Body::empty())
        .await
        .map_err(|_| unreadable())?;
    if !res.status().is_success() {
        return Err(read::<serde_json::Value>(res)
            .await
            .err()
            .map(message)
            .unwrap_or_else(unreadable));
    }
    let bytes = axum::body::to_bytes(res.into_body(), MAX_LOG_BYTES)
        .await
        .map_err(|_| unreadable())?;
    Ok(last_lines(
        &sse_backlog(&String::from_utf8_lossy(&bytes)),
        LOG_LINES,
    ))
}

/// The `data` of each event of a finished SSE body, in order, without the `[end]` that closes
/// a `follow=false` backlog. An event's `data:` lines are joined with `\n` (SSE's rule); comments
/// (keep-alives) and other fields are skipped.
fn sse_backlog(body: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            events.extend(data.take());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    // A body cut short still shows what it had.
    events.extend(data);
    if events.last().is_some_and(|l| l == "[end]") {
        events.pop();
    }
    events
}

/// The last `n` of `lines`.
fn last_lines(lines: &[String], n: usize) -> Vec<String> {
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// `GET /ui/stacks/{slug}/events`: the API's event stream, as it is (it streams), resumed
/// where the browser's `EventSource` left off.
async fn events(session: Session, Path(slug): Path<String>, headers: HeaderMap) -> UiResult {
    let resume: Vec<_> = headers
        .get("last-event-id")
        .map(|last| (HeaderName::from_static("last-event-id"), last.clone()))
        .into_iter()
        .collect();
    let path = format!("/stacks/{}/events", encode(&slug));
    Ok(session
        .api
        .raw(Method::GET, &path, &resume, Body::empty())
        .await?)
}

/// After a form: back to the page with `notice`, or the page again with an API refusal (4xx);
/// anything else the API failed with is the error page.
async fn after<T>(
    session: &Session,
    slug: &str,
    result: Result<T, ApiFailure>,
    notice: &str,
) -> UiResult {
    match result {
        Ok(_) => Ok(see_other(&format!(
            "/ui/stacks/{}?notice={notice}",
            encode(slug)
        ))),
        Err(f) => refused(session, slug, f).await,
    }
}

/// The page with the API's refusal shown (4xx), or the error page.
async fn refused(session: &Session, slug: &str, f: ApiFailure) -> UiResult {
    if f.is_refusal() {
        show(session, slug, f.status, None, Some(f)).await
    } else {
        Err(f.into())
    }
}

/// `POST /ui/stacks/{slug}/redeploy`: a new release of the current code and env.
async fn redeploy(session: Session, Path(slug): Path<String>) -> UiResult {
    let result = session
        .api
        .call::<Redeployed, ()>(
            Method::POST,
            &format!("/stacks/{}/redeploy", encode(&slug)),
            None,
            &[],
        )
        .await;
    after(&session, &slug, result, "redeploying").await
}

#[derive(Debug, Default, Deserialize)]
struct RestartForm {
    #[serde(default)]
    service: String,
}

/// `POST /ui/stacks/{slug}/restart`: every service, or the one `service` names.
async fn restart(
    session: Session,
    Path(slug): Path<String>,
    Form(form): Form<RestartForm>,
) -> UiResult {
    let service = form.service.trim();
    let body = (!service.is_empty()).then(|| RestartRequest {
        service: Some(service.to_owned()),
    });
    let result = session
        .api
        .call::<Restarted, RestartRequest>(
            Method::POST,
            &format!("/stacks/{}/restart", encode(&slug)),
            body.as_ref(),
            &[],
        )
        .await;
    after(&session, &slug, result, "restarting").await
}

#[derive(Debug, Default, Deserialize)]
struct DeleteForm {
    #[serde(default)]
    confirm: String,
}

/// `POST /ui/stacks/{slug}/delete`: only with the stack's id typed (as the page's script
/// checks too), then `DELETE /stacks/{slug}`: gone (200) or being torn down (202).
async fn delete(
    session: Session,
    Path(slug): Path<String>,
    Form(form): Form<DeleteForm>,
) -> UiResult {
    if form.confirm.trim() != slug {
        let f = ApiFailure::refused(
            StatusCode::BAD_REQUEST,
            "confirmation_mismatch",
            "Type the stack's id exactly to confirm that it is to be deleted.",
        );
        return show(&session, &slug, f.status, None, Some(f)).await;
    }
    let path = format!("/stacks/{}", encode(&slug));
    let res = session
        .api
        .raw(Method::DELETE, &path, &[], Body::empty())
        .await?;
    let status = res.status();
    match read::<DeletedStack>(res).await {
        Ok(_) if status == StatusCode::ACCEPTED => Ok(see_other("/ui/stacks?notice=deleting")),
        Ok(_) => Ok(see_other("/ui/stacks?notice=deleted")),
        Err(f) => refused(&session, &slug, f).await,
    }
}

#[derive(Debug, Default, Deserialize)]
struct PromoteForm {
    #[serde(default)]
    to: String,
    /// A new target's name; blank: the source's.
    #[serde(default)]
    name: String,
    /// A checkbox: present (`on`) when ticked.
    copy_vault: Option<String>,
    /// Runs an approved promote.
    #[serde(default)]
    approval_id: String,
}

/// `POST /ui/stacks/{slug}/promote`: promoted, or (for an env that needs one) an approval
/// requested.
async fn promote(
    session: Session,
    Path(slug): Path<String>,
    Form(form): Form<PromoteForm>,
) -> UiResult {
    let to = form.to.trim();
    if to.is_empty() {
        let f = ApiFailure::refused(
            StatusCode::BAD_REQUEST,
            "invalid_env",
            "Name the env to promote to.",
        );
        return show(&session, &slug, f.status, None, Some(f)).await;
    }
    let name = form.name.trim();
    let approval = form.approval_id.trim();
    let body = PromoteRequest {
        from: None,
        to: to.to_owned(),
        name: (!name.is_empty()).then(|| name.to_owned()),
        copy_vault: form.copy_vault.is_some(),
        approval_id: (!approval.is_empty()).then(|| approval.to_owned()),
    };
    let result = session
        .api
        .call::<serde_json::Value, PromoteRequest>(
            Method::POST,
            &format!("/api/v1/stacks/{}/promote", encode(&slug)),
            Some(&body),
            &[],
        )
        .await;
    let notice = match &result {
        Ok(answer) if is_pending(answer) => "promotion_requested",
        _ => "promoted",
    };
    after(&session, &slug, result, notice).await
}

/// Whether a promote's 202 is `PromotionPending` rather than `Promoted`.
fn is_pending(answer: &serde_json::Value) -> bool {
    answer.get("status").and_then(|s| s.as_str()) == Some("pending_approval")
}

/// `POST /ui/stacks/{slug}/promotions/{id}/approve`.
async fn approve(session: Session, Path((slug, id)): Path<(String, String)>) -> UiResult {
    decide(session, slug, id, "approve", "promotion_approved").await
}

/// `POST /ui/stacks/{slug}/promotions/{id}/reject`.
async fn reject(session: Session, Path((slug, id)): Path<(String, String)>) -> UiResult {
    decide(session, slug, id, "reject", "promotion_rejected").await
}

async fn decide(session: Session, slug: String, id: String, verb: &str, notice: &str) -> UiResult {
    let result = session
        .api
        .call::<PromotionDecided, ()>(
            Method::POST,
            &format!("/api/v1/promotions/{}/{verb}", encode(&id)),
            None,
            &[],
        )
        .await;
    after(&session, &slug, result, notice).await
}

#[derive(Debug, Default, Deserialize)]
struct DomainForm {
    #[serde(default)]
    hostname: String,
}

/// `POST /ui/stacks/{slug}/domains`.
async fn add_domain(
    session: Session,
    Path(slug): Path<String>,
    Form(form): Form<DomainForm>,
) -> UiResult {
    let body = AddDomainRequest {
        hostname: form.hostname.trim().to_owned(),
    };
    let result = session
        .api
        .call::<DomainAnswer, AddDomainRequest>(
            Method::POST,
            &format!("/api/v1/stacks/{}/domains", encode(&slug)),
            Some(&body),
            &[],
        )
        .await;
    after(&session, &slug, result, "domain_added").await
}

/// `POST /ui/stacks/{slug}/domains/{id}/verify`: the TXT record looked up now; what it found
/// is in the domain's row.
async fn verify_domain(session: Session, Path((slug, id)): Path<(String, String)>) -> UiResult {
    let result = session
        .api
        .call::<DomainAnswer, ()>(
            Method::POST,
            &format!(
                "/api/v1/stacks/{}/domains/{}/verify",
                encode(&slug),
                encode(&id)
            ),
            None,
            &[],
        )
        .await;
    after(&session, &slug, result, "domain_verified").await
}

/// `POST /ui/stacks/{slug}/domains/{id}/remove`.
async fn remove_domain(session: Session, Path((slug, id)): Path<(String, String)>) -> UiResult {
    let result = session
        .api
        .call::<DomainRemoved, ()>(
            Method::DELETE,
            &format!("/api/v1/stacks/{}/domains/{}", encode(&slug), encode(&id)),
            None,
            &[],
        )
        .await;
    after(&session, &slug, result, "domain_removed").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_backlog_is_its_lines_without_the_end_marker() {
        let body = "data: starting\n\ndata: listening on :8080\n\n: keep-alive\n\ndata: [end]\n\n";
        assert_eq!(sse_backlog(body), ["starting", "listening on :8080"]);
    }

    #[test]
    fn only_the_final_end_is_the_marker() {
        let body = "data: [end]\n\ndata:no space\n\ndata: [end]\n\n";
        assert_eq!(sse_backlog(body), ["[end]", "no space"]);
    }

    #[test]
    fn data_lines_of_one_event_are_joined_and_other_fields_skipped() {
        let body =
            "id: 3\r\nevent: x\r\ndata: a\r\ndata:  b\r\n\r\ndata\r\n\r\ndata: [end]\r\n\r\n";
        assert_eq!(sse_backlog(body), ["a\n b", ""]);
    }

    #[test]
    fn a_body_cut_short_keeps_its_last_event() {
        assert_eq!(sse_backlog("data: one\n\ndata: two"), ["one", "two"]);
        assert!(sse_backlog("").is_empty());
        assert!(sse_backlog("data: [end]\n\n").is_empty());
    }

    #[test]
    fn the_last_lines_are_the_newest() {
        let lines: Vec<String> = (1..=25).map(|i| i.to_string()).collect();
        let last = last_lines(&lines, 20);
        assert_eq!(last.len(), 20);
        assert_eq!(last.first().map(String::as_str), Some("6"));
        assert_eq!(last.last().map(String::as_str), Some("25"));
        assert_eq!(last_lines(&lines[..3], 20), ["1", "2", "3"]);
    }

    #[test]
    fn a_promote_waiting_for_approval_is_told_apart() {
        let pending = serde_json::json!({"ok": true, "status": "pending_approval"});
        let created = serde_json::json!({"ok": true, "action": "created", "status": "building"});
        assert!(is_pending(&pending));
        assert!(!is_pending(&created));
    }
}
