//! Test support: a real `stackyard serve` child on port 0 with a fresh SQLite database, the
//! `stackyard` binary run as a client with its own config directory, an example stack
//! directory, and a scripted HTTP server for the cases a real server cannot be made to produce
//! on demand (503 storms, a deploy that fails, a stream that drops).

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use stackyard_testkit::process::ServerProcess;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stackyard");
/// Longest a single client command may take before the test calls it hung.
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// A `stackyard serve` child on a fresh SQLite database: by default the noop runtime with
/// 5 ms steps (`extra` may name another `--runtime` or `--noop-step`).
pub struct Server {
    _inner: ServerProcess,
    pub base: String,
    pub data: tempfile::TempDir,
    _db: stackyard_testkit::sqlite::SqliteTestDb,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let db = stackyard_testkit::sqlite::fresh();
        let data = tempfile::tempdir().unwrap();
        let inner = ServerProcess::start(BIN, &db.url, data.path(), extra);
        Server {
            base: inner.base.clone(),
            _inner: inner,
            data,
            _db: db,
        }
    }

    pub fn admin_token(&self) -> String {
        stackyard_testkit::admin_token(self.data.path())
    }
}

/// The repository's `examples/NAME` stack directory.
pub fn repo_example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// Copies a directory tree (regular files and directories only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// `GET /` through the router at `url`'s port with `url`'s host: (status line, body).
pub fn get_via_router(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':').unwrap();
    let mut conn = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// What one client invocation did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    /// stdout as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    /// stdout as JSON lines.
    pub fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?} in {self:?}"))
            })
            .collect()
    }

    /// stderr as the one JSON error document of `--json`.
    pub fn json_error(&self) -> Value {
        let last = self.stderr.lines().last().unwrap_or("");
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("stderr does not end in a JSON error ({e}): {self:?}"))
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(self.code, 0, "{self:#?}");
        self
    }

    #[track_caller]
    pub fn code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "{self:#?}");
        self
    }
}

/// The client binary with a private config directory and no inherited `STACKYARD_*` settings.
pub struct Client {
    pub config_home: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Client {
    pub fn new() -> Client {
        Client {
            config_home: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    /// A client using the server and token through `STACKYARD_URL` / `STACKYARD_TOKEN`.
    pub fn with_env(url: &str, token: &str) -> Client {
        let mut c = Client::new();
        c.env.push(("STACKYARD_URL".into(), url.into()));
        c.env.push(("STACKYARD_TOKEN".into(), token.into()));
        c
    }

    /// This client with one more environment variable set.
    pub fn with(mut self, key: &str, value: &str) -> Client {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn config_file(&self) -> PathBuf {
        self.config_home
            .path()
            .join("stackyard")
            .join("config.toml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("STACKYARD_URL")
            .env_remove("STACKYARD_TOKEN")
            .env_remove("STACKYARD_CACERT")
            .env_remove("STACKYARD_LOG")
            .env_remove("NO_COLOR")
            .env("XDG_CONFIG_HOME", self.config_home.path())
            .env("HOME", self.config_home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let started = Instant::now();
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn the client");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
        }
        let stdout = drain(child.stdout.take().unwrap());
        let stderr = drain(child.stderr.take().unwrap());
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > CLIENT_DEADLINE {
                let _ = child.kill();
                panic!("`stackyard {}` hung", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
            took: started.elapsed(),
        }
    }
}

impl Client {
    /// Runs the client on a pseudo-terminal (through util-linux `script`) and returns what the
    /// terminal showed; `None` when `script` is not installed. Arguments must not need quoting.
    pub fn run_on_terminal(&self, args: &[&str], env: &[(&str, &str)]) -> Option<String> {
        let line = format!("{BIN} {}", args.join(" "));
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env_remove("STACKYARD_URL")
            .env_remove("STACKYARD_TOKEN")
            .env_remove("NO_COLOR")
            .env("TERM", "xterm")
            .env("XDG_CONFIG_HOME", self.config_home.path())
            .env("HOME", self.config_home.path())
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn write(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// The repository's two-service example, copied so a test may change it, with packing
/// fixtures added to `web`: an ignore file and what it ignores, a `.git` directory, and a link
/// pointing out of the directory.
pub fn two_service_copy(root: &Path) -> PathBuf {
    let dir = root.join("two-service");
    copy_tree(&repo_example("two-service"), &dir);
    add_packing_fixtures(root, &dir);
    dir
}

/// A two-service example stack: `web` packs `./web` (with an ignore file, a `.git` directory and
/// a link pointing out of it), `worker` has no `build` and uses its own directory.
pub fn example_stack(root: &Path) -> PathBuf {
    let dir = root.join("hello-stack");
    write(
        &dir,
        "stackyard.yaml",
        "services:\n  web:\n    build: ./web\n    expose: true\n    port: 3000\n  worker:\n    command: \"python3 worker.py\"\n    env:\n      LOG_LEVEL: info\n",
    );
    write(&dir, "web/Procfile", "web: python3 -m http.server $PORT\n");
    write(&dir, "web/index.html", "<h1>hello</h1>\n");
    write(&dir, "worker/worker.py", "print('working')\n");
    add_packing_fixtures(root, &dir);
    dir
}

/// What packing `DIR/web` must leave out: an ignore file and a file it ignores, a `.git`
/// directory, and a link to `ROOT/outside.txt`.
fn add_packing_fixtures(root: &Path, dir: &Path) {
    write(dir, "web/.stackyardignore", "*.log\n");
    write(dir, "web/debug.log", "noise\n");
    write(dir, "web/.git/HEAD", "ref: refs/heads/main\n");
    write(root, "outside.txt", "not for upload\n");
    #[cfg(unix)]
    std::os::unix::fs::symlink("../../outside.txt", dir.join("web/outside-link")).unwrap();
}

/// One request the scripted server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// What the scripted server does with a request: write a raw HTTP response (and close).
pub type Handler = Box<dyn FnMut(&Seen, usize) -> String + Send>;

/// A tiny HTTP/1.1 server on 127.0.0.1 whose answers a test scripts; it records every request.
pub struct Scripted {
    pub base: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    /// `handler(request, n)` gets the request and how many requests came before it.
    pub fn start(mut handler: Handler) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Some(req) = read_request(&mut conn) else {
                    continue;
                };
                let n = {
                    let mut l = log.lock().unwrap();
                    l.push(req.clone());
                    l.len() - 1
                };
                let response = handler(&req, n);
                let _ = conn.write_all(response.as_bytes());
                let _ = conn.flush();
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        Scripted { base, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(conn: &mut TcpStream) -> Option<Seen> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let mut body = Vec::new();
    if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().ok()?;
        body.resize(len, 0);
        reader.read_exact(&mut body).ok()?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

/// A complete JSON response.
pub fn json_response(status: u16, extra_headers: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

/// An event-stream response holding `events` (`(id, kind, data)`), closed after them.
pub fn sse_response(events: &[(i64, &str, Value)]) -> String {
    let mut body = String::from(": hello\n\n");
    for (id, kind, data) in events {
        let payload = serde_json::json!({ "id": id, "at": "2024-01-01T00:00:00Z", "kind": kind, "data": data });
        body.push_str(&format!("id: {id}\nevent: {kind}\ndata: {payload}\n\n"));
    }
    format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}")
}
