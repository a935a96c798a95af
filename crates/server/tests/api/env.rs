//! `/stacks/:slug/env*` over real HTTP on both backends: no lost update under concurrency, the
//! `deleting` race, bounded lock waits, preconditions, rollback, idempotency, bad bodies.

use crate::support::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn new_stack(app: &TestApp) -> String {
    let (code, body) = app
        .create_stack(Some(&app.admin_token), two_service_form("env"))
        .await;
    assert_eq!(code, 202, "{body}");
    body["stack_id"].as_str().unwrap().to_owned()
}

impl TestApp {
    pub fn patch_env(&self, slug: &str, env: Value) -> reqwest::RequestBuilder {
        stackyard_testkit::leaks::register_json(&env);
        self.patch(&format!("/stacks/{slug}/env"), Some(&self.admin_token))
            .json(&json!({ "env": env }))
    }

    pub async fn env_map(&self, slug: &str, reveal: bool) -> Value {
        let q = if reveal { "?reveal=true" } else { "" };
        let (code, body) =
            call(self.get(&format!("/stacks/{slug}/env{q}"), Some(&self.admin_token))).await;
        assert_eq!(code, 200, "{body}");
        body
    }
}

async fn concurrent_disjoint_writers(app: Arc<TestApp>, slug: &str, writers: usize) {
    let barrier = Arc::new(tokio::sync::Barrier::new(writers));
    let before = app.env_map(slug, false).await["version"].as_i64().unwrap();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (app, barrier, slug) = (app.clone(), barrier.clone(), slug.to_owned());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut versions = Vec::new();
            for i in 0..3 {
                let (code, body) = call(app.patch_env(
                    &slug,
                    json!({ format!("N{writers}_W{w}_K{i}"): format!("v{w}-{i}") }),
                ))
                .await;
                assert_eq!(code, 200, "{body}");
                versions.push(body["version"].as_i64().unwrap());
            }
            versions
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = (writers * 3) as i64;
    all.sort();
    all.dedup();
    assert_eq!(
        all.len() as i64,
        n,
        "every acknowledged PATCH got its own version"
    );
    let env = app.env_map(slug, true).await;
    assert_eq!(env["version"].as_i64().unwrap(), before + n);
    for w in 0..writers {
        for i in 0..3 {
            assert_eq!(
                env["env"][format!("N{writers}_W{w}_K{i}")],
                format!("v{w}-{i}"),
                "lost N{writers}_W{w}_K{i}"
            );
        }
    }
    let audits = app
        .count(
            "audit_log",
            &format!("kind = 'stack.env.updated' AND stack_slug = '{slug}'"),
        )
        .await;
    assert_eq!(audits, before + n);
    let versions = app.count("env_versions", "version >= 1").await;
    assert_eq!(versions, before + n);
}

async fn patch_env_concurrent_disjoint_writers_lose_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let app = Arc::new(app);
    let slug = new_stack(&app).await;
    for writers in [16, 64, 256] {
        concurrent_disjoint_writers(app.clone(), &slug, writers).await;
    }
}

async fn patch_merges_deletes_and_reports_what_changed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let slug = new_stack(&app).await;
    let (code, b) = call(app.patch_env(&slug, json!({"A": "1", "DB_PASSWORD": "hunter2"}))).await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["version"], 1);
    assert_eq!(
        b["changed"],
        json!({"set": ["A", "DB_PASSWORD"], "deleted": []})
    );
    assert_eq!(b["env"]["DB_PASSWORD"], "***");
    assert_eq!(b["stack_id"], slug.as_str());
    assert_eq!(
        b["message"],
        format!("Env vars persisted. Call POST /stacks/{slug}/redeploy to apply.")
    );
    // No-op: same value and deleting an absent key → no version, no audit row.
    let (_, b) = call(app.patch_env(&slug, json!({"A": "1", "NOPE": null}))).await;
    assert_eq!(b["version"], 1);
    assert_eq!(b["changed"], json!({"set": [], "deleted": []}));
    let (_, b) = call(app.patch_env(&slug, json!({"A": "", "B": "2"}))).await;
    assert_eq!(b["version"], 2);
    assert_eq!(b["changed"], json!({"set": ["B"], "deleted": ["A"]}));
    let masked = app.env_map(&slug, false).await;
    assert_eq!(masked["env"], json!({"B": "2", "DB_PASSWORD": "***"}));
    assert_eq!(
        app.count("audit_log", "kind = 'stack.env.revealed'").await,
        0
    );
    let clear = app.env_map(&slug, true).await;
    assert_eq!(clear["env"]["DB_PASSWORD"], "hunter2");
    assert_eq!(
        app.count("audit_log", "kind = 'stack.env.revealed'").await,
        1
    );
    assert_eq!(
        app.count("audit_log", "kind = 'stack.env.updated'").await,
        2
    );
    // The audit log names keys, never values.
    let (_, audit) = call(app.get("/api/v1/audit", Some(&app.admin_token))).await;
    assert!(!audit.to_string().contains("hunter2"));
    let updated = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "stack.env.updated")
        .unwrap();
    assert_eq!(
        updated["metadata"],
        json!({"version": 2, "keys_set": 1, "keys_deleted": 1, "total_after": 2, "set": ["B"], "deleted": ["A"]})
    );
    // The GET on the stack shows the env version.
    let (_, s) = call(app.get(&format!("/stacks/{slug}"), Some(&app.admin_token))).await;
    assert_eq!(s["env_version"], 2);
    // History, newest first.
    let (_, h) = call(app.get(
        &format!("/stacks/{slug}/env/versions"),
        Some(&app.admin_token),
    ))
    .await;
    assert_eq!(h["total"], 2);
    assert_eq!(h["items"][0]["version"], 2);
    assert_eq!(h["items"][0]["deleted"], json!(["A"]));
    assert!(!h.to_string().contains("hunter2"));
}

async fn bad_bodies_get_their_code_write_nothing_and_echo_no_value(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let slug = new_stack(&app).await;
    let secret = "s3cr3t-value-xyz";
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "invalid_body"),
        (format!(r#"{{"env": "{secret}"}}"#), "invalid_body"),
        (
            format!(r#"{{"env": {{"A": 5, "B": "{secret}"}}}}"#),
            "invalid_env_value",
        ),
        (
            format!(r#"{{"env": {{"A": "{secret}", "A": "x"}}}}"#),
            "duplicate_env_key",
        ),
        (
            format!(r#"{{"env": {{"A-B": "{secret}"}}}}"#),
            "invalid_env_key",
        ),
        (
            format!(r#"{{"env": {{"1A": "{secret}"}}}}"#),
            "invalid_env_key",
        ),
        (
            format!(r#"{{"env": {{"{}": "{secret}"}}}}"#, "K".repeat(257)),
            "invalid_env_key",
        ),
        (
            format!(r#"{{"env": {{"A": "{secret}\u0000"}}}}"#),
            "invalid_env_value",
        ),
        (r#"{"env": {}}"#.into(), "missing_env"),
    ];
    let path = format!("/stacks/{slug}/env");
    let admin = Some(app.admin_token.as_str());
    for (body, want) in cases {
        let (code, b) = call(
            app.patch(&path, admin)
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
        assert_eq!(code, 400, "{body}: {b}");
        assert_eq!(assert_envelope(code, &b), want, "{body}");
        assert!(!b.to_string().contains(secret), "value echoed: {b}");
    }
    assert_eq!(app.env_map(&slug, false).await["version"], 0);
    assert_eq!(app.count("env_versions", "version >= 1").await, 0);
    // Not JSON content type, unknown stack, no token.
    let res = app.patch(&path, admin).body("{}").send().await.unwrap();
    assert_eq!(res.status(), 415);
    let (code, b) = call(app.patch_env("stk-00000000000000000000", json!({"A": "1"}))).await;
    assert_error(code, &b, 404, "not_found");
    let res = app
        .patch(&path, None)
        .json(&json!({"env": {"A": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let other = app.create_team("other", None).await;
    let res = app
        .patch(&path, Some(&other))
        .json(&json!({"env": {"A": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

async fn size_limit_is_65536_bytes_of_json(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let slug = new_stack(&app).await;
    // {"K":"<v>"} is 8 bytes plus the value.
    let exact = "v".repeat(65_536 - 8);
    let (code, b) = call(app.patch_env(&slug, json!({"K": exact}))).await;
    assert_eq!(code, 200, "{b}");
    let over = "v".repeat(65_536 - 7);
    let (code, b) = call(app.patch_env(&slug, json!({"K": over}))).await;
    assert_error(code, &b, 413, "env_too_large");
    let env = app.env_map(&slug, true).await;
    assert_eq!(env["version"], 1);
    assert_eq!(env["env"]["K"].as_str().unwrap().len(), 65_536 - 8);
}

async fn if_match_and_dry_run(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let slug = new_stack(&app).await;
    app.patch_env(&slug, json!({"A": "1"}))
        .send()
        .await
        .unwrap();
    let (code, b) = call(
        app.patch_env(&slug, json!({"A": "2"}))
            .header("If-Match", "\"0\""),
    )
    .await;
    assert_error(code, &b, 412, "version_mismatch");
    assert_eq!(b["current_version"], 1);
    let res = app
        .patch_env(&slug, json!({"A": "2"}))
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["etag"], "\"2\"");
    let (code, b) = json_of(res).await;
    assert_eq!((code, &b["version"]), (200, &json!(2)));
    let (code, b) = call(
        app.patch(
            &format!("/stacks/{slug}/env?dry_run=true"),
            Some(&app.admin_token),
        )
        .json(&json!({"env": {"B": "3"}})),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(b["dry_run"], true);
    assert_eq!(b["version"], 3);
    assert_eq!(b["changed"]["set"], json!(["B"]));
    let env = app.env_map(&slug, true).await;
    assert_eq!(env["version"], 2);
    assert!(env["env"].get("B").is_none());
}

async fn rollback_restores_a_version_as_a_new_one(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--env-history", "5"]).await else {
        return;
    };
    let slug = new_stack(&app).await;
    app.patch_env(&slug, json!({"A": "1", "B": "1"}))
        .send()
        .await
        .unwrap();
    app.patch_env(&slug, json!({"A": "2", "C": "3", "B": null}))
        .send()
        .await
        .unwrap();
    let rb = |v: i64| {
        app.post(
            &format!("/stacks/{slug}/env/rollback"),
            Some(&app.admin_token),
        )
        .json(&json!({"version": v}))
    };
    let (code, b) = call(rb(1)).await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["version"], 3);
    assert_eq!(b["changed"], json!({"set": ["A", "B"], "deleted": ["C"]}));
    assert_eq!(
        app.env_map(&slug, true).await["env"],
        json!({"A": "1", "B": "1"})
    );
    let (code, b) = call(rb(0)).await;
    assert_eq!((code, &b["version"]), (200, &json!(4)));
    assert_eq!(app.env_map(&slug, true).await["env"], json!({}));
    assert_eq!(
        app.count("audit_log", "kind = 'stack.env.rolled_back'")
            .await,
        2
    );
    let (code, b) = call(rb(99)).await;
    assert_error(code, &b, 404, "version_not_found");
    // Push history past the kept window: old versions are pruned and answer 404.
    for i in 0..200 {
        app.patch_env(&slug, json!({"N": i.to_string()}))
            .send()
            .await
            .unwrap();
    }
    let (code, b) = call(rb(2)).await;
    assert_error(code, &b, 404, "version_not_found");
    let current = app.env_map(&slug, false).await["version"].as_i64().unwrap();
    let (code, b) = call(rb(current - 3)).await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(
        app.env_map(&slug, true).await["env"]["N"],
        (200 - 4).to_string()
    );
}

async fn idempotent_patch_replayed_concurrently_makes_one_version(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let app = Arc::new(app);
    let slug = new_stack(&app).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (app, barrier, slug) = (app.clone(), barrier.clone(), slug.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let res = app
                .patch_env(&slug, json!({"K": "v"}))
                .header("Idempotency-Key", "k1")
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }));
    }
    for t in tasks {
        let code = t.await.unwrap();
        assert!(code == 200 || code == 409, "{code}");
    }
    let replay = app
        .patch_env(&slug, json!({"K": "v"}))
        .header("Idempotency-Key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["idempotent-replay"], "true");
    assert_eq!(json_of(replay).await.1["version"], 1);
    assert_eq!(app.env_map(&slug, false).await["version"], 1);
    let (code, b) = call(
        app.patch_env(&slug, json!({"K": "other"}))
            .header("Idempotency-Key", "k1"),
    )
    .await;
    assert_error(code, &b, 422, "idempotency_key_reused");
}

async fn patch_racing_delete_never_wins_after_deleting_committed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let app = Arc::new(app);
    for round in 0..100 {
        let slug = new_stack(&app).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let patch = {
            let (app, barrier, slug) = (app.clone(), barrier.clone(), slug.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let res = app
                    .patch_env(&slug, json!({ format!("R{round}"): "x" }))
                    .header("x-request-id", format!("race-patch-{round}"))
                    .send()
                    .await
                    .unwrap();
                res.status().as_u16()
            })
        };
        let delete = {
            let (app, barrier, slug) = (app.clone(), barrier.clone(), slug.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                app.delete(&format!("/stacks/{slug}"), Some(&app.admin_token))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        };
        let (p, d) = (patch.await.unwrap(), delete.await.unwrap());
        assert!(matches!(d, 200 | 202), "delete answered {d}");
        assert!(matches!(p, 200 | 404 | 409), "patch answered {p}");
        let patched = app
            .count(
                "audit_log",
                &format!("kind = 'stack.env.updated' AND request_id = 'race-patch-{round}'"),
            )
            .await;
        if p == 200 {
            // Its change committed before the stack was marked deleting: both audit rows are
            // written under the stack's lock, so their ids follow the lock order.
            let patch_id = app
                .scalar(&format!(
                    "SELECT MIN(id) FROM audit_log WHERE request_id = 'race-patch-{round}'"
                ))
                .await;
            let delete_id = app.scalar(&format!("SELECT MIN(id) FROM audit_log WHERE kind = 'stack.deletion_requested' AND stack_slug = '{slug}'")).await;
            assert_eq!(patched, 1);
            assert!(
                patch_id < delete_id,
                "round {round}: a 200 PATCH committed after deleting"
            );
        } else {
            assert_eq!(
                patched, 0,
                "round {round}: a refused PATCH wrote its change"
            );
        }
    }
}

/// A second connection holds the stack's lock (for up to 10 s): a PATCH answers a retryable
/// 503 after `--lock-timeout`, 3 ± 0.5 s, and succeeds once the lock is gone.
async fn a_held_row_lock_gives_503_after_about_three_seconds_then_success(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let slug = new_stack(&app).await;
    app.patch_env(&slug, json!({"WARM": "1"}))
        .send()
        .await
        .unwrap();
    // Held for 10 s at most: a server that waited for the lock instead of giving up at 3 s
    // would answer 200 after ~10 s, not hang the test.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let holder = LockHolder::hold(&app, &slug).await;
    let held = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(10), released).await;
        holder.release().await;
    });
    let started = Instant::now();
    let res = app
        .patch_env(&slug, json!({"A": "1"}))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited <= Duration::from_millis(3500),
        "waited {waited:?} (3 ± 0.5 s)"
    );
    assert_eq!(res.headers()["retry-after"], "1");
    let (code, b) = json_of(res).await;
    assert_error(code, &b, 503, "persist_failed");
    let _ = release.send(());
    held.await.unwrap();
    let (code, b) = call(app.patch_env(&slug, json!({"A": "1"}))).await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["version"], 2);
}

/// While another session holds the stack's lock and the stack's deploy job also waits for it,
/// a redeploy and a PATCH arrive together. Each answers a retryable 503 within
/// `--lock-timeout` (3 s) + 0.5 s of its arrival — the in-process queues ahead of the database
/// included — and both succeed once the lock is released.
async fn lock_waits_stay_bounded_behind_a_waiting_job_and_a_waiting_redeploy(backend: Backend) {
    // Slow noop steps: the create's deploy job is still reporting when the lock is taken.
    let Some(app) = TestApp::spawn_with(backend, &["--noop-step", "400ms"]).await else {
        return;
    };
    let slug = new_stack(&app).await;
    let holder = LockHolder::hold(&app, &slug).await;
    let timed = |req: reqwest::RequestBuilder| async move {
        let started = Instant::now();
        let (code, body) = call(req).await;
        (code, body, started.elapsed())
    };
    let redeploy = timed(app.post(&format!("/stacks/{slug}/redeploy"), Some(&app.admin_token)));
    let patch = async {
        // Arrives while the redeploy (and the job) already wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        timed(app.patch_env(&slug, json!({"A": "1"}))).await
    };
    let ((rc, rb, rt), (pc, pb, pt)) = tokio::join!(redeploy, patch);
    assert_error(pc, &pb, 503, "persist_failed");
    assert!(
        pt >= Duration::from_millis(2500) && pt <= Duration::from_millis(3500),
        "the PATCH waited {pt:?}"
    );
    assert_error(rc, &rb, 503, "provision_failed");
    assert!(
        rt <= Duration::from_millis(3500),
        "the redeploy waited {rt:?}"
    );
    holder.release().await;
    let (code, b) =
        call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&app.admin_token))).await;
    assert_eq!(code, 202, "{b}");
    let (code, b) = call(app.patch_env(&slug, json!({"A": "1"}))).await;
    assert_eq!(code, 200, "{b}");
}

/// The database goes away (a proxy in between is cut) and comes back: writes (PATCH, create,
/// DELETE) and reads answer a retryable 503 meanwhile, none of the refused writes leaves a
/// trace, and all succeed again after the restore without a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_unreachable_gives_503_then_recovers_without_restart() {
    let Some((app, proxy)) = TestApp::spawn_behind_proxy(&["--lock-timeout", "1s"]).await else {
        return;
    };
    let slug = new_stack(&app).await;
    let (code, _) = call(app.patch_env(&slug, json!({"A": "1"}))).await;
    assert_eq!(code, 200);

    proxy.cut();
    let res = app
        .patch_env(&slug, json!({"B": "2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    let (code, b) = json_of(res).await;
    assert_error(code, &b, 503, "persist_failed");
    let (code, b) = call(app.get(&format!("/stacks/{slug}"), Some(&app.admin_token))).await;
    assert_error(code, &b, 503, "fetch_failed");
    let (code, b) = call(app.get("/readyz", None)).await;
    assert_error(code, &b, 503, "not_ready");
    assert!(!b.to_string().contains("postgres://"), "{b}");
    // A create and a DELETE during the outage: retryable, and nothing of them is left after.
    let (code, b) = app
        .create_stack(Some(&app.admin_token), two_service_form("during-outage"))
        .await;
    assert_error(code, &b, 503, "provision_failed");
    let (code, b) = call(app.delete(&format!("/stacks/{slug}"), Some(&app.admin_token))).await;
    assert_error(code, &b, 503, "delete_failed");
    let (code, _) = call(app.get("/healthz", None)).await;
    assert_eq!(code, 200, "the process stays alive");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, b) = call(app.patch_env(&slug, json!({"B": "2"}))).await;
        if code == 200 {
            assert_eq!(b["version"], 2, "the failed PATCH wrote nothing");
            break;
        }
        assert_eq!(code, 503, "{b}");
        assert!(Instant::now() < deadline, "no recovery after restore: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, _) = call(app.get("/readyz", None)).await;
    assert_eq!(code, 200);
    assert_eq!(
        app.count("stacks", "").await,
        1,
        "nothing was half-created during the outage"
    );
    let (_, s) = call(app.get(&format!("/stacks/{slug}"), Some(&app.admin_token))).await;
    assert_ne!(
        s["status"], "deleting",
        "the refused DELETE changed nothing"
    );
}

/// A second connection holding the stack's lock: PostgreSQL `SELECT … FOR UPDATE` on the row,
/// SQLite `BEGIN IMMEDIATE` (SQLite locks the whole database).
enum LockHolder {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl LockHolder {
    async fn hold(app: &TestApp, slug: &str) -> LockHolder {
        match app.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&app.db_url).await.unwrap();
                let mut conn = pool.acquire().await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                sqlx::query("UPDATE stacks SET updated_at = updated_at WHERE slug = $1")
                    .bind(slug)
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                LockHolder::Sqlite(conn)
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&app.db_url).await.unwrap();
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("SELECT id FROM stacks WHERE slug = $1 FOR UPDATE")
                    .bind(slug)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                LockHolder::Postgres(tx)
            }
        }
    }

    async fn release(self) {
        match self {
            LockHolder::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
            }
            LockHolder::Postgres(tx) => tx.rollback().await.unwrap(),
        }
    }
}

both_backends!(
    patch_env_concurrent_disjoint_writers_lose_nothing,
    patch_merges_deletes_and_reports_what_changed,
    bad_bodies_get_their_code_write_nothing_and_echo_no_value,
    size_limit_is_65536_bytes_of_json,
    if_match_and_dry_run,
    rollback_restores_a_version_as_a_new_one,
    idempotent_patch_replayed_concurrently_makes_one_version,
    patch_racing_delete_never_wins_after_deleting_committed,
    a_held_row_lock_gives_503_after_about_three_seconds_then_success,
    lock_waits_stay_bounded_behind_a_waiting_job_and_a_waiting_redeploy,
);
