//! `stackyard`: one binary for the server and its operator commands.

use clap::{Parser, Subcommand};
use stackyard_core::TeamName;
use stackyard_runtime_local::sandbox;
use stackyard_server::config::KeyArgs;
use stackyard_server::serve::{store_options_for, with_store};
use stackyard_server::{ServeArgs, StoreArgs};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "stackyard",
    version,
    about = "Self-hosted control plane for multi-service application stacks"
)]
struct Cli {
    #[command(flatten)]
    global: stackyard_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (API, job workers, runtime).
    Serve(Box<ServeArgs>),
    /// Operator commands that work directly on the server's database.
    #[command(subcommand)]
    Admin(Admin),
    /// Benchmarks (results go to stdout; see docs/performance.md).
    #[command(subcommand)]
    Bench(stackyard_bench::Bench),
    #[command(flatten)]
    Client(stackyard_cli::Command),
}

#[derive(Subcommand)]
enum Admin {
    /// Create a team and print its first API token (only the token, on stdout).
    CreateTeam {
        /// Team name: letters, digits, `_`, `-`, `.`.
        name: String,
        /// Most stacks the team may hold at once (default: no limit).
        #[arg(long)]
        max_stacks: Option<i64>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Move the database to a new master key (resumable, safe while servers run); then start
    /// servers with the new key.
    RotateMasterKey {
        /// The new key: 32 bytes, raw or base64 (`head -c 32 /dev/urandom | base64 > F`).
        #[arg(long)]
        new_key_file: std::path::PathBuf,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Give every stack a new data key, its env re-sealed under the stack's lock (one stack
    /// at a time, safe while servers run; run again to finish an interrupted pass).
    RotateDataKeys {
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Copy the SQLite database, consistently, while the server runs; prints the file's path
    /// (PostgreSQL: use pg_dump, see the README).
    Backup {
        /// Where the copy goes; must not exist.
        #[arg(long)]
        to: std::path::PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn main() -> ExitCode {
    // The sandbox launcher (see `stackyard_runtime_local::sandbox`): before anything else
    // starts a thread, it confines this process and execs the service.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == sandbox::LAUNCHER_ARG) {
        eprintln!("{}", sandbox::exec_from_args(args.collect()));
        return ExitCode::from(126);
    }
    // Before any HTTPS client or listener exists: reqwest is built without a provider of its own.
    stackyard_cli::tls::install_provider();
    let cli = Cli::parse();
    // A benchmark's output is its report, and a client's output is for its user: keep the
    // server's logging quiet for both unless STACKYARD_LOG asks.
    // The client reports an untrusted certificate itself; the verifier's own log line of it
    // would say the same thing twice.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Admin(_) => "info",
        Command::Bench(_) => "error",
        Command::Client(_) => "error,rustls_platform_verifier=off",
    };
    stackyard_server::telemetry::init_logging(default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Client(command) = cli.command {
        return runtime.block_on(stackyard_cli::run(cli.global, command));
    }
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Bench(bench) => stackyard_bench::run(bench).await,
        // Dispatched in `main`, which owns the exit code of client commands.
        Command::Client(_) => Ok(()),
        Command::Admin(Admin::CreateTeam {
            name,
            max_stacks,
            store,
        }) => {
            let name = TeamName::parse(&name).map_err(|e| anyhow::anyhow!(e))?;
            if max_stacks.is_some_and(|n| n < 0) {
                anyhow::bail!("--max-stacks must be 0 or more");
            }
            let token = with_store(
                &store,
                store_options_for(&store),
                stackyard_server::admin::CreateTeam { name, max_stacks },
            )
            .await?;
            println!("{}", token.expose());
            Ok(())
        }
        Command::Admin(Admin::RotateMasterKey {
            new_key_file,
            keys,
            store,
        }) => {
            let rotate = stackyard_server::admin::RotateMasterKey {
                keys,
                data_dir: store.data_dir.clone(),
                new_key_file: new_key_file.clone(),
            };
            with_store(&store, store_options_for(&store), rotate).await?;
            eprintln!(
                "the database now uses the master key in {}; start servers with it \
                 (--master-key-file or STACKYARD_MASTER_KEY; replace <data dir>/master.key if \
                 that is where the old one was): the old key no longer opens the database",
                new_key_file.display()
            );
            Ok(())
        }
        Command::Admin(Admin::RotateDataKeys { keys, store }) => {
            let rotate = stackyard_server::admin::RotateDataKeys {
                keys,
                data_dir: store.data_dir.clone(),
            };
            let n = with_store(&store, store_options_for(&store), rotate).await?;
            eprintln!("{n} stacks have a new data key");
            Ok(())
        }
        Command::Admin(Admin::Backup { to, store }) => {
            let bytes = stackyard_server::admin::backup(&store, &to).await?;
            eprintln!("wrote {bytes} bytes");
            println!("{}", to.display());
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let limit = args.shutdown_timeout;
    let server = stackyard_server::start(args).await?;
    server.serve_until(shutdown_signal(), limit).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
