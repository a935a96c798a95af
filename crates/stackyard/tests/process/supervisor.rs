//! The supervisor on real processes: a healthy service killed with SIGKILL comes back on its own
//! (`crashed → restarting → healthy`, `restarts: 1`, the events in that order, the route
//! serving again), and a service that keeps dying is given up on after five restarts (`failed`,
//! the stack `degraded`) while its sibling keeps serving. The restart backoff is shortened
//! with `--restart-backoff` so the crash loop takes seconds, not minutes.

use crate::runtime::{create, form_of, via_router, wait_healthy};
use crate::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const SERVE: &str = "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";

/// A stack of exposed services, each `(name, Procfile web command)`; each service's directory.
pub(crate) fn services_app(dir: &Path, services: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
    let mut manifest = String::from("services:\n");
    let mut files = Vec::new();
    for (name, command) in services {
        manifest.push_str(&format!(
            "  {name}:\n    build: ./{name}\n    expose: true\n"
        ));
        files.push((format!("{name}/Procfile"), format!("web: {command}\n")));
    }
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_str()))
        .collect();
    write_app(dir, &manifest, &files);
    services
        .iter()
        .map(|(n, _)| (n.to_string(), dir.join(n)))
        .collect()
}

fn leader_pid(data: &Path, slug: &str, service: &str) -> i64 {
    run_record(data, slug, service).0
}

/// The stack's events, `(kind, service, status)`, read from its SSE stream until `done` holds
/// for the list read so far.
pub(crate) async fn events_until(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    slug: &str,
    done: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let mut res = client
        .get(server.url(&format!("/stacks/{slug}/events")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    loop {
        let events: Vec<(String, String, String)> = text
            .split("\n\n")
            .filter(|block| text.contains("\n\n") && !block.is_empty())
            .filter_map(|block| {
                let kind = block.lines().find_map(|l| l.strip_prefix("event:"))?;
                let data = block.lines().find_map(|l| l.strip_prefix("data:"))?;
                let v: Value = serde_json::from_str(data.trim()).ok()?;
                Some((
                    kind.trim().to_owned(),
                    v["data"]["service"].as_str().unwrap_or("").to_owned(),
                    v["data"]["status"].as_str().unwrap_or("").to_owned(),
                ))
            })
            .collect();
        if done(&events) {
            return events;
        }
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .unwrap_or_else(|_| panic!("events so far: {events:?}"))
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

fn position(
    events: &[(String, String, String)],
    kind: &str,
    service: &str,
    status: &str,
) -> Option<usize> {
    events
        .iter()
        .position(|(k, s, st)| k == kind && s == service && st == status)
}

#[tokio::test]
async fn a_killed_service_is_restarted_and_a_crash_loop_degrades_only_its_stack() {
    let (_db, data, server) = local_server(&["--restart-backoff", "100ms"]).await;
    let client = stackyard_testkit::http_client();
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();
    services_app(
        apps.path(),
        &[
            ("web", SERVE),
            (
                "flaky",
                "timeout 2 python3 -m http.server \"$PORT\" --bind 127.0.0.1; exit 3",
            ),
        ],
    );
    let form = form_of(
        apps.path(),
        &[
            ("web", &apps.path().join("web")),
            ("flaky", &apps.path().join("flaky")),
        ],
        "supervised",
    );
    let slug = create(&client, &server, Some(&token), form).await;
    wait_healthy(&client, &server, Some(&token), &slug).await;

    // kill -9 the healthy `web`: it comes back by itself, on the same route.
    let pid = leader_pid(data.path(), &slug, "web");
    kill9(pid);
    let events = events_until(&client, &server, &token, &slug, |e| {
        position(e, "service.status", "web", "healthy").is_some_and(|first| {
            e[first + 1..]
                .iter()
                .any(|(k, s, st)| k == "service.status" && s == "web" && st == "healthy")
        })
    })
    .await;
    let crashed = position(&events, "service.status", "web", "crashed").expect("crashed");
    let restarting = position(&events, "service.status", "web", "restarting").expect("restarting");
    let healthy_again = events
        .iter()
        .rposition(|(k, s, st)| k == "service.status" && s == "web" && st == "healthy")
        .unwrap();
    assert!(
        crashed < restarting && restarting < healthy_again,
        "{events:?}"
    );
    let web_back = |b: &Value| {
        b["services"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "web" && s["status"] == "healthy" && s["restarts"] == 1)
        })
    };
    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(30),
        |_, b| web_back(b),
    )
    .await;
    let web = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    assert_eq!(
        web["last_exit"], "was killed by signal 9 (SIGKILL)",
        "{body}"
    );
    assert_ne!(leader_pid(data.path(), &slug, "web"), pid, "a new process");
    let (code, _) = via_router(&client, &server, "web", &slug).await.unwrap();
    assert_eq!(code, 200);

    // `flaky` exits 2 s after every start: after five restarts it is left failed, the stack
    // degraded, and `web` still answers.
    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(90),
        |_, b| {
            b["services"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["name"] == "flaky" && s["status"] == "failed")
            })
        },
    )
    .await;
    assert_eq!(body["status"], "degraded", "{body}");
    let flaky = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "flaky")
        .unwrap();
    assert_eq!(flaky["restarts"], 5, "{body}");
    assert_eq!(flaky["last_exit"], "exited with status 3", "{body}");
    assert!(
        flaky["error"]
            .as_str()
            .unwrap()
            .contains("crashed 6 times within 10 minutes"),
        "{body}"
    );
    let (code, _) = via_router(&client, &server, "web", &slug).await.unwrap();
    assert_eq!(code, 200, "the healthy sibling still serves");
}

fn kill9(pid: i64) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Answers `/health` with 200 for its first 1.5 s, then 503: alive but sick.
const SICKENS: &str = r#"import http.server, os, time
start = time.time()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path != "/health" or time.time() - start < 1.5
        self.send_response(200 if ok else 503)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

#[tokio::test]
async fn a_service_whose_health_path_keeps_failing_is_restarted() {
    let (_db, data, server) =
        local_server(&["--restart-backoff", "100ms", "--health-interval", "200ms"]).await;
    let client = stackyard_testkit::http_client();
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();
    let dir = apps.path();
    std::fs::create_dir_all(dir.join("sick")).unwrap();
    std::fs::write(
        dir.join("stackyard.yaml"),
        "services:\n  sick:\n    build: ./sick\n    health: /health\n",
    )
    .unwrap();
    std::fs::write(dir.join("sick/app.py"), SICKENS).unwrap();
    std::fs::write(dir.join("sick/Procfile"), "web: exec python3 app.py\n").unwrap();
    let form = form_of(dir, &[("sick", &dir.join("sick"))], "sick");
    let slug = create(&client, &server, Some(&token), form).await;
    wait_healthy(&client, &server, Some(&token), &slug).await;
    let first = leader_pid(data.path(), &slug, "sick");

    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(60),
        |_, b| b["services"][0]["restarts"].as_i64().unwrap_or(0) >= 1,
    )
    .await;
    let last_exit = body["services"][0]["last_exit"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last_exit.starts_with("failed 3 health checks in a row"),
        "{body}"
    );
    assert_ne!(
        leader_pid(data.path(), &slug, "sick"),
        first,
        "a new process"
    );
}
