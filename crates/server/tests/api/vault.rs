//! `/api/v1/vault/*` and `vault://` references: the routes' shapes and codes, values sealed at
//! rest, references resolved into the running process's env from the version each release
//! recorded.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use std::time::Duration;

async fn put(app: &TestApp, t: Option<&str>, env: &str, key: &str, value: &str) -> (u16, Value) {
    call(
        app.client
            .put(app.url(&format!("/api/v1/vault/{env}/{key}")))
            .bearer_auth(t.unwrap_or(""))
            .json(&json!({ "value": value })),
    )
    .await
}

async fn put_as(app: &TestApp, t: &str, env: &str, key: &str, value: &str) -> i64 {
    let (code, body) = put(app, Some(t), env, key, value).await;
    assert_eq!(code, 201, "{body}");
    body["version"].as_i64().unwrap()
}

async fn vault_routes_write_versions_read_list_rotate_delete_and_copy(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let token = app.admin_token.clone();
    let t = Some(token.as_str());

    let (code, body) = put(&app, t, "prod", "DB_PASS", "first-value").await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        body,
        json!({ "ok": true, "key": "DB_PASS", "env": "prod", "version": 1 })
    );
    let (code, body) = call(
        app.post("/api/v1/vault/prod/DB_PASS/rotate", t)
            .json(&json!({ "value": "second-value" })),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["version"], 2);

    let (code, body) = call(app.get("/api/v1/vault/prod/DB_PASS", t)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({ "ok": true, "key": "DB_PASS", "env": "prod", "value": "second-value", "version": 2 })
    );
    let (code, body) = call(app.get("/api/v1/vault/prod/DB_PASS?version=1", t)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["value"], "first-value");
    let (code, body) = call(app.get("/api/v1/vault/prod/DB_PASS?version=7", t)).await;
    assert_error(code, &body, 404, "not_found");
    assert_eq!(
        app.count("audit_log", "kind = 'vault.read'").await,
        2,
        "each read that handed a value out is audited"
    );

    put_as(&app, &token, "prod", "API.KEY", "k").await;
    let (code, body) = call(app.get("/api/v1/vault/prod", t)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({ "ok": true, "env": "prod", "keys": ["API.KEY", "DB_PASS"] })
    );

    // Copy: a dry run plans, then the real copy writes; `missing` for unknown keys.
    put_as(&app, &token, "staging", "API.KEY", "staging-k").await;
    let (code, body) = call(
        app.post("/api/v1/vault/copy", t)
            .json(&json!({ "from": "prod", "to": "staging", "dry_run": true })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "ok": true, "dry_run": true, "from": "prod", "to": "staging",
            "plan": [{ "key": "API.KEY", "action": "skip" }, { "key": "DB_PASS", "action": "copy" }],
            "copied": 0, "skipped": 1, "missing": 0, "total_keys": 2
        })
    );
    let (code, _) = call(app.get("/api/v1/vault/staging/DB_PASS", t)).await;
    assert_eq!(code, 404, "a dry run writes nothing");
    let (code, body) = call(app.post("/api/v1/vault/copy", t).json(&json!({
        "from": "prod", "to": "staging", "keys": ["DB_PASS", "API.KEY", "GONE"], "overwrite": true
    })))
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["plan"],
        json!([
            { "key": "API.KEY", "action": "overwrite" },
            { "key": "DB_PASS", "action": "copy" },
            { "key": "GONE", "action": "missing" }
        ])
    );
    assert_eq!(
        (&body["copied"], &body["missing"], &body["total_keys"]),
        (&json!(2), &json!(1), &json!(3))
    );
    let (_, body) = call(app.get("/api/v1/vault/staging/DB_PASS", t)).await;
    assert_eq!(body["value"], "second-value");

    // Delete: every version; then 404.
    let res = app
        .delete("/api/v1/vault/prod/DB_PASS", t)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let (code, body) = call(app.get("/api/v1/vault/prod/DB_PASS?version=1", t)).await;
    assert_error(code, &body, 404, "not_found");
    let (code, body) = call(app.delete("/api/v1/vault/prod/DB_PASS", t)).await;
    assert_error(code, &body, 404, "not_found");

    // Names are checked.
    let (code, body) = put(&app, t, "prod", "bad key!", "v").await;
    assert_error(code, &body, 400, "invalid_key");
    let (code, body) = put(&app, t, &"e".repeat(65), "K", "v").await;
    assert_error(code, &body, 400, "invalid_env");

    // Audit rows name keys, never values.
    let (_, audit) = call(app.get("/api/v1/audit?limit=200", t)).await;
    let text = audit.to_string();
    assert!(text.contains("vault.set") && text.contains("vault.rotated"));
    assert!(text.contains("vault.copied") && text.contains("vault.deleted"));
    for secret in ["first-value", "second-value", "staging-k"] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
}

async fn vault_anonymous_callers_get_403_vault_requires_auth(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let anon = |rb: reqwest::RequestBuilder| call(rb);
    for (code, body) in [
        anon(
            app.client
                .put(app.url("/api/v1/vault/prod/K"))
                .json(&json!({ "value": "v" })),
        )
        .await,
        anon(app.get("/api/v1/vault/prod/K", None)).await,
        anon(app.get("/api/v1/vault/prod", None)).await,
        anon(app.delete("/api/v1/vault/prod/K", None)).await,
        anon(
            app.post("/api/v1/vault/prod/K/rotate", None)
                .json(&json!({ "value": "v" })),
        )
        .await,
        anon(
            app.post("/api/v1/vault/copy", None)
                .json(&json!({ "from": "a", "to": "b" })),
        )
        .await,
    ] {
        assert_error(code, &body, 403, "vault_requires_auth");
    }
    // An anonymous stack has no vault to resolve from.
    let (code, body) = app
        .create_stack(None, app_form("    env:\n      DB: vault://K\n"))
        .await;
    assert_error(code, &body, 403, "vault_requires_auth");
    assert_eq!(app.count("stacks", "").await, 0);
}

async fn vault_value_over_1_mib_is_413_invalid_value(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    let (code, _) = put(&app, t, "prod", "BIG", &"x".repeat(1 << 20)).await;
    assert_eq!(code, 201, "exactly 1 MiB is accepted");
    let (code, body) = put(&app, t, "prod", "BIG", &"x".repeat((1 << 20) + 1)).await;
    assert_error(code, &body, 413, "invalid_value");
    let (_, body) = call(app.get("/api/v1/vault/prod/BIG", t)).await;
    assert_eq!(body["version"], 1);
}

/// A one-service app whose manifest service carries `extra` (indented under the service).
fn app_form(extra: &str) -> Form {
    let manifest = format!("services:\n  app:\n    expose: true\n{extra}");
    Form::new()
        .text("manifest", manifest)
        .text("name", "vaulted")
        .part(
            "app",
            Part::bytes(tarball(&[(
                "Procfile",
                "web: exec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n",
            )]))
            .file_name("app.tar.gz"),
        )
}

async fn vault_ref_missing_is_400_vault_ref_failed_at_create_and_redeploy(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let (code, body) = app
        .create_stack(Some(&t), app_form("    env:\n      DB: vault://NOPE\n"))
        .await;
    assert_error(code, &body, 400, "vault_ref_failed");
    assert!(body["message"].as_str().unwrap().contains("NOPE"), "{body}");
    assert_eq!(app.count("stacks", "").await, 0);

    // The stack's `env` names the vault env: a key set only in `prod` is missing here.
    put_as(&app, &t, "prod", "ONLY_PROD", "p").await;
    let (code, body) = app.create_stack(Some(&t), app_form("")).await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    let (code, body) = call(
        app.patch(&format!("/stacks/{slug}/env"), Some(&t))
            .json(&json!({ "env": { "X": "vault://ONLY_PROD" } })),
    )
    .await;
    assert_eq!(code, 200, "a reference is not resolved at PATCH: {body}");
    let (code, body) = call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&t))).await;
    assert_error(code, &body, 400, "vault_ref_failed");
    assert_eq!(app.count("releases", "").await, 1, "no release written");
}

/// The pids whose environment says they belong to `slug`, with that environment.
fn service_envs(slug: &str) -> Vec<Vec<String>> {
    let needle = format!("STACKYARD_STACK={slug}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<String> = env
            .split(|b| *b == 0)
            .map(|kv| String::from_utf8_lossy(kv).into_owned())
            .collect();
        if vars.contains(&needle) {
            out.push(vars);
        }
    }
    out
}

/// Waits until the stack's processes show `want` (`KEY=value`) in their environment.
async fn wait_for_env(slug: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let envs = service_envs(slug);
        if !envs.is_empty()
            && envs
                .iter()
                .all(|e| want.iter().all(|w| e.iter().any(|kv| kv == w)))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stack's processes never showed {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Local runtime: `vault://` references in the manifest and in the stack env reach the
/// process as the vault's values; the stack env keeps showing the reference; a restart after
/// a rotation keeps the version the release recorded, and a redeploy picks up the new one.
async fn vault_refs_resolve_into_the_running_process_env_and_a_restart_keeps_the_recorded_version(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn_with(backend, &["--runtime", "local", "--sandbox", "off"]).await
    else {
        return;
    };
    let t = app.admin_token.clone();
    put_as(&app, &t, "development", "DB_PASS", "db-secret-v1").await;
    put_as(&app, &t, "development", "API", "api-secret-v1").await;
    let (code, body) = app
        .create_stack(Some(&t), app_form("    env:\n      DB: vault://DB_PASS\n"))
        .await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    app.wait_for(&slug, Some(&t), |_, b| {
        b["status"] == "healthy" && b["release"]["status"] == "live"
    })
    .await;
    wait_for_env(&slug, &["DB=db-secret-v1"]).await;

    let (code, body) = call(
        app.patch(&format!("/stacks/{slug}/env"), Some(&t))
            .json(&json!({ "env": { "API_KEY": "vault://API" } })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&t))).await;
    assert_eq!(code, 202, "{body}");
    app.wait_for(&slug, Some(&t), |_, b| {
        b["status"] == "healthy" && b["release"]["version"] == 2 && b["release"]["status"] == "live"
    })
    .await;
    wait_for_env(&slug, &["DB=db-secret-v1", "API_KEY=api-secret-v1"]).await;
    let (_, env) = call(app.get(&format!("/stacks/{slug}/env?reveal=true"), Some(&t))).await;
    assert_eq!(env["env"]["API_KEY"], "vault://API", "{env}");

    // Rotate both; a restart of release 2 keeps the versions it recorded.
    put_as(&app, &t, "development", "DB_PASS", "db-secret-v2").await;
    put_as(&app, &t, "development", "API", "api-secret-v2").await;
    let (code, body) = call(app.post(&format!("/stacks/{slug}/restart"), Some(&t))).await;
    assert_eq!(code, 202, "{body}");
    app.wait_for(&slug, Some(&t), |_, b| b["status"] == "healthy")
        .await;
    wait_for_env(&slug, &["DB=db-secret-v1", "API_KEY=api-secret-v1"]).await;

    // A new release resolves the newest versions.
    let (code, body) = call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&t))).await;
    assert_eq!(code, 202, "{body}");
    app.wait_for(&slug, Some(&t), |_, b| {
        b["status"] == "healthy" && b["release"]["version"] == 3 && b["release"]["status"] == "live"
    })
    .await;
    wait_for_env(&slug, &["DB=db-secret-v2", "API_KEY=api-secret-v2"]).await;
    assert_eq!(
        app.count("release_vault_refs", "").await,
        5,
        "(key, version) per reference per release"
    );
    let res = app
        .delete(&format!("/stacks/{slug}"), Some(&t))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
}

/// The SQLite file (and its WAL) never holds a vault value's bytes: only sealed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vault_values_never_appear_in_the_sqlite_files() {
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let t = app.admin_token.clone();
    let sentinel = "sentinel-7f3a9c-vault-plaintext";
    put_as(&app, &t, "prod", "SECRET", sentinel).await;
    put_as(&app, &t, "prod", "SECRET", &format!("{sentinel}-rotated")).await;
    let (_, body) = call(app.get("/api/v1/vault/prod/SECRET?version=1", Some(&t))).await;
    assert_eq!(body["value"], sentinel);
    let (_, body) = call(
        app.post("/api/v1/vault/copy", Some(&t))
            .json(&json!({ "from": "prod", "to": "dev" })),
    )
    .await;
    assert_eq!(body["copied"], 1, "{body}");
    let path = app.db_url.trim_start_matches("sqlite://");
    let dir = std::path::Path::new(path).parent().unwrap();
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        scanned += bytes.len();
        assert!(
            !bytes
                .windows(sentinel.len())
                .any(|w| w == sentinel.as_bytes()),
            "{} holds a vault value in plain text",
            entry.path().display()
        );
    }
    assert!(scanned > 0);
    assert_eq!(app.count("vault_values", "").await, 3);
}

both_backends!(
    vault_routes_write_versions_read_list_rotate_delete_and_copy,
    vault_anonymous_callers_get_403_vault_requires_auth,
    vault_value_over_1_mib_is_413_invalid_value,
    vault_ref_missing_is_400_vault_ref_failed_at_create_and_redeploy,
    vault_refs_resolve_into_the_running_process_env_and_a_restart_keeps_the_recorded_version,
);
