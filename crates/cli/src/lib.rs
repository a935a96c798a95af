//! The `stackyard` client commands: `login`, `deploy`, `redeploy`, `status`, `ls`, `rm`,
//! `restart`, `env …`, `logs`, `vault …`, `whoami`. The binary flattens [`GlobalArgs`] and [`Command`] into its own parser and
//! hands them to [`run`], which returns the process exit code (see [`error::Exit`]).
//!
//! Modules: `config` (flags, environment and config file: the settings), `login` (login,
//! whoami), `api` (HTTP, errors, retries, SSE; bodies are `stackyard-api` types), `tls` (the
//! crypto provider, `--cacert`, untrusted certificates), `args`
//! (argument checks), `pack` (tarballs), `deploy` (deploy, redeploy), `follow` (event streams
//! and progress), `stacks` (status, ls, rm, restart), `env` and `dotenv` (environment variables), `vault`,
//! `logs`, `output` (text, JSON, colour).

pub mod api;
pub mod args;
pub mod config;
pub mod deploy;
pub mod domains;
pub mod dotenv;
pub mod env;
pub mod error;
pub mod follow;
pub mod login;
pub mod logs;
pub mod output;
pub mod pack;
pub mod promote;
pub mod stacks;
pub mod tls;
pub mod vault;

use crate::args::parse_slug;
use crate::error::Result;
use crate::output::Out;
use std::process::ExitCode;
use std::time::Duration;

pub use config::{EXIT_CODES_HELP, GlobalArgs};

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
    /// Promote a stack's live release to another env of its family (created on the first
    /// promote): the same artifacts and build, nothing uploaded.
    Promote(promote::PromoteArgs),
    /// A stack's custom domains: add (prints the DNS records to create), ls, verify, rm.
    #[command(subcommand)]
    Domains(domains::DomainsAction),
    /// Promote approvals: list them, approve or reject one.
    #[command(subcommand)]
    Approvals(promote::ApprovalsAction),
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
    /// Restart a stack's services in place (all, or one with --service): same release, env and
    /// URLs, one service after another; also brings back a crash-looped `failed` service.
    Restart(stacks::RestartArgs),
    /// A stack's environment variables (values of secret-looking keys masked), and changes to them.
    Env(env::EnvArgs),
    /// A service's recent log lines (the last 200); -f keeps following new ones.
    Logs(logs::LogsArgs),
    /// The team vault: versioned secrets per env, referenced from a stack's env as `vault://KEY`.
    #[command(subcommand)]
    Vault(vault::VaultAction),
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
        return login::login(global, out).await;
    }
    let settings = config::resolve(global, out)?;
    let api = api::Api::new(&settings, out)?;
    match command {
        Command::Login => Ok(()),
        Command::Whoami => login::whoami(&api, out).await,
        Command::Deploy(args) => deploy::deploy(&api, out, args).await,
        Command::Redeploy(args) => deploy::redeploy(&api, out, args).await,
        Command::Promote(args) => promote::promote(&api, out, args).await,
        Command::Approvals(action) => promote::approvals(&api, out, action).await,
        Command::Domains(action) => domains::run(&api, out, action).await,
        Command::Status { slug } => stacks::status(&api, out, &parse_slug(&slug)?).await,
        Command::Ls(args) => stacks::ls(&api, out, args).await,
        Command::Rm {
            slug,
            wait,
            timeout,
        } => stacks::rm(&api, out, &parse_slug(&slug)?, wait.then_some(timeout)).await,
        Command::Restart(args) => stacks::restart(&api, out, args).await,
        Command::Env(args) => env::run(&api, out, args).await,
        Command::Logs(args) => logs::logs(&api, out, args).await,
        Command::Vault(action) => vault::run(&api, out, action).await,
    }
}
