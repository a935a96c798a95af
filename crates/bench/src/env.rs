//! `stackyard bench env`: the contended env write path, measured end to end.
//!
//! Starts a server in this process on a fresh database, creates a stack, and runs N HTTP
//! writers for T seconds, each PATCHing its own key (disjoint keys, one stack). Then reads the
//! stack back and checks that every writer's last acknowledged value is there (lost keys must be
//! 0). For comparison it runs the reference design — one transaction and one row lock per
//! change — directly against the same database with the same number of connections, and
//! reports both rates and their ratio. Results go to stdout; see `docs/performance.md`.

use super::{BenchDb, emit};
use anyhow::bail;
use clap::Args;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use sqlx::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct EnvBenchArgs {
    /// `sqlite` for a fresh SQLite file, or a PostgreSQL server URL (a fresh database is created
    /// on it and dropped afterwards).
    #[arg(long, default_value = "sqlite")]
    pub database_url: String,
    /// Concurrent HTTP writers (and reference connections).
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// How long each phase runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Keys put in the map before the run (200 gives a ~20 KiB map).
    #[arg(long, default_value_t = 0)]
    pub prefill: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

struct Phase {
    acked: u64,
    errors: u64,
    per_writer: Vec<u64>,
    latencies_us: Vec<u32>,
    elapsed: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        super::percentile_ms(&self.latencies_us, p)
    }
}

pub async fn run(args: EnvBenchArgs) -> anyhow::Result<()> {
    let (db, url) = BenchDb::create(&args.database_url).await?;
    let result = run_on(&args, &url).await;
    db.drop_it().await;
    emit(&result?, args.json, print_report)
}

async fn run_on(args: &EnvBenchArgs, url: &str) -> anyhow::Result<Value> {
    let data_dir = std::env::temp_dir().join(format!(
        "stackyard-bench-data-{}",
        stackyard_core::ids::random_hex(4)
    ));
    let connections = (args.writers / 2).clamp(8, 32).to_string();
    let serve = super::serve_args(
        url,
        &data_dir,
        &["--runtime", "noop", "--db-connections", &connections],
    )?;
    let server = stackyard_server::start(serve).await?;
    let base = format!("http://{}", server.addr);
    let token = super::admin_token(&data_dir)?;
    stackyard_cli::tls::install_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.writers * 2)
        .build()?;

    let ours_slug = create_stack(&client, &base, &token, "bench").await?;
    let ref_slug = create_stack(&client, &base, &token, "reference").await?;
    if args.prefill > 0 {
        let mut env = serde_json::Map::new();
        for i in 0..args.prefill {
            env.insert(format!("PREFILL_{i:04}"), json!("p".repeat(90)));
        }
        patch(
            &client,
            &base,
            &token,
            &ours_slug,
            &Value::Object(env.clone()),
        )
        .await?;
        patch(&client, &base, &token, &ref_slug, &Value::Object(env)).await?;
    }
    let start_version = env_of(&client, &base, &token, &ours_slug).await?.1;

    let ours = http_phase(
        &client,
        &base,
        &token,
        &ours_slug,
        args.writers,
        args.duration,
    )
    .await;
    let (final_env, final_version) = env_of(&client, &base, &token, &ours_slug).await?;
    let mut lost = 0u64;
    for (w, n) in ours.per_writer.iter().enumerate() {
        if *n > 0
            && final_env.get(&format!("W{w}")).and_then(Value::as_str)
                != Some(format!("{}", n - 1).as_str())
        {
            lost += 1;
        }
    }
    let version_gap = (final_version - start_version) - ours.acked as i64;
    server.stop().await;

    let ref_id = stack_id(url, &ref_slug).await?;
    let reference = reference_phase(url, ref_id, args.writers, args.duration).await?;
    let _ = std::fs::remove_dir_all(&data_dir);

    let backend = if url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    Ok(json!({
        "backend": backend,
        "writers": args.writers,
        "duration_s": args.duration.as_secs_f64(),
        "prefill_keys": args.prefill,
        "map_bytes": Value::Object(final_env.clone()).to_string().len(),
        "ours": {
            "acked_patches": ours.acked,
            "patches_per_s": ours.rate(),
            "p50_ms": ours.percentile_ms(0.50),
            "p99_ms": ours.percentile_ms(0.99),
            "errors": ours.errors,
            "slowest_writer": ours.per_writer.iter().min(),
            "fastest_writer": ours.per_writer.iter().max(),
            "lost_keys": lost,
            "version_gap": version_gap,
        },
        "reference": {
            "transactions": reference.acked,
            "tx_per_s": reference.rate(),
            "p50_ms": reference.percentile_ms(0.50),
            "p99_ms": reference.percentile_ms(0.99),
            "errors": reference.errors,
            "slowest_writer": reference.per_writer.iter().min(),
            "fastest_writer": reference.per_writer.iter().max(),
        },
        "ratio": ours.rate() / reference.rate().max(f64::MIN_POSITIVE),
    }))
}

fn print_report(r: &Value) {
    let o = &r["ours"];
    let f = &r["reference"];
    println!(
        "stackyard bench env — {} writers, {} s, backend {}, prefill {} keys (map {} bytes)",
        r["writers"],
        r["duration_s"],
        r["backend"].as_str().unwrap_or(""),
        r["prefill_keys"],
        r["map_bytes"]
    );
    println!(
        "  ours (HTTP PATCH, batched):   {:>9.0} PATCH/s   p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
        o["patches_per_s"].as_f64().unwrap_or(0.0),
        o["p50_ms"].as_f64().unwrap_or(0.0),
        o["p99_ms"].as_f64().unwrap_or(0.0),
        o["errors"]
    );
    println!(
        "      writers: slowest {} / fastest {} acknowledged; lost keys {}; version gap {}",
        o["slowest_writer"], o["fastest_writer"], o["lost_keys"], o["version_gap"]
    );
    println!(
        "  reference (1 tx + row lock):  {:>9.0} tx/s      p50 {:>7.2} ms   p99 {:>7.2} ms   errors {}",
        f["tx_per_s"].as_f64().unwrap_or(0.0),
        f["p50_ms"].as_f64().unwrap_or(0.0),
        f["p99_ms"].as_f64().unwrap_or(0.0),
        f["errors"]
    );
    println!(
        "      writers: slowest {} / fastest {}",
        f["slowest_writer"], f["fastest_writer"]
    );
    println!(
        "  ratio ours / reference: {:.2}x",
        r["ratio"].as_f64().unwrap_or(0.0)
    );
}

pub(crate) async fn create_stack(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
) -> anyhow::Result<String> {
    let tar = {
        let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(enc);
        let body = b"web: sleep 3600\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "Procfile", &body[..])?;
        b.into_inner()?.finish()?
    };
    let form = Form::new()
        .text("manifest", "services:\n  app: {}\n")
        .text("name", name.to_owned())
        .part("app", Part::bytes(tar).file_name("app.tar.gz"));
    let res = client
        .post(format!("{base}/stacks/new"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await?;
    if status != 202 {
        bail!("creating the bench stack failed: {status} {body}");
    }
    Ok(body["stack_id"].as_str().unwrap_or_default().to_owned())
}

pub(crate) async fn patch(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    slug: &str,
    env: &Value,
) -> anyhow::Result<()> {
    let res = client
        .patch(format!("{base}/stacks/{slug}/env"))
        .bearer_auth(token)
        .json(&json!({ "env": env }))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!(
            "PATCH failed: {} {}",
            res.status(),
            res.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

async fn env_of(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    slug: &str,
) -> anyhow::Result<(serde_json::Map<String, Value>, i64)> {
    let v: Value = client
        .get(format!("{base}/stacks/{slug}/env?reveal=true"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let env = v["env"].as_object().cloned().unwrap_or_default();
    Ok((env, v["version"].as_i64().unwrap_or(0)))
}

/// N writers PATCHing `W<n>` = 0, 1, 2, … for `duration`; all start together.
async fn http_phase(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    slug: &str,
    writers: usize,
    duration: Duration,
) -> Phase {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let url = format!("{base}/stacks/{slug}/env");
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, url, token, stop, barrier) = (
            client.clone(),
            url.clone(),
            token.to_owned(),
            stop.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut errors, mut lat) = (0u64, 0u64, Vec::with_capacity(4096));
            barrier.wait().await;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({ "env": { format!("W{w}"): acked.to_string() } });
                let t = Instant::now();
                match client
                    .patch(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(res) if res.status().is_success() => {
                        let _ = res.bytes().await;
                        acked += 1;
                        lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    _ => errors += 1,
                }
            }
            (acked, errors, lat)
        }));
    }
    collect(tasks, barrier, stop, duration).await
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<(u64, u64, Vec<u32>)>>,
    barrier: Arc<tokio::sync::Barrier>,
    stop: Arc<AtomicBool>,
    duration: Duration,
) -> Phase {
    barrier.wait().await;
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut phase = Phase {
        acked: 0,
        errors: 0,
        per_writer: Vec::new(),
        latencies_us: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        if let Ok((a, e, l)) = t.await {
            phase.acked += a;
            phase.errors += e;
            phase.per_writer.push(a);
            phase.latencies_us.extend(l);
        }
    }
    phase.elapsed = started.elapsed();
    phase.latencies_us.sort_unstable();
    phase
}

async fn stack_id(url: &str, slug: &str) -> anyhow::Result<i64> {
    let sql = "SELECT id FROM stacks WHERE slug = $1";
    if url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(url).await?;
        Ok(sqlx::query_scalar(sql).bind(slug).fetch_one(&mut c).await?)
    } else {
        let mut c = sqlx::PgConnection::connect(url).await?;
        Ok(sqlx::query_scalar(sql).bind(slug).fetch_one(&mut c).await?)
    }
}

/// The reference design, one connection per writer: PostgreSQL `BEGIN; SET LOCAL lock_timeout;
/// SELECT … FOR UPDATE; UPDATE; COMMIT`, SQLite `BEGIN IMMEDIATE; SELECT; UPDATE; COMMIT`,
/// merging the writer's key in between.
async fn reference_phase(
    url: &str,
    stack: i64,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let sqlite = url.starts_with("sqlite");
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (url, stop, barrier) = (url.to_owned(), stop.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut errors, mut lat) = (0u64, 0u64, Vec::with_capacity(4096));
            let mut conn = RefConn::open(&url, sqlite).await;
            barrier.wait().await;
            let Some(conn) = conn.as_mut() else {
                return (0, 1, lat);
            };
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match conn
                    .write(stack, &format!("R{w}"), &acked.to_string())
                    .await
                {
                    Ok(()) => {
                        acked += 1;
                        lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Err(_) => errors += 1,
                }
            }
            (acked, errors, lat)
        }));
    }
    Ok(collect(tasks, barrier, stop, duration).await)
}

enum RefConn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

fn merge(env: &str, key: &str, value: &str) -> String {
    let mut map: serde_json::Map<String, Value> = serde_json::from_str(env).unwrap_or_default();
    map.insert(key.to_owned(), json!(value));
    Value::Object(map).to_string()
}

impl RefConn {
    async fn open(url: &str, sqlite: bool) -> Option<RefConn> {
        if sqlite {
            use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
            use std::str::FromStr;
            let opts = SqliteConnectOptions::from_str(url)
                .ok()?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(3));
            sqlx::SqliteConnection::connect_with(&opts)
                .await
                .ok()
                .map(RefConn::Sqlite)
        } else {
            sqlx::PgConnection::connect(url)
                .await
                .ok()
                .map(RefConn::Postgres)
        }
    }

    async fn write(&mut self, stack: i64, key: &str, value: &str) -> Result<(), sqlx::Error> {
        match self {
            RefConn::Postgres(c) => {
                sqlx::query("BEGIN").execute(&mut *c).await?;
                let r: Result<(), sqlx::Error> = async {
                    sqlx::query("SET LOCAL lock_timeout = '3s'").execute(&mut *c).await?;
                    let env: String = sqlx::query_scalar("SELECT env::text FROM stacks WHERE id = $1 FOR UPDATE").bind(stack).fetch_one(&mut *c).await?;
                    let merged = merge(&env, key, value);
                    sqlx::query("UPDATE stacks SET env = $2::jsonb, env_version = env_version + 1 WHERE id = $1").bind(stack).bind(merged).execute(&mut *c).await?;
                    sqlx::query("COMMIT").execute(&mut *c).await?;
                    Ok(())
                }
                .await;
                if r.is_err() {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *c).await;
                }
                r
            }
            RefConn::Sqlite(c) => {
                sqlx::query("BEGIN IMMEDIATE").execute(&mut *c).await?;
                let r: Result<(), sqlx::Error> = async {
                    let env: String = sqlx::query_scalar("SELECT env FROM stacks WHERE id = $1")
                        .bind(stack)
                        .fetch_one(&mut *c)
                        .await?;
                    let merged = merge(&env, key, value);
                    sqlx::query(
                        "UPDATE stacks SET env = $2, env_version = env_version + 1 WHERE id = $1",
                    )
                    .bind(stack)
                    .bind(merged)
                    .execute(&mut *c)
                    .await?;
                    sqlx::query("COMMIT").execute(&mut *c).await?;
                    Ok(())
                }
                .await;
                if r.is_err() {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *c).await;
                }
                r
            }
        }
    }
}
