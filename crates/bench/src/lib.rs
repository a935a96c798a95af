//! `stackyard bench …`: benchmarks that print a report (or `--json`); the numbers and the
//! exact commands are recorded in `docs/performance.md`.
//!
//! - `api` ([`api`]): the polled read routes side by side with `/healthz`;
//! - `env` ([`env`]): contended env PATCH throughput against the one-row-lock-per-change design;
//! - `deploy` ([`deploy`]): `POST /stacks/new` → all healthy for an example stack, next to the
//!   apps' own start time;
//! - `router` ([`router`]): router throughput next to the upstream hit directly.

pub mod api;
mod cpu;
pub mod deploy;
pub mod env;
mod load;
pub mod router;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sqlx::Connection;
use stackyard_server::ServeArgs;
use std::path::Path;

/// The `stackyard bench` subcommands.
#[derive(Subcommand)]
pub enum Bench {
    /// The read routes clients poll (`GET /stacks/:slug`, the stack list, the env), next to
    /// `GET /healthz`, in one run.
    Api(api::ApiBenchArgs),
    /// Contended env PATCH throughput against the one-row-lock-per-change reference design.
    Env(env::EnvBenchArgs),
    /// Time from `POST /stacks/new` to all healthy for an example stack (local runtime), next to
    /// the apps' own start time.
    Deploy(deploy::DeployBenchArgs),
    /// Router throughput for a trivial upstream, next to the upstream hit directly.
    Router(router::RouterBenchArgs),
}

/// Runs one benchmark and prints its report on stdout.
pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Api(args) => api::run(args).await,
        Bench::Env(args) => env::run(args).await,
        Bench::Deploy(args) => deploy::run(args).await,
        Bench::Router(args) => router::run(args).await,
    }
}

/// A fresh database for a run and how to clean it up.
pub(crate) enum BenchDb {
    Sqlite { dir: std::path::PathBuf },
    Postgres { admin_url: String, name: String },
}

impl BenchDb {
    /// `spec` is `sqlite` (a fresh file in a temporary directory) or a PostgreSQL server URL (a
    /// fresh database is created on it). Returns the database URL to use.
    pub(crate) async fn create(spec: &str) -> anyhow::Result<(BenchDb, String)> {
        let stamp = format!(
            "{}_{}",
            std::process::id(),
            stackyard_core::ids::random_hex(4)
        );
        if spec == "sqlite" || spec.starts_with("sqlite:") {
            let dir = std::env::temp_dir().join(format!("stackyard-bench-{stamp}"));
            std::fs::create_dir_all(&dir)?;
            let url = format!("sqlite://{}", dir.join("stackyard.db").display());
            Ok((BenchDb::Sqlite { dir }, url))
        } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            let name = format!("stackyard_bench_{stamp}");
            let mut conn = sqlx::PgConnection::connect(spec)
                .await
                .context("connecting to PostgreSQL")?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
            let url = with_database(spec, &name);
            Ok((
                BenchDb::Postgres {
                    admin_url: spec.to_owned(),
                    name,
                },
                url,
            ))
        } else {
            bail!("--database-url must be `sqlite` or a postgres:// URL")
        }
    }

    pub(crate) async fn drop_it(self) {
        match self {
            BenchDb::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            BenchDb::Postgres { admin_url, name } => {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            }
        }
    }
}

/// Settings for an in-process benchmark server on `database_url` and `data_dir`, its API on a
/// free port; `extra` adds flags (runtime, router, pool size).
pub(crate) fn serve_args(
    database_url: &str,
    data_dir: &Path,
    extra: &[&str],
) -> anyhow::Result<ServeArgs> {
    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let data_dir = data_dir.display().to_string();
    let base = [
        "stackyard",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--data-dir",
        &data_dir,
    ];
    Ok(W::try_parse_from(base.iter().chain(extra))?.serve)
}

/// The admin token the server wrote into `data_dir` on its first start.
pub(crate) fn admin_token(data_dir: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(data_dir.join("admin-token"))
        .context("reading the admin token")?
        .trim()
        .to_owned())
}

/// `url` with its database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let head = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{head}/{db}{query}")
}

/// Summary statistics of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spread {
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    /// `None` for an empty set.
    pub(crate) fn of(samples_ms: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = samples_ms.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            min_ms: v[0],
            median_ms: median,
            max_ms: v[n - 1],
        })
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "min_ms": self.min_ms,
            "median_ms": self.median_ms,
            "max_ms": self.max_ms,
        })
    }
}

/// Prints `report` as pretty JSON (`--json`) or with the bench's own `print` layout.
pub(crate) fn emit(
    report: &serde_json::Value,
    json: bool,
    print: fn(&serde_json::Value),
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print(report);
    }
    Ok(())
}

/// The `p` quantile (0..=1, nearest rank) of sorted microsecond samples, in milliseconds.
pub(crate) fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted_us[i.min(sorted_us.len() - 1)]) / 1000.0
}

/// A free TCP port on 127.0.0.1 (bound then released: another process could take it in
/// between, which a benchmark can live with).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn spreads_and_percentiles() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min_ms, s.median_ms, s.max_ms), (1.0, 2.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 4.0]).unwrap().median_ms, 2.5);
        assert!(Spread::of(&[]).is_none());
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 0.5), 51.0);
        assert_eq!(percentile_ms(&us, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }
}
