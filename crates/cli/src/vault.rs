//! `vault set|get|ls|rm|copy`: the team vault.
//!
//! A value is read from stdin or `--file`, never from an argument (shell history, `ps`), and is
//! printed only by `get`, which prints nothing else. Errors and notes name keys, never values.

use crate::api::{Api, Request};
use crate::error::{CliError, Result};
use crate::output::{Cell, Out, Style, clean, table};
use reqwest::Method;
use stackyard_api::{
    VaultCopied, VaultCopyRequest, VaultKeys, VaultPutRequest, VaultValue, VaultWritten,
};
use stackyard_core::vault::MAX_VALUE_BYTES;
use stackyard_core::{EnvironmentName, VaultKey};
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum VaultAction {
    /// Write a value as the key's next version: from stdin (one trailing newline dropped) or --file (exact bytes).
    Set {
        /// The vault env (`development`, `prod`, …).
        env: String,
        key: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Caught so that a value given as an argument is refused without being echoed (as
        /// clap's "unexpected argument" error would).
        #[arg(hide = true, allow_hyphen_values = true)]
        stray: Vec<String>,
    },
    /// Print a value (the newest version, or --version N) and nothing else.
    Get {
        env: String,
        key: String,
        #[arg(long, value_name = "N")]
        version: Option<i64>,
    },
    /// The env's keys.
    Ls { env: String },
    /// Delete every version of a key.
    Rm { env: String, key: String },
    /// Copy the newest values of keys from one env to another.
    Copy {
        from: String,
        to: String,
        /// Only these keys (comma-separated); default every key of FROM.
        #[arg(long, value_delimiter = ',', value_name = "KEY,…")]
        keys: Option<Vec<String>>,
        /// Show the plan, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also copy keys TO already has (as a new version there).
        #[arg(long)]
        overwrite: bool,
    },
}

fn env_arg(s: &str) -> Result<String> {
    EnvironmentName::parse(s)
        .map(EnvironmentName::into_string)
        .map_err(|e| CliError::usage(format!("{:?} is not a vault env: {e}", clean(s))))
}

fn key_arg(s: &str) -> Result<String> {
    VaultKey::parse(s)
        .map(VaultKey::into_string)
        .map_err(|e| CliError::usage(format!("{:?} is not a vault key: {e}", clean(s))))
}

/// The value of a `set`: the file's bytes, or stdin's without one trailing newline (what
/// `echo` and a typed line add).
fn read_value(file: Option<&PathBuf>) -> Result<String> {
    let mut bytes = Vec::new();
    let shown = match file {
        Some(path) => {
            bytes = std::fs::read(path)
                .map_err(|e| CliError::other(format!("cannot read {}: {e}", path.display())))?;
            path.display().to_string()
        }
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("Type the value, then Ctrl-D:");
            }
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| CliError::other(format!("cannot read stdin: {e}")))?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            "stdin".to_owned()
        }
    };
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(CliError::usage(format!(
            "the value from {shown} has {} bytes; the vault takes at most {MAX_VALUE_BYTES}",
            bytes.len()
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| CliError::usage(format!("the value from {shown} is not UTF-8 text")))
}

pub async fn run(api: &Api, out: &Out, action: VaultAction) -> Result<()> {
    match action {
        VaultAction::Set {
            env,
            key,
            file,
            stray,
        } => {
            if !stray.is_empty() {
                return Err(CliError::usage(
                    "a vault value is never taken from an argument (shell history, `ps`)",
                )
                .with_hint("pipe it in (`… | stackyard vault set ENV KEY`) or use --file FILE"));
            }
            let (env, key) = (env_arg(&env)?, key_arg(&key)?);
            let value = read_value(file.as_ref())?;
            let req = Request::new(Method::PUT, format!("/api/v1/vault/{env}/{key}"))
                .json(&VaultPutRequest { value });
            let res: VaultWritten = api.send_json(&req).await?;
            if out.json {
                out.json_doc(&res);
            } else if !out.quiet {
                out.println(&format!("{env}/{key}: version {}", res.version));
            }
            Ok(())
        }
        VaultAction::Get { env, key, version } => {
            let (env, key) = (env_arg(&env)?, key_arg(&key)?);
            let mut req = Request::get(format!("/api/v1/vault/{env}/{key}"));
            if let Some(v) = version {
                req = req.query("version", v.to_string());
            }
            let res: VaultValue = api.send_json(&req).await?;
            if out.json {
                out.json_doc(&res);
                return Ok(());
            }
            // Exactly the value; a newline only for a person reading a terminal.
            let mut o = std::io::stdout().lock();
            let newline = if std::io::stdout().is_terminal() {
                "\n"
            } else {
                ""
            };
            write!(o, "{}{newline}", res.value)
                .and_then(|()| o.flush())
                .map_err(|e| CliError::other(format!("cannot write the value: {e}")))
        }
        VaultAction::Ls { env } => {
            let env = env_arg(&env)?;
            let res: VaultKeys = api.get(&format!("/api/v1/vault/{env}")).await?;
            if out.json {
                out.json_doc(&res);
            } else {
                for k in &res.keys {
                    out.println(&clean(k));
                }
            }
            Ok(())
        }
        VaultAction::Rm { env, key } => {
            let (env, key) = (env_arg(&env)?, key_arg(&key)?);
            api.send(&Request::new(
                Method::DELETE,
                format!("/api/v1/vault/{env}/{key}"),
            ))
            .await?;
            if out.json {
                out.json_doc(&serde_json::json!({ "ok": true, "env": env, "key": key }));
            } else if !out.quiet {
                out.println(&format!("{env}/{key}: deleted (every version)"));
            }
            Ok(())
        }
        VaultAction::Copy {
            from,
            to,
            keys,
            dry_run,
            overwrite,
        } => {
            let body = VaultCopyRequest {
                from: env_arg(&from)?,
                to: env_arg(&to)?,
                keys: keys
                    .map(|k| {
                        k.iter()
                            .map(|k| key_arg(k.trim()))
                            .collect::<Result<Vec<_>>>()
                    })
                    .transpose()?,
                dry_run,
                overwrite,
            };
            let res: VaultCopied = api
                .send_json(&Request::new(Method::POST, "/api/v1/vault/copy").json(&body))
                .await?;
            if out.json {
                out.json_doc(&res);
                return Ok(());
            }
            let rows: Vec<Vec<Cell>> = res
                .plan
                .iter()
                .map(|i| {
                    let style = match i.action.as_str() {
                        "copy" | "overwrite" => Style::Plain,
                        _ => Style::Dim,
                    };
                    vec![Cell::plain(clean(&i.key)), Cell::styled(&i.action, style)]
                })
                .collect();
            if !rows.is_empty() {
                out.println(&table(out, &["KEY", "ACTION"], &rows));
            }
            out.note(&format!(
                "{} {} → {}: {} copied, {} skipped, {} missing{}",
                if res.dry_run { "plan" } else { "copy" },
                res.from,
                res.to,
                res.copied,
                res.skipped,
                res.missing,
                if res.dry_run {
                    " (dry run: nothing written)"
                } else {
                    ""
                }
            ));
            Ok(())
        }
    }
}
