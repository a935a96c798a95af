//! `stackyard admin backup`: a copy taken while env PATCHes keep committing is a consistent
//! database (every env version row's map is the replay of its changes, the stack's map is its
//! latest version's, each version has its audit row, nothing torn), it holds every write
//! acknowledged before it began, and a server started on it serves that state.

use crate::support::*;
use serde_json::{Value, json};
use sqlx::{Connection, Row, SqliteConnection};
use stackyard_core::crypto::Keyring;
use stackyard_core::model::StackId;
use stackyard_server::config::KeyArgs;
use stackyard_server::masterkey;
use stackyard_store_sql::seal::{EnvCodec, Opening};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

const WRITERS: usize = 8;

/// Runs `stackyard admin backup --to FILE` against the server's database.
fn run_backup(db_url: &str, data: &Path, to: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["admin", "backup", "--database-url", db_url])
        .arg("--data-dir")
        .arg(data)
        .arg("--to")
        .arg(to)
        .output()
        .unwrap()
}

/// The codec that opens a stack's sealed env documents with the master key kept in `data`.
fn codec_of(data: &Path, stack: i64, wrapped: Option<&[u8]>) -> EnvCodec {
    let keys = masterkey::load_all(&KeyArgs::default(), data);
    let keyring = Keyring::new(
        keys.into_iter()
            .next()
            .expect("a master key in the data dir"),
    );
    EnvCodec::of_stack(&keyring, StackId(stack), wrapped).unwrap()
}

fn plain(map: stackyard_core::EnvMap) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The checks a restored database must pass, read straight from the file (values opened with
/// the master key in `data`); returns the stack's env map and version.
async fn assert_consistent(
    file: &Path,
    data: &Path,
    slug: &str,
) -> (BTreeMap<String, String>, i64) {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=ro", file.display()))
        .await
        .unwrap();
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(verdict, "ok");
    let stack = sqlx::query("SELECT id, env, env_version, data_key FROM stacks WHERE slug = ?")
        .bind(slug)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let (id, current, version): (i64, String, i64) = (stack.get(0), stack.get(1), stack.get(2));
    let wrapped: Option<Vec<u8>> = stack.get(3);
    assert!(wrapped.is_some(), "a written stack's env is sealed");
    let codec = codec_of(data, id, wrapped.as_deref());
    let current = plain(codec.open_map(&current, version, Opening::All).unwrap());

    let rows = sqlx::query(
        "SELECT version, set_keys, deleted_keys, changes, snapshot FROM env_versions \
         WHERE stack_id = ? ORDER BY version",
    )
    .bind(id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        (0..=version).collect::<Vec<_>>(),
        "one version row for every version up to the stack's"
    );
    // Replayed here, independently of the store's own replay.
    let mut replayed = BTreeMap::new();
    for row in &rows {
        let v: i64 = row.get(0);
        let set: BTreeSet<String> = serde_json::from_str(row.get::<&str, _>(1)).unwrap();
        let deleted: BTreeSet<String> = serde_json::from_str(row.get::<&str, _>(2)).unwrap();
        let changes = codec.open_changes(row.get::<&str, _>(3), v).unwrap();
        let snapshot: Option<String> = row.get(4);
        if v > 0 {
            let changed_set: BTreeSet<String> = changes
                .iter()
                .filter(|(_, val)| val.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            let changed_deleted: BTreeSet<String> = changes
                .iter()
                .filter(|(_, val)| val.is_none())
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!((&set, &deleted), (&changed_set, &changed_deleted), "v{v}");
            for (k, val) in changes {
                match val {
                    Some(val) => replayed.insert(k, val),
                    None => replayed.remove(&k),
                };
            }
        }
        if let Some(snapshot) = snapshot {
            let snapshot = plain(codec.open_map(&snapshot, v, Opening::All).unwrap());
            if v == 0 {
                replayed = snapshot;
            } else {
                assert_eq!(snapshot, replayed, "the snapshot of v{v} is its replay");
            }
        }
    }
    assert_eq!(current, replayed, "the stack's env is its latest version's");
    // A batch's versions and audit rows commit together: one audit row per version.
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT metadata FROM audit_log WHERE stack_slug = ? AND kind = 'stack.env.updated'",
    )
    .bind(slug)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut audited: Vec<i64> = audited
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m).unwrap()["version"]
                .as_i64()
                .unwrap()
        })
        .collect();
    audited.sort_unstable();
    assert_eq!(audited, (1..=version).collect::<Vec<_>>());
    conn.close().await.unwrap();
    (current, version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_env_patch_load_restores_to_a_consistent_state() {
    let db = Db::fresh(Backend::Sqlite).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&db.url, data.path(), &[]);
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let slug = create_stack(&client, &server, &token, "busy").await;
    let url = server.url(&format!("/stacks/{slug}/env"));

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicI64::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS + 1));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        let (stop, acked, barrier) = (stop.clone(), acked.clone(), barrier.clone());
        writers.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Two keys per change, the second deleted every third time: a torn change
                // would show one without the other.
                let pair = if n.is_multiple_of(3) { Value::Null } else { json!(n.to_string()) };
                let body = json!({ "env": { format!("W{w}"): n.to_string(), format!("W{w}_PAIR"): pair } });
                let res = client.patch(&url).bearer_auth(&token).json(&body).send().await.unwrap();
                let (code, b) = json_of(res).await;
                assert_eq!(code, 200, "{b}");
                acked.fetch_max(b["version"].as_i64().unwrap(), Ordering::Relaxed);
            }
        }));
    }
    barrier.wait().await;
    while acked.load(Ordering::Relaxed) < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = acked.load(Ordering::Relaxed);
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("stackyard-backup.db");
    let out = {
        let (url, data, file) = (db.url.clone(), data.path().to_owned(), file.clone());
        tokio::task::spawn_blocking(move || run_backup(&url, &data, &file))
            .await
            .unwrap()
    };
    let during = acked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        file.display().to_string()
    );
    assert!(
        stderr.contains("backing up"),
        "progress on stderr: {stderr}"
    );
    assert!(
        during > before,
        "the writers kept committing during the backup"
    );

    let (env, version) = assert_consistent(&file, data.path(), &slug).await;
    assert!(
        version >= before,
        "v{version} lacks writes acknowledged before the backup (v{before})"
    );
    for w in 0..WRITERS {
        if let Some(pair) = env.get(&format!("W{w}_PAIR")) {
            assert_eq!(
                Some(pair),
                env.get(&format!("W{w}")),
                "writer {w}'s change is whole"
            );
        }
    }

    // Restore: a new data directory holding the copy as its database.
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&file, restored.path().join("stackyard.db")).unwrap();
    // The master key is kept apart from backups, and restored with them.
    for kept in ["admin-token", "master.key"] {
        std::fs::copy(data.path().join(kept), restored.path().join(kept)).unwrap();
    }
    let restored_url = format!(
        "sqlite://{}",
        restored.path().join("stackyard.db").display()
    );
    let server = Server::start(&restored_url, restored.path(), &[]);
    let res = client
        .get(server.url(&format!("/stacks/{slug}/env?reveal=true")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(res).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["version"], version);
    let served: BTreeMap<String, String> = serde_json::from_value(body["env"].clone()).unwrap();
    assert_eq!(served, env);
}

#[test]
fn backup_refuses_postgres_and_names_pg_dump() {
    let data = tempfile::tempdir().unwrap();
    let out = run_backup(
        "postgres://stackyard@127.0.0.1:1/none",
        data.path(),
        &data.path().join("b.db"),
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pg_dump"), "{stderr}");
}

#[test]
fn backup_never_overwrites_an_existing_file() {
    let data = tempfile::tempdir().unwrap();
    let existing = data.path().join("b.db");
    std::fs::write(&existing, "keep me").unwrap();
    let db = format!("sqlite://{}", data.path().join("stackyard.db").display());
    let out = run_backup(&db, data.path(), &existing);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");
}
