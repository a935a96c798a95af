//! Test harness: a runtime on a fresh data dir with its router on port 0, tarball builders, a
//! status-recording sink, and `/proc` helpers. Dropping a `Harness` SIGKILLs every process
//! group still recorded under its `run/`, so a failing test leaves nothing running.

use flate2::Compression;
use flate2::write::GzEncoder;
use stackyard_core::model::{ReleaseService, ServiceStatus, StackId};
use stackyard_core::runtime::{BoxFuture, DeployPlan, StatusSink};
use stackyard_core::{EnvMap, ServiceName, StackSlug};
use stackyard_runtime_local::{LocalConfig, LocalRuntime, run_router};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A small app on python3's standard library. It listens on `$PORT` and answers:
/// `/` its service name and release; `/env` its whole environment as JSON; `/call/VAR` the
/// answer of `$VAR` + `/`; `/headers` the request headers; `/healthz` 200, or 500 with
/// `UNHEALTHY` set. At start it prints `BOOT_LINES` numbered lines (and one stderr line with
/// `STDERR_LINE`); with `CRASH` set it exits 3 instead of serving.
pub const APP: &str = r#"
import http.server, json, os, sys, urllib.request
port = int(os.environ["PORT"])
name = os.environ.get("STACKYARD_SERVICE", "?")
print(f"{name} starting on {port}", flush=True)
for i in range(int(os.environ.get("BOOT_LINES", "0"))):
    print(f"boot line {i}", flush=True)
if os.environ.get("STDERR_LINE"):
    print(os.environ["STDERR_LINE"], file=sys.stderr, flush=True)
if os.environ.get("CRASH"):
    print("about to crash", flush=True)
    print("fatal: crashing on purpose", file=sys.stderr, flush=True)
    sys.exit(3)

class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        print(f"GET {self.path}", flush=True)
        if self.path == "/":
            return self.reply(200, f"{name} release {os.environ.get('STACKYARD_RELEASE')}".encode())
        if self.path == "/env":
            return self.reply(200, json.dumps(dict(os.environ)).encode(), "application/json")
        if self.path == "/healthz":
            return self.reply(500 if os.environ.get("UNHEALTHY") else 200, b"ok")
        if self.path.startswith("/call/"):
            target = os.environ[self.path[len("/call/"):]] + "/"
            with urllib.request.urlopen(target, timeout=10) as r:
                return self.reply(200, b"via " + r.read())
        self.reply(404, b"not here")

http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub cfg: LocalConfig,
    pub rt: LocalRuntime,
    pub router: SocketAddr,
    pub http: reqwest::Client,
    shutdown: watch::Sender<bool>,
    router_task: Option<JoinHandle<()>>,
}

impl Harness {
    pub async fn start(tweak: impl FnOnce(&mut LocalConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router = listener.local_addr().unwrap();
        let mut cfg = LocalConfig::new(dir.path());
        cfg.router_port = router.port();
        // Generous: these machines are small and busy.
        cfg.deploy_timeout = Duration::from_secs(40);
        cfg.stop_grace = Duration::from_secs(2);
        tweak(&mut cfg);
        let rt = LocalRuntime::new(cfg.clone());
        let (shutdown, rx) = watch::channel(false);
        let router_task = Some(tokio::spawn(run_router(listener, rt.routes(), rx)));
        let http = stackyard_testkit::http_client_builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            dir,
            cfg,
            rt,
            router,
            http,
            shutdown,
            router_task,
        }
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    /// Simulates a server crash and restart: the runtime is dropped without a teardown (its
    /// processes keep running), and a new runtime and router start on the same data dir and
    /// router port.
    pub async fn restart(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.router_task.take() {
            task.await.unwrap();
        }
        let listener = TcpListener::bind(self.router).await.unwrap();
        self.rt = LocalRuntime::new(self.cfg.clone());
        let (shutdown, rx) = watch::channel(false);
        self.shutdown = shutdown;
        self.router_task = Some(tokio::spawn(run_router(listener, self.rt.routes(), rx)));
    }

    /// Stores a service tarball holding `files` as an artifact; returns its digest.
    pub fn artifact(&self, files: &[(&str, &[u8])]) -> String {
        let bytes = targz(files);
        self.store_artifact(&bytes)
    }

    pub fn store_artifact(&self, bytes: &[u8]) -> String {
        let digest = stackyard_core::ids::sha256_hex(bytes);
        let path = stackyard_core::runtime::artifact_path(self.data(), &digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        digest
    }

    /// A GET through the router to the host of `url` (a service URL, or a bare host).
    pub async fn get(&self, url: &str, path: &str) -> reqwest::Result<(u16, String)> {
        let host = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        let r = self
            .http
            .get(format!("http://{}{path}", self.router))
            .header("host", host)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.text().await?))
    }

    /// The run records under `run/` (or `run/<slug>/`).
    pub fn records(&self, slug: Option<&StackSlug>) -> Vec<serde_json::Value> {
        let mut dir = self.data().join("run");
        if let Some(s) = slug {
            dir.push(s.as_str());
        }
        records_in(&dir)
    }

    pub fn pgids(&self, slug: Option<&StackSlug>) -> Vec<i32> {
        self.records(slug)
            .iter()
            .map(|r| r["pgid"].as_i64().unwrap() as i32)
            .collect()
    }

    pub fn path(&self, parts: &[&str]) -> PathBuf {
        parts
            .iter()
            .fold(self.data().to_path_buf(), |p, s| p.join(s))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for record in records_in(&self.data().join("run")) {
            let pgid = record["pgid"].as_i64().unwrap_or(0) as i32;
            let start = record["start_time"].as_u64().unwrap_or(0);
            let leader_is_other = proc_stat(pgid).is_some_and(|(_, _, s)| s != start);
            if pgid > 1 && !leader_is_other {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn records_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(records_in(&p));
        } else if p.extension().is_some_and(|x| x == "json")
            && let Ok(v) = serde_json::from_slice(&std::fs::read(&p).unwrap_or_default())
        {
            out.push(v);
        }
    }
    out
}

/// `(state, pgrp, start time)` of a process.
pub fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    Some((
        f.first()?.chars().next()?,
        f.get(2)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// Processes of group `pgid` that are not dead (zombies awaiting their reaper don't count).
pub fn live_members(pgid: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .filter(|(state, pgrp, _)| *pgrp == pgid && !matches!(state, 'Z' | 'X'))
        .count()
}

/// Waits (up to `limit`) for `cond`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn targz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        builder.append_data(&mut h, name, *data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A gzipped tar whose entry names are written into the headers as given (so `..` and
/// absolute names are possible), with `(name, link target)` symlinks.
pub fn raw_targz(files: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = Vec::new();
    let mut push = |name: &str, kind: tar::EntryType, data: &[u8], link: &str| {
        let mut h = tar::Header::new_old();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    };
    for (name, data) in files {
        push(name, tar::EntryType::Regular, data, "");
    }
    for (name, target) in symlinks {
        push(name, tar::EntryType::Symlink, b"", target);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

pub fn slug() -> StackSlug {
    StackSlug::generate()
}

pub fn service(
    name: &str,
    artifact: &str,
    command: &str,
    expose: bool,
    env: &[(&str, &str)],
) -> ReleaseService {
    ReleaseService {
        name: ServiceName::parse(name).unwrap(),
        artifact: artifact.to_owned(),
        image: None,
        command: command.to_owned(),
        workdir: String::new(),
        port: 8080,
        expose,
        health: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        needs: Vec::new(),
    }
}

pub fn plan(
    slug: &StackSlug,
    release: i64,
    services: Vec<ReleaseService>,
    env: &[(&str, &str)],
) -> DeployPlan {
    let vars: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    DeployPlan {
        stack_id: StackId(1),
        slug: slug.clone(),
        team: None,
        tier: "free".into(),
        release,
        env_version: 0,
        services,
        env: EnvMap::from_map(vars),
        granted: Vec::new(),
    }
}

pub fn name(s: &str) -> ServiceName {
    ServiceName::parse(s).unwrap()
}

/// One reported status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub service: String,
    pub status: ServiceStatus,
    pub url: Option<String>,
    pub error: Option<String>,
}

#[derive(Default)]
pub struct RecordingSink {
    reports: Mutex<Vec<Report>>,
}

impl RecordingSink {
    pub fn statuses(&self, service: &str) -> Vec<ServiceStatus> {
        self.of(service).into_iter().map(|r| r.status).collect()
    }

    pub fn last(&self, service: &str) -> Report {
        self.of(service).pop().expect("a report for the service")
    }

    fn of(&self, service: &str) -> Vec<Report> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.service == service)
            .cloned()
            .collect()
    }
}

impl StatusSink for RecordingSink {
    fn service_status<'a>(
        &'a self,
        service: &'a ServiceName,
        status: ServiceStatus,
        url: Option<&'a str>,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, ()> {
        self.reports.lock().unwrap().push(Report {
            service: service.to_string(),
            status,
            url: url.map(str::to_owned),
            error: error.map(str::to_owned),
        });
        Box::pin(async {})
    }
}
