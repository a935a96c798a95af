//! Crashes: a server killed with SIGKILL mid-job or mid-write loses nothing it acknowledged,
//! and what it had claimed is finished after a restart.

use crate::support::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

async fn sigkill_during_a_claimed_teardown_then_restart_finishes_it(backend: Backend) {
    let Some(db) = Db::fresh(backend).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let client = stackyard_testkit::http_client();
    // Slow noop steps keep the teardown claimed long enough to kill the server mid-job.
    let mut server = Server::start(
        &db.url,
        data.path(),
        &["--noop-step", "3s", "--job-lease", "2s"],
    );
    let token = server.admin_token();
    let slug = create_stack(&client, &server, &token, "doomed").await;
    wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(30),
        |_, b| b["status"] == "healthy",
    )
    .await;
    // Without waiting for the teardown: it must still be running when the server is killed.
    let res = client
        .delete(server.url(&format!("/stacks/{slug}?wait=false")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let claimed = format!(
        "SELECT COUNT(*) FROM jobs WHERE kind = 'teardown' AND state = 'running' AND stack_slug = '{slug}'"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while db.scalar(&claimed).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "teardown never claimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();

    let server = Server::start(
        &db.url,
        data.path(),
        &["--noop-step", "10ms", "--job-lease", "2s"],
    );
    wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(20),
        |c, _| c == 404,
    )
    .await;
    let deleted = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM audit_log WHERE kind = 'stack.deleted' AND stack_slug = '{slug}'"
        ))
        .await;
    assert_eq!(deleted, 1);
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
            .await,
        0
    );
}

async fn sigkill_under_64_writers_loses_no_acknowledged_patch(backend: Backend) {
    let Some(db) = Db::fresh(backend).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let client = stackyard_testkit::http_client();
    let mut server = Server::start(&db.url, data.path(), &[]);
    let token = server.admin_token();
    let slug = create_stack(&client, &server, &token, "env").await;
    let url = server.url(&format!("/stacks/{slug}/env"));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(tokio::sync::Barrier::new(65));
    // Acknowledged writes so far, and writers with at least one: the kill waits on these.
    let (total, writing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut writers = Vec::new();
    for w in 0..64 {
        let (client, url, token, stop, barrier, total, writing) = (
            client.clone(),
            url.clone(),
            token.clone(),
            stop.clone(),
            barrier.clone(),
            total.clone(),
            writing.clone(),
        );
        writers.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut acked: i64 = -1;
            let mut next = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({ "env": { format!("W{w}"): next.to_string() } });
                match client
                    .patch(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(res) if res.status() == 200 => {
                        if acked < 0 {
                            writing.fetch_add(1, Ordering::SeqCst);
                        }
                        total.fetch_add(1, Ordering::SeqCst);
                        acked = next;
                        next += 1;
                    }
                    // The server died mid-request: this one may or may not have committed.
                    _ => break,
                }
            }
            acked
        }));
    }
    barrier.wait().await;
    // Killed under full load: every writer has been acknowledged and writes keep coming.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while writing.load(Ordering::SeqCst) < 64 || total.load(Ordering::SeqCst) < 640 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} writes of {} writers in 60 s",
            total.load(Ordering::SeqCst),
            writing.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.unwrap());
    }
    assert!(acked.iter().all(|a| *a >= 0), "{acked:?}");

    let server = Server::start(&db.url, data.path(), &[]);
    let res = client
        .get(server.url(&format!("/stacks/{slug}/env?reveal=true")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (code, env) = json_of(res).await;
    assert_eq!(code, 200, "{env}");
    for (w, last) in acked.iter().enumerate() {
        if *last < 0 {
            continue;
        }
        let stored: i64 = env["env"][format!("W{w}")]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1);
        // Its last acknowledged value, or the one in flight at the kill (which may have committed).
        assert!(
            stored == *last || stored == *last + 1,
            "writer {w}: acked {last}, stored {stored}"
        );
    }
}

both_backends!(
    sigkill_during_a_claimed_teardown_then_restart_finishes_it,
    sigkill_under_64_writers_loses_no_acknowledged_patch,
);
