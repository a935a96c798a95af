//! `status`, `ls` and `rm`: reading and deleting stacks.

use crate::api::{Api, Request};
use crate::error::Result;
use crate::follow::{self, Goal};
use crate::output::{Cell, Out, Style, clean, status_style, table};
use reqwest::Method;
use serde_json::{Value, json};
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
fn live_release(releases: &Value) -> Option<&Value> {
    releases["items"]
        .as_array()?
        .iter()
        .find(|r| r["status"] == "live")
}

/// `stackyard status SLUG`: the stack, its services, its current and live release, and whether
/// the latest env version is the one the live release runs with.
pub async fn status(api: &Api, out: &Out, slug: &str) -> Result<()> {
    let detail = api.get_json(&format!("/stacks/{slug}")).await?;
    let releases = api.get_json(&format!("/stacks/{slug}/releases")).await?;
    let env_version = detail["env_version"].as_i64();
    let live = live_release(&releases).cloned();
    let env_live = match (&live, env_version) {
        (Some(r), Some(v)) => r["env_version"].as_i64() == Some(v),
        _ => false,
    };
    if out.json {
        let mut doc = detail.clone();
        doc["live_release"] = live.clone().unwrap_or(Value::Null);
        doc["env_live"] = json!(env_live);
        out.json_doc(&doc);
        return Ok(());
    }
    let text = |v: &Value| v.as_str().map(clean).unwrap_or_else(|| "-".into());
    let status = text(&detail["status"]);
    out.println(&format!(
        "{}  {}  {}",
        out.paint(Style::Bold, slug),
        text(&detail["name"]),
        out.paint(status_style(&status), &status)
    ));
    if let Some(e) = detail["error"].as_str() {
        out.println(&format!(
            "error        {}",
            out.paint(Style::Red, &clean(e))
        ));
    }
    let mut lines = vec![format!(
        "environment  {} (tier {})",
        text(&detail["env"]),
        text(&detail["tier"])
    )];
    let current = &detail["release"];
    if current.is_object() {
        let st = text(&current["status"]);
        lines.push(format!(
            "release      v{} {}",
            current["version"],
            out.paint(status_style(&st), &st)
        ));
    }
    match &live {
        Some(r) if r["version"] != current["version"] => {
            lines.push(format!("live         v{} (still serving)", r["version"]));
        }
        None => lines.push("live         none yet".into()),
        _ => {}
    }
    if let Some(v) = env_version {
        let state = if env_live {
            out.paint(Style::Green, "live")
        } else {
            let serving = live
                .as_ref()
                .and_then(|r| r["env_version"].as_i64())
                .map_or_else(
                    || "no release is live".to_owned(),
                    |lv| format!("the live release runs version {lv}"),
                );
            format!(
                "{} ({serving}; `stackyard redeploy {slug}` applies it)",
                out.paint(Style::Yellow, "not live yet")
            )
        };
        lines.push(format!("env vars     version {v}, {state}"));
    }
    if let Some(t) = detail["expires_at"].as_str() {
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
    let mut items: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut total = Value::Null;
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
        let page = api.json(&req).await?;
        total = page["total"].clone();
        if let Some(a) = page["items"].as_array() {
            items.extend(a.iter().cloned());
        }
        match page["next_cursor"].as_str() {
            Some(c) if !c.is_empty() && page["items"].as_array().is_some_and(|a| !a.is_empty()) => {
                cursor = Some(c.to_owned());
            }
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
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let rows: Vec<Vec<Cell>> = items
        .iter()
        .map(|s| {
            vec![
                Cell::plain(text(&s["stack_id"])),
                Cell::plain(text(&s["name"])),
                Cell::status(&text(&s["status"])),
                Cell::plain(text(&s["env"])),
                Cell::plain(text(&s["created_at"])),
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
    let body = api
        .json(&Request::new(Method::DELETE, format!("/stacks/{slug}")))
        .await?;
    let Some(timeout) = wait else {
        if out.json {
            out.json_doc(&body);
        } else if !out.quiet {
            out.println(&format!(
                "{slug} is being deleted (`stackyard rm --wait` waits for the teardown)"
            ));
        }
        return Ok(());
    };
    follow::follow(api, out, slug, Goal::Deleted, &[], timeout).await?;
    if out.json {
        out.json_line(&json!({ "kind": "rm.result", "data": { "ok": true, "stack_id": slug, "status": "deleted" } }));
    } else if !out.quiet {
        out.println(&format!("{slug} deleted"));
    }
    Ok(())
}
