//! Running the `stackyard` binary as a child process.

use reqwest::multipart::{Form, Part};
use serde_json::Value;
use stackyard_testkit::process::ServerProcess;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stackyard");

pub use stackyard_testkit::{Backend, TestDb as Db, both_backends};

/// A `stackyard serve` child process (see `stackyard_testkit::process`).
pub struct Server {
    inner: ServerProcess,
    pub data_dir: PathBuf,
    /// `http://ADDR` of the router (local runtime only).
    pub router: Option<String>,
}

impl Server {
    /// The runtime defaults to `noop` here; `extra` may name `--runtime local`.
    pub fn start(db_url: &str, data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(db_url, data_dir, extra, &[])
    }

    /// `start` with extra environment variables for the server.
    pub fn start_with_env(
        db_url: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let inner = ServerProcess::start_with_env(BIN, db_url, data_dir, extra, env);
        Server {
            router: inner.router.clone(),
            data_dir: data_dir.to_owned(),
            inner,
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    pub fn kill9(&mut self) {
        self.inner.kill9();
    }

    /// SIGTERM, then the exit status if the server exits within `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.inner.terminate(within)
    }

    /// Every line the server has logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.inner.log_lines()
    }

    pub fn admin_token(&self) -> String {
        stackyard_testkit::admin_token(&self.data_dir)
    }

    pub fn url(&self, path: &str) -> String {
        self.inner.url(path)
    }
}

/// A server with the local runtime and `extra` flags on a fresh SQLite database and data
/// directory (keep all three alive for the test).
pub async fn local_server(extra: &[&str]) -> (Db, tempfile::TempDir, Server) {
    let db = Db::fresh(Backend::Sqlite).await.expect("sqlite");
    let data = tempfile::tempdir().unwrap();
    let mut flags = vec!["--runtime", "local"];
    flags.extend(extra);
    let server = Server::start(&db.url, data.path(), &flags);
    (db, data, server)
}

pub async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let code = res.status().as_u16();
    let text = res.text().await.expect("body");
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON ({code}): {text}")),
    )
}

pub fn tarball() -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    let body = b"web: ./run\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "Procfile", &body[..]).expect("tar");
    b.into_inner().expect("tar").finish().expect("gzip")
}

/// The create form of a one-service stack (`app`, a Procfile).
pub fn one_service_form(name: &str) -> Form {
    Form::new()
        .text("manifest", "services:\n  app: {}\n")
        .text("name", name.to_owned())
        .part("app", Part::bytes(tarball()).file_name("app.tar.gz"))
}

pub async fn create_stack(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    name: &str,
) -> String {
    let form = one_service_form(name);
    let res = client
        .post(server.url("/stacks/new"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .expect("create");
    let (code, body) = json_of(res).await;
    assert_eq!(code, 202, "{body}");
    body["stack_id"].as_str().expect("stack_id").to_owned()
}

/// Polls until `done(status code, body)` holds, for up to `within`.
pub async fn wait_until(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    slug: &str,
    within: Duration,
    done: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = Instant::now() + within;
    loop {
        let res = client
            .get(server.url(&format!("/stacks/{slug}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        let (code, body) = json_of(res).await;
        if done(code, &body) {
            return (code, body);
        }
        assert!(
            Instant::now() < deadline,
            "timed out on {slug}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn write_app(dir: &Path, manifest: &str, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("stackyard.yaml"), manifest).unwrap();
    for (path, body) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
}

/// The process groups in a stack's run records (`<data dir>/run/<slug>/*.json`).
pub fn recorded_groups(data: &Path, slug: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(data.join("run").join(slug)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter_map(|rec| rec["pgid"].as_i64())
        .map(|pgid| pgid as i32)
        .collect()
}

/// Live (not zombie) processes of process group `pgid`, from `/proc/*/stat`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`: comm may hold spaces, so split after its `)`.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str()) {
            pids.push(pid);
        }
    }
    pids
}

/// The run record of a stack's service: (leader pid, port).
pub fn run_record(data: &Path, slug: &str, service: &str) -> (i64, i64) {
    let dir = data.join("run").join(slug);
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("-{service}.json"))
        })
        .unwrap_or_else(|| panic!("no run record for {service} in {}", dir.display()));
    let rec: Value = serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
    (rec["pgid"].as_i64().unwrap(), rec["port"].as_i64().unwrap())
}

/// A program a test starts beside the server (a CA, a DNS server), killed by its pid when
/// dropped.
pub struct Helper(std::process::Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` (its output discarded) and waits up to 10 s for it to listen on `port`. A
/// program missing from the machine skips the test (`None`, said on stderr) except under CI,
/// where it fails it: `.ci/run` installs what the tests run (Debian's `pebble` package).
pub fn start_helper(mut cmd: std::process::Command, port: u16) -> Option<Helper> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let helper = match child {
        Ok(c) => Helper(c),
        Err(e) if !stackyard_testkit::under_ci() => {
            eprintln!("skipping: no {name} (apt-get install pebble): {e}");
            return None;
        }
        Err(e) => panic!("{name} is needed under CI (.ci/run installs it): {e}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(helper)
}
