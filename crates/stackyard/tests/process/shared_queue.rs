//! Two `stackyard serve` processes on one PostgreSQL database share the job queue: both claim
//! jobs, and every deploy and teardown job runs exactly once.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_postgres_run_each_job_exactly_once() {
    let Some(db) = Db::fresh(Backend::Postgres).await else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // One worker each, and deploys of several 50 ms steps: all 50 creates go to `a`, whose
    // worker alone would need seconds for them, so `b` (polling every 500 ms) must claim some
    // — the test forces what it checks rather than hoping for it.
    let flags = ["--noop-step", "50ms", "--job-workers", "1"];
    let a = Server::start(&db.url, dir_a.path(), &flags);
    // Servers of one database share its master key: `a` created it at its first start.
    let key = dir_a.path().join("master.key").display().to_string();
    let b = Server::start(
        &db.url,
        dir_b.path(),
        &[&flags[..], &["--master-key-file", &key]].concat(),
    );
    let token = a.admin_token();
    let client = stackyard_testkit::http_client();
    let servers = [&a, &b];

    let mut slugs = Vec::new();
    for i in 0..50 {
        slugs.push(create_stack(&client, &a, &token, &format!("s{i}")).await);
    }
    for (i, slug) in slugs.iter().enumerate() {
        wait_until(
            &client,
            servers[(i + 1) % 2],
            &token,
            slug,
            Duration::from_secs(60),
            |_, b| b["status"] == "healthy",
        )
        .await;
    }
    for (i, slug) in slugs.iter().enumerate() {
        let res = client
            .delete(servers[(i + 1) % 2].url(&format!("/stacks/{slug}?wait=false")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    for (i, slug) in slugs.iter().enumerate() {
        wait_until(
            &client,
            servers[i % 2],
            &token,
            slug,
            Duration::from_secs(60),
            |c, _| c == 404,
        )
        .await;
    }

    for (kind, audit) in [("deploy", "stack.deployed"), ("teardown", "stack.deleted")] {
        assert_eq!(
            db.scalar(&format!(
                "SELECT COUNT(*) FROM jobs WHERE kind = '{kind}' AND state = 'done'"
            ))
            .await,
            50,
            "{kind} jobs done"
        );
        assert_eq!(
            db.scalar(&format!("SELECT COUNT(*) FROM jobs WHERE kind = '{kind}'"))
                .await,
            50,
            "{kind} jobs queued"
        );
        assert_eq!(
            db.scalar(&format!(
                "SELECT COUNT(*) FROM jobs WHERE kind = '{kind}' AND attempts <> 1"
            ))
            .await,
            0,
            "{kind} jobs claimed more than once"
        );
        assert_eq!(
            db.scalar(&format!(
                "SELECT COUNT(*) FROM audit_log WHERE kind = '{audit}'"
            ))
            .await,
            50,
            "{audit} rows"
        );
        let dupes = format!(
            "SELECT COUNT(*) FROM (SELECT stack_slug FROM audit_log WHERE kind = '{audit}' GROUP BY stack_slug HAVING COUNT(*) > 1) d"
        );
        assert_eq!(
            db.scalar(&dupes).await,
            0,
            "a {kind} ran twice for one stack"
        );
    }
    // Worker ids are `host:pid`: each server claimed deploys.
    for server in servers {
        let claimed = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM jobs WHERE kind = 'deploy' AND claimed_by LIKE '%:{}'",
                server.pid()
            ))
            .await;
        assert!(claimed >= 1, "server {} claimed no deploy", server.pid());
    }
}
