//! The `stackyard` client commands: `login`, `deploy`, `redeploy`, `status`, `ls`, `rm`, `env …`,
//! `logs`, `whoami`. The binary flattens [`GlobalArgs`] and [`Command`] into its own parser and
//! hands them to [`run`], which returns the process exit code (see [`error::Exit`]).
//!
//! Modules: `config` (settings, login), `api` (HTTP, errors, retries, SSE), `pack` (tarballs),
//! `deploy` (deploy, redeploy), `follow` (event streams and progress), `stacks` (status, ls,
//! rm), `env` and `dotenv` (environment variables), `logs`, `output` (text, JSON, colour).

pub mod api;
pub mod config;
pub mod deploy;
pub mod dotenv;
pub mod env;
pub mod error;
pub mod follow;
pub mod logs;
pub mod output;
pub mod pack;
pub mod stacks;

use crate::config::Token;
use crate::error::{CliError, Result};
use crate::output::Out;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The exit-code table, shown at the end of `stackyard --help` (and in the README).
pub const EXIT_CODES_HELP: &str = "\
Client commands read the server URL and token from --url/--token, else STACKYARD_URL/STACKYARD_TOKEN,
else the file written by `stackyard login` ($XDG_CONFIG_HOME/stackyard/config.toml); the default URL
is http://127.0.0.1:8700.

Exit codes of client commands:
  0  success (deploy/redeploy: the release is live and every service healthy)
  1  other errors: invalid request (400), unauthorized (401), unreadable local files
  2  usage: bad arguments or flags
  3  not found (404): no such stack, service or env version
  4  conflict or precondition (409, 412, 422): e.g. --if-version no longer matches
  5  server or network: 5xx, 429 after 3 retries, connection failures, a deploy that failed";

/// Flags every client command takes.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXIT_CODES_HELP, next_help_heading = "Client options")]
pub struct GlobalArgs {
    /// Machine-readable output: one JSON document (JSON lines for streams), no colour, no progress.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only what was asked for: no progress or notes (warnings and errors still go to stderr).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Server URL for client commands [default: STACKYARD_URL, the saved login, http://127.0.0.1:8700].
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API token for client commands [default: STACKYARD_TOKEN, the saved login]. Prefer
    /// `stackyard login` reading stdin: a token on the command line shows in the process list.
    #[arg(long, global = true, value_name = "TOKEN", value_parser = config::parse_token_arg)]
    pub token: Option<Token>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check an API token and save it with the server URL (token from --token, else stdin).
    Login,
    /// Show the team and token the current settings authenticate as.
    Whoami,
    /// Pack DIR's services, create a stack, and follow it until every service is healthy.
    Deploy(deploy::DeployArgs),
    /// Make a new release of a stack (from its current code, or from DIR) and follow it.
    Redeploy(deploy::RedeployArgs),
    /// A stack's services, release and env version, and whether the latest env is live.
    Status {
        /// The stack id (`stk-…`).
        slug: String,
    },
    /// The team's stacks, newest first.
    Ls(stacks::LsArgs),
    /// Delete a stack: its services are torn down.
    Rm {
        /// The stack id (`stk-…`).
        slug: String,
        /// Wait until the teardown has finished.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long (e.g. `90s`, `5m`).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// A stack's environment variables (values of secret-looking keys masked), and changes to them.
    Env(env::EnvArgs),
    /// A service's recent log lines (the last 200); -f keeps following new ones.
    Logs(logs::LogsArgs),
}

/// Runs one client command and returns its exit code; errors are printed here, once.
pub async fn run(global: GlobalArgs, command: Command) -> ExitCode {
    let out = Out::new(global.json, global.quiet);
    match dispatch(&global, command, &out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out.error(&e);
            e.exit.into()
        }
    }
}

async fn dispatch(global: &GlobalArgs, command: Command, out: &Out) -> Result<()> {
    if let Command::Login = command {
        return config::login(global, out).await;
    }
    let settings = config::resolve(global, out)?;
    let api = api::Api::new(&settings, out)?;
    match command {
        Command::Login => Ok(()),
        Command::Whoami => config::whoami(&api, out).await,
        Command::Deploy(args) => deploy::deploy(&api, out, args).await,
        Command::Redeploy(args) => deploy::redeploy(&api, out, args).await,
        Command::Status { slug } => stacks::status(&api, out, &parse_slug(&slug)?).await,
        Command::Ls(args) => stacks::ls(&api, out, args).await,
        Command::Rm {
            slug,
            wait,
            timeout,
        } => stacks::rm(&api, out, &parse_slug(&slug)?, wait.then_some(timeout)).await,
        Command::Env(args) => env::run(&api, out, args).await,
        Command::Logs(args) => logs::logs(&api, out, args).await,
    }
}

/// Checks a stack id locally, so a typo is a usage error rather than a confusing 404.
pub fn parse_slug(s: &str) -> Result<String> {
    stackyard_core::StackSlug::parse(s.trim())
        .map(|s| s.into_string())
        .map_err(|e| {
            CliError::usage(format!("{:?} is not a stack id: {e}", output::clean(s))).with_hint(
                "stack ids look like stk-0123456789abcdef01234567; `stackyard ls` lists yours",
            )
        })
}

/// A directory argument, defaulting to the current directory.
pub fn dir_or_cwd(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| PathBuf::from("."))
}
