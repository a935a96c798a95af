//! The local runtime end to end: the real binary runs real processes from the example stacks,
//! the router serves them, redeploys roll, teardown leaves nothing, a killed server's stacks
//! come back, TTL expiry removes anonymous stacks.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LOCAL: [&str; 2] = ["--runtime", "local"];
const DEPLOY_WAIT: Duration = Duration::from_secs(90);

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// A service directory packed as `stackyard deploy` packs it.
fn tar_dir(dir: &Path) -> Vec<u8> {
    let packed = stackyard_cli::pack::pack_dir(dir).expect("pack");
    std::fs::read(packed.path()).unwrap()
}

/// A multipart form for the example (or test app) in `dir`: its manifest and one tarball per
/// service directory named in it.
pub(crate) fn form_of(dir: &Path, services: &[(&str, &Path)], name: &str) -> Form {
    let mut form = Form::new()
        .text(
            "manifest",
            std::fs::read_to_string(dir.join("stackyard.yaml")).unwrap(),
        )
        .text("name", name.to_owned());
    for (svc, path) in services {
        form = form.part(
            svc.to_string(),
            Part::bytes(tar_dir(path)).file_name(format!("{svc}.tar.gz")),
        );
    }
    form
}

pub(crate) fn two_service_form(name: &str) -> Form {
    let ex = examples().join("two-service");
    form_of(
        &ex,
        &[("api", &ex.join("api")), ("web", &ex.join("web"))],
        name,
    )
}

/// A tiny one-service app that also leaves a grandchild in its process group.
fn tiny_app(dir: &Path) -> Form {
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(
        dir.join("stackyard.yaml"),
        "services:\n  app:\n    build: ./app\n    expose: true\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("app/start.sh"),
        "sleep 1000 &\nexec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(dir.join("app/Procfile"), "web: sh start.sh\n").unwrap();
    form_of(dir, &[("app", &dir.join("app"))], "tiny")
}

/// A one-service app; `ignore_term`: its process ignores SIGTERM, so stopping it waits out the
/// runtime's grace period before SIGKILL.
fn app_stopping(dir: &Path, ignore_term: bool) -> Form {
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::write(
        dir.join("stackyard.yaml"),
        "services:\n  app:\n    build: ./app\n",
    )
    .unwrap();
    let trap = if ignore_term { "trap '' TERM\n" } else { "" };
    std::fs::write(
        dir.join("app/start.sh"),
        format!("{trap}exec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n"),
    )
    .unwrap();
    std::fs::write(dir.join("app/Procfile"), "web: sh start.sh\n").unwrap();
    form_of(dir, &[("app", &dir.join("app"))], "stopping")
}

pub(crate) async fn create(
    client: &reqwest::Client,
    server: &Server,
    token: Option<&str>,
    form: Form,
) -> String {
    let mut rb = client.post(server.url("/stacks/new")).multipart(form);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let (code, body) = json_of(rb.send().await.unwrap()).await;
    assert_eq!(code, 202, "{body}");
    body["stack_id"].as_str().unwrap().to_owned()
}

/// GET through the router with the service's Host header.
pub(crate) async fn via_router(
    client: &reqwest::Client,
    server: &Server,
    service: &str,
    slug: &str,
) -> Result<(u16, Value), String> {
    let router = server.router.as_deref().expect("local runtime");
    let res = client
        .get(format!("{router}/"))
        .header("host", format!("{service}-{slug}.localhost"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = res.status().as_u16();
    let text = res.text().await.map_err(|e| e.to_string())?;
    Ok((
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Processes whose environment says they belong to `slug` (the runtime sets STACKYARD_STACK).
pub(crate) fn pids_of(slug: &str) -> Vec<i32> {
    let needle = format!("STACKYARD_STACK={slug}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

pub(crate) fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; it is dead for our purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

pub(crate) async fn wait_healthy(
    client: &reqwest::Client,
    server: &Server,
    token: Option<&str>,
    slug: &str,
) -> Value {
    let deadline = Instant::now() + DEPLOY_WAIT;
    loop {
        let mut rb = client.get(server.url(&format!("/stacks/{slug}")));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let (code, b) = json_of(rb.send().await.unwrap()).await;
        assert_eq!(code, 200, "{b}");
        if b["status"] == "healthy" && b["release"]["status"] == "live" {
            return b;
        }
        assert_ne!(b["status"], "failed", "{b}");
        assert!(Instant::now() < deadline, "not healthy in time: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn wait_release(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    slug: &str,
    version: i64,
    want: &str,
) -> Value {
    let deadline = Instant::now() + DEPLOY_WAIT;
    loop {
        let (_, b) = json_of(
            client
                .get(server.url(&format!("/stacks/{slug}")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let (_, rels) = json_of(
            client
                .get(server.url(&format!("/stacks/{slug}/releases")))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let status = rels["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == version)
            .map(|r| r["status"].clone());
        if status == Some(json!(want)) && b["status"] != "building" && b["status"] != "deploying" {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "release v{version} not {want}: {b} {rels}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn redeploy(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    slug: &str,
    form: Option<Form>,
) -> i64 {
    let mut rb = client
        .post(server.url(&format!("/stacks/{slug}/redeploy")))
        .bearer_auth(token);
    if let Some(f) = form {
        rb = rb.multipart(f);
    }
    let (code, b) = json_of(rb.send().await.unwrap()).await;
    assert_eq!(code, 202, "{b}");
    b["release"]["version"].as_i64().unwrap()
}

/// The backlog of a service's logs (`?follow=false`), as the SSE text.
pub(crate) async fn log_backlog(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    slug: &str,
    service: &str,
) -> String {
    client
        .get(server.url(&format!("/stacks/{slug}/logs/{service}?follow=false")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// DELETE (200 once the teardown finished, or 202), then polls until the stack reads as 404.
pub async fn delete_and_wait_gone(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    slug: &str,
    within: Duration,
) {
    let res = client
        .delete(server.url(&format!("/stacks/{slug}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(matches!(res.status().as_u16(), 200 | 202), "{res:?}");
    wait_until(client, server, token, slug, within, |c, _| c == 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_service_example_runs_redeploys_rolls_logs_and_tears_down() {
    let db = Db::fresh(Backend::Sqlite).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&db.url, data.path(), &LOCAL);
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();

    // Deploy: both healthy, web reaches api through service://api with api's env.
    let slug = create(&client, &server, Some(&token), two_service_form("demo")).await;
    let stack = wait_healthy(&client, &server, Some(&token), &slug).await;
    let router_port = server
        .router
        .as_deref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let web = stack["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    assert_eq!(
        web["url"],
        format!("http://web-{slug}.localhost:{router_port}")
    );
    let (code, body) = via_router(&client, &server, "web", &slug).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["api"]["GREETING"], "hello from api");
    assert_eq!(body["api"]["STACKYARD_SERVICE"], "api");
    assert_eq!(body["web"]["release"], "1");
    let (code, _) = via_router(&client, &server, "api", &slug).await.unwrap();
    assert_eq!(code, 404, "api is not exposed");

    // Env change, then redeploy: the new processes see it; the release records the env version.
    let res = client
        .patch(server.url(&format!("/stacks/{slug}/env")))
        .bearer_auth(&token)
        .json(&json!({"env": {"MESSAGE": "hi", "GREETING": "overridden"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v2 = redeploy(&client, &server, &token, &slug, None).await;
    assert_eq!(v2, 2);
    let stack = wait_release(&client, &server, &token, &slug, 2, "live").await;
    assert_eq!(
        (
            stack["release"]["version"].clone(),
            stack["release"]["env_version"].clone()
        ),
        (json!(2), json!(1))
    );
    let (_, body) = via_router(&client, &server, "web", &slug).await.unwrap();
    assert_eq!(
        (
            body["web"]["message"].clone(),
            body["api"]["MESSAGE"].clone()
        ),
        (json!("hi"), json!("hi"))
    );
    assert_eq!(
        body["api"]["GREETING"], "overridden",
        "the stack env wins over the manifest env"
    );

    // Logs: the backlog ends with [end]; a new line reaches a follower within a second.
    let text = log_backlog(&client, &server, &token, &slug, "web").await;
    assert!(text.contains("web listening on"), "{text}");
    assert!(text.trim_end().ends_with("data: [end]"), "{text}");
    let (code, b) = json_of(
        client
            .get(server.url(&format!("/stacks/{slug}/logs/nope")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, b["error"].as_str()), (404, Some("not_found")));
    let mut follow = client
        .get(server.url(&format!("/stacks/{slug}/logs/web")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.headers()["content-type"], "text/event-stream");
    // Drain the backlog, then make the app log a request line.
    let marker = format!("marker-{}", stackyard_core::ids::random_hex(4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let router = server.router.clone().unwrap();
    let sent = Instant::now();
    client
        .get(format!("{router}/{marker}"))
        .header("host", format!("web-{slug}.localhost"))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains(&marker) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), follow.chunk())
            .await
            .expect("a log line in time")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "log line took {:?}",
        sent.elapsed()
    );
    drop(follow);

    // Rolling redeploy under load: a request every 10 ms, none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (client, stop, ok, failed, router, slug) = (
            client.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            router.clone(),
            slug.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let res = client
                    .get(format!("{router}/"))
                    .header("host", format!("web-{slug}.localhost"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let v3 = redeploy(&client, &server, &token, &slug, None).await;
    wait_release(&client, &server, &token, &slug, v3, "live").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during a rolling redeploy ({} ok)",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    let (_, body) = via_router(&client, &server, "web", &slug).await.unwrap();
    assert_eq!(body["web"]["release"], v3.to_string());

    // A redeploy whose new code crashes: the old release keeps serving.
    let ex = examples().join("two-service");
    let crash = examples().join("crash/app");
    let form = form_of(&ex, &[("api", &ex.join("api")), ("web", &crash)], "ignored");
    let v4 = redeploy(&client, &server, &token, &slug, Some(form)).await;
    let stack = wait_release(&client, &server, &token, &slug, v4, "failed").await;
    assert_eq!(stack["status"], "healthy", "{stack}");
    assert!(
        stack["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("v{v4}"))),
        "{stack}"
    );
    let (code, body) = via_router(&client, &server, "web", &slug).await.unwrap();
    assert_eq!(
        (code, body["web"]["release"].clone()),
        (200, json!(v3.to_string()))
    );

    // Teardown: nothing of the stack runs or stays on disk.
    assert!(!pids_of(&slug).is_empty());
    delete_and_wait_gone(&client, &server, &token, &slug, Duration::from_secs(60)).await;
    assert!(
        pids_of(&slug).iter().all(|p| !alive(*p)),
        "processes left: {:?}",
        pids_of(&slug)
    );
    assert!(!data.path().join("stacks").join(&slug).exists());
    let (code, _) = via_router(&client, &server, "web", &slug).await.unwrap();
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_stacks_created_and_deleted_concurrently_leave_no_process_or_file() {
    let db = Db::fresh(Backend::Sqlite).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(&db.url, data.path(), &LOCAL));
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, server, token, form) = (
            client.clone(),
            server.clone(),
            token.clone(),
            tiny_app(app.path()),
        );
        tasks.push(tokio::spawn(async move {
            let slug = create(&client, &server, Some(&token), form).await;
            wait_healthy(&client, &server, Some(&token), &slug).await;
            assert!(!pids_of(&slug).is_empty(), "{slug} runs nothing");
            delete_and_wait_gone(&client, &server, &token, &slug, Duration::from_secs(120)).await;
            slug
        }));
    }
    let mut slugs = Vec::new();
    for t in tasks {
        slugs.push(t.await.unwrap());
    }
    for slug in &slugs {
        let left: Vec<i32> = pids_of(slug).into_iter().filter(|p| alive(*p)).collect();
        assert!(left.is_empty(), "{slug}: processes left {left:?}");
        assert!(
            !data.path().join("stacks").join(slug).exists(),
            "{slug}: files left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_restarts_its_stacks_and_stops_the_orphans() {
    let db = Db::fresh(Backend::Sqlite).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let port = stackyard_testkit::free_port().unwrap().to_string();
    let args = [
        "--runtime",
        "local",
        "--router-listen",
        &format!("127.0.0.1:{port}"),
    ];
    let mut server = Server::start(&db.url, data.path(), &args);
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let mut stacks = Vec::new();
    for _ in 0..3 {
        let slug = create(&client, &server, Some(&token), tiny_app(app.path())).await;
        let s = wait_healthy(&client, &server, Some(&token), &slug).await;
        stacks.push((slug, s["services"][0]["url"].clone()));
    }
    let orphans: Vec<i32> = stacks.iter().flat_map(|(s, _)| pids_of(s)).collect();
    assert!(orphans.len() >= 3);
    server.kill9();
    assert!(
        orphans.iter().any(|p| alive(*p)),
        "the services outlive a killed server"
    );

    let server = Server::start(&db.url, data.path(), &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while orphans.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "orphans still alive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (slug, url) in &stacks {
        let s = wait_healthy(&client, &server, Some(&token), slug).await;
        assert_eq!(&s["services"][0]["url"], url, "same URL after restart");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match via_router(&client, &server, "app", slug).await {
                Ok((200, _)) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "{slug} not served again: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!pids_of(slug).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anonymous_stacks_expire_healthy_or_failed() {
    let db = Db::fresh(Backend::Sqlite).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let app = tempfile::tempdir().unwrap();
    let server = Server::start(
        &db.url,
        data.path(),
        &["--runtime", "local", "--anonymous-ttl", "5s"],
    );
    let client = stackyard_testkit::http_client();
    let healthy = create(&client, &server, None, tiny_app(app.path())).await;
    let crash = examples().join("crash");
    let failed = create(
        &client,
        &server,
        None,
        form_of(&crash, &[("app", &crash.join("app"))], "crash"),
    )
    .await;
    wait_healthy(&client, &server, None, &healthy).await;
    let get = |slug: String| {
        let (client, url) = (client.clone(), server.url(&format!("/stacks/{slug}")));
        async move { json_of(client.get(url).send().await.unwrap()).await }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, b) = get(failed.clone()).await;
        if code == 200 && b["status"] == "failed" {
            assert!(
                b["services"][0]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("missing configuration")),
                "{b}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline && code == 200,
            "the crashing stack never failed: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for slug in [&healthy, &failed] {
        loop {
            let (code, _) = get(slug.clone()).await;
            if code == 404 {
                break;
            }
            assert!(Instant::now() < deadline, "{slug} outlived its TTL");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(pids_of(slug).iter().all(|p| !alive(*p)));
    }
    let expired = db.scalar("SELECT COUNT(*) FROM audit_log WHERE kind = 'stack.deletion_requested' AND actor = 'system'").await;
    assert_eq!(expired, 2);
}

/// `DELETE /stacks/:slug` waits for its teardown (here up to `--delete-wait 2s`): a stack whose
/// process stops at SIGTERM is gone when the answer comes (200, `Stack deleted`); one whose
/// process ignores SIGTERM holds the teardown up for the runtime's grace period, so the answer
/// is 202 after the wait, and GET turns 404 once the group was killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_answers_200_when_the_teardown_finishes_in_time_and_202_when_a_process_holds_it_up()
{
    let db = Db::fresh(Backend::Sqlite).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(
        &db.url,
        data.path(),
        &["--runtime", "local", "--delete-wait", "2s"],
    );
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let apps = tempfile::tempdir().unwrap();
    let quick = create(
        &client,
        &server,
        Some(&token),
        app_stopping(&apps.path().join("q"), false),
    )
    .await;
    let stubborn = create(
        &client,
        &server,
        Some(&token),
        app_stopping(&apps.path().join("s"), true),
    )
    .await;
    wait_healthy(&client, &server, Some(&token), &quick).await;
    wait_healthy(&client, &server, Some(&token), &stubborn).await;

    let delete = |slug: &str| {
        client
            .delete(server.url(&format!("/stacks/{slug}")))
            .bearer_auth(&token)
            .send()
    };
    let (code, body) = json_of(delete(&quick).await.unwrap()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["message"], "Stack deleted");
    assert!(body.get("status").is_none(), "{body}");
    let res = client
        .get(server.url(&format!("/stacks/{quick}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "gone as soon as the 200 came");

    let started = Instant::now();
    let (code, body) = json_of(delete(&stubborn).await.unwrap()).await;
    let waited = started.elapsed();
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "deleting");
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    wait_until(
        &client,
        &server,
        &token,
        &stubborn,
        Duration::from_secs(30),
        |c, _| c == 404,
    )
    .await;
    assert!(
        pids_of(&stubborn).iter().all(|p| !alive(*p)),
        "the stubborn group was killed"
    );
}
