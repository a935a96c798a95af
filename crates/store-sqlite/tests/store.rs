//! The shared store suite on SQLite (a new file per test), plus SQLite-only checks: the
//! pragmas, lock waits bounded by `busy_timeout`, rows that outlive a stack.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use stackyard_core::env::EnvPatch;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::*;
use stackyard_core::store::*;
use stackyard_core::time::Millis;
use stackyard_store_sqlite::SqliteStore;
use stackyard_testkit::sqlite::{SqliteTestDb, fresh};
use std::time::{Duration, Instant};

/// A store on a new SQLite file; keep the returned directory alive while the store is used.
async fn open(opts: StoreOptions) -> (SqliteTestDb, SqliteStore) {
    let db = fresh();
    let store = SqliteStore::connect(&db.url, opts)
        .await
        .expect("connect to a fresh SQLite file");
    stackyard_testkit::unlock(&store);
    (db, store)
}

async fn factory(opts: StoreOptions) -> Option<(SqliteTestDb, SqliteStore)> {
    Some(open(opts).await)
}

stackyard_testkit::store_suite!(factory);

fn ctx(now: i64) -> AuditCtx {
    AuditCtx {
        actor: Actor::system(),
        request_id: None,
        now: Millis(now),
    }
}

fn new_stack(now: i64) -> NewStack {
    NewStack {
        slug: StackSlug::generate(),
        name: "app".into(),
        environment: "development".into(),
        team_id: None,
        fingerprint: None,
        tier: "anonymous".into(),
        expires_at: None,
        manifest: String::new(),
        services: vec![],
        artifacts: vec![],
        ctx: ctx(now),
        idempotency: None,
    }
}

fn set(key: &str, value: &str) -> EnvWrite {
    let body = json!({ "env": { key: value } }).to_string();
    EnvWrite {
        op: EnvOp::Patch(EnvPatch::parse(body.as_bytes()).unwrap()),
        if_match: None,
        ctx: ctx(1),
        idempotency: None,
        deadline: None,
    }
}

async fn count(store: &SqliteStore, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// The first column of every row `sql` returns.
async fn column(store: &SqliteStore, sql: &'static str) -> Vec<i64> {
    sqlx::query_scalar(sql)
        .fetch_all(store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_held_write_lock_times_out_then_the_write_succeeds() {
    let (_db, store) = open(StoreOptions {
        lock_timeout: Duration::from_millis(300),
        ..StoreOptions::default()
    })
    .await;
    let s = store.create_stack(new_stack(0)).await.unwrap();

    // Another connection (think: another process) holds the write lock.
    let mut holder = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("UPDATE stacks SET updated_at = updated_at")
        .execute(&mut *holder)
        .await
        .unwrap();

    let started = Instant::now();
    let err = store
        .apply_env_writes(s.id, &[set("A", "1")])
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err, EnvBatchError::Store(StoreError::LockTimeout));
    assert!(
        waited >= Duration::from_millis(250),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");

    let started = Instant::now();
    let err = store
        .request_deletion(Access::Anonymous, &s.slug, ctx(2))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::LockTimeout);
    assert!(err.is_retryable());
    assert!(started.elapsed() >= Duration::from_millis(250));

    holder.rollback().await.unwrap();
    let out = store
        .apply_env_writes(s.id, &[set("A", "1")])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().version, 1);
    let d = store
        .request_deletion(Access::Anonymous, &s.slug, ctx(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, StackStatus::Deleting);
}

/// The writer waits for SQLite's lock in its own loop (not in SQLite's busy handler): a write
/// held up by another process goes ahead soon after that process lets go, and a write whose
/// deadline has already passed is refused without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_waiting_write_proceeds_once_the_lock_is_released_in_time() {
    let (_db, store) = open(StoreOptions::default()).await;
    let s = store.create_stack(new_stack(0)).await.unwrap();
    let mut holder = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("UPDATE stacks SET updated_at = updated_at")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = Instant::now();
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.apply_env_writes(s.id, &[set("A", "1")]).await })
    };
    // Released only once the write is seen waiting for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.lock_waits() == 0 {
        assert!(Instant::now() < deadline, "the write never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    holder.rollback().await.unwrap();
    let released = Instant::now();
    let out = waiting.await.unwrap().unwrap();
    assert_eq!(out[0].as_ref().unwrap().version, 1);
    let after = released.elapsed();
    assert!(
        after < Duration::from_millis(500),
        "went ahead {after:?} after the release"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "within the lock timeout"
    );

    let mut late = set("B", "2");
    late.deadline = Some(Instant::now());
    let started = Instant::now();
    let err = store.apply_env_writes(s.id, &[late]).await.unwrap_err();
    assert_eq!(err, EnvBatchError::Store(StoreError::LockTimeout));
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_connect_sets_wal_full_sync_and_foreign_keys() {
    let (db, store) = open(StoreOptions::default()).await;
    let mut conn = store.pool().acquire().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(sync, 2, "synchronous=FULL");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(busy, 3000);
    assert!(db.dir.path().join("stackyard.db").exists());
    assert_eq!(store.backend(), "sqlite");
    assert!(!store.is_shared());
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_in_memory_url_works_on_one_connection() {
    let store = SqliteStore::connect("sqlite::memory:", StoreOptions::default())
        .await
        .unwrap();
    stackyard_testkit::unlock(&store);
    let s = store.create_stack(new_stack(0)).await.unwrap();
    store
        .apply_env_writes(s.id, &[set("A", "1")])
        .await
        .unwrap();
    let d = store
        .get_stack(Access::Anonymous, &s.slug)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.stack.env_version, 1);
    assert_eq!(
        store
            .get_env(s.id, Some(ctx(1)))
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_reopening_keeps_data_and_reruns_no_migration() {
    let (db, store) = open(StoreOptions::default()).await;
    let s = store.create_stack(new_stack(0)).await.unwrap();
    store
        .apply_env_writes(s.id, &[set("A", "1")])
        .await
        .unwrap();
    drop(store);
    let again = SqliteStore::connect(&db.url, StoreOptions::default())
        .await
        .unwrap();
    stackyard_testkit::unlock(&again);
    let env = again.get_env(s.id, None).await.unwrap().unwrap();
    assert_eq!((env.version, env.env.get("A")), (1, Some("1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_teardown_keeps_job_and_audit_rows_but_drops_dependents() {
    let (_db, store) = open(StoreOptions::default()).await;
    let mut new = new_stack(0);
    new.services = vec![ReleaseService {
        name: stackyard_core::ids::ServiceName::parse("web").unwrap(),
        artifact: "ab".repeat(32),
        image: None,
        command: "./web".into(),
        workdir: String::new(),
        port: 8080,
        expose: true,
        health: None,
        env: Default::default(),
        needs: Vec::new(),
    }];
    let s = store.create_stack(new).await.unwrap();
    store
        .apply_env_writes(s.id, &[set("A", "1")])
        .await
        .unwrap();
    store
        .request_deletion(Access::Anonymous, &s.slug, ctx(1))
        .await
        .unwrap()
        .unwrap();
    let job = store
        .claim_job("w", Millis(2), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .finish_teardown(&job, Millis(3))
            .await
            .unwrap()
            .is_some()
    );

    assert_eq!(count(&store, "SELECT COUNT(*) FROM stacks").await, 0);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM services").await, 0);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM releases").await, 0);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM env_versions").await, 0);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM jobs").await,
        2,
        "deploy (superseded) and teardown (done)"
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM jobs WHERE state = 'superseded'"
        )
        .await,
        1
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM audit_log").await, 4);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM stack_events").await,
        5,
        "created (2), env version, deleting, deleted: events outlive the stack"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM artifacts").await,
        0,
        "no artifacts were declared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_errors_and_debug_never_show_the_path() {
    let (db, store) = open(StoreOptions::default()).await;
    let shown = format!("{store:?}");
    assert!(
        !shown.contains("stackyard.db") && !shown.contains("sqlite-"),
        "{shown}"
    );

    let missing_dir = db.dir.path().join("no/such/dir/x.db");
    let url = format!("sqlite://{}", missing_dir.display());
    let err = SqliteStore::connect(&url, StoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("no/such/dir"), "{err}");

    let err = SqliteStore::connect("postgres://user:secret@host/db", StoreOptions::default())
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_env_batch_rows_are_stored_in_version_order() {
    // The batch inserts its version and audit rows through json_each: check what lands.
    let (_db, store) = open(StoreOptions::default()).await;
    let s = store.create_stack(new_stack(0)).await.unwrap();
    let writes: Vec<EnvWrite> = (0..50).map(|i| set(&format!("K{i}"), "v")).collect();
    let out = store.apply_env_writes(s.id, &writes).await.unwrap();
    assert_eq!(out.len(), 50);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM env_versions").await, 51);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM audit_log WHERE kind = 'stack.env.updated'"
        )
        .await,
        50
    );
    let ids = column(
        &store,
        "SELECT id FROM audit_log WHERE kind = 'stack.env.updated' ORDER BY id",
    )
    .await;
    let versions = column(
        &store,
        "SELECT json_extract(metadata, '$.version') FROM audit_log WHERE kind = 'stack.env.updated' ORDER BY id",
    )
    .await;
    assert_eq!(
        versions,
        (1..=50).collect::<Vec<i64>>(),
        "audit ids follow version order"
    );
    assert_eq!(ids.len(), 50);
    let events = column(
        &store,
        "SELECT json_extract(data, '$.version') FROM stack_events WHERE kind = 'env.version' ORDER BY id",
    )
    .await;
    assert_eq!(
        events,
        (1..=50).collect::<Vec<i64>>(),
        "event ids follow version order"
    );
    let snapshot: Option<String> =
        sqlx::query_scalar("SELECT snapshot FROM env_versions WHERE version = 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(snapshot, None, "JSON null is stored as SQL NULL");
    let changes: String = sqlx::query_scalar("SELECT changes FROM env_versions WHERE version = 1")
        .fetch_one(store.pool())
        .await
        .unwrap();
    // Sealed: the key name in clear, the value as ciphertext with its digest and lengths.
    let changes: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&changes).unwrap();
    assert_eq!(changes.keys().collect::<Vec<_>>(), ["K0"]);
    assert_eq!(
        (changes["K0"]["n"].as_u64(), changes["K0"]["v"].as_i64()),
        (Some(1), Some(1)),
        "{changes:?}"
    );
    assert!(changes["K0"]["c"].is_string() && changes["K0"]["d"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_create_release_replaces_the_manifest_records_artifacts_and_copies_the_env() {
    let (_db, store) = open(StoreOptions::default()).await;
    let mut new = new_stack(0);
    new.manifest = "services: {}".into();
    new.artifacts = vec![("ab".repeat(32), 10)];
    let s = store.create_stack(new).await.unwrap();
    store
        .apply_env_writes(s.id, &[set("K", "k-value")])
        .await
        .unwrap();
    let text = |sql: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .bind(s.id.0)
                .fetch_one(store.pool())
                .await
                .unwrap()
        }
    };
    let release = NewRelease {
        services: None,
        artifacts: vec![("cd".repeat(32), 42), ("ab".repeat(32), 10)],
        manifest: Some("services:\n  web: {}\n".into()),
        ctx: ctx(2),
        idempotency: None,
    };
    store
        .create_release(Access::Anonymous, &s.slug, release.clone())
        .await
        .unwrap();
    assert_eq!(
        text("SELECT manifest FROM stacks WHERE id = $1").await,
        "services:\n  web: {}\n"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM artifacts").await,
        2,
        "a known digest is not inserted twice"
    );
    // The release copies the stack's map as stored: sealed, key names in clear.
    let copied = text("SELECT env FROM releases WHERE stack_id = $1 AND version = 2").await;
    assert_eq!(copied, text("SELECT env FROM stacks WHERE id = $1").await);
    assert!(
        copied.contains(r#""K""#) && !copied.contains("k-value"),
        "{copied}"
    );
    assert_eq!(
        text("SELECT env FROM releases WHERE stack_id = $1 AND version = 1").await,
        "{}"
    );
    let without = NewRelease {
        manifest: None,
        ctx: ctx(3),
        ..release
    };
    store
        .create_release(Access::Anonymous, &s.slug, without)
        .await
        .unwrap();
    assert_eq!(
        text("SELECT manifest FROM stacks WHERE id = $1").await,
        "services:\n  web: {}\n",
        "no manifest given: the last one stays"
    );
}
