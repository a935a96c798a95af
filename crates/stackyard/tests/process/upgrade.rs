//! Upgrading in place. `tests/fixtures/upgrade/` holds a data directory (SQLite) and a
//! `pg_dump` (PostgreSQL), each written by a server on the migrations of its time, with a few
//! stacks, releases, env versions, jobs and the audit they left, and what the API served then
//! (`expected.json`). The binary under test opens each, migrates it and serves the same.
//! `regenerate_upgrade_fixtures` (ignored) writes them afresh; run it only when the fixture
//! should stand for a new released schema, never to make this test pass.
//!
//! Also here: migrations are forward-only and each runs in a transaction, so a failing one
//! leaves the schema at the previous version.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn fixture_dir(backend: Backend) -> PathBuf {
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upgrade")
        .join(name)
}

fn migrations_dir(backend: Backend) -> PathBuf {
    let name = match backend {
        Backend::Sqlite => "store-sqlite",
        Backend::Postgres => "store-postgres",
    };
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../")
        .join(name)
        .join("migrations")
}

async fn send(rb: reqwest::RequestBuilder, want: u16) -> Value {
    let (code, body) = json_of(rb.send().await.unwrap()).await;
    assert_eq!(code, want, "{body}");
    body
}

/// Writes the history the fixture records: four stacks (one deleted), env versions with sets,
/// deletes and a rollback, a second release, every job finished.
async fn populate(client: &reqwest::Client, server: &Server, token: &str) {
    let mut slugs = Vec::new();
    for name in ["alpha", "beta", "gamma", "doomed"] {
        let slug = create_stack(client, server, token, name).await;
        wait_until(
            client,
            server,
            token,
            &slug,
            Duration::from_secs(30),
            |_, b| b["status"] == "healthy",
        )
        .await;
        slugs.push(slug);
    }
    let env = |slug: &str| server.url(&format!("/stacks/{slug}/env"));
    for (i, slug) in slugs.iter().take(3).enumerate() {
        for body in [
            json!({ "env": { "GREETING": format!("hello {i}"), "DB_PASSWORD": "s3cret" } }),
            json!({ "env": { "LOG_LEVEL": "debug", "GREETING": null } }),
            json!({ "env": { "MULTI": "line one\nline two" } }),
        ] {
            send(client.patch(env(slug)).bearer_auth(token).json(&body), 200).await;
        }
    }
    send(
        client
            .post(server.url(&format!("/stacks/{}/env/rollback", slugs[1])))
            .bearer_auth(token)
            .json(&json!({ "version": 1 })),
        200,
    )
    .await;
    send(
        client
            .post(server.url(&format!("/stacks/{}/redeploy", slugs[0])))
            .bearer_auth(token),
        202,
    )
    .await;
    wait_until(
        client,
        server,
        token,
        &slugs[0],
        Duration::from_secs(30),
        |_, b| b["status"] == "healthy" && b["release"]["version"] == 2,
    )
    .await;
    let res = client
        .delete(server.url(&format!("/stacks/{}", slugs[3])))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert!(matches!(res.status().as_u16(), 200 | 202));
    wait_until(
        client,
        server,
        token,
        &slugs[3],
        Duration::from_secs(30),
        |c, _| c == 404,
    )
    .await;
}

/// What the API serves of the fixture's history: every stack, its env in clear, its env
/// history, its releases, and the team's audit.
async fn observe(client: &reqwest::Client, server: &Server, token: &str) -> Value {
    let get = |path: String| send(client.get(server.url(&path)).bearer_auth(token), 200);
    // First: revealing an env is audited.
    let audit = get("/api/v1/audit?limit=200".into()).await;
    let list = get("/api/v1/stacks?limit=200".into()).await;
    let mut stacks = serde_json::Map::new();
    for item in list["items"].as_array().unwrap() {
        let slug = item["stack_id"].as_str().unwrap().to_owned();
        stacks.insert(
            slug.clone(),
            json!({
                "stack": get(format!("/stacks/{slug}")).await,
                "env": get(format!("/stacks/{slug}/env?reveal=true")).await,
                "env_versions": get(format!("/stacks/{slug}/env/versions?limit=200")).await,
                "releases": get(format!("/stacks/{slug}/releases")).await,
            }),
        );
    }
    json!({
        "stacks": list,
        "by_stack": stacks,
        "audit": audit,
    })
}

/// A fresh database of `backend` holding the fixture, and a data directory beside it.
async fn open_fixture(backend: Backend) -> Option<(Db, tempfile::TempDir)> {
    let db = Db::fresh(backend).await?;
    let fixture = fixture_dir(backend);
    let data = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(fixture.join("data/."))
        .arg(data.path())
        .status()
        .unwrap();
    assert!(status.success());
    match backend {
        Backend::Sqlite => {
            std::fs::copy(
                fixture.join("stackyard.db"),
                db.url.trim_start_matches("sqlite://"),
            )
            .unwrap();
        }
        Backend::Postgres => {
            let out = Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url, "-f"])
                .arg(fixture.join("dump.sql"))
                .output()
                .expect("psql on PATH");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Some((db, data))
}

async fn fixtures_of_the_released_schema_migrate_and_serve_the_same_history(backend: Backend) {
    let Some((db, data)) = open_fixture(backend).await else {
        return;
    };
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixture_dir(backend).join("expected.json")).unwrap())
            .unwrap();
    let server = Server::start(&db.url, data.path(), &[]);
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let served = observe(&client, &server, &token).await;
    for part in ["stacks", "by_stack", "audit"] {
        assert_eq!(
            served[part], expected[part],
            "{part} as served before the upgrade"
        );
    }
    // The first start sealed every secret the plain-text database held (the resumable
    // migration), before serving what the history above showed in clear.
    let t = if backend == Backend::Postgres {
        "::text"
    } else {
        ""
    };
    for sql in [
        format!("SELECT COUNT(*) FROM stacks WHERE data_key IS NULL OR env{t} LIKE '%s3cret%'"),
        format!(
            "SELECT COUNT(*) FROM env_versions WHERE changes{t} LIKE '%s3cret%' \
             OR snapshot{t} LIKE '%s3cret%'"
        ),
        format!("SELECT COUNT(*) FROM releases WHERE env{t} LIKE '%s3cret%'"),
    ] {
        assert_eq!(db.scalar(&sql).await, 0, "{sql}");
    }
    if backend == Backend::Sqlite {
        // Nor do the file's free pages or its WAL keep a copy.
        let path = db.url.trim_start_matches("sqlite://").to_owned();
        for file in [path.clone(), format!("{path}-wal")] {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(6).any(|w| w == b"s3cret"),
                "{file} still holds a plain-text secret"
            );
        }
    }
    let files = std::fs::read_dir(migrations_dir(backend)).unwrap().count() as i64;
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .await,
        files,
        "every migration applied"
    );
}

/// Migrations are forward-only (no `.down.sql`), numbered in order, the same list on both
/// backends, and none opts out of its transaction (`-- no-transaction`).
#[test]
fn migrations_are_forward_only_and_each_runs_in_a_transaction() {
    let names = |backend| {
        let mut names: Vec<String> = std::fs::read_dir(migrations_dir(backend))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let (sqlite, postgres) = (names(Backend::Sqlite), names(Backend::Postgres));
    assert_eq!(
        sqlite, postgres,
        "the backends' migrations mirror each other"
    );
    // Numbered `NNNN_` and strictly increasing. Numbers are handed out to branches in flight
    // (0008 and 0009 while `needs` lands 0010), so a gap may stand until they land; sqlx
    // applies them in order either way, and the released fixtures above pin what ran before.
    let mut last = 0u32;
    for name in &sqlite {
        let number: u32 = name
            .get(..4)
            .and_then(|n| n.parse().ok())
            .filter(|_| name.as_bytes().get(4) == Some(&b'_') && name.ends_with(".sql"))
            .unwrap_or_else(|| panic!("{name}: migrations are named NNNN_….sql"));
        assert!(number > last, "{name}: migrations are numbered in order");
        last = number;
        assert!(
            !name.ends_with(".down.sql") && !name.ends_with(".up.sql"),
            "{name}: migrations are forward-only"
        );
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let sql = std::fs::read_to_string(migrations_dir(backend).join(name)).unwrap();
            assert!(
                !sql.lines()
                    .any(|l| l.trim().starts_with("-- no-transaction")),
                "{name} ({backend:?}) opts out of its transaction"
            );
        }
    }
}

/// The real migrations, then one that creates a table and fails: the table is not there and
/// the recorded version is still the last good one.
async fn a_failing_migration_leaves_the_schema_at_the_previous_version(backend: Backend) {
    let Some(db) = Db::fresh(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0i64;
    for entry in std::fs::read_dir(migrations_dir(backend)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        let n: i64 = entry.file_name().to_string_lossy()[..4].parse().unwrap();
        last = last.max(n);
    }
    std::fs::write(
        dir.path().join(format!("{:04}_broken.sql", last + 1)),
        "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
    )
    .unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    let failed = match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&format!("{}?mode=rwc", db.url))
                .await
                .unwrap();
            let r = migrator.run(&pool).await;
            pool.close().await;
            r
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let r = migrator.run(&pool).await;
            pool.close().await;
            r
        }
    };
    assert!(failed.is_err(), "the broken migration fails");
    let half_done = match backend {
        Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'",
        Backend::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'half_done'"
        }
    };
    assert_eq!(db.scalar(half_done).await, 0, "its table was rolled back");
    assert_eq!(
        db.scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .await,
        last
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM _sqlx_migrations WHERE version > {last}"
        ))
        .await,
        0
    );
}

both_backends!(
    fixtures_of_the_released_schema_migrate_and_serve_the_same_history,
    a_failing_migration_leaves_the_schema_at_the_previous_version,
);

/// Writes `tests/fixtures/upgrade/` with the current migrations:
/// `cargo test -p stackyard --test process regenerate_upgrade_fixtures -- --ignored`
/// (PostgreSQL and `pg_dump` needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "writes the committed upgrade fixtures; run by hand for a new released schema"]
async fn regenerate_upgrade_fixtures() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = Db::fresh(backend)
            .await
            .expect("a database of each backend");
        let work = tempfile::tempdir().unwrap();
        let mut server = Server::start(&db.url, work.path(), &[]);
        let token = server.admin_token();
        let client = stackyard_testkit::http_client();
        populate(&client, &server, &token).await;

        let out = fixture_dir(backend);
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(out.join("data")).unwrap();
        // The rest of a data directory: the artifacts the releases name, the admin token.
        let copied = Command::new("cp")
            .arg("-a")
            .arg(work.path().join("artifacts"))
            .arg(work.path().join("admin-token"))
            .arg(out.join("data"))
            .status()
            .unwrap();
        assert!(copied.success());
        let dumped = match backend {
            Backend::Sqlite => Command::new(BIN)
                .args(["admin", "backup", "--database-url", &db.url])
                .arg("--data-dir")
                .arg(work.path())
                .arg("--to")
                .arg(out.join("stackyard.db"))
                .output()
                .unwrap(),
            Backend::Postgres => Command::new("pg_dump")
                .args(["--no-owner", "--no-privileges", "--format=plain", "--file"])
                .arg(out.join("dump.sql"))
                .arg(&db.url)
                .output()
                .unwrap(),
        };
        assert!(
            dumped.status.success(),
            "{}",
            String::from_utf8_lossy(&dumped.stderr)
        );
        if backend == Backend::Postgres {
            // `\restrict` guards restores of untrusted dumps and older psql rejects it; this
            // dump is ours, and must restore with any psql.
            let dump = std::fs::read_to_string(out.join("dump.sql")).unwrap();
            let kept: String = dump
                .lines()
                .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(out.join("dump.sql"), kept).unwrap();
        }
        // Observed after the copy: revealing an env writes audit rows the copy must not hold.
        let expected = observe(&client, &server, &token).await;
        std::fs::write(
            out.join("expected.json"),
            serde_json::to_string_pretty(&expected).unwrap() + "\n",
        )
        .unwrap();
        let status = server.terminate(Duration::from_secs(30)).expect("stopped");
        assert!(status.success());
    }
}
