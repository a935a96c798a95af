//! `env SLUG`, `env set`, `env unset`, `env history`, `env rollback`.
//!
//! Values given to `env set` never leave this module except in the request body: output,
//! errors and hints name keys only, and the server's (masked) map in a write's answer is
//! reduced to its key names before anything is printed. Arguments that are not `KEY=VALUE`
//! are referred to by position, not echoed, since a misplaced argument may be a value.
//!
//! Every write carries an `Idempotency-Key`, so a write that met a 503 or a dropped connection
//! is retried safely.

use crate::api::{Api, Request};
use crate::deploy::{accepted_line, follow_release, send_accepted};
use crate::dotenv;
#[cfg(test)]
use crate::error::Exit;
use crate::error::{CliError, Result};
use crate::output::{Cell, Out, Style, clean, table};
use reqwest::Method;
use serde_json::{Value, json};
use stackyard_api::{EnvPatchRequest, EnvRead, EnvVersionPage, EnvWriteResponse, RollbackRequest};
use stackyard_core::EnvKey;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EnvArgs {
    /// The stack id (`stk-…`) whose variables to show.
    #[arg(required = true)]
    pub slug: Option<String>,
    #[command(subcommand)]
    pub action: Option<EnvAction>,
}

#[derive(Debug, clap::Subcommand)]
pub enum EnvAction {
    /// Set variables in one change: KEY=VALUE arguments and/or --from-file (values are never printed).
    Set(SetArgs),
    /// Delete variables by name, in one change.
    Unset(UnsetArgs),
    /// The env versions, newest first (key names only).
    History(HistoryArgs),
    /// Make the map equal to version N's again, as a new version.
    Rollback(RollbackArgs),
}

/// Options of every env write.
#[derive(Debug, clap::Args)]
pub struct WriteOpts {
    /// Apply only if the env is still at version N (else exit 4, nothing written).
    #[arg(long, value_name = "N")]
    pub if_version: Option<i64>,
    /// Check the change and show what it would do, without writing it.
    #[arg(long, conflicts_with = "redeploy")]
    pub dry_run: bool,
    /// Redeploy right after the change and follow the new release until it is live.
    #[arg(long)]
    pub redeploy: bool,
    /// With --redeploy: stop following after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The stack id (`stk-…`).
    pub slug: String,
    /// Variables to set. `KEY=` is refused: use `env unset` to delete.
    #[arg(value_name = "KEY=VALUE", required_unless_present = "from_file")]
    pub pairs: Vec<String>,
    /// Read variables from a .env file (`-` for stdin), keeping values out of shell history.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    #[command(flatten)]
    pub opts: WriteOpts,
}

#[derive(Debug, clap::Args)]
pub struct UnsetArgs {
    /// The stack id (`stk-…`).
    pub slug: String,
    /// Names of the variables to delete (absent ones are ignored).
    #[arg(value_name = "KEY", required = true)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub opts: WriteOpts,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// The stack id (`stk-…`).
    pub slug: String,
    /// How many versions to show.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The stack id (`stk-…`).
    pub slug: String,
    /// The version whose map to restore.
    pub version: i64,
    #[command(flatten)]
    pub opts: WriteOpts,
}

pub async fn run(api: &Api, out: &Out, args: EnvArgs) -> Result<()> {
    match args.action {
        None => {
            let slug = crate::args::parse_slug(args.slug.as_deref().unwrap_or_default())?;
            show(api, out, &slug).await
        }
        Some(EnvAction::Set(a)) => {
            let slug = crate::args::parse_slug(&a.slug)?;
            let vars = collect_set(&a.pairs, a.from_file.as_ref())?;
            let env = vars.into_iter().map(|(k, v)| (k, Some(v))).collect();
            write(api, out, &slug, Write::patch(env), &a.opts).await
        }
        Some(EnvAction::Unset(a)) => {
            let slug = crate::args::parse_slug(&a.slug)?;
            let mut env = BTreeMap::new();
            for (i, k) in a.keys.iter().enumerate() {
                let key = checked_key(k, || format!("argument {}", i + 2))?;
                // `null` deletes the key.
                if env.insert(key.clone(), None).is_some() {
                    return Err(CliError::usage(format!("{key} is given twice")));
                }
            }
            write(api, out, &slug, Write::patch(env), &a.opts).await
        }
        Some(EnvAction::History(a)) => {
            let slug = crate::args::parse_slug(&a.slug)?;
            history(api, out, &slug, a.limit).await
        }
        Some(EnvAction::Rollback(a)) => {
            let slug = crate::args::parse_slug(&a.slug)?;
            if a.version < 0 {
                return Err(CliError::usage("VERSION must be 0 or more"));
            }
            let body = RollbackRequest { version: a.version };
            write(api, out, &slug, Write::Rollback(body), &a.opts).await
        }
    }
}

/// A valid key, or a usage error that points at `where_()` instead of echoing the text.
fn checked_key(k: &str, where_: impl FnOnce() -> String) -> Result<String> {
    EnvKey::parse(k).map(EnvKey::into_string).map_err(|_| {
        CliError::usage(format!(
            "{} is not a valid variable name (letters, digits and `_`, not starting with a digit, at most 256 bytes)",
            where_()
        ))
    })
}

fn empty_value(key: &str) -> CliError {
    CliError::usage(format!(
        "{key} has an empty value, which the server would take as a deletion"
    ))
    .with_hint(format!(
        "to delete it, run `stackyard env unset <stack> {key}`"
    ))
}

/// The variables of an `env set`: the file's first, then the arguments. A key given twice is
/// an error (the server refuses duplicates too, and silently keeping one would hide a typo).
pub fn collect_set(
    pairs: &[String],
    from_file: Option<&PathBuf>,
) -> Result<BTreeMap<String, String>> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    let mut add = |key: String, value: String, at: String| -> Result<()> {
        if value.is_empty() {
            return Err(empty_value(&key));
        }
        if value.contains('\0') {
            return Err(CliError::usage(format!(
                "the value of {key} ({at}) contains a NUL byte, which no process can receive"
            )));
        }
        if let Some(first) = origin.get(&key) {
            return Err(CliError::usage(format!(
                "{key} is given twice ({first} and {at})"
            )));
        }
        origin.insert(key.clone(), at);
        vars.insert(key, value);
        Ok(())
    };
    if let Some(path) = from_file {
        let (text, shown) = if path.as_os_str() == "-" {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| CliError::other(format!("cannot read stdin: {e}")))?;
            (t, "stdin".to_owned())
        } else {
            let t = std::fs::read_to_string(path)
                .map_err(|e| CliError::other(format!("cannot read {}: {e}", path.display())))?;
            (t, path.display().to_string())
        };
        let entries = dotenv::parse(&text).map_err(|e| CliError::usage(format!("{shown}: {e}")))?;
        for e in entries {
            let at = format!("{shown} line {}", e.line);
            let key = checked_key(&e.key, || at.clone())?;
            add(key, e.value, at)?;
        }
    }
    for (i, p) in pairs.iter().enumerate() {
        // Position as the user counts it: the stack id is argument 1.
        let at = format!("argument {}", i + 2);
        let Some((k, v)) = p.split_once('=') else {
            return Err(CliError::usage(format!("{at} is not KEY=VALUE"))
                .with_hint("write each variable as KEY=VALUE, or use --from-file"));
        };
        let key = checked_key(k, || at.clone())?;
        add(key, v.to_owned(), at)?;
    }
    if vars.is_empty() {
        return Err(CliError::usage("no variables to set"));
    }
    Ok(vars)
}

enum Write {
    Patch(EnvPatchRequest),
    Rollback(RollbackRequest),
}

impl Write {
    /// Keys to set (`Some`) or delete (`None`).
    fn patch(env: BTreeMap<String, Option<String>>) -> Write {
        Write::Patch(EnvPatchRequest { env })
    }
}

/// Sends one env write and reports it by key names.
async fn write(api: &Api, out: &Out, slug: &str, w: Write, opts: &WriteOpts) -> Result<()> {
    let mut req = match &w {
        Write::Patch(body) => Request::new(Method::PATCH, format!("/stacks/{slug}/env")).json(body),
        Write::Rollback(body) => {
            Request::new(Method::POST, format!("/stacks/{slug}/env/rollback")).json(body)
        }
    }
    .idempotent();
    if let Some(v) = opts.if_version {
        req = req.header("if-match", format!("\"{v}\""));
    }
    if opts.dry_run {
        req = req.query("dry_run", "true");
    }
    let res: EnvWriteResponse = api.send_json(&req).await.map_err(|e| write_hint(e, slug))?;
    let version = res.version;
    let names = |v: &[String]| -> Vec<String> { v.iter().map(|k| clean(k)).collect() };
    let set = names(&res.changed.set);
    let deleted = names(&res.changed.deleted);
    // The answer's map is masked, but values of keys that do not look secret come back in
    // clear: only its key names are shown.
    let keys: Vec<String> = res.env.iter().map(|(k, _)| clean(k)).collect();
    if out.json {
        out.json_doc(&json!({
            "ok": true,
            "stack_id": slug,
            "version": version,
            "changed": { "set": set, "deleted": deleted },
            "keys": keys,
            "dry_run": opts.dry_run,
        }));
    } else if !out.quiet {
        let mut parts = Vec::new();
        if !set.is_empty() {
            parts.push(format!("set {}", set.join(", ")));
        }
        if !deleted.is_empty() {
            parts.push(format!("deleted {}", deleted.join(", ")));
        }
        let line = match (opts.dry_run, parts.is_empty()) {
            (true, true) => {
                format!("Dry run: no change; env stays at version {version}. Nothing was written.")
            }
            (true, false) => format!(
                "Dry run: would have {}; env would become version {version}. Nothing was written.",
                parts.join("; ")
            ),
            (false, true) => format!("No change: env is at version {version}."),
            (false, false) => {
                let mut p = parts.join("; ");
                if let Write::Rollback(to) = &w {
                    p = format!("Rolled back to version {}: {p}", to.version);
                } else if let Some(first) = p.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                format!("{p}. Env is now version {version}.")
            }
        };
        out.println(&line);
        if !opts.dry_run && !opts.redeploy && !parts.is_empty() {
            out.note(&format!(
                "Run `stackyard redeploy {slug}` to apply it (or pass --redeploy next time)."
            ));
        }
    }
    if opts.redeploy && !opts.dry_run {
        let (doc, answer) = send_accepted(
            api,
            &Request::new(Method::POST, format!("/stacks/{slug}/redeploy")).idempotent(),
        )
        .await?;
        let release = answer.release.version;
        if out.json {
            accepted_line(out, &doc);
        } else {
            out.note(&format!("Accepted release v{release} of {slug}"));
        }
        follow_release(api, out, slug, release, &[], opts.timeout).await?;
    }
    Ok(())
}

/// CLI hints for the write errors a user can act on.
fn write_hint(e: CliError, slug: &str) -> CliError {
    match e.code.as_deref() {
        Some("version_mismatch") => {
            let current = e.extra("current_version").and_then(Value::as_i64);
            let hint = match current {
                Some(c) => format!(
                    "the env is at version {c}: check it with `stackyard env {slug}`, then retry with --if-version {c}"
                ),
                None => format!("check the current version with `stackyard env {slug}`"),
            };
            e.with_hint(hint)
        }
        Some("version_not_found") => e.with_hint(format!(
            "`stackyard env history {slug}` lists the versions kept"
        )),
        _ => e,
    }
}

/// `stackyard env SLUG`: the map as the server shows it (secret-looking values masked).
async fn show(api: &Api, out: &Out, slug: &str) -> Result<()> {
    let res: EnvRead = api.get(&format!("/stacks/{slug}/env")).await?;
    if out.json {
        out.json_doc(&res);
        return Ok(());
    }
    if !out.quiet {
        out.note(&format!(
            "{slug}: env version {}, {} variables",
            res.version,
            res.env.len()
        ));
    }
    if res.env.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = res
        .env
        .iter()
        .map(|(k, v)| {
            let style = if v == stackyard_core::env::MASK {
                Style::Dim
            } else {
                Style::Plain
            };
            vec![Cell::plain(k), Cell::styled(v, style)]
        })
        .collect();
    out.println(&table(out, &["KEY", "VALUE"], &rows));
    Ok(())
}

/// `stackyard env history SLUG`.
async fn history(api: &Api, out: &Out, slug: &str, limit: u32) -> Result<()> {
    let res: EnvVersionPage = api
        .send_json(
            &Request::get(format!("/stacks/{slug}/env/versions"))
                .query("limit", limit.clamp(1, 200).to_string()),
        )
        .await?;
    if out.json {
        out.json_doc(&res);
        return Ok(());
    }
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(", ")
        }
    };
    let rows: Vec<Vec<Cell>> = res
        .items
        .iter()
        .map(|v| {
            vec![
                Cell::plain(v.version.to_string()),
                Cell::plain(v.created_at.as_str()),
                Cell::plain(v.actor.as_str()),
                Cell::styled(list(&v.set), Style::Green),
                Cell::styled(list(&v.deleted), Style::Red),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.note(&format!("{slug} has no env versions yet."));
        return Ok(());
    }
    out.println(&table(
        out,
        &["VERSION", "CREATED", "ACTOR", "SET", "DELETED"],
        &rows,
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pairs_split_at_the_first_equals() {
        let v = collect_set(&pairs(&["A=1", "URL=http://x/?a=b"]), None).unwrap();
        assert_eq!(v["A"], "1");
        assert_eq!(v["URL"], "http://x/?a=b");
    }

    #[test]
    fn empty_values_point_to_unset() {
        let e = collect_set(&pairs(&["DB_PASSWORD="]), None).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(e.hint.unwrap().contains("env unset"));
    }

    #[test]
    fn mistakes_never_echo_what_may_be_a_value() {
        for bad in [
            &["hunter2secret"][..],
            &["A=1", "hunter2 secret=x"][..],
            &["A=1", "A=hunter2secret"][..],
        ] {
            let e = collect_set(&pairs(bad), None).unwrap_err();
            let all = format!("{} {:?}", e.message, e.hint);
            assert!(!all.contains("hunter2"), "{all}");
            assert_eq!(e.exit, Exit::Usage);
        }
    }

    #[test]
    fn files_and_arguments_combine_and_duplicates_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join(".env");
        std::fs::write(&f, "# c\nA=\"one two\"\nB='x'\n").unwrap();
        let v = collect_set(&pairs(&["C=3"]), Some(&f)).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v["A"], "one two");
        let e = collect_set(&pairs(&["A=again"]), Some(&f)).unwrap_err();
        assert!(
            e.message.contains("line 2") && e.message.contains("argument 2"),
            "{}",
            e.message
        );
        std::fs::write(&f, "A=\n").unwrap();
        assert!(
            collect_set(&[], Some(&f))
                .unwrap_err()
                .hint
                .unwrap()
                .contains("unset")
        );
    }
}
