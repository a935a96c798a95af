//! `stackyard promote SLUG --to ENV`: the stack's live release onto the family's stack for ENV
//! (created on the first promote), nothing uploaded; `--wait` follows the new release.

use crate::api::{Api, Request, unexpected_answer};
use crate::deploy::follow_release;
use crate::error::Result;
use crate::output::Out;
use crate::output::{Cell, table};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use stackyard_api::{PromoteRequest, Promoted, PromotionDecided, PromotionList};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// The source stack id (`stk-…`): its live release is promoted.
    pub slug: String,
    /// The target env (e.g. `staging`, `production`).
    #[arg(long)]
    pub to: String,
    /// The env the source is in; the server refuses the promote if it is not.
    #[arg(long)]
    pub from: Option<String>,
    /// Name of the target stack when the promote creates it [default: the source's].
    #[arg(long)]
    pub name: Option<String>,
    /// Do not copy the source env's vault keys that the target env lacks.
    #[arg(long)]
    pub no_copy_vault: bool,
    /// Run the promote an approval allowed (`stackyard approvals approve ID` by another token).
    #[arg(long, value_name = "ID")]
    pub approval: Option<String>,
    /// Follow the target's new release until it is live (exit 0) or failed (exit 5).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop following after this long (e.g. `90s`, `15m`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub async fn promote(api: &Api, out: &Out, args: PromoteArgs) -> Result<()> {
    let slug = crate::args::parse_slug(&args.slug)?;
    let body = PromoteRequest {
        from: args.from,
        to: args.to,
        name: args.name,
        copy_vault: !args.no_copy_vault,
        approval_id: args.approval,
    };
    let req = Request::new(Method::POST, format!("/api/v1/stacks/{slug}/promote"))
        .idempotent()
        .json(&body);
    let doc: Value = api.send_json(&req).await?;
    if doc["status"] == "pending_approval" {
        return pending(out, &slug, &doc);
    }
    let answer = Promoted::deserialize(&doc).map_err(|e| unexpected_answer(&e))?;
    let target = answer.stack_id.as_str();
    if out.json {
        out.json_line(&json!({ "kind": "promote.accepted", "data": doc }));
    } else if out.quiet {
        out.println(target);
    } else {
        let what = match answer.action.as_str() {
            "created" => format!("created {target} ({})", answer.env),
            _ => format!("updated {target} ({})", answer.env),
        };
        out.note(&format!(
            "Promoted release v{} of {slug}: {what}, release v{}; {} vault key(s) copied",
            answer.source_release, answer.release, answer.vault_keys_copied
        ));
    }
    if !args.wait {
        if !out.json && !out.quiet {
            out.println(&format!("{target} release v{}", answer.release));
        }
        return Ok(());
    }
    follow_release(api, out, target, answer.release, &[], args.timeout).await
}

/// The promote waits for an approval: its id on stdout, what to do next on stderr.
fn pending(out: &Out, slug: &str, doc: &Value) -> Result<()> {
    let id = doc["approval_id"].as_str().unwrap_or_default();
    if out.json {
        out.json_line(&json!({ "kind": "promote.pending_approval", "data": doc }));
        return Ok(());
    }
    let to = doc["to"].as_str().unwrap_or_default();
    out.note(&format!(
        "Promoting to {to} needs an approval by another token of the team: \
         `stackyard approvals approve {id}`, then `stackyard promote {slug} --to {to} --approval {id}` \
         (before {}).",
        doc["expires_at"].as_str().unwrap_or("it expires")
    ));
    out.println(id);
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum ApprovalsAction {
    /// The team's promote approvals, newest first.
    Ls {
        /// Only those in this state: pending, approved, rejected, executed.
        #[arg(long)]
        status: Option<String>,
    },
    /// Approve a pending promote (with a token other than the one that asked).
    Approve {
        /// The approval id (`apr_…`).
        id: String,
    },
    /// Reject a pending promote.
    Reject {
        /// The approval id (`apr_…`).
        id: String,
    },
}

pub async fn approvals(api: &Api, out: &Out, action: ApprovalsAction) -> Result<()> {
    let (id, verb) = match action {
        ApprovalsAction::Ls { status } => {
            let mut req = Request::get("/api/v1/promotions");
            if let Some(s) = status {
                req = req.query("status", s);
            }
            let doc: Value = api.send_json(&req).await?;
            let list = PromotionList::deserialize(&doc).map_err(|e| unexpected_answer(&e))?;
            if out.json {
                out.json_line(&doc);
                return Ok(());
            }
            let rows: Vec<Vec<Cell>> = list
                .items
                .iter()
                .map(|a| {
                    let status = if a.expired {
                        "expired"
                    } else {
                        a.status.as_str()
                    };
                    vec![
                        Cell::plain(a.id.as_str()),
                        Cell::status(status),
                        Cell::plain(a.source.as_str()),
                        Cell::plain(format!("{} -> {}", a.from, a.to)),
                        Cell::plain(a.expires_at.as_str()),
                    ]
                })
                .collect();
            out.println(&table(
                out,
                &["ID", "STATUS", "SOURCE", "ENVS", "EXPIRES"],
                &rows,
            ));
            return Ok(());
        }
        ApprovalsAction::Approve { id } => (id, "approve"),
        ApprovalsAction::Reject { id } => (id, "reject"),
    };
    let req = Request::new(Method::POST, format!("/api/v1/promotions/{id}/{verb}"));
    let doc: Value = api.send_json(&req).await?;
    let decided = PromotionDecided::deserialize(&doc).map_err(|e| unexpected_answer(&e))?;
    if out.json {
        out.json_line(&doc);
    } else {
        out.println(&format!(
            "{} {}",
            decided.promotion.id, decided.promotion.status
        ));
    }
    Ok(())
}
