//! `stackyard serve` settings: one clap struct, each flag also a `STACKYARD_*` variable.

use clap::{Args, ValueEnum};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// Run services as local child processes, served through the built-in router.
    Local,
    /// Move services through their statuses without running anything.
    Noop,
}

/// Where the server keeps its data and how it runs. Secrets (the database URL may carry a
/// password) are redacted in `Debug`.
#[derive(Clone, Args)]
pub struct StoreArgs {
    /// SQLite file, artifacts, unpacked services, logs and `admin-token` live here.
    #[arg(long, env = "STACKYARD_DATA_DIR", default_value = "./stackyard-data")]
    pub data_dir: PathBuf,

    /// `sqlite://PATH` or `postgres://…`; default `sqlite://<data-dir>/stackyard.db`.
    #[arg(long, env = "STACKYARD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreArgs")
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|u| redact_url(u)),
            )
            .finish()
    }
}

impl StoreArgs {
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("stackyard.db").display()),
        }
    }
}

/// `scheme://user:***@host/db` — the password and query string dropped, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let rest = rest.split('?').next().unwrap_or("");
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// API address; port 0 picks a free port.
    #[arg(long, env = "STACKYARD_LISTEN", default_value = "127.0.0.1:8700")]
    pub listen: SocketAddr,

    /// How services run.
    #[arg(long, env = "STACKYARD_RUNTIME", value_enum, default_value = "local")]
    pub runtime: RuntimeKind,

    /// The router's address (local runtime); port 0 picks a free port.
    #[arg(
        long,
        env = "STACKYARD_ROUTER_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub router_listen: SocketAddr,

    /// Host suffix of service URLs served by the router.
    #[arg(long, env = "STACKYARD_BASE_DOMAIN", default_value = "localhost")]
    pub base_domain: String,

    /// Redis for shared rate-limit counters.
    #[arg(long, env = "STACKYARD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Key prefix of the counters kept in Redis (several deployments may share one Redis).
    #[arg(
        long,
        env = "STACKYARD_REDIS_PREFIX",
        default_value = "stackyard:",
        hide = true
    )]
    pub redis_prefix: String,

    /// Stacks an anonymous caller's network may create per UTC day.
    #[arg(long, env = "STACKYARD_ANONYMOUS_DAILY_LIMIT", default_value_t = 5)]
    pub anonymous_daily_limit: i64,

    /// Lifetime of anonymous stacks (`6h`, `90m`, …).
    #[arg(long, env = "STACKYARD_ANONYMOUS_TTL", default_value = "6h", value_parser = humantime::parse_duration)]
    pub anonymous_ttl: Duration,

    /// Time a service gets to become healthy.
    #[arg(long, env = "STACKYARD_DEPLOY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub deploy_timeout: Duration,

    /// Whether callers without a token may create stacks.
    #[arg(long, env = "STACKYARD_ALLOW_ANONYMOUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_anonymous: bool,

    /// Env versions kept per stack.
    #[arg(long, env = "STACKYARD_ENV_HISTORY", default_value_t = 1000)]
    pub env_history: i64,

    /// How long `DELETE /stacks/:slug` waits for the teardown it queued: done in time, 200 and
    /// the stack is gone; not yet, 202 (`?wait=false` answers 202 at once).
    #[arg(long, env = "STACKYARD_DELETE_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub delete_wait: Duration,

    /// Bound on waiting for a database lock; past it writes answer 503 with Retry-After.
    #[arg(long, env = "STACKYARD_LOCK_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub lock_timeout: Duration,

    /// How long a claimed job stays claimed without a heartbeat before another worker may take
    /// it over (a server that died).
    #[arg(long, env = "STACKYARD_JOB_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub job_lease: Duration,

    /// Jobs this server runs at once.
    #[arg(long, env = "STACKYARD_JOB_WORKERS", default_value_t = 8)]
    pub job_workers: usize,

    /// Delay of each step of the `noop` runtime (for demos and tests of in-flight jobs).
    #[arg(long, env = "STACKYARD_NOOP_STEP", default_value = "50ms", value_parser = humantime::parse_duration, hide = true)]
    pub noop_step: Duration,

    /// Database connections in the pool.
    #[arg(long, env = "STACKYARD_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_keep_no_password_or_query() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x?sslpassword=p"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_url("sqlite://./d/stackyard.db"),
            "sqlite://./d/stackyard.db"
        );
        assert!(
            !format!(
                "{:?}",
                StoreArgs {
                    data_dir: "d".into(),
                    database_url: Some("postgres://a:pw@h/d".into())
                }
            )
            .contains("pw")
        );
    }
}
