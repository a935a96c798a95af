//! `stackyard logs SLUG SERVICE [-f]`: a service's log lines from
//! `GET /stacks/:slug/logs/:svc`. Without `-f` it asks for `?follow=false` and stops at the
//! server's `[end]` marker; with `-f` it prints new lines until the server closes the stream
//! or the user interrupts. Lines are printed as the service wrote them (colours included);
//! with `--json`, one `{"line": …}` per line.

use crate::api::{Api, Request, SseStream};
use crate::error::{CliError, Exit, Result};
use crate::output::Out;
use serde_json::json;

/// What `?follow=false` streams end with (compat).
const END: &str = "[end]";

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The stack id (`stk-…`).
    pub slug: String,
    /// The service name.
    pub service: String,
    /// Keep following new lines.
    #[arg(short, long)]
    pub follow: bool,
}

pub async fn logs(api: &Api, out: &Out, args: LogsArgs) -> Result<()> {
    let slug = crate::args::parse_slug(&args.slug)?;
    let service =
        stackyard_core::ServiceName::parse(&args.service).map_err(|e| CliError::usage(e.0))?;
    let req = Request::get(format!("/stacks/{slug}/logs/{service}"))
        .query("follow", if args.follow { "true" } else { "false" });
    let res = api.send(&req).await?;
    let mut stream = SseStream::new(res);
    loop {
        match stream.next().await {
            Ok(Some(ev)) => {
                if !args.follow && ev.data == END {
                    return Ok(());
                }
                if out.json {
                    out.json_line(&json!({ "line": ev.data }));
                } else {
                    out.println(&ev.data);
                }
            }
            Ok(None) if args.follow => return Ok(()),
            Ok(None) => {
                return Err(CliError::new(
                    Exit::Server,
                    "the log stream ended before its end marker; some lines may be missing",
                ));
            }
            Err(broke) => {
                return Err(CliError::new(
                    Exit::Server,
                    format!("the log stream broke: {}", broke.0),
                ));
            }
        }
    }
}
