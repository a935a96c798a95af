//! `stackyard promote SLUG --to ENV`: the stack's live release onto the family's stack for ENV
//! (created on the first promote), nothing uploaded; `--wait` follows the new release.

use crate::api::{Api, Request, unexpected_answer};
use crate::deploy::follow_release;
use crate::error::Result;
use crate::output::Out;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use stackyard_api::{PromoteRequest, Promoted};
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
    };
    let req = Request::new(Method::POST, format!("/api/v1/stacks/{slug}/promote"))
        .idempotent()
        .json(&body);
    let doc: Value = api.send_json(&req).await?;
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
