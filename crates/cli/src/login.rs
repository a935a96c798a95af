//! `stackyard login` and `whoami`: which team and token the settings authenticate as, asked of
//! the server (`GET /api/v1/whoami`); `login` saves the settings once the server accepted them.

use crate::api::Api;
use crate::config::{self, FileConfig, GlobalArgs, Settings, Token};
use crate::error::{CliError, Context, Result};
use crate::output::{Out, clean};
use serde::Serialize;
use stackyard_api::{TeamInfo, TokenItem, Whoami};
use std::io::{BufRead, IsTerminal};

const WHOAMI: &str = "/api/v1/whoami";

/// Reads a token from stdin (its first non-empty line). On a terminal, says what it waits for;
/// the typed token is not echoed back by us (the terminal may show it while typing).
fn token_from_stdin(out: &Out) -> Result<Token> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        out.eprint_raw("Paste an API token and press Enter: ");
    }
    let mut line = String::new();
    for l in stdin.lock().lines() {
        let l = l.context(|| "cannot read the token from stdin".into())?;
        if !l.trim().is_empty() {
            line = l;
            break;
        }
    }
    Token::new(&line).ok_or_else(|| {
        CliError::usage("no token given")
            .with_hint("pass --token TOKEN or pipe it in: `stackyard login < token-file`")
    })
}

/// The `--json` document of `login` and `whoami`: the server's team and token, and where.
#[derive(Serialize)]
struct WhoDoc<'a> {
    ok: bool,
    url: &'a str,
    team: &'a TeamInfo,
    token: &'a TokenItem,
    /// `login` only: where the settings were saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<String>,
}

impl<'a> WhoDoc<'a> {
    fn new(url: &'a str, who: &'a Whoami) -> Self {
        WhoDoc {
            ok: true,
            url,
            team: &who.team,
            token: &who.token,
            config: None,
        }
    }
}

/// `stackyard login`: verify the token with `GET /api/v1/whoami`, then save URL and token.
pub async fn login(global: &GlobalArgs, out: &Out) -> Result<()> {
    let path = config::config_path()?;
    let existing = config::load(&path, out)?;
    let url = global
        .url
        .clone()
        .or_else(|| config::env_nonempty("STACKYARD_URL"))
        .or(existing.url)
        .unwrap_or_else(|| config::DEFAULT_URL.to_owned());
    let url = config::normalize_url(&url)?;
    let token = match &global.token {
        Some(t) => t.clone(),
        None => token_from_stdin(out)?,
    };
    let api = Api::new(
        &Settings {
            url: url.clone(),
            token: Some(token.clone()),
            cacert: config::cacert(global),
        },
        out,
    )?;
    let who: Whoami = api.get(WHOAMI).await.map_err(|e| {
        if e.status == Some(401) {
            CliError {
                hint: Some(format!(
                    "check that the token belongs to the server at {url}"
                )),
                ..e
            }
        } else {
            e
        }
    })?;
    config::save(
        &path,
        &FileConfig {
            url: Some(url.clone()),
            token: Some(token),
        },
    )?;
    if out.json {
        out.json_doc(&WhoDoc {
            config: Some(path.display().to_string()),
            ..WhoDoc::new(&url, &who)
        });
    } else if !out.quiet {
        out.println(&format!(
            "Logged in to {url} as team {} (token {:?}). Saved to {}.",
            clean(&who.team.name),
            clean(&who.token.name),
            path.display()
        ));
    }
    Ok(())
}

/// `stackyard whoami`: the team and token the current settings authenticate as.
pub async fn whoami(api: &Api, out: &Out) -> Result<()> {
    let who: Whoami = api.get(WHOAMI).await?;
    if out.json {
        out.json_doc(&WhoDoc::new(api.base(), &who));
    } else {
        out.println(&format!(
            "team {} (id {}) via token {:?} at {}",
            clean(&who.team.name),
            who.team.id,
            clean(&who.token.name),
            api.base()
        ));
    }
    Ok(())
}
