//! `stackyard bench api`: the read routes clients poll, side by side in one run.
//!
//! Starts a server in this process (noop runtime) on a fresh database, creates one healthy
//! stack with a few env vars, and runs the load loop ([`load`], its own runtime) against each
//! route in turn for the same time: `GET /healthz` (the floor: routing, middleware, no store),
//! `GET /stacks/:slug` (the most polled), `GET /api/v1/stacks` and `GET /stacks/:slug/env`,
//! each with the team's token. Reports req/s, p50 / p99 and each route's rate as a share of
//! `/healthz`'s, measured back to back on the same machine.

use super::{BenchDb, emit, load, percentile_ms};
use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct ApiBenchArgs {
    /// `sqlite` for a fresh SQLite file, or a PostgreSQL server URL (a fresh database is created
    /// on it and dropped afterwards).
    #[arg(long, default_value = "sqlite")]
    pub database_url: String,
    #[command(flatten)]
    pub load: load::LoadArgs,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    let (db, url) = BenchDb::create(&args.database_url).await?;
    let result = run_on(&args, &url).await;
    db.drop_it().await;
    emit(&result?, args.json, print_report)
}

async fn run_on(args: &ApiBenchArgs, url: &str) -> anyhow::Result<Value> {
    let data_dir = std::env::temp_dir().join(format!(
        "stackyard-bench-data-{}",
        stackyard_core::ids::random_hex(4)
    ));
    let serve = super::serve_args(url, &data_dir, &["--runtime", "noop", "--noop-step", "1ms"])?;
    let server = stackyard_server::start(serve).await?;
    let base = format!("http://{}", server.addr);
    let token = super::admin_token(&data_dir)?;
    stackyard_cli::tls::install_provider();
    let client = reqwest::Client::new();
    let slug = super::env::create_stack(&client, &base, &token, "polled").await?;
    let vars =
        json!({ "LOG_LEVEL": "info", "API_URL": "http://api:3000", "DB_PASSWORD": "s3cret" });
    super::env::patch(&client, &base, &token, &slug, &vars).await?;
    wait_healthy(&client, &base, &token, &slug).await?;

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.load.client_threads.max(1))
        .thread_name("bench-load")
        .enable_all()
        .build()
        .context("starting the load loop's runtime")?;
    let auth = format!("Bearer {token}");
    let routes = [
        ("healthz", "/healthz".to_owned()),
        ("stack", format!("/stacks/{slug}")),
        ("stacks", "/api/v1/stacks".to_owned()),
        ("env", format!("/stacks/{slug}/env")),
    ];
    let mut measured = serde_json::Map::new();
    for (name, path) in &routes {
        let headers: &[(&str, &str)] = if *name == "healthz" {
            &[]
        } else {
            &[("Authorization", &auth)]
        };
        let request = load::get("127.0.0.1", path, headers);
        let (r, (), ()) = load::run(
            client_rt.handle(),
            server.addr,
            &request,
            args.load.connections,
            args.load.warmup,
            args.load.duration,
            || (),
        )
        .await;
        measured.insert(
            (*name).to_owned(),
            json!({
                "path": path.replace(&slug, ":slug"),
                "requests": r.ok,
                "errors": r.errors,
                "req_per_s": r.rate(),
                "p50_ms": percentile_ms(&r.latencies_us, 0.50),
                "p99_ms": percentile_ms(&r.latencies_us, 0.99),
            }),
        );
    }
    client_rt.shutdown_background();
    server.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);

    let floor = measured["healthz"]["req_per_s"].as_f64().unwrap_or(0.0);
    for v in measured.values_mut() {
        let rate = v["req_per_s"].as_f64().unwrap_or(0.0);
        v["share_of_healthz"] = json!(rate / floor.max(f64::MIN_POSITIVE));
    }
    Ok(json!({
        "backend": if url.starts_with("sqlite") { "sqlite" } else { "postgres" },
        "connections": args.load.connections,
        "duration_s": args.load.duration.as_secs_f64(),
        "warmup_s": args.load.warmup.as_secs_f64(),
        "client_threads": args.load.client_threads,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "routes": measured,
    }))
}

/// Polls the stack until its deploy finished, so every route reads a settled stack.
async fn wait_healthy(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    slug: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = client
            .get(format!("{base}/stacks/{slug}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        if v["status"] == "healthy" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the bench stack did not become healthy: {v}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn print_report(r: &Value) {
    println!(
        "stackyard bench api — backend {}, {} connections, {} s per route (+{} s warm-up), load loop on {} thread(s), {} CPUs",
        r["backend"].as_str().unwrap_or(""),
        r["connections"],
        r["duration_s"],
        r["warmup_s"],
        r["client_threads"],
        r["cpus"],
    );
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    for name in ["healthz", "stack", "stacks", "env"] {
        let v = &r["routes"][name];
        println!(
            "  GET {:<22} {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   {:>4.0}% of /healthz   errors {}",
            v["path"].as_str().unwrap_or(""),
            f(&v["req_per_s"]),
            f(&v["p50_ms"]),
            f(&v["p99_ms"]),
            100.0 * f(&v["share_of_healthz"]),
            v["errors"],
        );
    }
}
