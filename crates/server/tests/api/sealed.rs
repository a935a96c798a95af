//! Encryption at rest, seen from outside: after a run that puts a sentinel into a stack's env
//! (several versions and a rollback), the team vault and a resource's URL (its create's answer
//! kept for replays included), neither the SQLite files nor a `pg_dump` of the database hold
//! it; a sealed map moved onto another stack's row does not open there; the write path
//! compares and measures secret values without opening them.

use crate::resources::{PgAdmin, spawn};
use crate::support::*;
use serde_json::json;
use stackyard_testkit::both_backends;

const SENTINEL: &str = "sentinel-5e1d-at-rest";

/// Every byte the database keeps: the SQLite file, its WAL and shared memory, or `pg_dump`.
async fn stored_bytes(app: &TestApp) -> Vec<u8> {
    if let Some(path) = app.db_url.strip_prefix("sqlite://") {
        let dir = std::path::Path::new(path).parent().unwrap();
        let mut all = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().to_string_lossy().contains(".db") {
                all.extend(std::fs::read(entry.path()).unwrap());
            }
        }
        assert!(!all.is_empty(), "no database file in {}", dir.display());
        all
    } else {
        let out = std::process::Command::new("pg_dump")
            .args(["--no-owner", "--data-only", "-d", &app.db_url])
            .output()
            .expect("pg_dump on PATH");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.len() > 1000, "pg_dump wrote next to nothing");
        out.stdout
    }
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn env_vault_and_resource_url_are_never_stored_in_clear(backend: Backend) {
    let pg = PgAdmin::create().await;
    let Some(app) = spawn(backend, &pg, &[]).await else {
        return;
    };
    let t = app.admin_token.clone();
    let (code, body) = app.create_stack(Some(&t), two_service_form("sealed")).await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    let env = format!("/stacks/{slug}/env");
    // Versions 1..=3, then a rollback to 1: the value is in the map, the history and the
    // snapshot a rollback rebuilds from.
    for body in [
        json!({ "env": { "API_SECRET": SENTINEL, "GREETING": format!("hi {SENTINEL}") } }),
        json!({ "env": { "OTHER": "x" } }),
        json!({ "env": { "API_SECRET": null } }),
    ] {
        let (code, b) = call(app.patch(&env, Some(&t)).json(&body)).await;
        assert_eq!(code, 200, "{b}");
    }
    let (code, b) = call(
        app.post(&format!("{env}/rollback"), Some(&t))
            .json(&json!({ "version": 1 })),
    )
    .await;
    assert_eq!(code, 200, "{b}");
    let (code, b) = call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&t))).await;
    assert_eq!(code, 202, "{b}");
    let (code, b) = call(
        app.client
            .put(app.url("/api/v1/vault/development/V_SECRET"))
            .bearer_auth(&t)
            .json(&json!({ "value": format!("vault {SENTINEL}") })),
    )
    .await;
    assert_eq!(code, 201, "{b}");
    // Created with an Idempotency-Key: the answer kept for replays must not hold the URL.
    let db_new = || {
        app.post("/db/new", Some(&t))
            .header("Idempotency-Key", "sealed-db")
            .json(&json!({ "name": "sealed" }))
    };
    let (code, resource) = call(db_new()).await;
    assert_eq!(code, 201, "{resource}");
    let (code, replayed) = call(db_new()).await;
    assert_eq!(
        (code, &replayed),
        (201, &resource),
        "a replay answers the same"
    );
    let url = resource["connection_url"].as_str().unwrap().to_owned();
    stackyard_testkit::leaks::register(&url);
    let password = url
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .and_then(|(cred, _)| cred.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("a password in the URL");

    // Everything opens again through the API ...
    let (_, b) = call(app.get(&format!("{env}?reveal=true"), Some(&t))).await;
    assert_eq!(b["env"]["API_SECRET"], SENTINEL, "{b}");
    let (_, b) = call(app.get("/api/v1/vault/development/V_SECRET", Some(&t))).await;
    assert_eq!(b["value"], format!("vault {SENTINEL}"));
    let token = resource["token"].as_str().unwrap();
    let (_, b) = call(app.get(&format!("/api/v1/resources/{token}"), Some(&t))).await;
    assert_eq!(b["connection_url"], url.as_str());

    // ... and nothing holds it at rest.
    let bytes = stored_bytes(&app).await;
    assert!(
        !holds(&bytes, SENTINEL),
        "a stored env or vault value in clear"
    );
    assert!(
        !holds(&bytes, &password),
        "a stored resource password in clear"
    );
    assert!(holds(&bytes, "API_SECRET"), "key names stay readable");

    let (_, b) = call(app.delete(&format!("/api/v1/resources/{token}"), Some(&t))).await;
    assert_eq!(b["status"], "deleted", "{b}");
    let (code, b) = call(db_new()).await;
    assert_eq!(
        code, 404,
        "a replay after the delete has no URL to give: {b}"
    );
    pg.cleanup(&[]).await;
}

async fn a_sealed_env_copied_onto_another_stack_does_not_open(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let mut slugs = Vec::new();
    for (name, value) in [("a", SENTINEL), ("b", "b-value")] {
        let (code, body) = app.create_stack(Some(&t), two_service_form(name)).await;
        assert_eq!(code, 202, "{body}");
        let slug = body["stack_id"].as_str().unwrap().to_owned();
        let (code, b) = call(
            app.patch(&format!("/stacks/{slug}/env"), Some(&t))
                .json(&json!({ "env": { "API_SECRET": value } })),
        )
        .await;
        assert_eq!(code, 200, "{b}");
        slugs.push(slug);
    }
    // Same key, same version: only the stack bound into each value tells them apart.
    let moved = app
        .scalar(&format!(
            "UPDATE stacks SET env = (SELECT env FROM stacks WHERE slug = '{}') \
             WHERE slug = '{}' RETURNING id",
            slugs[0], slugs[1]
        ))
        .await;
    assert!(moved > 0);
    let res = app
        .get(&format!("/stacks/{}/env?reveal=true", slugs[1]), Some(&t))
        .send()
        .await
        .unwrap();
    let code = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("internal_error"), "{text}");
    assert!(!text.contains(SENTINEL), "{text}");
    // The stack it came from still opens its own.
    let (_, b) = call(app.get(&format!("/stacks/{}/env?reveal=true", slugs[0]), Some(&t))).await;
    assert_eq!(b["env"]["API_SECRET"], SENTINEL);
}

/// The stored form of `stacks.env`'s entry `key` (`part`: the whole object, or one field).
async fn stored_entry(app: &TestApp, slug: &str, key: &str, part: Option<&str>) -> String {
    let bytes = match (app.backend, part) {
        (Backend::Sqlite, None) => format!("CAST(json_extract(env, '$.{key}') AS BLOB)"),
        (Backend::Sqlite, Some(p)) => format!("CAST(json_extract(env, '$.{key}.{p}') AS BLOB)"),
        (Backend::Postgres, None) => format!("convert_to((env->'{key}')::text, 'UTF8')"),
        (Backend::Postgres, Some(p)) => format!("convert_to(env->'{key}'->>'{p}', 'UTF8')"),
    };
    let sql = format!("SELECT {bytes} FROM stacks WHERE slug = '{slug}'");
    app.text(&sql).await
}

/// The ciphertext of a secret-looking value is replaced by junk: writes that leave it alone
/// still find a no-op through its digest, count it against the 64 KiB rule through its
/// recorded lengths to the exact byte, and write it back untouched, while anything that opens
/// it fails. So the write path never decrypts it.
async fn writes_compare_and_measure_secret_values_without_opening_them(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let (code, body) = app
        .create_stack(Some(&t), two_service_form("digests"))
        .await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    let env = format!("/stacks/{slug}/env");
    // Quotes need escaping: the JSON length the rule counts is not the plaintext length.
    let secret = "q\"".repeat(10_000);
    let patch = |body: serde_json::Value| call(app.patch(&env, Some(&t)).json(&body));
    let (code, b) = patch(json!({ "env": { "API_SECRET": secret, "GREETING": "hi" } })).await;
    assert_eq!((code, b["version"].as_i64()), (200, Some(1)), "{b}");
    let sealed = stored_entry(&app, &slug, "API_SECRET", None).await;
    assert!(!sealed.contains("q\\\""), "{sealed}");

    let junk = "AAAAAAAA";
    let tamper = match backend {
        Backend::Sqlite => format!(
            "UPDATE stacks SET env = json_set(env, '$.API_SECRET.c', '{junk}') WHERE slug = '{slug}' RETURNING id"
        ),
        Backend::Postgres => format!(
            "UPDATE stacks SET env = jsonb_set(env, '{{API_SECRET,c}}', '\"{junk}\"') WHERE slug = '{slug}' RETURNING id"
        ),
    };
    assert!(app.scalar(&tamper).await > 0);

    let (code, b) = patch(json!({ "env": { "API_SECRET": secret } })).await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(
        (b["version"].as_i64(), &b["changed"]["set"]),
        (Some(1), &json!([])),
        "the same value is a no-op: {b}"
    );

    let base = serde_json::to_string(&json!({ "API_SECRET": secret, "GREETING": "hi" }))
        .unwrap()
        .len();
    // `,"BIG":"…"` adds 9 bytes and the value.
    let over = "x".repeat(65_537 - base - 9);
    let (code, b) = patch(json!({ "env": { "BIG": over } })).await;
    assert_error(code, &b, 413, "env_too_large");
    assert!(b["message"].as_str().unwrap().contains("65537"), "{b}");
    let exact = "x".repeat(65_536 - base - 9);
    let (code, b) = patch(json!({ "env": { "BIG": exact } })).await;
    assert_eq!((code, b["version"].as_i64()), (200, Some(2)), "{b}");
    assert_eq!(
        (
            b["env"]["API_SECRET"].as_str(),
            b["env"]["GREETING"].as_str()
        ),
        (Some("***"), Some("hi"))
    );
    assert_eq!(
        stored_entry(&app, &slug, "API_SECRET", Some("c")).await,
        junk,
        "written back as read"
    );

    let (code, b) = call(app.get(&format!("{env}?reveal=true"), Some(&t))).await;
    assert_eq!(code, 500, "opening the junk fails: {b}");

    let (code, b) = patch(json!({ "env": { "API_SECRET": "fresh", "BIG": null } })).await;
    assert_eq!(
        (code, &b["changed"]["set"]),
        (200, &json!(["API_SECRET"])),
        "{b}"
    );
    let (code, b) = call(app.get(&format!("{env}?reveal=true"), Some(&t))).await;
    assert_eq!(
        (code, b["env"]["API_SECRET"].as_str()),
        (200, Some("fresh")),
        "{b}"
    );
}

both_backends!(
    env_vault_and_resource_url_are_never_stored_in_clear,
    a_sealed_env_copied_onto_another_stack_does_not_open,
    writes_compare_and_measure_secret_values_without_opening_them,
);
