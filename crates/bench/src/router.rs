//! `stackyard bench router`: the router's throughput next to the same upstream hit directly.
//!
//! The router is the real one, `stackyard_runtime_local::run_router` with a `RouteTable`
//! entry, started in this process on this process's runtime as `stackyard serve` starts it.
//! A full server with a deployed service would measure the same code path plus a deploy; the
//! in-process router lets the same command also drive an in-process Rust upstream (which is
//! not something a stack can run) and a raw TCP relay as the lower bound of any proxy.
//!
//! Three targets, each loaded the same way (same loop, same connections, same request bytes):
//! - `direct`: the upstream itself;
//! - `router`: the router, with the `Host` the route is registered under;
//! - `relay`: a byte-for-byte TCP relay (one upstream connection per client connection,
//!   `copy_bidirectional`, no HTTP at all): one read and one write per direction per request,
//!   the least any proxy does, so `relay / direct` is the bound for `router / direct` on this
//!   machine.
//!
//! Upstreams (`--upstream`): `python`, an `http.server` keep-alive app like the services
//! Stackyard runs (a separate process), or `hyper`, an in-process Rust "ok" server on its own
//! two-thread runtime. The load loop runs on its own runtime (`--client-threads`). When `wrk`
//! is on `PATH`, each target is measured with it too (`--no-wrk` skips that).

use super::cpu;
use super::load::{self, LoadResult};
use super::{emit, percentile_ms};
use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use stackyard_runtime_local::{RouteTable, run_router};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The `Host` the route is registered under (sent to every target, so requests are identical).
const HOST: &str = "app.bench.localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpstreamKind {
    /// python3 `http.server` (HTTP/1.1 keep-alive, Content-Length), a separate process.
    Python,
    /// An in-process hyper server answering "ok", on its own two-thread runtime.
    Hyper,
}

#[derive(Debug, Clone, Args)]
pub struct RouterBenchArgs {
    /// What the router forwards to.
    #[arg(long, value_enum, default_value = "python")]
    pub upstream: UpstreamKind,
    #[command(flatten)]
    pub load: load::LoadArgs,
    /// Don't run wrk even when it is installed.
    #[arg(long)]
    pub no_wrk: bool,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RouterBenchArgs) -> anyhow::Result<()> {
    if args.load.connections == 0 || args.load.client_threads == 0 {
        bail!("--connections and --client-threads must be at least 1");
    }
    emit(&measure(&args).await?, args.json, print_report)
}

/// The upstream under test and what keeps it running.
enum UpstreamProc {
    Python(tokio::process::Child),
    Hyper(tokio::runtime::Runtime),
}

impl UpstreamProc {
    async fn stop(self) {
        match self {
            UpstreamProc::Python(mut child) => {
                let _ = child.kill().await;
            }
            UpstreamProc::Hyper(rt) => rt.shutdown_background(),
        }
    }
}

async fn measure(args: &RouterBenchArgs) -> anyhow::Result<Value> {
    let (upstream, upstream_proc) = match args.upstream {
        UpstreamKind::Python => {
            let (addr, child) = python_upstream().await?;
            (addr, UpstreamProc::Python(child))
        }
        UpstreamKind::Hyper => {
            let (addr, rt) = hyper_upstream()?;
            (addr, UpstreamProc::Hyper(rt))
        }
    };
    let pid = match &upstream_proc {
        UpstreamProc::Python(child) => child.id(),
        UpstreamProc::Hyper(_) => None,
    };
    let result = measure_with(args, upstream, pid).await;
    upstream_proc.stop().await;
    result
}

/// What the CPU accounting reads at both ends of a measured window.
struct Snapshot {
    machine: Option<cpu::MachineTicks>,
    /// This process's threads: `load`, `upstream` (the in-process hyper server), and `proxy`
    /// (everything else: the main runtime, which runs the router and the relay).
    threads: HashMap<&'static str, f64>,
    /// The Python upstream process.
    upstream_process: Option<f64>,
}

fn snapshot(upstream_pid: Option<u32>) -> Snapshot {
    Snapshot {
        machine: cpu::machine(),
        threads: cpu::threads_by_role(
            &[("bench-load", "load"), ("bench-upstream", "upstream")],
            "proxy",
        ),
        upstream_process: upstream_pid.and_then(cpu::process_s),
    }
}

/// CPU time per request of each part between two snapshots, in microseconds, and the share of
/// the machine that was busy. `load_outside` is the CPU time of a load generator outside this
/// process (wrk), when the load came from one.
fn cpu_json(a: &Snapshot, b: &Snapshot, requests: u64, load_outside: Option<Option<f64>>) -> Value {
    let per_request = |d: Option<f64>| {
        d.filter(|_| requests > 0)
            .map(|d| d.max(0.0) * 1e6 / requests as f64)
    };
    let thread = |role: &str| Some(b.threads.get(role)? - a.threads.get(role).unwrap_or(&0.0));
    let load = match load_outside {
        Some(outside) => outside,
        None => thread("load"),
    };
    let upstream = match (a.upstream_process, b.upstream_process) {
        (Some(x), Some(y)) => Some(y - x),
        _ => thread("upstream"),
    };
    let parts = [
        per_request(load),
        per_request(thread("proxy")),
        per_request(upstream),
    ];
    let total = parts.iter().try_fold(0.0, |sum, p| p.map(|p| sum + p));
    json!({
        "busy": cpu::busy_share(a.machine, b.machine),
        "load_us": parts[0],
        "proxy_us": parts[1],
        "upstream_us": parts[2],
        "total_us": total,
    })
}

async fn measure_with(
    args: &RouterBenchArgs,
    upstream: SocketAddr,
    upstream_pid: Option<u32>,
) -> anyhow::Result<Value> {
    // The router, exactly as `stackyard serve` runs it: on this process's runtime.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let router = listener.local_addr()?;
    let routes = RouteTable::new();
    routes.insert(HOST, upstream);
    let (stop_router, stopped) = watch::channel(false);
    let router_task = tokio::spawn(run_router(listener, routes, stopped));

    let relay_listener = TcpListener::bind("127.0.0.1:0").await?;
    let relay = relay_listener.local_addr()?;
    let relay_task = tokio::spawn(run_relay(relay_listener, upstream));

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.load.client_threads)
        .thread_name("bench-load")
        .enable_all()
        .build()
        .context("starting the load loop's runtime")?;

    let targets = [("direct", upstream), ("router", router), ("relay", relay)];
    let mut looped = serde_json::Map::new();
    let request = load::get(HOST, "/", &[]);
    for (name, addr) in targets {
        let (r, before, after) = load::run(
            client_rt.handle(),
            addr,
            &request,
            args.load.connections,
            args.load.warmup,
            args.load.duration,
            || snapshot(upstream_pid),
        )
        .await;
        let mut v = load_json(&r);
        v["cpu"] = cpu_json(&before, &after, r.ok, None);
        looped.insert(name.into(), v);
    }
    client_rt.shutdown_background();

    let wrk = if args.no_wrk {
        Value::Null
    } else {
        match wrk_version().await {
            None => Value::Null,
            Some(version) => {
                let mut runs = serde_json::Map::new();
                runs.insert("version".into(), json!(version));
                for (name, addr) in targets {
                    runs.insert(name.into(), run_wrk(args, addr, upstream_pid).await?);
                }
                Value::Object(runs)
            }
        }
    };

    let _ = stop_router.send(true);
    let _ = router_task.await;
    relay_task.abort();

    let rate = |v: &Value, k: &str| v[k]["req_per_s"].as_f64().unwrap_or(0.0);
    let looped = Value::Object(looped);
    let ratio = |v: &Value, k: &str| rate(v, k) / rate(v, "direct").max(f64::MIN_POSITIVE);
    let wrk_ratios = if wrk.is_null() {
        Value::Null
    } else {
        json!({ "router_vs_direct": ratio(&wrk, "router"), "relay_vs_direct": ratio(&wrk, "relay") })
    };
    Ok(json!({
        "upstream": match args.upstream { UpstreamKind::Python => "python", UpstreamKind::Hyper => "hyper" },
        "connections": args.load.connections,
        "duration_s": args.load.duration.as_secs_f64(),
        "warmup_s": args.load.warmup.as_secs_f64(),
        "client_threads": args.load.client_threads,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "router_vs_direct": ratio(&looped, "router"),
        "relay_vs_direct": ratio(&looped, "relay"),
        "router_vs_relay": rate(&looped, "router") / rate(&looped, "relay").max(f64::MIN_POSITIVE),
        "loop": looped,
        "wrk": wrk,
        "wrk_ratios": wrk_ratios,
    }))
}

fn load_json(r: &LoadResult) -> Value {
    json!({
        "requests": r.ok,
        "errors": r.errors,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "req_per_s": r.rate(),
        "p50_ms": percentile_ms(&r.latencies_us, 0.50),
        "p99_ms": percentile_ms(&r.latencies_us, 0.99),
    })
}

fn print_report(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!(
        "stackyard bench router — upstream {}, {} connections, {} s per target (+{} s warm-up), load loop on {} thread(s), {} CPUs",
        r["upstream"].as_str().unwrap_or(""),
        r["connections"],
        r["duration_s"],
        r["warmup_s"],
        r["client_threads"],
        r["cpus"],
    );
    let rows = [
        ("direct", "upstream directly"),
        ("router", "through the router"),
        ("relay", "raw TCP relay (bound)"),
    ];
    let us = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.1}"))
            .unwrap_or_else(|| "-".into())
    };
    let table = |title: &str, v: &Value| {
        println!("  {title}");
        println!(
            "    {:<22} {:>8} {:>6} {:>7} {:>7} {:>6} {:>5} | {:>24}",
            "",
            "req/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "errors",
            "busy",
            "CPU µs/req: load proxy upstream"
        );
        let direct = f(&v["direct"]["req_per_s"]).max(f64::MIN_POSITIVE);
        for (key, label) in rows {
            let x = &v[key];
            let c = &x["cpu"];
            let busy = c["busy"]
                .as_f64()
                .map(|b| format!("{:.0}%", b * 100.0))
                .unwrap_or_else(|| "-".into());
            println!(
                "    {:<22} {:>8.0} {:>5.0}% {:>7.2} {:>7.2} {:>6} {:>5} | {:>15} {:>5} {:>8}",
                label,
                f(&x["req_per_s"]),
                100.0 * f(&x["req_per_s"]) / direct,
                f(&x["p50_ms"]),
                f(&x["p99_ms"]),
                x["errors"].as_u64().unwrap_or(0),
                busy,
                us(&c["load_us"]),
                us(&c["proxy_us"]),
                us(&c["upstream_us"]),
            );
        }
    };
    table("Rust load loop:", &r["loop"]);
    if let Some(version) = r["wrk"]["version"].as_str() {
        table(
            &format!(
                "wrk ({version}) -t{} -c{}:",
                r["client_threads"], r["connections"]
            ),
            &r["wrk"],
        );
    }
    let ratio = f(&r["router_vs_direct"]);
    println!(
        "  router / direct: {:.0}% (target ≥ 70%: {}); relay / direct (bound): {:.0}%; router / relay: {:.0}%",
        100.0 * ratio,
        if ratio >= 0.70 { "met" } else { "not met" },
        100.0 * f(&r["relay_vs_direct"]),
        100.0 * f(&r["router_vs_relay"]),
    );
}

/// A byte relay: each client connection gets its own upstream connection, and bytes are
/// copied both ways until either side closes.
async fn run_relay(listener: TcpListener, upstream: SocketAddr) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (mut client, mut server) = (client, server);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}

/// The Python upstream: `http.server` with HTTP/1.1 keep-alive and a `Content-Length`, as a
/// well-behaved Python service would answer. Its response goes out in one `send` (buffered
/// `wfile`, flushed by the handler after each request) with Nagle off; written unbuffered, head
/// and body are two sends and the second waits for the peer's delayed ACK (~40 ms), which
/// would make the upstream, not the router, the thing measured.
const PYTHON_UPSTREAM: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    request_queue_size = 512
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients dropping keep-alive connections at the end of a run

Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

async fn python_upstream() -> anyhow::Result<(SocketAddr, tokio::process::Child)> {
    let port = super::free_port()?;
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(PYTHON_UPSTREAM)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting python3")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok((addr, child));
        }
        if let Some(status) = child.try_wait()? {
            bail!("the python upstream exited ({status}) before listening on {addr}");
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            bail!("the python upstream did not listen on {addr} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Rust upstream: hyper's HTTP/1 server answering `200 ok` on its own two-thread runtime
/// (as a separate Rust service on this machine would have).
fn hyper_upstream() -> anyhow::Result<(SocketAddr, tokio::runtime::Runtime)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-upstream")
        .enable_all()
        .build()
        .context("starting the upstream's runtime")?;
    let std_listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let listener = {
        let _entered = rt.enter();
        TcpListener::from_std(std_listener)?
    };
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| {
                    std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, rt))
}

/// `wrk`'s version line, or `None` when it is not installed.
async fn wrk_version() -> Option<String> {
    let out = tokio::process::Command::new("wrk")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    // `wrk --version` prints its banner and exits 1.
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let first = text.lines().next()?.trim();
    first.starts_with("wrk").then(|| {
        first
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

async fn run_wrk(
    args: &RouterBenchArgs,
    addr: SocketAddr,
    upstream_pid: Option<u32>,
) -> anyhow::Result<Value> {
    let threads = args
        .load
        .client_threads
        .min(args.load.connections)
        .to_string();
    let secs = args.load.duration.as_secs().max(1).to_string();
    let before = snapshot(upstream_pid);
    let child = tokio::process::Command::new("wrk")
        .args([
            "-t",
            &threads,
            "-c",
            &args.load.connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            "-H",
            &format!("Host: {HOST}"),
            &format!("http://{addr}/"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running wrk")?;
    // wrk's own CPU time, read until it exits (it only prints its report after the run).
    let wrk_cpu = {
        let pid = child.id();
        let mut last = None;
        let output = child.wait_with_output();
        tokio::pin!(output);
        loop {
            tokio::select! {
                out = &mut output => break (out.context("running wrk")?, last),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if let Some(cpu) = pid.and_then(cpu::process_s) {
                        last = Some(cpu);
                    }
                }
            }
        }
    };
    let (out, wrk_cpu) = wrk_cpu;
    let after = snapshot(upstream_pid);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let parsed = parse_wrk(&text).with_context(|| format!("unexpected wrk output:\n{text}"))?;
    Ok(json!({
        "requests": parsed.requests,
        "req_per_s": parsed.rate,
        "p50_ms": parsed.p50_ms,
        "p99_ms": parsed.p99_ms,
        "errors": parsed.errors,
        "cpu": cpu_json(&before, &after, parsed.requests, Some(wrk_cpu)),
    }))
}

#[derive(Debug, PartialEq)]
struct WrkResult {
    requests: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Requests/sec, the 50% and 99% latencies and the error counts of `wrk --latency` output.
fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut rate = None;
    let mut requests = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0u64;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => rate = words.next().and_then(|w| w.parse().ok()),
            Some("50%") => p50 = words.next().and_then(wrk_duration_ms),
            Some("99%") => p99 = words.next().and_then(wrk_duration_ms),
            Some(n) if words.next() == Some("requests") => requests = n.parse().ok(),
            _ => {}
        }
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(WrkResult {
        requests: requests?,
        rate: rate?,
        p50_ms: p50?,
        p99_ms: p99?,
        errors,
    })
}

/// `613.00us`, `2.03ms`, `1.50s`, `1.00m` in milliseconds.
fn wrk_duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:40000/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  512.00us  12.00ms   80.00%
    Req/Sec    30.00k     2.00k   35.00k    70.00%
  Latency Distribution
     50%  613.00us
     75%    1.10ms
     90%    1.50ms
     99%    2.03ms
  600000 requests in 10.00s, 50.00MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  60000.12
Transfer/sec:      5.00MB
";

    #[test]
    fn wrk_output_is_parsed() {
        assert_eq!(
            parse_wrk(WRK),
            Some(WrkResult {
                requests: 600000,
                rate: 60000.12,
                p50_ms: 0.613,
                p99_ms: 2.03,
                errors: 6,
            })
        );
        assert_eq!(parse_wrk("nothing"), None);
        assert_eq!(wrk_duration_ms("1.50s"), Some(1500.0));
        assert_eq!(wrk_duration_ms("12"), None);
    }
}
