//! Artifact files and crashes: a server killed after writing a create's tarball and before
//! committing the create leaves a file no release names; the sweep removes it once it is older
//! than the grace period, and nothing else.

use crate::support::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn artifact_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("artifacts"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
                .count()
        })
        .unwrap_or(0)
}

/// Polls until the data directory holds `n` artifact files, for up to `within`.
async fn wait_for_files(data: &Path, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while artifact_files(data) != n {
        assert!(
            Instant::now() < deadline,
            "{} artifact files, expected {n}",
            artifact_files(data)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_between_the_artifact_write_and_the_commit_leaves_no_orphan() {
    let db = Db::fresh(Backend::Sqlite).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let grace = ["--artifact-grace", "1s"];
    // The debug build's fault hook holds every create after its artifact write, before its
    // transaction: the window a crash can leave an unreferenced file in.
    let mut server = Server::start_with_env(
        &db.url,
        data.path(),
        &grace,
        &[("STACKYARD_TEST_HANG_AFTER_ARTIFACT_WRITE", "1")],
    );
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let held = {
        let (client, token, url) = (client.clone(), token.clone(), server.url("/stacks/new"));
        tokio::spawn(async move {
            let _ = client
                .post(url)
                .bearer_auth(token)
                .multipart(one_service_form("held"))
                .send()
                .await;
        })
    };
    wait_for_files(data.path(), 1, Duration::from_secs(10)).await;
    server.kill9();
    let _ = held.await;
    assert_eq!(artifact_files(data.path()), 1, "the crash left the file");

    let server = Server::start(&db.url, data.path(), &grace);
    wait_for_files(data.path(), 0, Duration::from_secs(10)).await;
    let res = client
        .get(server.url("/api/v1/stacks"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (code, body) = json_of(res).await;
    assert_eq!((code, body["total"].as_i64()), (200, Some(0)), "{body}");
    let res = client.get(server.url("/readyz")).send().await.unwrap();
    let (_, ready) = json_of(res).await;
    assert_eq!(ready["artifacts"]["count"], 0, "{ready}");

    // The restarted server keeps what a committed create uses, past the grace period too.
    let slug = create_stack(&client, &server, &token, "kept").await;
    wait_for_files(data.path(), 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        artifact_files(data.path()),
        1,
        "{slug}'s artifact was swept"
    );
}
