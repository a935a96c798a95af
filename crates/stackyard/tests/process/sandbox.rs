//! The sandbox on the real kernel (`isolation.md`): a hostile stack tries everything a service
//! must not do, next to a healthy victim stack; each attempt's outcome is read from the hostile
//! service's own report (served through the router), so the test proves the denial, not a
//! crash. The victim, the router and the API keep answering throughout.

use crate::runtime::{alive, create, form_of, via_router, wait_healthy};
use crate::support::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const HOSTILE: &str = include_str!("hostile/hostile.py");

/// The kernel layers these tests need; on a machine without them the tests say why and skip
/// (a failure under `CI=true`).
fn sandbox_layers_or_skip(layers: &[Value]) -> bool {
    let names: Vec<&str> = layers.iter().filter_map(Value::as_str).collect();
    let needed = [
        "landlock-tcp",
        "landlock-scopes",
        "cgroup-memory",
        "cgroup-pids",
    ];
    let missing: Vec<&&str> = needed.iter().filter(|n| !names.contains(n)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("sandbox layers {missing:?} are not available here (have {names:?})");
    assert!(!stackyard_testkit::under_ci(), "{why}");
    eprintln!("skipping: {why}");
    false
}

/// The test's own uid (read from `/proc`; the server it starts has the same).
fn own_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_hostile_service_is_denied_everything_outside_its_own_while_its_neighbours_keep_serving()
{
    hostile_beside_a_victim(&[]).await;
}

/// The same attempts with the per-stack user turned off: the service runs as the server's own
/// user (root in CI), so file modes and uid checks allow everything, and each denial is
/// Landlock's (or the cgroup's) alone.
#[tokio::test]
async fn landlock_alone_denies_the_same_to_a_service_running_as_the_servers_user() {
    hostile_beside_a_victim(&["--sandbox-uid-base", "0"]).await;
}

async fn hostile_beside_a_victim(extra: &[&str]) {
    let data = tempfile::tempdir().unwrap();
    // The database in the data directory, where `serve` keeps it by default.
    let db_url = format!("sqlite://{}", data.path().join("stackyard.db").display());
    let mut flags = vec![
        "--runtime",
        "local",
        "--service-memory",
        "256MiB",
        "--service-pids",
        "128",
    ];
    flags.extend(extra);
    let server = Server::start(&db_url, data.path(), &flags);
    let own_user = !extra.is_empty();
    let client = stackyard_testkit::http_client();
    let (code, ready) = json_of(client.get(server.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(code, 200, "{ready}");
    if !sandbox_layers_or_skip(ready["sandbox"].as_array().unwrap()) {
        return;
    }
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();

    // The victim: an ordinary web service of another stack.
    let victim_dir = apps.path().join("victim");
    write_app(
        &victim_dir,
        "services:\n  app:\n    build: ./app\n    expose: true\n",
        &[(
            "app/Procfile",
            "web: exec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n",
        )],
    );
    let form = form_of(&victim_dir, &[("app", &victim_dir.join("app"))], "victim");
    let victim = create(&client, &server, Some(&token), form).await;
    wait_healthy(&client, &server, Some(&token), &victim).await;
    let (victim_pid, victim_port) = run_record(data.path(), &victim, "app");

    // The attacker, with a sibling it may reach through `service://`.
    let hostile_dir = apps.path().join("hostile");
    let data_dir = data.path().canonicalize().unwrap();
    let manifest = format!(
        "services:\n  bad:\n    build: ./bad\n    expose: true\n    env:\n      SIBLING: service://sib\n      \
         T_DATA_DIR: {}\n      T_VICTIM_DIR: {}\n      T_VICTIM_PORT: \"{victim_port}\"\n      \
         T_VICTIM_PID: \"{victim_pid}\"\n      T_SERVER_PID: \"{}\"\n      T_API_PORT: \"{}\"\n  \
         sib:\n    build: ./sib\n",
        data_dir.display(),
        data_dir
            .join("stacks")
            .join(&victim)
            .join("r1")
            .join("app")
            .display(),
        server.pid(),
        server
            .url("")
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/'),
    );
    write_app(
        &hostile_dir,
        &manifest,
        &[
            ("bad/hostile.py", HOSTILE),
            ("bad/Procfile", "web: exec python3 hostile.py\n"),
            (
                "sib/Procfile",
                "web: exec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n",
            ),
        ],
    );
    let form = form_of(
        &hostile_dir,
        &[
            ("bad", &hostile_dir.join("bad")),
            ("sib", &hostile_dir.join("sib")),
        ],
        "hostile",
    );
    let hostile = create(&client, &server, Some(&token), form).await;
    wait_healthy(&client, &server, Some(&token), &hostile).await;

    let (code, report) = via_router(&client, &server, "bad", &hostile).await.unwrap();
    assert_eq!(code, 200, "{report}");
    eprintln!("hostile report: {report}");
    let outcome = |name: &str| report[name].as_str().unwrap_or("missing").to_owned();
    for name in [
        "read_admin_token",
        "read_database",
        "list_artifacts",
        "list_data_dir",
        "read_victim_release",
        "read_server_environ",
        "write_data_dir",
        "write_tmp",
        "connect_api",
        "connect_postgres",
        "connect_redis",
        "connect_victim",
        "listen_other_port",
        "kill_victim",
        "kill_server",
        "fork_bomb",
        "memory_hog",
    ] {
        assert!(
            outcome(name).starts_with("denied"),
            "{name} was not denied: {}\nreport: {report}",
            outcome(name)
        );
    }
    for name in [
        "write_own_dir",
        "write_own_tmpdir",
        "connect_sibling",
        "connect_egress_443",
    ] {
        assert_eq!(outcome(name), "allowed", "{name}\nreport: {report}");
    }
    // Denials are the kernel's, not side effects: permission errors, the pids limit, the
    // memory limit's OOM kill.
    for name in [
        "read_admin_token",
        "read_database",
        "connect_api",
        "connect_postgres",
        "kill_server",
    ] {
        assert!(
            outcome(name).contains("PermissionError"),
            "{name}: {}",
            outcome(name)
        );
    }
    let forks = report["forks_before_limit"].as_i64().unwrap();
    assert!(
        (1..128).contains(&forks),
        "{forks} forks under a limit of 128"
    );
    assert_eq!(report["memory_hog_returncode"], -9, "{report}");
    let uid = report["uid"].as_i64().unwrap();
    if own_user {
        assert_eq!(uid, i64::from(own_uid()), "{report}");
    } else {
        assert!(uid >= 200_000, "{report}");
    }
    assert!(!data.path().join("pwned").exists());

    // Nothing else was hurt: the victim, the router, the API.
    assert!(alive(victim_pid as i32));
    let (code, _) = via_router(&client, &server, "app", &victim).await.unwrap();
    assert_eq!(code, 200);
    let res = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_service_over_its_memory_limit_is_killed_and_the_reason_says_memory_limit() {
    let (_db, _data, server) = local_server(&["--service-memory", "128MiB"]).await;
    let client = stackyard_testkit::http_client();
    let (_, ready) = json_of(client.get(server.url("/readyz")).send().await.unwrap()).await;
    if !sandbox_layers_or_skip(ready["sandbox"].as_array().unwrap()) {
        return;
    }
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();
    write_app(
        apps.path(),
        "services:\n  hog:\n    build: ./hog\n",
        &[
            (
                "hog/hog.py",
                "b = bytearray(1 << 30)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\n",
            ),
            ("hog/Procfile", "web: exec python3 hog.py\n"),
        ],
    );
    let form = form_of(apps.path(), &[("hog", &apps.path().join("hog"))], "hog");
    let slug = create(&client, &server, Some(&token), form).await;
    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(60),
        |_, b| b["status"] == "failed",
    )
    .await;
    let error = body["services"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("memory limit"), "{body}");
    let res = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn sandbox_required_refuses_to_start_on_a_kernel_without_landlock() {
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--runtime", "local", "--sandbox", "required"])
        .args(["--listen", "127.0.0.1:0", "--router-listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(format!("sqlite://{}", data.path().join("s.db").display()))
        .arg("--data-dir")
        .arg(data.path())
        .env("STACKYARD_SANDBOX_IGNORE_LANDLOCK", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--sandbox required"), "{stderr}");
    assert!(stderr.contains("Landlock ABI 0"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Serves on `PORT`, then, a second after it became reachable, allocates 1 GiB.
const LATE_HOG: &str = r#"import http.server, os, threading, time
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep(1)
b = bytearray(1 << 30)
for i in range(0, len(b), 4096):
    b[i] = 1
"#;

#[tokio::test]
async fn a_live_service_over_its_memory_limit_is_reported_crashed_for_its_memory_and_restarted() {
    let (_db, _data, server) =
        local_server(&["--service-memory", "128MiB", "--restart-backoff", "100ms"]).await;
    let client = stackyard_testkit::http_client();
    let (_, ready) = json_of(client.get(server.url("/readyz")).send().await.unwrap()).await;
    if !sandbox_layers_or_skip(ready["sandbox"].as_array().unwrap()) {
        return;
    }
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();
    write_app(
        apps.path(),
        "services:\n  hog:\n    build: ./hog\n",
        &[
            ("hog/hog.py", LATE_HOG),
            ("hog/Procfile", "web: exec python3 hog.py\n"),
        ],
    );
    let form = form_of(
        apps.path(),
        &[("hog", &apps.path().join("hog"))],
        "late-hog",
    );
    let slug = create(&client, &server, Some(&token), form).await;
    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(60),
        |_, b| b["services"][0]["restarts"].as_i64().unwrap_or(0) >= 1,
    )
    .await;
    assert_eq!(
        body["services"][0]["last_exit"], "was killed for going over its memory limit",
        "{body}"
    );
    let res = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200, "the server is unaffected");
}
