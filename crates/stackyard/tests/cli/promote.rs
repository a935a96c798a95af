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
