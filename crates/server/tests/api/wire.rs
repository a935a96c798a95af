//! Snapshots of the wire: every route's success body, each error code's envelope, and the
//! OpenAPI document, so a change a client would see is a reviewed `.snap` diff (`cargo insta
//! review`, or `INSTA_UPDATE=always` and `git diff`). SQLite only: the bodies do not depend on
//! the backend, and the other tests run both. Ids, slugs, tokens, request ids and times are
//! redacted; everything else must be the same on every run.

use crate::support::*;
use insta::Settings;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Redactions shared by every snapshot here.
fn settings() -> Settings {
    let mut s = Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    s.set_sort_maps(true);
    for time in ["created_at", "updated_at", "expires_at", "at"] {
        s.add_redaction(&format!(".**.{time}"), "[time]");
    }
    s.add_redaction(".**.request_id", "[request_id]");
    s.add_redaction(".**.id", "[id]");
    s.add_redaction(".**.stack_id", "[slug]");
    s.add_redaction(
        ".token",
        insta::dynamic_redaction(|v, _| {
            // `token` is the new secret in `POST /api/v1/tokens`, an object in whoami.
            if v.as_str().is_some() {
                "[token]".into()
            } else {
                v
            }
        }),
    );
    s
}

/// `body` with each `(value, placeholder)` replaced inside strings too (slugs in messages and
/// URLs), before the key-based redactions apply.
fn scrub(body: &Value, known: &[(&str, &str)]) -> Value {
    match body {
        Value::String(s) => Value::String(
            known
                .iter()
                .fold(s.clone(), |s, (from, to)| s.replace(from, to)),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| scrub(v, known)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), scrub(v, known)))
                .collect(),
        ),
        other => other.clone(),
    }
}

macro_rules! snap {
    ($name:expr, $value:expr) => {{
        let value = $value;
        settings().bind(|| insta::assert_json_snapshot!($name, value))
    }};
}

/// `(status, body)` of a success answer, asserted.
async fn ok(req: reqwest::RequestBuilder, status: u16) -> Value {
    let (code, body) = call(req).await;
    assert_eq!(code, status, "{body}");
    body
}

#[tokio::test]
async fn wire_stack_bodies() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let t = Some(app.admin_token.as_str());
    let (created, slug) = new_stack(&app, t, "Wire").await;
    let known = [(slug.as_str(), "[slug]")];
    snap!("stack_create_202", scrub(&created, &known));

    app.wait_for(&slug, t, |_, b| b["release"]["status"] == "live")
        .await;
    let detail = ok(app.get(&format!("/stacks/{slug}"), t), 200).await;
    snap!("stack_get_200", scrub(&detail, &known));
    let v1 = ok(app.get(&format!("/api/v1/stacks/{slug}"), t), 200).await;
    assert_eq!(v1, detail);
    snap!(
        "stack_list_200",
        scrub(&ok(app.get("/api/v1/stacks", t), 200).await, &known)
    );

    let redeployed = ok(app.post(&format!("/stacks/{slug}/redeploy"), t), 202).await;
    snap!("stack_redeploy_202", scrub(&redeployed, &known));
    app.wait_for(&slug, t, |_, b| {
        b["status"] == "healthy" && b["release"]["version"] == 2 && b["release"]["status"] == "live"
    })
    .await;
    let releases = ok(app.get(&format!("/stacks/{slug}/releases"), t), 200).await;
    snap!("stack_releases_200", scrub(&releases, &known));

    let restarted = ok(
        app.post(&format!("/stacks/{slug}/restart"), t)
            .json(&json!({ "service": "web" })),
        202,
    )
    .await;
    snap!("stack_restart_202", scrub(&restarted, &known));
    app.wait_for(&slug, t, |_, b| b["status"] == "healthy")
        .await;

    let logs = app
        .get(&format!("/stacks/{slug}/logs/web?follow=false"), t)
        .send()
        .await
        .unwrap();
    assert_eq!(logs.status(), 200);
    let logs = logs.text().await.unwrap();
    settings().bind(|| insta::assert_snapshot!("stack_logs_200", logs));

    let first_event = first_sse_data(&app, &format!("/stacks/{slug}/events"), t).await;
    snap!("stack_events_first_data", scrub(&first_event, &known));

    let deleted = ok(app.delete(&format!("/stacks/{slug}?wait=false"), t), 202).await;
    snap!("stack_delete_202", scrub(&deleted, &known));
    let gone = ok(app.delete(&format!("/stacks/{slug}"), t), 200).await;
    snap!("stack_delete_200", scrub(&gone, &known));

    // An anonymous stack: expires, says so.
    let anonymous = ok(
        app.post("/stacks/new", None)
            .multipart(two_service_form("Anon")),
        202,
    )
    .await;
    let anon_slug = anonymous["stack_id"].as_str().unwrap().to_owned();
    // The note says when the stack expires: the time itself is redacted.
    let expires_at = anonymous["expires_at"].as_str().unwrap().to_owned();
    snap!(
        "stack_create_anonymous_202",
        scrub(
            &anonymous,
            &[
                (anon_slug.as_str(), "[slug]"),
                (expires_at.as_str(), "[expires_at]")
            ]
        )
    );
    app.wait_for(&anon_slug, None, |_, b| b["release"]["status"] == "live")
        .await;
    let anon_detail = ok(app.get(&format!("/stacks/{anon_slug}"), None), 200).await;
    snap!(
        "stack_get_anonymous_200",
        scrub(&anon_detail, &[(anon_slug.as_str(), "[slug]")])
    );
}

/// A new two-service stack: its 202 body and its slug.
async fn new_stack(app: &TestApp, token: Option<&str>, name: &str) -> (Value, String) {
    let created = ok(
        app.post("/stacks/new", token)
            .multipart(two_service_form(name)),
        202,
    )
    .await;
    let slug = created["stack_id"].as_str().unwrap().to_owned();
    (created, slug)
}

/// The JSON `data:` of the first event of an SSE stream that does not end by itself.
async fn first_sse_data(app: &TestApp, path: &str, token: Option<&str>) -> Value {
    let mut res = app.get(path, token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(data) = text
            .split("\n\n")
            .find_map(|event| event.lines().find_map(|l| l.strip_prefix("data:")))
            .filter(|_| text.contains("\n\n"))
        {
            return serde_json::from_str(data.trim()).unwrap();
        }
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn wire_env_bodies() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let t = Some(app.admin_token.as_str());
    let (_, slug) = new_stack(&app, t, "Env").await;
    let known = [(slug.as_str(), "[slug]")];

    let env =
        json!({ "LOG_LEVEL": "debug", "API_KEY": "k-123", "DATABASE_URL": "postgres://u:p@db/x" });
    let patched = ok(app.patch_env(&slug, env.clone()), 200).await;
    snap!("env_patch_200", scrub(&patched, &known));
    let dry = ok(
        app.patch(&format!("/stacks/{slug}/env?dry_run=true"), t)
            .json(&json!({ "env": { "LOG_LEVEL": null } })),
        200,
    )
    .await;
    snap!("env_patch_dry_run_200", scrub(&dry, &known));
    let read = app
        .get(&format!("/stacks/{slug}/env"), t)
        .send()
        .await
        .unwrap();
    assert_eq!(read.headers()["etag"], "\"1\"");
    let (_, read) = json_of(read).await;
    snap!("env_get_200", scrub(&read, &known));
    let revealed = ok(app.get(&format!("/stacks/{slug}/env?reveal=true"), t), 200).await;
    snap!("env_get_revealed_200", scrub(&revealed, &known));
    ok(app.patch_env(&slug, json!({ "LOG_LEVEL": "" })), 200).await;
    let versions = ok(app.get(&format!("/stacks/{slug}/env/versions"), t), 200).await;
    snap!("env_versions_200", scrub(&versions, &known));
    let rolled = ok(
        app.post(&format!("/stacks/{slug}/env/rollback"), t)
            .json(&json!({ "version": 1 })),
        200,
    )
    .await;
    snap!("env_rollback_200", scrub(&rolled, &known));
}

#[tokio::test]
async fn wire_token_and_ops_bodies() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let t = Some(app.admin_token.as_str());
    snap!("whoami_200", ok(app.get("/api/v1/whoami", t), 200).await);
    let created = ok(
        app.post("/api/v1/tokens", t).json(&json!({ "name": "ci" })),
        201,
    )
    .await;
    snap!("token_create_201", &created);
    snap!(
        "tokens_list_200",
        ok(app.get("/api/v1/tokens", t), 200).await
    );
    let id = created["id"].as_i64().unwrap();
    snap!(
        "token_revoke_200",
        ok(app.delete(&format!("/api/v1/tokens/{id}"), t), 200).await
    );
    snap!(
        "audit_200",
        ok(app.get("/api/v1/audit?kind=token.created", t), 200).await
    );
    snap!("healthz_200", ok(app.get("/healthz", None), 200).await);
    snap!("readyz_200", ok(app.get("/readyz", None), 200).await);
    let metrics = app.get("/metrics", None).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    settings().bind(|| {
        insta::assert_snapshot!(
            "metrics_content_type",
            metrics.headers()["content-type"].to_str().unwrap()
        )
    });
}

#[tokio::test]
async fn wire_resource_bodies() {
    use crate::resources::{PgAdmin, spawn};
    let pg = PgAdmin::create().await;
    let app = spawn(Backend::Sqlite, &pg, &[]).await.unwrap();
    let t = Some(app.admin_token.as_str());
    let body = json!({ "name": "orders" });
    let db = ok(app.post("/db/new", t).json(&body), 201).await;
    let cache = ok(app.post("/cache/new", None).json(&body), 201).await;
    let mut known: Vec<(String, String)> = Vec::new();
    for (r, kind) in [(&db, "db"), (&cache, "cache")] {
        stackyard_testkit::leaks::register(r["connection_url"].as_str().unwrap());
        for (key, label) in [("connection_url", "url"), ("token", "token"), ("id", "id")] {
            known.push((
                r[key].as_str().unwrap().to_owned(),
                format!("[{kind}_{label}]"),
            ));
        }
    }
    if let Some(at) = cache["expires_at"].as_str() {
        known.push((at.to_owned(), "[time]".to_owned()));
    }
    let known: Vec<(&str, &str)> = known
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    snap!("resource_db_create_201", scrub(&db, &known));
    snap!("resource_cache_create_anonymous_201", scrub(&cache, &known));
    let list = ok(app.get("/api/v1/resources", t), 200).await;
    snap!("resource_list_200", scrub(&list, &known));
    let path = format!("/api/v1/resources/{}", db["token"].as_str().unwrap());
    snap!(
        "resource_get_200",
        scrub(&ok(app.get(&path, t), 200).await, &known)
    );
    snap!(
        "resource_delete_200",
        scrub(&ok(app.delete(&path, t), 200).await, &known)
    );
    // The anonymous cache's user goes with its row (no API deletes an anonymous resource).
    let admin = redis::Client::open(stackyard_testkit::redis::url().unwrap()).unwrap();
    let mut adm = admin.get_multiplexed_async_connection().await.unwrap();
    let user = format!("sy_{}", cache["id"].as_str().unwrap());
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(user)
        .query_async(&mut adm)
        .await
        .unwrap();
    drop(app);
    pg.cleanup(&[]).await;

    let bare = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let (code, b) = call(bare.post("/cache/new", Some(&bare.admin_token)).json(&body)).await;
    assert_eq!(code, 503);
    snap!("resource_unavailable_503", b);
}

#[tokio::test]
async fn wire_openapi_document() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let doc = ok(app.get("/openapi.json", None), 200).await;
    // Kept whole, unredacted: the document is the contract.
    insta::with_settings!({ prepend_module_to_snapshot => false }, {
        insta::assert_json_snapshot!("openapi", doc);
    });
}

#[tokio::test]
async fn wire_error_envelopes() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--anonymous-daily-limit", "0"])
        .await
        .unwrap();
    let t = Some(app.admin_token.as_str());
    let capped = app.create_team("capped", Some(0)).await;
    let (_, slug) = new_stack(&app, t, "Errors").await;
    // Restarts are refused as `not_running` until the first deploy is live.
    app.wait_for(&slug, t, |_, b| b["status"] == "healthy")
        .await;
    let env = format!("/stacks/{slug}/env");
    let missing = "/stacks/stk-000000000000000000000000";

    let form = |manifest: &str, name: &str| {
        reqwest::multipart::Form::new()
            .text("manifest", manifest.to_owned())
            .text("name", name.to_owned())
    };
    let tar = |files: &[(&str, &str)]| reqwest::multipart::Part::bytes(tarball(files));
    let web = || tar(&[("Procfile", "web: python3 -m http.server\n")]);
    let one = "services:\n  web:\n    expose: true\n";

    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("route_not_found", app.get("/nope", None)),
        ("stack_not_found", app.get(missing, None)),
        ("method_not_allowed", app.client.put(app.url("/healthz"))),
        (
            "unauthorized_missing_token",
            app.get("/api/v1/whoami", None),
        ),
        ("unauthorized_bad_token", app.get(missing, Some("sy_nope"))),
        ("invalid_query", app.get("/api/v1/stacks?limit=many", t)),
        (
            "unsupported_media_type",
            app.post("/api/v1/tokens", t).body("name=ci"),
        ),
        (
            "invalid_body",
            app.post("/api/v1/tokens", t)
                .header("content-type", "application/json")
                .body("{"),
        ),
        (
            "invalid_name_token",
            app.post("/api/v1/tokens", t).json(&json!({ "name": " " })),
        ),
        (
            "invalid_idempotency_key",
            app.patch(&env, t)
                .header("idempotency-key", "a b")
                .json(&json!({ "env": { "A": "1" } })),
        ),
        (
            "headers_too_large",
            app.get("/healthz", None)
                .header("x-big", "a".repeat(70_000)),
        ),
        ("invalid_form", app.post("/stacks/new", t).body("x")),
        (
            "missing_manifest",
            app.post("/stacks/new", t)
                .multipart(reqwest::multipart::Form::new().text("name", "x")),
        ),
        (
            "invalid_manifest",
            app.post("/stacks/new", t)
                .multipart(form("services: [", "x")),
        ),
        (
            "name_required",
            app.post("/stacks/new", t)
                .multipart(reqwest::multipart::Form::new().text("manifest", one)),
        ),
        (
            "invalid_name",
            app.post("/stacks/new", t).multipart(form(one, "-bad")),
        ),
        (
            "invalid_env",
            app.post("/stacks/new", t)
                .multipart(form(one, "x").text("env", "no spaces")),
        ),
        (
            "missing_tarball",
            app.post("/stacks/new", t).multipart(form(one, "x")),
        ),
        (
            "invalid_tarball",
            app.post("/stacks/new", t).multipart(
                form(one, "x").part("web", reqwest::multipart::Part::bytes(b"not gzip".to_vec())),
            ),
        ),
        (
            "deployment_limit_reached",
            app.post("/stacks/new", Some(&capped))
                .multipart(form(one, "x").part("web", web())),
        ),
        (
            "rate_limit_exceeded",
            app.post("/stacks/new", None)
                .multipart(form(one, "x").part("web", web())),
        ),
        (
            "missing_env",
            app.patch(&env, t).json(&json!({ "env": {} })),
        ),
        (
            "invalid_env_key",
            app.patch(&env, t).json(&json!({ "env": { "1A": "x" } })),
        ),
        (
            "duplicate_env_key",
            app.patch(&env, t)
                .header("content-type", "application/json")
                .body(r#"{"env":{"A":"1","A":"2"}}"#),
        ),
        (
            "invalid_env_value",
            app.patch(&env, t).json(&json!({ "env": { "A": 1 } })),
        ),
        (
            "env_too_large",
            app.patch(&env, t)
                .json(&json!({ "env": { "BIG": "x".repeat(70_000) } })),
        ),
        (
            "version_mismatch",
            app.patch(&env, t)
                .header("if-match", "\"99\"")
                .json(&json!({ "env": { "A": "1" } })),
        ),
        (
            "version_not_found",
            app.post(&format!("{env}/rollback"), t)
                .json(&json!({ "version": 99 })),
        ),
        ("token_not_found", app.delete("/api/v1/tokens/999", t)),
        (
            "unknown_service",
            app.post(&format!("/stacks/{slug}/restart"), t)
                .json(&json!({ "service": "db" })),
        ),
    ];
    let mut envelopes = BTreeMap::new();
    for (name, req) in cases {
        let (code, body) = call(req).await;
        assert_envelope(code, &body);
        envelopes.insert(name, json!({ "status": code, "body": body }));
    }
    envelopes.insert("payload_too_large", declared_too_large(&app).await);
    // Same key, different body.
    let key = |body: Value| {
        app.patch(&env, t)
            .header("idempotency-key", "k1")
            .json(&body)
    };
    ok(key(json!({ "env": { "A": "1" } })), 200).await;
    let (code, body) = call(key(json!({ "env": { "A": "2" } }))).await;
    envelopes.insert(
        "idempotency_key_reused",
        json!({ "status": code, "body": body }),
    );

    let envelopes = scrub(&json!(envelopes), &[(slug.as_str(), "[slug]")]);
    let mut settings = settings();
    // Seconds until UTC midnight.
    settings.add_redaction(".rate_limit_exceeded.body.retry_after_seconds", "[seconds]");
    settings.bind(|| insta::assert_json_snapshot!("error_envelopes", envelopes));
}

/// `(status, body)` for a request that declares a body over 50 MiB: refused from the head alone
/// (sent raw, since a client library will not declare a length it does not send).
async fn declared_too_large(app: &TestApp) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/tokens HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 60000000\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body: Value = serde_json::from_str(body.trim()).unwrap();
    assert_envelope(status, &body);
    json!({ "status": status, "body": body })
}

/// The 503 of each route kind while the database is unreachable (PostgreSQL behind a proxy that
/// is cut; skipped where PostgreSQL is not available outside CI).
#[tokio::test]
async fn wire_unavailable_envelopes() {
    let Some((app, proxy)) = TestApp::spawn_behind_proxy(&["--lock-timeout", "1s"]).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    let (_, slug) = new_stack(&app, t, "Outage").await;
    proxy.cut();
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("fetch_failed", app.get(&format!("/stacks/{slug}"), None)),
        ("not_ready", app.get("/readyz", None)),
        ("persist_failed", app.patch_env(&slug, json!({ "A": "1" }))),
        (
            "delete_failed",
            app.delete(&format!("/stacks/{slug}"), None),
        ),
        (
            "provision_failed",
            app.post("/stacks/new", t)
                .multipart(two_service_form("Outage")),
        ),
    ];
    let mut envelopes = BTreeMap::new();
    for (name, req) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.headers()["retry-after"], "1", "{name}");
        let (code, body) = json_of(res).await;
        assert_error(code, &body, 503, name);
        envelopes.insert(name, json!({ "status": code, "body": body }));
    }
    proxy.restore();
    snap!("unavailable_envelopes", json!(envelopes));
}

/// `missing_start_command` exists only on a runtime that runs start commands itself (local).
#[tokio::test]
async fn wire_missing_start_command_envelope() {
    let app = TestApp::spawn_with(Backend::Sqlite, &["--runtime", "local"])
        .await
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("manifest", "services:\n  web: {}\n")
        .text("name", "x")
        .part(
            "web",
            reqwest::multipart::Part::bytes(tarball(&[("README", "hi\n")])),
        );
    let (code, body) = app.create_stack(Some(&app.admin_token), form).await;
    assert_error(code, &body, 400, "missing_start_command");
    snap!(
        "error_missing_start_command",
        json!({ "status": code, "body": body })
    );
}

#[tokio::test]
async fn wire_vault_bodies() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let t = Some(app.admin_token.as_str());
    let put = |key: &str| {
        app.client
            .put(app.url(&format!("/api/v1/vault/prod/{key}")))
            .bearer_auth(&app.admin_token)
            .json(&json!({ "value": "s3cret" }))
    };
    snap!("vault_put_201", ok(put("DB_PASS"), 201).await);
    ok(put("API"), 201).await;
    snap!(
        "vault_rotate_201",
        ok(
            app.post("/api/v1/vault/prod/DB_PASS/rotate", t)
                .json(&json!({ "value": "n3w" })),
            201
        )
        .await
    );
    snap!(
        "vault_get_200",
        ok(app.get("/api/v1/vault/prod/DB_PASS?version=1", t), 200).await
    );
    snap!(
        "vault_list_200",
        ok(app.get("/api/v1/vault/prod", t), 200).await
    );
    snap!(
        "vault_copy_200",
        ok(
            app.post("/api/v1/vault/copy", t).json(
                &json!({ "from": "prod", "to": "dev", "keys": ["API", "NOPE"], "dry_run": true })
            ),
            200
        )
        .await
    );
    let (code, body) = call(app.get("/api/v1/vault/prod", None)).await;
    snap!(
        "error_vault_requires_auth",
        json!({ "status": code, "body": body })
    );
}
