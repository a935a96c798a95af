//! A `stackyard serve` child process for process-level tests: started on port 0, found by the
//! `api listening on http(s)://ADDR` (and `router listening on http://…`) lines it prints, its stderr
//! drained for its whole life, and stopped on drop with SIGTERM (so it stops the services it
//! runs) — SIGKILL only if it does not exit in time — and its whole output then checked for
//! leaked secrets (`leaks`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    child: Child,
    /// Every line the server printed to stderr so far.
    log: Arc<Mutex<Vec<String>>>,
    /// The thread that reads them (done once the server's stderr closes).
    reader: Option<std::thread::JoinHandle<()>>,
    /// `http://ADDR` of the API (`https://ADDR` when started with `--tls-cert`).
    pub base: String,
    /// `http://ADDR` of the router, when the server runs the local runtime.
    pub router: Option<String>,
}

impl ServerProcess {
    /// Starts `bin serve` on `db_url` and `data_dir`, with the `noop` runtime (5 ms steps)
    /// unless `extra` names a runtime or a step, and a router on port 0 unless `extra` names
    /// one. `STACKYARD_TEST_SERVER_LOG=1` echoes the server's log.
    pub fn start(bin: &str, db_url: &str, data_dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_with_env(bin, db_url, data_dir, extra, &[])
    }

    /// `start` with extra environment variables for the server.
    pub fn start_with_env(
        bin: &str,
        db_url: &str,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let local = extra.windows(2).any(|w| w == ["--runtime", "local"]);
        let mut defaults: Vec<&str> = vec!["--listen", "127.0.0.1:0"];
        if !extra.contains(&"--runtime") {
            defaults.extend(["--runtime", "noop"]);
        }
        if !extra.contains(&"--noop-step") && !local {
            defaults.extend(["--noop-step", "5ms"]);
        }
        if !extra.contains(&"--router-listen") {
            defaults.extend(["--router-listen", "127.0.0.1:0"]);
        }
        let mut child = Command::new(bin)
            .arg("serve")
            .args(&defaults)
            .args(["--database-url", db_url])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("STACKYARD_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stackyard serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        let echo = std::env::var_os("STACKYARD_TEST_SERVER_LOG").is_some();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("server: {line}");
                }
                // Kept before the address is handed over: once `start` returns, the log holds
                // every line up to the listening ones.
                kept.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                for (what, marker, scheme) in [
                    ("api", "api listening on http://", "http"),
                    ("api", "api listening on https://", "https"),
                    ("router", "router listening on http://", "http"),
                ] {
                    if let Some(i) = line.find(marker) {
                        // Ends at a space, or at the quote closing a JSON log line's message.
                        let addr: String = line[i + marker.len()..]
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        let _ = tx.send((what, format!("{scheme}://{addr}")));
                    }
                }
            }
        });
        let (mut base, mut router) = (None, None);
        while base.is_none() || (local && router.is_none()) {
            let (what, addr) = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the server printed its addresses");
            match what {
                "api" => base = Some(addr),
                _ => router = Some(addr),
            }
        }
        ServerProcess {
            child,
            log,
            reader: Some(reader),
            base: base.unwrap_or_default(),
            router,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The lines the server printed to stderr so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server abruptly, as a crash would (its services keep running).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as a planned stop would, and waits up to `within` for the exit: its
    /// status, or `None` if the server is still running then.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Its output is all in once the pipe closed with the process (bounded: a process it
        // left behind could hold the pipe open).
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        crate::leaks::assert_no_leaks(
            self.log_lines().iter().map(String::as_str),
            &format!("the stackyard server (pid {})", self.child.id()),
        );
    }
}
