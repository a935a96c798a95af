//! The `stackyard` client commands. (Being written.)

use std::process::ExitCode;

/// Flags every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Machine-readable output: JSON, no colour, no progress.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only what was asked for.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Store the server URL and an API token for later commands.
    Login,
}

pub async fn run(_global: GlobalArgs, _command: Command) -> ExitCode {
    ExitCode::SUCCESS
}
