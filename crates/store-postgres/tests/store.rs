//! The shared `Store` suite on PostgreSQL, plus PostgreSQL-only fault tests: a row lock held
//! by another connection, backends terminated under the pool, many concurrent claimers, and
//! two stores (two pools, as two servers would have) on one database.
//!
//! Each test gets a brand-new database from `stackyard_testkit::pg` (which finds or starts a
//! server, or skips with the reason on stderr; under `CI=true` a missing server fails).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use sqlx::{Connection, PgConnection};
use stackyard_core::env::EnvPatch;
use stackyard_core::model::*;
use stackyard_core::store::*;
use stackyard_store_postgres::PgStore;
use stackyard_testkit::pg::{self, PgTestDb};
use stackyard_testkit::suite::{LEASE, at, ctx, new_stack};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

async fn factory(opts: StoreOptions) -> Option<(PgTestDb, PgStore)> {
    let db = pg::fresh().await?;
    let store = PgStore::connect(&db.url, opts)
        .await
        .expect("connecting to a fresh test database");
    stackyard_testkit::unlock(&store);
    Some((db, store))
}

stackyard_testkit::store_suite!(factory);

// ---------------------------------------------------------------------------------------------
// helpers

fn render(o: &EnvOutcome) -> String {
    json!({ "version": o.version }).to_string()
}

fn patch(key: &str, value: &str, now: i64) -> EnvWrite {
    let body = json!({ "env": { key: value } }).to_string();
    EnvWrite {
        op: EnvOp::Patch(EnvPatch::parse(body.as_bytes()).unwrap()),
        if_match: None,
        ctx: ctx(now),
        idempotency: None,
        deadline: None,
    }
}

fn short_lock_timeout() -> StoreOptions {
    StoreOptions {
        lock_timeout: Duration::from_millis(500),
        ..StoreOptions::default()
    }
}

/// A connection of its own (not from the store's pool), for holding locks and killing
/// backends; its application name keeps it out of `terminate_store_backends`.
async fn side_connection(db: &PgTestDb) -> PgConnection {
    PgConnection::connect(&db.url)
        .await
        .expect("side connection")
}

/// Takes the stack's row lock in `tx`, as a concurrent request holding it would.
async fn lock_stack_row(tx: &mut PgConnection, stack: StackId) {
    sqlx::query("SELECT id FROM stacks WHERE id = $1 FOR UPDATE")
        .bind(stack.0)
        .fetch_one(tx)
        .await
        .unwrap();
}

type BatchResult = Result<Vec<Result<EnvOutcome, EnvWriteError>>, EnvBatchError>;

/// Starts an env batch of one write (`A=1`) in its own task, to be left waiting on a held lock.
fn spawn_waiting_write(store: &PgStore, stack: StackId) -> JoinHandle<BatchResult> {
    let store = store.clone();
    tokio::spawn(async move { store.apply_env_writes(stack, &[patch("A", "1", 1)]).await })
}

/// Terminates every backend of the store's pool on this database; returns how many.
async fn terminate_store_backends(side: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'stackyard' \
           AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(side)
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// lock timeouts

#[tokio::test]
async fn held_stack_row_lock_times_out_env_writes_and_deletion_then_they_succeed() {
    let Some((db, store)) = factory(short_lock_timeout()).await else {
        return;
    };
    let stack = store.create_stack(new_stack(None, 0)).await.unwrap();
    let mut side = side_connection(&db).await;
    let mut holder = side.begin().await.unwrap();
    lock_stack_row(&mut holder, stack.id).await;

    let started = Instant::now();
    let err = store
        .apply_env_writes(stack.id, &[patch("A", "1", 1)])
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err, EnvBatchError::Store(StoreError::LockTimeout));
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(2),
        "waited {waited:?} for a 500 ms lock_timeout"
    );

    let started = Instant::now();
    let err = store
        .request_deletion(Access::Anonymous, &stack.slug, ctx(2))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err, StoreError::LockTimeout);
    assert!(err.is_retryable());
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(2),
        "waited {waited:?} for a 500 ms lock_timeout"
    );

    // Nothing was written by the timed-out calls.
    let env = store.get_env(stack.id, None).await.unwrap().unwrap();
    assert_eq!(env.version, 0);

    holder.rollback().await.unwrap();
    let out = store
        .apply_env_writes(stack.id, &[patch("A", "1", 3)])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().version, 1);
    let deleted = store
        .request_deletion(Access::Anonymous, &stack.slug, ctx(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(deleted.status, StackStatus::Deleting);
}

#[tokio::test]
async fn a_waiting_env_batch_proceeds_when_the_lock_is_released_in_time() {
    let Some((db, store)) = factory(StoreOptions::default()).await else {
        return;
    };
    let stack = store.create_stack(new_stack(None, 0)).await.unwrap();
    let mut side = side_connection(&db).await;
    let mut holder = side.begin().await.unwrap();
    lock_stack_row(&mut holder, stack.id).await;
    let writer = spawn_waiting_write(&store, stack.id);
    wait_for_a_lock_waiter(&db).await;
    assert!(
        !writer.is_finished(),
        "the batch must wait for the row lock"
    );
    holder.commit().await.unwrap();
    let out = writer.await.unwrap().unwrap();
    assert_eq!(out[0].as_ref().unwrap().version, 1);
}

/// Waits until a session of the test database is waiting for a lock (the spawned write,
/// queued behind the held row), seen from a connection of its own.
async fn wait_for_a_lock_waiter(db: &PgTestDb) {
    let mut conn = side_connection(db).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no write waits for the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// connection faults

#[tokio::test]
async fn terminated_backends_give_unavailable_and_the_pool_recovers_without_restart() {
    let Some((db, store)) = factory(StoreOptions::default()).await else {
        return;
    };
    let stack = store.create_stack(new_stack(None, 0)).await.unwrap();
    let mut side = side_connection(&db).await;

    // Mid-use: a batch waiting on a row lock loses its backend.
    let mut holder = side.begin().await.unwrap();
    lock_stack_row(&mut holder, stack.id).await;
    let writer = spawn_waiting_write(&store, stack.id);
    wait_for_a_lock_waiter(&db).await;
    assert!(terminate_store_backends(&mut holder).await >= 1);
    let err = writer.await.unwrap().unwrap_err();
    match err {
        EnvBatchError::Store(e @ StoreError::Unavailable(_)) => {
            assert!(e.is_retryable());
            let msg = e.to_string();
            assert!(
                !msg.contains(&db.url) && !msg.contains("postgres://"),
                "{msg}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    holder.rollback().await.unwrap();

    // The next calls succeed on the same store: reads, writes, the batch path.
    let out = store
        .apply_env_writes(stack.id, &[patch("A", "1", 2)])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().version, 1);

    // Idle: fill the pool with connections, kill them all, and use the store again at once.
    let barrier = Arc::new(Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.ping().await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(terminate_store_backends(&mut side).await >= 1);
    store.ping().await.unwrap();
    let got = store
        .get_stack(Access::Anonymous, &stack.slug)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.stack.env_version, 1);
    assert!(terminate_store_backends(&mut side).await >= 1);
    let out = store
        .apply_env_writes(stack.id, &[patch("B", "2", 3)])
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().version, 2);
    assert!(terminate_store_backends(&mut side).await >= 1);
    assert!(
        store
            .request_deletion(Access::Anonymous, &stack.slug, ctx(4))
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_without_leaking_the_url() {
    let port = stackyard_testkit::free_port().unwrap();
    let url = format!("postgres://someone:sekrit@127.0.0.1:{port}/nowhere");
    let opts = StoreOptions {
        lock_timeout: Duration::from_millis(300),
        ..StoreOptions::default()
    };
    let err = PgStore::connect(&url, opts).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let msg = format!("{err} {err:?}");
    assert!(!msg.contains("sekrit") && !msg.contains("someone"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// the shared job queue

/// Adds a second queued deploy job to every stack (the trait never queues two, but redeploys
/// and a pending retry can leave several jobs of one stack in the queue).
async fn second_job_per_stack(store: &PgStore) {
    sqlx::query(
        "INSERT INTO jobs (stack_id, stack_slug, kind, state, generation, release, attempts, \
           run_after, created_at, updated_at) \
         SELECT id, slug, 'deploy', 'queued', op_generation, release, 0, $1, $1, $1 FROM stacks",
    )
    .bind(at(0).0)
    .execute(store.pool())
    .await
    .unwrap();
}

/// Claimers run until every job is done; each asserts, at claim time, that no other claimer
/// holds a job of the same stack and that the job was never handed out before.
async fn drain_queue_concurrently(stores: Vec<PgStore>, claimers: usize, jobs: usize) -> Vec<i64> {
    let barrier = Arc::new(Barrier::new(claimers));
    let running: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let claimed: Arc<Mutex<Vec<i64>>> = Arc::default();
    let tasks: Vec<_> = (0..claimers)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let (barrier, running, claimed) = (barrier.clone(), running.clone(), claimed.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let worker = format!("worker-{i}");
                let started = Instant::now();
                loop {
                    if claimed.lock().unwrap().len() >= jobs {
                        return;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "queue never drained"
                    );
                    let Some(job) = store.claim_job(&worker, at(10), LEASE).await.unwrap() else {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    };
                    {
                        let mut claimed = claimed.lock().unwrap();
                        assert!(
                            !claimed.contains(&job.id),
                            "job {} handed out twice",
                            job.id
                        );
                        claimed.push(job.id);
                        assert!(
                            running.lock().unwrap().insert(job.stack_id.0),
                            "two jobs of stack {} running at once",
                            job.stack_id.0
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    running.lock().unwrap().remove(&job.stack_id.0);
                    let ok = DeployResult {
                        ok: true,
                        error: None,
                    };
                    assert!(store.finish_deploy(&job, ok, at(11)).await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    claimed.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_claimers_never_share_a_job_or_run_two_of_one_stack() {
    let Some((_db, store)) = factory(StoreOptions::default()).await else {
        return;
    };
    for i in 0..10 {
        store.create_stack(new_stack(None, i)).await.unwrap();
    }
    second_job_per_stack(&store).await;

    // One round: 32 simultaneous claims on 20 queued jobs of 10 stacks.
    let barrier = Arc::new(Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .claim_job(&format!("w{i}"), at(10), LEASE)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut jobs = Vec::new();
    for t in tasks {
        jobs.extend(t.await.unwrap());
    }
    let ids: HashSet<i64> = jobs.iter().map(|j| j.id).collect();
    let stacks: HashSet<i64> = jobs.iter().map(|j| j.stack_id.0).collect();
    assert_eq!(ids.len(), jobs.len(), "a job was handed to two claimers");
    assert_eq!(
        stacks.len(),
        jobs.len(),
        "two jobs of one stack run at once"
    );
    assert!(!jobs.is_empty());
    let running: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(running, i64::try_from(jobs.len()).unwrap());
    for job in &jobs {
        let ok = DeployResult {
            ok: true,
            error: None,
        };
        assert!(store.finish_deploy(job, ok, at(11)).await.unwrap());
    }

    // Then drain the rest with 32 claimers looping.
    let rest = 20 - jobs.len();
    let claimed = drain_queue_concurrently(vec![store.clone()], 32, rest).await;
    assert_eq!(claimed.len(), rest);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state <> 'done'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_database_share_the_queue() {
    let Some(db) = pg::fresh().await else {
        return;
    };
    // Two servers starting at once on an empty database: both migrate (one waits on the
    // migrator's advisory lock) and both bootstrap (one creates the default team).
    let (a, b) = tokio::join!(
        PgStore::connect(&db.url, StoreOptions::default()),
        PgStore::connect(&db.url, StoreOptions::default()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    stackyard_testkit::unlock(&a);
    stackyard_testkit::unlock(&b);
    let admin = |name: &str| NewToken {
        name: "admin".into(),
        digest: stackyard_core::ids::TokenDigest(name.repeat(64)),
    };
    let (ra, rb) = tokio::join!(
        a.bootstrap_default_team(admin("a"), at(0)),
        b.bootstrap_default_team(admin("b"), at(0)),
    );
    assert_eq!(
        [ra.unwrap(), rb.unwrap()].iter().filter(|x| **x).count(),
        1,
        "exactly one server creates the default team"
    );

    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        s.create_stack(new_stack(None, i)).await.unwrap();
    }
    second_job_per_stack(&a).await;
    let claimed = drain_queue_concurrently(vec![a.clone(), b.clone()], 16, 20).await;
    assert_eq!(claimed.len(), 20);
    assert_eq!(claimed.iter().collect::<HashSet<_>>().len(), 20);

    // A claim made through one pool fences writes made through the other.
    let s = a.create_stack(new_stack(None, 20)).await.unwrap();
    let job = b.claim_job("b", at(21), LEASE).await.unwrap().unwrap();
    assert_eq!(job.stack_id, s.id);
    let stolen = Job {
        claim: "0".repeat(32),
        ..job.clone()
    };
    assert!(!a.renew_job_lease(&stolen, at(22), LEASE).await.unwrap());
    assert!(a.renew_job_lease(&job, at(22), LEASE).await.unwrap());
    assert!(a.claim_job("a", at(23), LEASE).await.unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------
// the env batch path

#[tokio::test]
async fn env_batch_of_many_writes_commits_every_version_and_audit_row_in_order() {
    let Some((_db, store)) = factory(StoreOptions::default()).await else {
        return;
    };
    let stack = store.create_stack(new_stack(None, 0)).await.unwrap();
    let writes: Vec<EnvWrite> = (0..250)
        .map(|i| {
            let mut w = patch(&format!("K{}", i % 40), &format!("v{i}"), 1);
            if i % 10 == 0 {
                w.idempotency = Some(Idempotent::new("t".into(), format!("k{i}"), 200, render));
            }
            w
        })
        .collect();
    let out = store.apply_env_writes(stack.id, &writes).await.unwrap();
    assert!(out.iter().all(Result::is_ok));
    assert_eq!(out.last().unwrap().as_ref().unwrap().version, 250);

    let (versions, snapshots): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(snapshot) FROM env_versions WHERE stack_id = $1 AND version >= 1",
    )
    .bind(stack.id.0)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((versions, snapshots), (250, 2));
    let audit: Vec<i64> = sqlx::query_scalar(
        "SELECT (metadata->>'version')::bigint FROM audit_log \
         WHERE kind = 'stack.env.updated' ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(audit, (1..=250).collect::<Vec<i64>>());
    let events: Vec<i64> = sqlx::query_scalar(
        "SELECT (data->>'version')::bigint FROM stack_events \
         WHERE kind = 'env.version' ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        events,
        (1..=250).collect::<Vec<i64>>(),
        "event ids follow version order"
    );
    let done: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM idempotency_keys WHERE state = 'done' AND status = 200",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(done, 25);

    // A rollback in the next batch rebuilds version 150 from the snapshot at 100.
    let rb = EnvWrite {
        op: EnvOp::Rollback { to_version: 150 },
        if_match: None,
        ctx: ctx(2),
        idempotency: None,
        deadline: None,
    };
    let out = store.apply_env_writes(stack.id, &[rb]).await.unwrap();
    let restored = out[0].as_ref().unwrap();
    assert_eq!(restored.version, 251);
    for i in 110..150 {
        assert_eq!(
            restored.env.get(&format!("K{}", i % 40)),
            Some(format!("v{i}").as_str())
        );
    }
}

#[tokio::test]
async fn env_column_is_stored_uncompressed_out_of_line() {
    let Some((_db, store)) = factory(StoreOptions::default()).await else {
        return;
    };
    let storage: String = sqlx::query_scalar(
        "SELECT attstorage::text FROM pg_attribute \
         WHERE attrelid = 'stacks'::regclass AND attname = 'env'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(storage, "e");
}

// ---------------------------------------------------------------------------------------------
// releases: what the trait does not show

#[tokio::test]
async fn create_release_replaces_the_manifest_records_artifacts_and_copies_the_env() {
    let Some((_db, store)) = factory(StoreOptions::default()).await else {
        return;
    };
    let stack = store.create_stack(new_stack(None, 0)).await.unwrap();
    let known = format!("{:0>64}", 3);
    store
        .apply_env_writes(stack.id, &[patch("K", "k-value", 1)])
        .await
        .unwrap();
    let row = |sql: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .bind(stack.id.0)
                .fetch_one(store.pool())
                .await
                .unwrap()
        }
    };
    let release = NewRelease {
        services: None,
        artifacts: vec![("e".repeat(64), 42), (known, 10)],
        manifest: Some("services:\n  web: {}\n".into()),
        ctx: ctx(2),
        idempotency: None,
    };
    store
        .create_release(Access::Anonymous, &stack.slug, release.clone())
        .await
        .unwrap();
    assert_eq!(
        row("SELECT manifest FROM stacks WHERE id = $1").await,
        "services:\n  web: {}\n"
    );
    let artifacts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM artifacts")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(artifacts, 3, "a known digest is not inserted twice");
    // The release copies the stack's map as stored: sealed, key names in clear.
    let copied = row("SELECT env::text FROM releases WHERE stack_id = $1 AND version = 2").await;
    assert_eq!(
        copied,
        row("SELECT env::text FROM stacks WHERE id = $1").await
    );
    assert!(
        copied.contains(r#""K""#) && !copied.contains("k-value"),
        "{copied}"
    );
    assert_eq!(
        row("SELECT env::text FROM releases WHERE stack_id = $1 AND version = 1").await,
        "{}"
    );
    let without = NewRelease {
        manifest: None,
        ctx: ctx(3),
        ..release
    };
    store
        .create_release(Access::Anonymous, &stack.slug, without)
        .await
        .unwrap();
    assert_eq!(
        row("SELECT manifest FROM stacks WHERE id = $1").await,
        "services:\n  web: {}\n",
        "no manifest given: the last one stays"
    );
}
