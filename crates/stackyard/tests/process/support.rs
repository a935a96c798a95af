//! Running the `stackyard` binary as a child process.

use reqwest::multipart::{Form, Part};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stackyard");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database for a test; `None` when PostgreSQL is unavailable outside CI.
pub struct Db {
    pub url: String,
    _sqlite: Option<stackyard_testkit::sqlite::SqliteTestDb>,
    _pg: Option<stackyard_testkit::pg::PgTestDb>,
}

impl Db {
    pub async fn fresh(backend: Backend) -> Option<Db> {
        match backend {
            Backend::Sqlite => {
                let db = stackyard_testkit::sqlite::fresh();
                Some(Db {
                    url: db.url.clone(),
                    _sqlite: Some(db),
                    _pg: None,
                })
            }
            Backend::Postgres => {
                let db = stackyard_testkit::pg::fresh().await?;
                Some(Db {
                    url: db.url.clone(),
                    _sqlite: None,
                    _pg: Some(db),
                })
            }
        }
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        if self.url.starts_with("sqlite") {
            let pool = sqlx::SqlitePool::connect(&self.url).await.expect("sqlite");
            let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&pool)
                .await
                .expect(sql);
            pool.close().await;
            n
        } else {
            let pool = sqlx::PgPool::connect(&self.url).await.expect("pg");
            let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&pool)
                .await
                .expect(sql);
            pool.close().await;
            n
        }
    }
}

/// A `stackyard serve` child process.
pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    /// `http://ADDR` of the router (local runtime only).
    pub router: Option<String>,
}

impl Server {
    /// Starts the binary and waits for its `api listening on http://ADDR` line (and, with
    /// `--runtime local` in `extra`, its router line). The runtime defaults to `noop` here.
    pub fn start(db_url: &str, data_dir: &Path, extra: &[&str]) -> Server {
        let local = extra.windows(2).any(|w| w == ["--runtime", "local"]);
        let runtime: &[&str] = if local { &[] } else { &["--runtime", "noop"] };
        let router: &[&str] = if local && !extra.contains(&"--router-listen") {
            &["--router-listen", "127.0.0.1:0"]
        } else {
            &[]
        };
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--database-url", db_url])
            .args(runtime)
            .args(router)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("STACKYARD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stackyard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        // Keep draining stderr for the life of the process so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (what, marker) in [("api", "api listening on http://"), ("router", "router listening on http://")] {
                    if let Some(i) = line.find(marker) {
                        let addr: String = line[i + marker.len()..].chars().take_while(|c| !c.is_whitespace()).collect();
                        let _ = tx.send((what, addr));
                    }
                }
                if std::env::var_os("STACKYARD_TEST_SERVER_LOG").is_some() {
                    eprintln!("server: {line}");
                }
            }
        });
        let mut base = None;
        let mut router = None;
        while base.is_none() || (local && router.is_none()) {
            let (what, addr) = rx.recv_timeout(Duration::from_secs(60)).expect("server printed its addresses");
            match what {
                "api" => base = Some(format!("http://{addr}")),
                _ => router = Some(format!("http://{addr}")),
            }
        }
        Server { child, base: base.unwrap_or_default(), data_dir: data_dir.to_owned(), router }
    }

    pub fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .expect("admin token")
            .trim()
            .to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// Stops the server the way an operator would (SIGTERM: it stops its services too), so a test
/// leaves no process behind; SIGKILL only if it does not exit in time.
impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let code = res.status().as_u16();
    let text = res.text().await.expect("body");
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON ({code}): {text}")),
    )
}

fn tarball() -> Vec<u8> {
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

pub async fn create_stack(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    name: &str,
) -> String {
    let form = Form::new()
        .text("manifest", "services:\n  app: {}\n")
        .text("name", name.to_owned())
        .part("app", Part::bytes(tarball()).file_name("app.tar.gz"));
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

/// Declares a test body `async fn name(backend: Backend)` once and runs it on both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() { super::$name($crate::support::Backend::Sqlite).await }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() { super::$name($crate::support::Backend::Postgres).await }
            )*
        }
    };
}
