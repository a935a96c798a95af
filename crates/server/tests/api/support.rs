//! `TestApp`: a real server on port 0 with a fresh database, driven over real HTTP.

use clap::Parser;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use stackyard_server::{RunningServer, ServeArgs};
use std::time::Duration;

use stackyard_testkit::TestDb;
pub use stackyard_testkit::{Backend, both_backends};

/// What a test writes to the store before the server starts (`TestApp::spawn_seeded`).
pub type Seed =
    Box<dyn FnOnce(stackyard_server::StoreArgs) -> std::pin::Pin<Box<dyn Future<Output = ()>>>>;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub admin_token: String,
    pub db_url: String,
    pub backend: Backend,
    pub data_dir: tempfile::TempDir,
    server: Option<RunningServer>,
    /// The command line the server was started with, for `restart`.
    argv: Vec<String>,
    db: TestDb,
}

impl Drop for TestApp {
    /// Whatever the suite's in-process servers logged so far must hold no secret.
    fn drop(&mut self) {
        stackyard_testkit::leaks::check_captured("an in-process test server");
    }
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    serve: ServeArgs,
}

impl TestApp {
    /// Starts a server on `backend`; `None` (the harness printed why) when PostgreSQL is not
    /// available outside CI.
    pub async fn spawn(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, &[]).await
    }

    pub async fn spawn_with(backend: Backend, extra: &[&str]) -> Option<TestApp> {
        Some(Self::spawn_inner(backend, extra, false, None).await?.0)
    }

    /// Starts a server on a fresh database that `seed` wrote to first (through the store, as a
    /// previous server would have left it).
    pub async fn spawn_seeded(backend: Backend, extra: &[&str], seed: Seed) -> Option<TestApp> {
        Some(
            Self::spawn_inner(backend, extra, false, Some(seed))
                .await?
                .0,
        )
    }

    /// A PostgreSQL-backed app whose server reaches the test database only through the
    /// returned proxy (`TestApp::db_url` stays direct, for the test's own checks).
    pub async fn spawn_behind_proxy(extra: &[&str]) -> Option<(TestApp, TcpProxy)> {
        let (app, proxy) = Self::spawn_inner(Backend::Postgres, extra, true, None).await?;
        Some((app, proxy.expect("a proxy was asked for")))
    }

    async fn spawn_inner(
        backend: Backend,
        extra: &[&str],
        proxied: bool,
        seed: Option<Seed>,
    ) -> Option<(TestApp, Option<TcpProxy>)> {
        stackyard_testkit::leaks::capture_in_process_logs();
        let db = TestDb::fresh(backend).await?;
        let db_url = db.url.clone();
        let data_dir = tempfile::tempdir().expect("temp dir");
        if let Some(seed) = seed {
            seed(stackyard_server::StoreArgs {
                data_dir: data_dir.path().to_owned(),
                database_url: Some(db_url.clone()),
            })
            .await;
        }
        let proxy = match proxied {
            true => Some(TcpProxy::start(db_authority(&db_url)).await),
            false => None,
        };
        let server_url = match &proxy {
            Some(p) => p.rewrite(&db_url),
            None => db_url.clone(),
        };
        let mut argv: Vec<String> = vec![
            "stackyard".into(),
            "--data-dir".into(),
            data_dir.path().display().to_string(),
            "--database-url".into(),
            server_url,
        ];
        if !extra.contains(&"--listen") {
            argv.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if !extra.contains(&"--runtime") {
            argv.extend(["--runtime".into(), "noop".into()]);
        }
        if !extra.contains(&"--noop-step") {
            argv.extend(["--noop-step".into(), "5ms".into()]);
        }
        if !extra.contains(&"--router-listen") {
            argv.extend(["--router-listen".into(), "127.0.0.1:0".into()]);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = Wrapper::parse_from(argv.clone()).serve;
        let server = stackyard_server::start(args).await.expect("server starts");
        let admin_token = stackyard_testkit::admin_token(data_dir.path());
        let app = TestApp {
            base: format!("http://{}", server.addr),
            client: stackyard_testkit::http_client(),
            admin_token,
            db_url,
            backend,
            data_dir,
            server: Some(server),
            argv,
            db,
        };
        Some((app, proxy))
    }

    /// Stops the server (jobs in flight are cancelled, as by a planned stop) and starts it
    /// again with the same command line, database and data directory, on a new port.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        let args = Wrapper::parse_from(self.argv.clone()).serve;
        let server = stackyard_server::start(args)
            .await
            .expect("server restarts");
        self.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A new team (via the operator command's code path) and its first token.
    pub async fn create_team(&self, name: &str, max_stacks: Option<i64>) -> String {
        let store = stackyard_server::StoreArgs {
            data_dir: self.data_dir.path().to_owned(),
            database_url: Some(self.db_url.clone()),
        };
        let token = stackyard_server::serve::with_store(
            &store,
            stackyard_server::serve::store_options_for(&store),
            stackyard_server::admin::CreateTeam {
                name: stackyard_core::TeamName::parse(name).expect("team name"),
                max_stacks,
            },
        )
        .await
        .expect("team created");
        stackyard_testkit::leaks::register(token.expose()).to_owned()
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        with_token(self.client.get(self.url(path)), token)
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        with_token(self.client.delete(self.url(path)), token)
    }

    pub fn post(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        with_token(self.client.post(self.url(path)), token)
    }

    pub fn patch(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        with_token(self.client.patch(self.url(path)), token)
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let res = self
            .get("/metrics", None)
            .send()
            .await
            .expect("request sent");
        res.text().await.expect("body")
    }

    /// `POST /stacks/new` with a form.
    pub async fn create_stack(&self, token: Option<&str>, form: Form) -> (u16, Value) {
        call(self.post("/stacks/new", token).multipart(form)).await
    }

    /// Polls `GET /stacks/:slug` until `done` accepts the body (or the status code is 404 when
    /// `want_404`), for up to 15 s.
    pub async fn wait_for(
        &self,
        slug: &str,
        token: Option<&str>,
        done: impl Fn(u16, &Value) -> bool,
    ) -> (u16, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (code, body) = call(self.get(&format!("/stacks/{slug}"), token)).await;
            if done(code, &body) {
                return (code, body);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting on {slug}: last {code} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A single integer from `sql`, read straight from the database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.db.scalar(sql).await
    }

    /// The first column of the first row of `sql` (bytes: cast there), as text.
    pub async fn text(&self, sql: &str) -> String {
        let rows = self.db.rows_of_bytes(sql).await;
        String::from_utf8(rows.into_iter().next().expect("a row")).expect("UTF-8")
    }

    /// Rows in `table` (optionally filtered by a SQL condition) read straight from the database.
    pub async fn count(&self, table: &str, filter: &str) -> i64 {
        let sql = if filter.is_empty() {
            format!("SELECT COUNT(*) FROM {table}")
        } else {
            format!("SELECT COUNT(*) FROM {table} WHERE {filter}")
        };
        self.scalar(&sql).await
    }
}

fn with_token(rb: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

pub async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let code = res.status().as_u16();
    let text = res.text().await.expect("body");
    let v =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body ({code}): {text}"));
    (code, v)
}

/// Sends `req` and returns the status and the JSON body.
pub async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    json_of(req.send().await.expect("request sent")).await
}

/// A gzipped tarball of `(path, contents)` files.
pub fn tarball(files: &[(&str, &str)]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    for (path, contents) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(contents.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, contents.as_bytes())
            .expect("tar entry");
    }
    b.into_inner().expect("tar").finish().expect("gzip")
}

pub const TWO_SERVICES: &str = "services:\n  api:\n    port: 3000\n    env:\n      WEB: service://web\n  web:\n    expose: true\n";

/// A valid two-service create form.
pub fn two_service_form(name: &str) -> Form {
    Form::new()
        .text("manifest", TWO_SERVICES)
        .text("name", name.to_owned())
        .part(
            "api",
            Part::bytes(tarball(&[
                ("Procfile", "web: python3 api.py\n"),
                ("api.py", "print(1)\n"),
            ]))
            .file_name("api.tar.gz"),
        )
        .part(
            "web",
            Part::bytes(tarball(&[(
                "Dockerfile",
                "FROM python:3\nCMD [\"python3\", \"-m\", \"http.server\"]\n",
            )]))
            .file_name("web.tar.gz"),
        )
}

/// Asserts the error envelope and returns its code.
pub fn assert_envelope(code: u16, body: &Value) -> String {
    assert!(code >= 400, "expected an error, got {code} {body}");
    assert_eq!(body["ok"], false, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["request_id"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if code == 429 || code == 503 {
        assert!(body["retry_after_seconds"].as_u64().is_some(), "{body}");
    }
    body["error"].as_str().expect("error code").to_owned()
}

/// Asserts an error answer: the envelope, with status `status` and error code `error`.
#[track_caller]
pub fn assert_error(code: u16, body: &Value, status: u16, error: &str) {
    assert_eq!(
        (code, assert_envelope(code, body).as_str()),
        (status, error)
    );
}

/// A gzipped tarball written header by header, so tests can build entries the `tar` crate's
/// safe API refuses (`..`, absolute paths, links out, non-UTF-8 names).
/// `(name, type, link target, data)` of one raw tar entry.
pub type RawEntry<'a> = (&'a [u8], tar::EntryType, Option<&'a [u8]>, &'a [u8]);

pub fn raw_tarball(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_old();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                old.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).expect("raw entry");
    }
    b.into_inner().expect("tar").finish().expect("gzip")
}

/// `host:port` of a `postgres://[user[:password]@]host[:port]/db` URL (5432 when it names no
/// port).
pub fn db_authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// A TCP proxy in front of the database, to cut and restore the server's connection to it:
/// `cut` drops every open connection and refuses new ones until `restore`.
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    /// `host:port` of the database behind it.
    upstream: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    kill: tokio::sync::watch::Sender<u64>,
}

impl TcpProxy {
    /// A proxy to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> TcpProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kill, kill_rx) = tokio::sync::watch::channel(0u64);
        let cut2 = cut.clone();
        let target = upstream.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut kill_rx = kill_rx.clone();
                // Only cuts after this connection was accepted apply to it.
                kill_rx.borrow_and_update();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = kill_rx.changed() => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            upstream,
            cut,
            kill,
        }
    }

    /// `url` pointing at the proxy instead of the upstream.
    pub fn rewrite(&self, url: &str) -> String {
        let rewritten = url.replacen(&self.upstream, &self.addr.to_string(), 1);
        assert_ne!(rewritten, url, "{url} names {}", self.upstream);
        rewritten
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.kill.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
