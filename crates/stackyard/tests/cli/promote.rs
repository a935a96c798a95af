//! `stackyard promote` against a real server: the first promote creates the family's stack for
//! the env and `--wait` follows it until live; the second updates the same stack.

use crate::support::*;

#[test]
fn promote_creates_then_updates_the_target_and_wait_follows_it_live() {
    let server = Server::start(&[]);
    let cli = Client::with_env(&server.base, &server.admin_token());
    let work = tempfile::tempdir().unwrap();
    let dir = two_service_copy(work.path());
    let source = cli.run(&["deploy", dir.to_str().unwrap(), "-q"]);
    let source = source.ok().stdout.trim().to_owned();
    assert!(source.starts_with("stk-"), "{source}");

    let first = cli.run(&["promote", &source, "--to", "staging", "--wait"]);
    first.ok();
    assert!(first.all().contains("created stk-"), "{first:?}");
    let json = cli.run(&[
        "promote",
        &source,
        "--to",
        "staging",
        "--from",
        "development",
        "--json",
    ]);
    let line = json.ok().lines().remove(0);
    assert_eq!(line["kind"], "promote.accepted");
    assert_eq!(line["data"]["action"], "updated_existing");
    assert_eq!(line["data"]["release"], 2);
    let target = line["data"]["stack_id"].as_str().unwrap().to_owned();
    assert!(first.all().contains(&target), "the same target: {first:?}");

    let wrong = cli.run(&["promote", &source, "--to", "prod", "--from", "staging"]);
    assert_ne!(wrong.code, 0);
    assert!(wrong.stderr.contains("env_mismatch"), "{wrong:?}");
}

#[test]
fn a_gated_promote_prints_its_approval_and_runs_after_another_token_approves() {
    let server = Server::start(&[]);
    let admin = server.admin_token();
    let cli = Client::with_env(&server.base, &admin);
    let work = tempfile::tempdir().unwrap();
    let dir = two_service_copy(work.path());
    let source = cli.run(&["deploy", dir.to_str().unwrap(), "-q"]);
    let source = source.ok().stdout.trim().to_owned();

    let asked = cli.run(&["promote", &source, "--to", "production"]);
    asked.ok();
    let id = asked.stdout.trim().to_owned();
    assert!(id.starts_with("apr_"), "{asked:?}");
    assert!(
        asked.stderr.contains("stackyard approvals approve"),
        "{asked:?}"
    );
    let ls = cli.run(&["approvals", "ls", "--status", "pending"]);
    assert!(ls.ok().stdout.contains(&id), "{ls:?}");

    // The asking token cannot approve; a second token of the team can.
    let own = cli.run(&["approvals", "approve", &id]);
    assert_ne!(own.code, 0);
    assert!(own.stderr.contains("forbidden"), "{own:?}");
    let token = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let res = stackyard_testkit::http_client()
            .post(format!("{}/api/v1/tokens", server.base))
            .bearer_auth(&admin)
            .json(&serde_json::json!({ "name": "approver" }))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    });
    stackyard_testkit::leaks::register(&token);
    let approver = Client::with_env(&server.base, &token);
    let approved = approver.run(&["approvals", "approve", &id]);
    assert!(approved.ok().stdout.contains("approved"), "{approved:?}");

    let run = cli.run(&[
        "promote",
        &source,
        "--to",
        "production",
        "--approval",
        &id,
        "--wait",
    ]);
    run.ok();
    assert!(run.all().contains("created stk-"), "{run:?}");
    let again = cli.run(&["promote", &source, "--to", "production", "--approval", &id]);
    assert!(
        again.stderr.contains("approval_already_executed"),
        "{again:?}"
    );
}
