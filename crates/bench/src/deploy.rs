//! `stackyard bench deploy`: how long a deploy takes, and how much of that is Stackyard.
//!
//! Starts a server in this process with the local runtime (API and router on free ports) on a
//! fresh database and data directory, then deploys an example stack (default
//! `examples/two-service`) N times, one after the other, each time as a fresh stack: the clock
//! starts before `POST /stacks/new` is sent (the tarballs are packed beforehand, as a client
//! would have them) and stops when `GET /stacks/:slug` shows the stack `healthy` with its
//! release `live` (polled every `--poll`). Each stack is then checked through the router and
//! deleted (`DELETE` → 404 is timed too).
//!
//! Before each deploy, the same services are started directly, the way the runtime starts
//! them (`/bin/sh -c <start command>` in the service directory, in its own process group, with
//! `PATH`, `HOME`, `PORT` and the manifest env, `service://x` resolved), all at once, and timed
//! until every port accepts a TCP connection: the apps' own start time. The difference of
//! the medians is the control plane's overhead.
//!
//! The server runs with its default sandbox (`--sandbox auto`); with `--compare-sandbox` a
//! second server with `--sandbox off` (its own database and data directory) takes every
//! other deploy of the same run, so the sandbox's cost is measured under the same load.

use super::{BenchDb, Spread, emit};
use anyhow::{Context, bail};
use clap::Args;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use stackyard_core::Manifest;
use stackyard_core::manifest::resolve_service_refs;
use stackyard_core::tarball::procfile_command;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Args)]
pub struct DeployBenchArgs {
    /// `sqlite` for a fresh SQLite file, or a PostgreSQL server URL (a fresh database is created
    /// on it and dropped afterwards).
    #[arg(long, default_value = "sqlite")]
    pub database_url: String,
    /// Deploys to time (one after the other, a fresh stack each).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The example stack (a directory with `stackyard.yaml`); default `examples/two-service`
    /// of this checkout.
    #[arg(long)]
    pub example: Option<PathBuf>,
    /// How often the stack is read while it deploys (and while it is torn down).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// Give up on a deploy (or an app start) after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Also deploy each run on a server with `--sandbox off`, interleaved, and report both.
    #[arg(long)]
    pub compare_sandbox: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One service of the example, ready to upload and to start by hand.
struct ExampleService {
    name: String,
    dir: PathBuf,
    tarball: Vec<u8>,
    command: String,
    env: std::collections::BTreeMap<String, String>,
}

struct Example {
    dir: PathBuf,
    manifest_text: String,
    services: Vec<ExampleService>,
}

struct DeployRun {
    accepted_ms: f64,
    healthy_ms: f64,
    teardown_ms: f64,
}

struct AppStartRun {
    /// Until every service accepts connections (they start together).
    all_ms: f64,
    per_service_ms: Vec<(String, f64)>,
}

pub async fn run(args: DeployBenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let example = load_example(args.example.as_deref())?;
    let mut sandboxes = vec!["auto"];
    if args.compare_sandbox {
        sandboxes.push("off");
    }
    let mut servers = Vec::new();
    let mut cleanup = Vec::new();
    let mut url = String::new();
    let started = async {
        for sandbox in &sandboxes {
            let (db, db_url) = BenchDb::create(&args.database_url).await?;
            let data_dir = std::env::temp_dir().join(format!(
                "stackyard-bench-deploy-{}-{}",
                std::process::id(),
                stackyard_core::ids::random_hex(4)
            ));
            cleanup.push((db, data_dir.clone()));
            let serve = super::serve_args(
                &db_url,
                &data_dir,
                &[
                    "--runtime",
                    "local",
                    "--router-listen",
                    "127.0.0.1:0",
                    "--sandbox",
                    sandbox,
                ],
            )?;
            servers.push((stackyard_server::start(serve).await?, data_dir));
            url = db_url;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let result = match started {
        Ok(()) => run_on(&args, &example, &servers).await,
        Err(e) => Err(e),
    };
    for (server, _) in servers {
        server.stop().await;
    }
    for (db, data_dir) in cleanup {
        let _ = std::fs::remove_dir_all(&data_dir);
        db.drop_it().await;
    }
    let (deploys, starts) = result?;
    let report = report(&args, &example, &url, &deploys, &starts);
    emit(&report, args.json, print_report)
}

/// Each run: the apps' own start, then one deploy on each server (sandboxed first).
async fn run_on(
    args: &DeployBenchArgs,
    example: &Example,
    servers: &[(stackyard_server::RunningServer, PathBuf)],
) -> anyhow::Result<(Vec<Vec<DeployRun>>, Vec<AppStartRun>)> {
    stackyard_cli::tls::install_provider();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut targets = Vec::new();
    for (server, data_dir) in servers {
        targets.push((
            format!("http://{}", server.addr),
            super::admin_token(data_dir)?,
        ));
    }
    let mut deploys: Vec<Vec<DeployRun>> = targets.iter().map(|_| Vec::new()).collect();
    let mut starts = Vec::new();
    for _ in 0..args.runs {
        // Interleaved, so all see the same machine load.
        starts.push(app_start(example, args.timeout).await?);
        for ((base, token), runs) in targets.iter().zip(&mut deploys) {
            runs.push(deploy_once(&client, base, token, example, args).await?);
        }
    }
    Ok((deploys, starts))
}

fn load_example(given: Option<&Path>) -> anyhow::Result<Example> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => {
            let here = PathBuf::from("examples/two-service");
            let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-service");
            if here.join("stackyard.yaml").is_file() {
                here
            } else if checkout.join("stackyard.yaml").is_file() {
                checkout
            } else {
                bail!(
                    "cannot find examples/two-service (run from the repository root or pass --example DIR)"
                )
            }
        }
    };
    let manifest_text = std::fs::read_to_string(dir.join("stackyard.yaml"))
        .with_context(|| format!("reading {}", dir.join("stackyard.yaml").display()))?;
    let manifest = Manifest::parse(&manifest_text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("stackyard.yaml").display()))?;
    let mut services = Vec::new();
    for svc in &manifest.services {
        let name = svc.name.as_str().to_owned();
        let sdir = dir.join(svc.build.as_deref().unwrap_or(&name));
        let command = match svc
            .command
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            Some(c) => c.to_owned(),
            None => std::fs::read_to_string(sdir.join("Procfile"))
                .ok()
                .as_deref()
                .and_then(procfile_command)
                .with_context(|| {
                    format!("service `{name}` has no `command` and no Procfile `web` process")
                })?,
        };
        services.push(ExampleService {
            tarball: tar_dir(&sdir).with_context(|| format!("packing {}", sdir.display()))?,
            dir: sdir,
            command,
            env: svc.env.clone(),
            name,
        });
    }
    Ok(Example {
        dir,
        manifest_text,
        services,
    })
}

/// The directory packed as `stackyard deploy` packs it.
fn tar_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let packed = stackyard_cli::pack::pack_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(std::fs::read(packed.path())?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One timed deploy, its check through the router, and its teardown.
async fn deploy_once(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    example: &Example,
    args: &DeployBenchArgs,
) -> anyhow::Result<DeployRun> {
    let mut form = Form::new()
        .text("manifest", example.manifest_text.clone())
        .text("name", "bench-deploy");
    for s in &example.services {
        form = form.part(
            s.name.clone(),
            Part::bytes(s.tarball.clone()).file_name(format!("{}.tar.gz", s.name)),
        );
    }

    let started = Instant::now();
    let res = client
        .post(format!("{base}/stacks/new"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await?;
    let accepted = started.elapsed();
    if status != 202 {
        bail!("POST /stacks/new answered {status}: {body}");
    }
    let slug = body["stack_id"]
        .as_str()
        .context("POST /stacks/new answered without a stack_id")?
        .to_owned();
    let stack_url = format!("{base}/stacks/{slug}");

    let deadline = started + args.timeout;
    let stack = loop {
        let b: Value = client
            .get(&stack_url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        if b["status"] == "healthy" && b["release"]["status"] == "live" {
            break b;
        }
        if b["status"] == "failed" {
            bail!("the stack failed to deploy: {b}");
        }
        if Instant::now() > deadline {
            bail!("the stack was not healthy within {:?}: {b}", args.timeout);
        }
        tokio::time::sleep(args.poll).await;
    };
    let healthy = started.elapsed();

    // Not timed: the exposed services answer through the router.
    for svc in stack["services"].as_array().into_iter().flatten() {
        if let Some(url) = svc["url"].as_str() {
            check_through_router(client, url).await?;
        }
    }

    let deleting = Instant::now();
    let res = client.delete(&stack_url).bearer_auth(token).send().await?;
    // 200: torn down within the server's --delete-wait; 202: still going.
    if res.status() != 200 && res.status() != 202 {
        bail!("DELETE {slug} answered {}", res.status());
    }
    let deadline = deleting + args.timeout;
    loop {
        let res = client.get(&stack_url).bearer_auth(token).send().await?;
        if res.status() == 404 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{slug} was not gone within {:?}", args.timeout);
        }
        tokio::time::sleep(args.poll).await;
    }
    Ok(DeployRun {
        accepted_ms: ms(accepted),
        healthy_ms: ms(healthy),
        teardown_ms: ms(deleting.elapsed()),
    })
}

/// GETs `/` of a service URL (`http://<host>:<router port>`) from the router on 127.0.0.1 with
/// the URL's host, so no resolver is involved.
async fn check_through_router(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let authority = url
        .strip_prefix("http://")
        .with_context(|| format!("unexpected service url {url}"))?
        .trim_end_matches('/');
    let port = authority.rsplit_once(':').map_or("80", |(_, p)| p);
    let res = client
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", authority)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("{url} answered {} through the router", res.status());
    }
    Ok(())
}

/// Starts every service of the example directly, all at once, and times each until its port
/// accepts a TCP connection; then stops them.
async fn app_start(example: &Example, timeout: Duration) -> anyhow::Result<AppStartRun> {
    let mut ports = HashMap::new();
    for s in &example.services {
        ports.insert(s.name.as_str(), super::free_port()?);
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let home = std::env::var("HOME").ok();

    let started = Instant::now();
    let mut children = Vec::new();
    for s in &example.services {
        let port = ports[s.name.as_str()];
        let env = resolve_service_refs(&s.env, |name| {
            ports.get(name).map(|p| format!("http://127.0.0.1:{p}"))
        });
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&s.command)
            .current_dir(&s.dir)
            .env_clear()
            .env("PATH", &path)
            .env("PORT", port.to_string())
            .env("STACKYARD_STACK", "bench")
            .env("STACKYARD_SERVICE", &s.name)
            .env("STACKYARD_RELEASE", "1")
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(h) = &home {
            cmd.env("HOME", h);
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                stop_all(children).await;
                return Err(e).with_context(|| format!("starting `{}`", s.name));
            }
        }
    }

    // One probe task per service, so each is timed on its own.
    let probes: Vec<_> = example
        .services
        .iter()
        .map(|s| {
            let (name, port) = (s.name.clone(), ports[s.name.as_str()]);
            tokio::spawn(async move {
                let deadline = started + timeout;
                loop {
                    if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                        return Ok((name, ms(started.elapsed())));
                    }
                    if Instant::now() > deadline {
                        bail!("`{name}` did not listen on {port} within {timeout:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let mut per_service_ms = Vec::new();
    let mut failed = None;
    for p in probes {
        match p.await {
            Ok(Ok(r)) => per_service_ms.push(r),
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(e.into()),
        }
    }
    stop_all(children).await;
    if let Some(e) = failed {
        return Err(e);
    }
    let all_ms = per_service_ms.iter().map(|(_, t)| *t).fold(0.0, f64::max);
    Ok(AppStartRun {
        all_ms,
        per_service_ms,
    })
}

/// Kills each child's whole process group and reaps the child.
async fn stop_all(children: Vec<tokio::process::Child>) {
    for mut c in children {
        if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = c.kill().await;
    }
}

fn report(
    args: &DeployBenchArgs,
    example: &Example,
    url: &str,
    servers: &[Vec<DeployRun>],
    starts: &[AppStartRun],
) -> Value {
    let deploys = &servers[0];
    let spread = |v: Vec<f64>| Spread::of(&v).map(|s| s.json()).unwrap_or(Value::Null);
    let total: Vec<f64> = deploys.iter().map(|d| d.healthy_ms).collect();
    let app: Vec<f64> = starts.iter().map(|s| s.all_ms).collect();
    let total_s = Spread::of(&total);
    let app_s = Spread::of(&app);
    let overhead = match (total_s, app_s) {
        (Some(t), Some(a)) => json!({
            "median_ms": t.median_ms - a.median_ms,
            "min_ms": t.min_ms - a.min_ms,
        }),
        _ => Value::Null,
    };
    let mut per_service = serde_json::Map::new();
    for s in &example.services {
        let v: Vec<f64> = starts
            .iter()
            .flat_map(|r| r.per_service_ms.iter())
            .filter(|(n, _)| *n == s.name)
            .map(|(_, t)| *t)
            .collect();
        per_service.insert(s.name.clone(), spread(v));
    }
    let target_ms = 1500.0;
    let overhead_median = overhead["median_ms"].as_f64().unwrap_or(f64::INFINITY);
    json!({
        "example": example.dir.display().to_string(),
        "services": example.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "backend": if url.starts_with("sqlite") { "sqlite" } else { "postgres" },
        "runs": args.runs,
        "poll_ms": ms(args.poll),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "deploy": {
            "post_answered": spread(deploys.iter().map(|d| d.accepted_ms).collect()),
            "healthy": spread(total.clone()),
            "teardown": spread(deploys.iter().map(|d| d.teardown_ms).collect()),
            "healthy_runs_ms": total,
        },
        "app_start": {
            "all": spread(app.clone()),
            "per_service": per_service,
            "all_runs_ms": app,
        },
        "overhead": overhead,
        "sandbox_off": servers.get(1).map(|runs| json!({
            "healthy": spread(runs.iter().map(|d| d.healthy_ms).collect()),
            "healthy_runs_ms": runs.iter().map(|d| d.healthy_ms).collect::<Vec<_>>(),
        })),
        "target_overhead_ms": target_ms,
        "target_met": overhead_median <= target_ms,
    })
}

fn print_report(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let line = |label: &str, v: &Value| {
        println!(
            "  {label:<44} min {:>7.0} ms   median {:>7.0} ms   max {:>7.0} ms",
            f(&v["min_ms"]),
            f(&v["median_ms"]),
            f(&v["max_ms"])
        );
    };
    println!(
        "stackyard bench deploy — {} ({}), {} runs, backend {}, polled every {} ms, {} CPUs",
        r["example"].as_str().unwrap_or(""),
        r["services"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        r["runs"],
        r["backend"].as_str().unwrap_or(""),
        r["poll_ms"],
        r["cpus"],
    );
    line(
        "POST /stacks/new → healthy, release live",
        &r["deploy"]["healthy"],
    );
    line(
        "  of which POST answered (202)",
        &r["deploy"]["post_answered"],
    );
    line(
        "apps' own start (all together, TCP accept)",
        &r["app_start"]["all"],
    );
    if let Some(per) = r["app_start"]["per_service"].as_object() {
        for (name, v) in per {
            line(&format!("  {name}"), v);
        }
    }
    line("teardown (DELETE → 404)", &r["deploy"]["teardown"]);
    if r["sandbox_off"].is_object() {
        line(
            "same, --sandbox off: POST → healthy",
            &r["sandbox_off"]["healthy"],
        );
        println!(
            "  sandbox cost (median on − median off): {:.0} ms",
            f(&r["deploy"]["healthy"]["median_ms"]) - f(&r["sandbox_off"]["healthy"]["median_ms"])
        );
    }
    println!(
        "  control-plane overhead (median total − median app start): {:.0} ms (best runs: {:.0} ms); target ≤ {:.0} ms: {}",
        f(&r["overhead"]["median_ms"]),
        f(&r["overhead"]["min_ms"]),
        f(&r["target_overhead_ms"]),
        if r["target_met"] == true {
            "met"
        } else {
            "not met"
        }
    );
}
