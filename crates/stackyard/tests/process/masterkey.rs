//! The master key: created private at the first start, proved by the canary at every start (a
//! wrong key stops the server with a clear message before it serves), and rotated by
//! `admin rotate-master-key` while a server runs.

use crate::support::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// `stackyard serve` expected to refuse to start: its output once it exits.
fn serve_refusing(db_url: &str, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--runtime", "noop"])
        .args(["--router-listen", "127.0.0.1:0", "--database-url", db_url])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that does start would run forever: bound the wait, then fail the test.
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("the server started with a wrong master key");
}

fn rotate(db_url: &str, data: &Path, new_key: &Path) -> Output {
    Command::new(BIN)
        .args(["admin", "rotate-master-key", "--database-url", db_url])
        .arg("--data-dir")
        .arg(data)
        .arg("--new-key-file")
        .arg(new_key)
        .output()
        .unwrap()
}

fn write_key(path: &Path, byte: u8) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    std::fs::write(path, &text).unwrap();
    stackyard_testkit::leaks::register(&text);
    text
}

async fn whoami(server: &Server) -> u16 {
    stackyard_testkit::http_client()
        .get(server.url("/api/v1/whoami"))
        .bearer_auth(server.admin_token())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wrong_key_stops_start_up_and_rotation_moves_the_database(backend: Backend) {
    let Some(db) = Db::fresh(backend).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let key_file = data.path().join("master.key");
    let mut server = Server::start(&db.url, data.path(), &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_file).unwrap();
    stackyard_testkit::leaks::register(key.trim());
    assert!(
        server.log_lines().iter().any(|l| l.contains("master.key")),
        "the start-up log names the key file"
    );

    // While it runs: rotate to a new key, twice (the second run has nothing left to do).
    let new_key = data.path().join("new.key");
    write_key(&new_key, 7);
    for _ in 0..2 {
        let out = rotate(&db.url, data.path(), &new_key);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        whoami(&server).await,
        200,
        "the running server keeps serving"
    );
    server.terminate(Duration::from_secs(30));

    // The old key (still in the default file) no longer starts it, nor does any other.
    let other = data.path().join("other.key");
    let other_text = write_key(&other, 9);
    for (flags, env) in [
        (vec![], vec![]),
        (vec![], vec![("STACKYARD_MASTER_KEY", other_text.as_str())]),
    ] {
        let out = serve_refusing(&db.url, data.path(), &flags, &env);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is not this database's"), "{stderr}");
        stackyard_testkit::leaks::assert_no_leaks(stderr.lines(), "refused start");
        assert!(!stderr.contains(other_text.as_str()) && !stderr.contains(key.trim()));
    }
    // A key that is not 32 bytes is refused without quoting it.
    let out = serve_refusing(
        &db.url,
        data.path(),
        &[],
        &[("STACKYARD_MASTER_KEY", "bm90LWEta2V5")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not 32 bytes") && !stderr.contains("bm90LWEta2V5"),
        "{stderr}"
    );

    // The new key starts it, with everything still there.
    let new_flag = new_key.display().to_string();
    let server = Server::start(&db.url, data.path(), &["--master-key-file", &new_flag]);
    assert_eq!(
        whoami(&server).await,
        200,
        "the new key opens the same database"
    );
}

/// Rotation while writers PATCH several stacks (some sealed by their first write during the
/// rotation): no write fails, and a server started afterwards with only the new key reads every
/// acknowledged value, so every data key was re-wrapped, including those made meanwhile.
async fn rotation_under_concurrent_env_writes_loses_no_acknowledged_value(backend: Backend) {
    const WRITERS: usize = 8;
    const WRITES: usize = 30;
    let Some(db) = Db::fresh(backend).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let key_file = data.path().join("master.key");
    let mut server = Server::start(&db.url, data.path(), &[]);
    let old = std::fs::read_to_string(&key_file).unwrap();
    stackyard_testkit::leaks::register(old.trim());
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let mut slugs = Vec::new();
    for i in 0..4 {
        slugs.push(create_stack(&client, &server, &token, &format!("rot{i}")).await);
    }
    // The procedure the README gives: the new key joins the key file first.
    let new_key = data.path().join("new.key");
    let new_text = write_key(&new_key, 7);
    std::fs::write(&key_file, format!("{}\n{new_text}\n", old.trim())).unwrap();

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS + 1));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, barrier, token) = (client.clone(), barrier.clone(), token.clone());
        let url = server.url(&format!("/stacks/{}/env", slugs[w % slugs.len()]));
        writers.push(tokio::spawn(async move {
            barrier.wait().await;
            for i in 0..WRITES {
                let body = serde_json::json!({ "env": { format!("W{w}"): format!("v{i}") } });
                let res = client
                    .patch(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                let (code, b) = json_of(res.unwrap()).await;
                assert_eq!(code, 200, "writer {w}, write {i}: {b}");
            }
        }));
    }
    barrier.wait().await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (url, dir, key) = (db.url.clone(), data.path().to_owned(), new_key.clone());
    let out = tokio::task::spawn_blocking(move || rotate(&url, &dir, &key))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in writers {
        w.await.unwrap();
    }
    // Writes after the rotation are wrapped by the new key too; one more pass finds nothing.
    let out = rotate(&db.url, data.path(), &new_key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.terminate(Duration::from_secs(30));

    std::fs::write(&key_file, format!("{new_text}\n")).unwrap();
    let server = Server::start(&db.url, data.path(), &[]);
    let token = server.admin_token();
    for (i, slug) in slugs.iter().enumerate() {
        let res = client
            .get(server.url(&format!("/stacks/{slug}/env?reveal=true")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (code, b) = json_of(res).await;
        assert_eq!(code, 200, "{b}");
        for w in (0..WRITERS).filter(|w| w % slugs.len() == i) {
            assert_eq!(b["env"][format!("W{w}")], format!("v{}", WRITES - 1), "{b}");
        }
    }
}

/// `admin rotate-data-keys` while a server serves: every stack gets a new data key (read raw
/// from the database), the server goes on reading and writing every stack's env, and progress
/// is reported on stderr.
async fn rotate_data_keys_gives_every_stack_a_new_key_while_the_server_serves(backend: Backend) {
    let Some(db) = Db::fresh(backend).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(&db.url, data.path(), &[]);
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let mut slugs = Vec::new();
    for i in 0..3 {
        let slug = create_stack(&client, &server, &token, &format!("dk{i}")).await;
        let res = client
            .patch(server.url(&format!("/stacks/{slug}/env")))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "env": { "API_SECRET": format!("s{i}") } }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        slugs.push(slug);
    }
    let before: Vec<Vec<u8>> = db
        .rows_of_bytes("SELECT data_key FROM stacks WHERE data_key IS NOT NULL ORDER BY id")
        .await;
    assert_eq!(before.len(), 3);
    let out = Command::new(BIN)
        .args(["admin", "rotate-data-keys", "--database-url", &db.url])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("re-keyed 3/3 stacks"), "{stderr}");
    let after = db
        .rows_of_bytes("SELECT data_key FROM stacks WHERE data_key IS NOT NULL ORDER BY id")
        .await;
    assert_eq!(after.len(), 3);
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a, "every stack has a new data key");
    }
    for (i, slug) in slugs.iter().enumerate() {
        let url = server.url(&format!("/stacks/{slug}/env"));
        let res = client
            .patch(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({ "env": { "MORE": "x" } }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let (code, b) = json_of(
            client
                .get(format!("{url}?reveal=true"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, 200, "{b}");
        assert_eq!(b["env"]["API_SECRET"], format!("s{i}"));
        assert_eq!(b["env"]["MORE"], "x");
    }
}

both_backends!(
    rotate_data_keys_gives_every_stack_a_new_key_while_the_server_serves,
    wrong_key_stops_start_up_and_rotation_moves_the_database,
    rotation_under_concurrent_env_writes_loses_no_acknowledged_value,
);
