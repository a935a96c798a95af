//! `status`, `ls`, `rm` and `restart`: reading, deleting and restarting stacks.

use crate::api::{Api, Request};
use crate::error::{CliError, Exit, Result};
use crate::follow::{self, Goal, Outcome};
use crate::output::{Cell, Out, Style, clean, status_style, table};
use reqwest::Method;
use serde::Serialize;
use serde_json::json;
use stackyard_api::{
    DeletedStack, ReleaseItem, ReleaseList, RestartRequest, Restarted, StackDetail, StackList,
    StackSummary,
};
use stackyard_core::model::ReleaseStatus;
use std::time::Duration;

/// Largest page the server serves.
const PAGE: u32 = 200;

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Show at most this many stacks [default: all]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

/// The release that serves now: the newest `live` one.
fn live_release(releases: &ReleaseList) -> Option<&ReleaseItem> {
    releases
        .items
        .iter()
        .find(|r| r.release.status == ReleaseStatus::Live)
}

/// `status --json`: the server's stack detail with what the client worked out beside it.
#[derive(Serialize)]
struct StatusDoc<'a> {
    #[serde(flatten)]
    detail: &'a StackDetail,
    live_release: Option<&'a ReleaseItem>,
    env_live: bool,
}

/// `stackyard status SLUG`: the stack, its services, its current and live release, and whether
/// the latest env version is the one the live release runs with.
pub async fn status(api: &Api, out: &Out, slug: &str) -> Result<()> {
    let detail: StackDetail = api.get(&format!("/stacks/{slug}")).await?;
    let releases: ReleaseList = api.get(&format!("/stacks/{slug}/releases")).await?;
    let live = live_release(&releases);
    let env_live = live.is_some_and(|r| r.release.env_version == detail.env_version);
    if out.json {
        out.json_doc(&StatusDoc {
            detail: &detail,
            live_release: live,
            env_live,
        });
        return Ok(());
    }
    let status = detail.status.as_str();
    out.println(&format!(
        "{}  {}  {}",
        out.paint(Style::Bold, slug),
        clean(&detail.name),
        out.paint(status_style(status), status)
    ));
    if let Some(e) = &detail.error {
        out.println(&format!(
            "error        {}",
            out.paint(Style::Red, &clean(e))
        ));
    }
    let mut lines = vec![format!(
        "environment  {} (tier {})",
        clean(&detail.env),
        clean(&detail.tier)
    )];
    let current = detail.release.as_ref();
    if let Some(c) = current {
        let st = c.status.as_str();
        lines.push(format!(
            "release      v{} {}",
            c.version,
            out.paint(status_style(st), st)
        ));
    }
    match live {
        Some(r) if Some(r.release.version) != current.map(|c| c.version) => {
            lines.push(format!(
                "live         v{} (still serving)",
                r.release.version
            ));
        }
        None => lines.push("live         none yet".into()),
        _ => {}
    }
    let state = if env_live {
        out.paint(Style::Green, "live")
    } else {
        let serving = live.map_or_else(
            || "no release is live".to_owned(),
            |r| format!("the live release runs version {}", r.release.env_version),
        );
        format!(
            "{} ({serving}; `stackyard redeploy {slug}` applies it)",
            out.paint(Style::Yellow, "not live yet")
        )
    };
    lines.push(format!(
        "env vars     version {}, {state}",
        detail.env_version
    ));
    if let Some(t) = &detail.expires_at {
        lines.push(format!("expires      {}", clean(t)));
    }
    for l in lines {
        out.println(&l);
    }
    out.println("");
    out.println(&crate::deploy::services_table(out, &detail));
    Ok(())
}

/// `stackyard ls`: every page of `GET /api/v1/stacks`, newest first.
pub async fn ls(api: &Api, out: &Out, args: LsArgs) -> Result<()> {
    let mut items: Vec<StackSummary> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut total = 0;
    loop {
        let want = args
            .limit
            .map_or(PAGE, |l| l.saturating_sub(items.len() as u32).min(PAGE));
        if want == 0 {
            break;
        }
        let mut req = Request::get("/api/v1/stacks").query("limit", want.to_string());
        if let Some(c) = &cursor {
            req = req.query("cursor", c.clone());
        }
        let page: StackList = api.send_json(&req).await?;
        total = page.total;
        let empty = page.items.is_empty();
        items.extend(page.items);
        match page.next_cursor {
            Some(c) if !c.is_empty() && !empty => cursor = Some(c),
            _ => break,
        }
    }
    if out.json {
        out.json_doc(&json!({ "ok": true, "items": items, "total": total }));
        return Ok(());
    }
    if items.is_empty() {
        out.note("No stacks yet. `stackyard deploy DIR` creates one.");
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = items
        .iter()
        .map(|s| {
            vec![
                Cell::plain(s.stack_id.as_str()),
                Cell::plain(s.name.as_str()),
                Cell::status(s.status.as_str()),
                Cell::plain(s.env.as_str()),
                Cell::plain(s.created_at.as_str()),
            ]
        })
        .collect();
    out.println(&table(
        out,
        &["ID", "NAME", "STATUS", "ENV", "CREATED"],
        &rows,
    ));
    Ok(())
}

/// `stackyard rm SLUG [--wait]`.
pub async fn rm(api: &Api, out: &Out, slug: &str, wait: Option<Duration>) -> Result<()> {
    let path = format!("/stacks/{slug}");
    let Some(timeout) = wait else {
        // The server waits a while for the teardown itself: 200 when it finished (the stack is
        // gone, no `status`), 202 while it still runs.
        let body: DeletedStack = api.send_json(&Request::new(Method::DELETE, path)).await?;
        if out.json {
            out.json_doc(&body);
        } else if !out.quiet {
            let said = match body.status {
                None => format!("{slug} deleted"),
                Some(_) => format!(
                    "{slug} is being deleted (`stackyard rm --wait` waits for the teardown)"
                ),
            };
            out.println(&said);
        }
        return Ok(());
    };
    // Following the teardown's events to the end: the server need not wait too.
    let _: DeletedStack = api
        .send_json(&Request::new(Method::DELETE, path).query("wait", "false"))
        .await?;
    follow::follow(api, out, slug, Goal::Deleted, &[], timeout).await?;
    if out.json {
        out.json_line(&json!({ "kind": "rm.result", "data": { "ok": true, "stack_id": slug, "status": "deleted" } }));
    } else if !out.quiet {
        out.println(&format!("{slug} deleted"));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// The stack id (`stk-…`).
    pub slug: String,
    /// Restart only this service [default: every service of the live release]
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Wait until the restarted services are healthy again (or one failed), showing progress.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (e.g. `90s`, `5m`).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `stackyard restart SLUG [--service NAME] [--wait]`.
pub async fn restart(api: &Api, out: &Out, args: RestartArgs) -> Result<()> {
    let slug = crate::args::parse_slug(&args.slug)?;
    let service = args
        .service
        .as_deref()
        .map(|s| {
            stackyard_core::ServiceName::parse(s.trim())
                .map(|n| n.to_string())
                .map_err(|e| CliError::usage(format!("{:?} is not a service name: {e}", clean(s))))
        })
        .transpose()?;
    // Our own request id: the restart's `restart.requested` event carries it, and `--wait`
    // follows the stream from there.
    let request_id = format!("cli-{}", stackyard_core::ids::random_hex(16));
    let mut req = Request::new(Method::POST, format!("/stacks/{slug}/restart"))
        .header("x-request-id", request_id.clone());
    if service.is_some() {
        req = req.json(&RestartRequest { service });
    }
    let body: Restarted = api.send_json(&req).await?;
    let names = body.services.join(", ");
    let release = body.release.version;
    if !args.wait {
        if out.json {
            out.json_doc(&body);
        } else if !out.quiet {
            out.println(&format!(
                "Restarting {names} of {slug} (release v{release}); `stackyard restart --wait` follows it"
            ));
        }
        return Ok(());
    }
    let goal = Goal::Restart(request_id);
    let followed = follow::follow(api, out, &slug, goal, &body.services, args.timeout).await?;
    match followed.outcome {
        Outcome::Failed { error } => {
            let failed = followed
                .services
                .iter()
                .find(|(_, s)| s.status == "failed")
                .map(|(n, _)| n.clone());
            let hint = match failed {
                Some(svc) => {
                    format!("`stackyard logs {slug} {svc}` shows what the service printed")
                }
                None => format!("`stackyard status {slug}` shows the stack's state"),
            };
            let message = error.unwrap_or_else(|| "the restart failed".to_owned());
            let e = CliError::new(Exit::Server, format!("restart of {slug} failed: {message}"))
                .with_code("restart_failed")
                .with_hint(hint);
            if out.json {
                out.json_line(&json!({ "kind": "restart.result", "data": { "ok": false, "stack_id": slug, "services": body.services, "error": e.message } }));
            }
            Err(e)
        }
        Outcome::Live | Outcome::Deleted => {
            if out.json {
                out.json_line(&json!({ "kind": "restart.result", "data": { "ok": true, "stack_id": slug, "release": release, "services": body.services } }));
            } else if !out.quiet {
                out.println(&format!(
                    "{slug}: {names} restarted and healthy (release v{release})"
                ));
            }
            Ok(())
        }
    }
}
