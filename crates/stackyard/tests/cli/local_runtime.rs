//! The client against the local runtime with the repository's example stacks: real processes,
//! real URLs through the router, a deploy that really fails with the service's last log lines.

use crate::support::*;

/// The stack id from a deploy's `Created stk-… (name), release v1` note.
fn created_slug(run: &Run) -> String {
    run.stderr
        .lines()
        .find_map(|l| l.strip_prefix("Created "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `Created` line: {run:?}"))
        .to_owned()
}

#[test]
fn deploy_two_service_example_serves_and_a_crashing_example_fails_with_its_log() {
    let server = Server::start(&["--runtime", "local"]);
    let cli = Client::with_env(&server.base, &server.admin_token());

    // The two-service example: healthy, and its URL answers through the router.
    let dir = repo_example("two-service");
    let run = cli.run(&["deploy", dir.to_str().unwrap()]);
    run.ok();
    let slug = created_slug(&run);
    assert!(
        run.stdout.contains(&format!("{slug} is live (release v1)")),
        "{run:?}"
    );
    let url = format!("http://web-{slug}.localhost:");
    assert!(run.stdout.contains(&url), "the URL is printed: {run:?}");
    let st = cli.run(&["status", &slug, "--json"]).json();
    let web_url = st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = get_via_router(&web_url);
    assert!(status.contains("200"), "{status} {body}");
    assert!(body.contains("hello from api"), "{body}");
    let logs = cli.run(&["logs", &slug, "web"]);
    logs.ok();
    assert!(logs.stdout.contains("web listening on"), "{logs:?}");

    // The crash example: the deploy fails (exit 5) with the service's last lines as the error.
    let run = cli.run(&[
        "deploy",
        repo_example("crash").to_str().unwrap(),
        "--timeout",
        "60s",
    ]);
    run.code(5);
    assert!(run.stderr.contains("release v1 failed"), "{run:?}");
    assert!(
        run.stderr.contains("missing configuration DATABASE_URL"),
        "{run:?}"
    );
    assert!(run.stderr.contains("stackyard logs"), "{run:?}");
    let crashed = created_slug(&run);
    let logs = cli.run(&["logs", &crashed, "app"]);
    logs.ok();
    assert!(logs.stdout.contains("starting up"), "{logs:?}");

    // Tear both down, waiting, so no process outlives the test.
    cli.run(&["rm", &slug, "--wait", "-q"]).ok();
    cli.run(&["rm", &crashed, "--wait", "-q"]).ok();
}
