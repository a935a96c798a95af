//! `POST /stacks/:slug/restart` on real processes (local runtime): a whole-stack restart (here
//! through `stackyard restart --wait`) gives every service a new process on the same port and
//! URL; `--service` restarts that one only; and a restart brings back a service the supervisor
//! gave up on after a crash loop, the stack healthy again.

use crate::runtime::{create, form_of, via_router, wait_healthy};
use crate::supervisor::{SERVE, services_app};
use crate::support::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

async fn deployed(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    apps: &Path,
    services: &[(&str, &str)],
) -> String {
    let dirs = services_app(apps, services);
    let parts: Vec<(&str, &Path)> = dirs
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_path()))
        .collect();
    let form = form_of(apps, &parts, "restartable");
    let slug = create(client, server, Some(token), form).await;
    wait_healthy(client, server, Some(token), &slug).await;
    slug
}

async fn restart(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    slug: &str,
    body: Option<Value>,
) -> Value {
    let mut rb = client
        .post(server.url(&format!("/stacks/{slug}/restart")))
        .bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let (code, body) = json_of(rb.send().await.unwrap()).await;
    assert_eq!(code, 202, "{body}");
    body
}

fn service<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

#[tokio::test]
async fn restarting_a_whole_stack_gives_each_service_a_new_process_on_the_same_url() {
    let (_db, data, server) = local_server(&[]).await;
    let client = stackyard_testkit::http_client();
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();
    let slug = deployed(
        &client,
        &server,
        &token,
        apps.path(),
        &[("web", SERVE), ("api", SERVE)],
    )
    .await;
    let before: Vec<(i64, i64)> = ["web", "api"]
        .iter()
        .map(|s| run_record(data.path(), &slug, s))
        .collect();

    // Through the CLI: it follows the restart to its end.
    let out = tokio::process::Command::new(BIN)
        .args(["restart", &slug, "--wait", "--timeout", "60s"])
        .env("STACKYARD_URL", server.url(""))
        .env("STACKYARD_TOKEN", &token)
        .env("HOME", apps.path())
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("restarted and healthy"), "{stdout}");

    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(10),
        |_, b| b["status"] == "healthy",
    )
    .await;
    assert_eq!(body["release"]["version"], 1, "no new release: {body}");
    for (name, (pid, port)) in ["web", "api"].iter().zip(&before) {
        let (new_pid, new_port) = run_record(data.path(), &slug, name);
        assert_ne!(new_pid, *pid, "{name} has a new process");
        assert_eq!(new_port, *port, "{name} keeps its port");
        assert_eq!(service(&body, name)["status"], "healthy", "{body}");
        let (code, _) = via_router(&client, &server, name, &slug).await.unwrap();
        assert_eq!(code, 200, "{name} answers on its URL");
    }
    assert_eq!(
        service(&body, "web")["url"],
        format!(
            "http://web-{slug}.localhost:{}",
            server
                .router
                .as_deref()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
        ),
        "{body}"
    );
}

#[tokio::test]
async fn restarting_one_service_leaves_the_other_process_alone() {
    let (_db, data, server) = local_server(&[]).await;
    let client = stackyard_testkit::http_client();
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();
    let slug = deployed(
        &client,
        &server,
        &token,
        apps.path(),
        &[("web", SERVE), ("api", SERVE)],
    )
    .await;
    let (web_pid, web_port) = run_record(data.path(), &slug, "web");
    let (api_pid, _) = run_record(data.path(), &slug, "api");

    let body = restart(
        &client,
        &server,
        &token,
        &slug,
        Some(json!({ "service": "web" })),
    )
    .await;
    assert_eq!(body["services"], json!(["web"]));
    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(60),
        |_, b| b["status"] == "healthy" && run_record(data.path(), &slug, "web").0 != web_pid,
    )
    .await;
    assert_eq!(run_record(data.path(), &slug, "web").1, web_port);
    assert_eq!(
        run_record(data.path(), &slug, "api").0,
        api_pid,
        "api untouched"
    );
    assert_eq!(service(&body, "api")["status"], "healthy");
    for name in ["web", "api"] {
        let (code, _) = via_router(&client, &server, name, &slug).await.unwrap();
        assert_eq!(code, 200, "{name}");
    }
}

#[tokio::test]
async fn a_restart_brings_back_a_service_left_failed_by_a_crash_loop() {
    let (_db, data, server) = local_server(&["--restart-backoff", "100ms"]).await;
    let client = stackyard_testkit::http_client();
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();
    // `flaky` dies at once while a `crash` file sits in its directory.
    let flaky = format!("if [ -e crash ]; then exit 3; fi; {SERVE}");
    let slug = deployed(
        &client,
        &server,
        &token,
        apps.path(),
        &[("web", SERVE), ("flaky", &flaky)],
    )
    .await;
    let marker = data.path().join(format!("stacks/{slug}/r1/flaky/crash"));
    std::fs::write(&marker, b"").unwrap();
    let (pid, port) = run_record(data.path(), &slug, "flaky");
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(60),
        |_, b| {
            b["services"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["name"] == "flaky" && s["status"] == "failed")
            })
        },
    )
    .await;
    assert_eq!(body["status"], "degraded", "{body}");

    std::fs::remove_file(&marker).unwrap();
    restart(
        &client,
        &server,
        &token,
        &slug,
        Some(json!({ "service": "flaky" })),
    )
    .await;
    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(60),
        |_, b| b["status"] == "healthy",
    )
    .await;
    let flaky = service(&body, "flaky");
    assert_eq!(flaky["status"], "healthy", "{body}");
    assert!(flaky["error"].is_null(), "{body}");
    assert!(body.get("error").is_none_or(Value::is_null), "{body}");
    assert_eq!(run_record(data.path(), &slug, "flaky").1, port, "same port");
    let (code, _) = via_router(&client, &server, "flaky", &slug).await.unwrap();
    assert_eq!(code, 200);
    // It stays up: the supervisor watches the new process with a clean crash count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, body) = wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(5),
        |_, _| true,
    )
    .await;
    assert_eq!(body["status"], "healthy", "{body}");
}
