//! Planned stops: SIGTERM with stacks running and a deploy in flight ends the server cleanly
//! within its shutdown timeout, leaves no service process behind, and the restart resumes the
//! deploy and serves the same URLs again.

use crate::runtime::{create, form_of, via_router, wait_healthy};
use crate::support::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// A one-service exposed app whose start takes `delay` seconds before it listens.
fn app_starting_after(dir: &Path, delay: u32) -> reqwest::multipart::Form {
    write_app(
        dir,
        "services:\n  app:\n    build: ./app\n    expose: true\n",
        &[
            (
                "app/start.sh",
                &format!("sleep {delay}\nexec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n"),
            ),
            ("app/Procfile", "web: sh start.sh\n"),
        ],
    );
    form_of(dir, &[("app", &dir.join("app"))], "slow")
}

/// Polls the stack until `status` (its own, not a service's) reads `want`.
async fn wait_stack_status(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    slug: &str,
    want: &str,
) -> Value {
    wait_until(
        client,
        server,
        token,
        slug,
        Duration::from_secs(60),
        |_, b| b["status"] == want,
    )
    .await
    .1
}

async fn served_again(client: &reqwest::Client, server: &Server, slug: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match via_router(client, server, "app", slug).await {
            Ok((200, _)) => return,
            other => assert!(Instant::now() < deadline, "{slug} not served: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_deploy_exits_zero_leaves_no_process_and_the_restart_resumes_the_deploy() {
    let db = Db::fresh(Backend::Sqlite).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let apps = tempfile::tempdir().unwrap();
    // A fixed router port, so the URLs of the first run are the URLs of the second.
    let router = format!("127.0.0.1:{}", stackyard_testkit::free_port().unwrap());
    let timeout = format!("{}s", SHUTDOWN_TIMEOUT.as_secs());
    let args = [
        "--runtime",
        "local",
        "--router-listen",
        &router,
        "--shutdown-timeout",
        &timeout,
    ];
    let mut server = Server::start(&db.url, data.path(), &args);
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();

    let running = create(
        &client,
        &server,
        Some(&token),
        app_starting_after(&apps.path().join("running"), 0),
    )
    .await;
    let url =
        wait_healthy(&client, &server, Some(&token), &running).await["services"][0]["url"].clone();
    // Its process sleeps 3 s before it listens: the deploy is in flight while it does.
    let deploying = create(
        &client,
        &server,
        Some(&token),
        app_starting_after(&apps.path().join("deploying"), 3),
    )
    .await;
    wait_stack_status(&client, &server, &token, &deploying, "deploying").await;
    let groups: Vec<i32> = [&running, &deploying]
        .iter()
        .flat_map(|slug| recorded_groups(data.path(), slug))
        .collect();
    assert_eq!(groups.len(), 2, "one recorded group per stack: {groups:?}");
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND stack_slug = '{deploying}'"
        ))
        .await,
        1,
        "the deploy is claimed when the server is stopped"
    );

    let asked = Instant::now();
    let status = server
        .terminate(SHUTDOWN_TIMEOUT + Duration::from_secs(5))
        .expect("the server exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        asked.elapsed() < SHUTDOWN_TIMEOUT,
        "stopped in {:?}, past the shutdown timeout",
        asked.elapsed()
    );
    for pgid in &groups {
        assert_eq!(
            group_members(*pgid),
            Vec::<i32>::new(),
            "process group {pgid} outlived the server"
        );
    }
    // The cancelled deploy committed no outcome: it is still the stack's open job.
    assert_eq!(
        db.scalar(&format!(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed') AND kind = 'deploy' AND stack_slug = '{deploying}'"
        ))
        .await,
        0
    );

    let server = Server::start(&db.url, data.path(), &args);
    let s = wait_healthy(&client, &server, Some(&token), &running).await;
    assert_eq!(s["services"][0]["url"], url, "same URL after the restart");
    served_again(&client, &server, &running).await;
    let s = wait_healthy(&client, &server, Some(&token), &deploying).await;
    assert_eq!(
        s["release"]["version"], 1,
        "the first release, resumed: {s}"
    );
    served_again(&client, &server, &deploying).await;
}
