//! Exit codes per error class, retries, a failed deploy and a dropped event stream.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

const MISSING: &str = "stk-000000000000000000000000";
const SLUG: &str = "stk-0123456789abcdef01234567";

#[test]
fn each_error_class_has_its_exit_code() {
    // Slow noop steps keep a deleted stack in `deleting` for a few seconds, and `rm` answers
    // without waiting for the teardown.
    let server = Server::start(&["--noop-step", "700ms", "--delete-wait", "0s"]);
    let token = server.admin_token();
    let cli = Client::with_env(&server.base, &token);
    let work = tempfile::tempdir().unwrap();

    // Usage → 2, before anything is sent.
    cli.run(&["status", "not-a-slug"]).code(2);
    cli.run(&["deploy", "--no-such-flag"]).code(2);
    cli.run(&["env", "set", MISSING, "NOEQUALS"]).code(2);
    cli.run(&["env", "set", MISSING, "1BAD=x"]).code(2);

    // 404 → 3: the server's message and agent_action; with --json an error document on stderr.
    let run = cli.run(&["status", MISSING]);
    run.code(3);
    assert!(run.stderr.contains("No stack with that id"), "{run:?}");
    assert!(run.stderr.contains("next: Check the stack id"), "{run:?}");
    let run = cli.run(&["status", MISSING, "--json"]);
    run.code(3);
    assert!(run.stdout.is_empty(), "{run:?}");
    let e = run.json_error();
    assert_eq!(e["error"], "not_found");
    assert_eq!(e["exit_code"], 3);
    assert!(e["agent_action"].is_string());

    // 401 → 1, with a hint; a rejected login saves nothing.
    let bad = Client::with_env(&server.base, "sy_not_a_real_token");
    let run = bad.run(&["whoami"]);
    run.code(1);
    assert!(run.stderr.contains("stackyard login"), "{run:?}");
    let fresh = Client::new();
    let run = fresh.run(&[
        "login",
        "--url",
        &server.base,
        "--token",
        "sy_not_a_real_token",
    ]);
    run.code(1);
    assert!(!run.all().contains("sy_not_a_real_token"), "{run:?}");
    assert!(!fresh.config_file().exists());

    // 400 → 1: no start command passes local checks; a server whose runtime runs start
    // commands itself (local) refuses it.
    let local = Server::start(&["--runtime", "local"]);
    let local_cli = Client::with_env(&local.base, &local.admin_token());
    let nostart = work.path().join("nostart");
    std::fs::create_dir_all(&nostart).unwrap();
    std::fs::write(
        nostart.join("stackyard.yaml"),
        "services:\n  web:\n    build: .\n",
    )
    .unwrap();
    std::fs::write(nostart.join("index.html"), "hi\n").unwrap();
    let run = local_cli.run(&["deploy", nostart.to_str().unwrap()]);
    run.code(1);
    assert!(run.stderr.contains("missing_start_command"), "{run:?}");
    drop(local);

    // 409 → 4: a stack being deleted takes no env write and no release.
    let dir = example_stack(work.path());
    let run = cli.run(&["deploy", dir.to_str().unwrap(), "--detach", "-q"]);
    run.ok();
    let slug = run.stdout.trim().to_owned();
    cli.run(&["rm", &slug]).ok();
    let run = cli.run(&["env", "set", &slug, "X=1"]);
    run.code(4);
    assert!(run.stderr.contains("stack_deleting"), "{run:?}");
    cli.run(&["redeploy", &slug]).code(4);
    // (412 → 4 is checked in the walk-through, with its hint.)

    // No server → 5, after the retries of a safe request.
    let port = stackyard_testkit::free_port().unwrap();
    let down = Client::with_env(&format!("http://127.0.0.1:{port}"), &token);
    let run = down.run(&["ls"]);
    run.code(5);
    assert!(run.stderr.contains("cannot reach the server"), "{run:?}");
    assert_eq!(
        down.run(&["ls", "--json"]).json_error()["error"],
        "connection_failed"
    );
}

fn busy() -> String {
    json_response(
        503,
        "retry-after: 1\r\n",
        &json!({"ok": false, "error": "persist_failed", "message": "The stack is busy.", "request_id": "r", "retry_after_seconds": 1}),
    )
}

#[test]
fn writes_are_retried_on_503_with_the_same_idempotency_key() {
    let server = Scripted::start(Box::new(|_req, n| {
        if n < 2 {
            busy()
        } else {
            json_response(
                200,
                "",
                &json!({"ok": true, "stack_id": SLUG, "env": {"A": "***"}, "version": 1,
                        "changed": {"set": ["A"], "deleted": []}, "message": "ok"}),
            )
        }
    }));
    let cli = Client::with_env(&server.base, "sy_t");
    let run = cli.run(&["env", "set", SLUG, "A=1"]);
    run.ok();
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    let key = seen[0].headers["idempotency-key"].clone();
    assert!(!key.is_empty());
    for s in &seen {
        assert_eq!(s.method, "PATCH");
        assert_eq!(
            s.headers["idempotency-key"], key,
            "every retry reuses the key"
        );
    }
    assert!(
        run.took >= Duration::from_secs(2),
        "Retry-After honoured: {:?}",
        run.took
    );

    // Always busy: three retries, then exit 5 with the server's message.
    let server = Scripted::start(Box::new(|_req, _n| busy()));
    let cli = Client::with_env(&server.base, "sy_t");
    let run = cli.run(&["env", "unset", SLUG, "A"]);
    run.code(5);
    assert_eq!(server.seen().len(), 4);
    assert!(run.stderr.contains("The stack is busy."), "{run:?}");
}

#[test]
fn a_long_retry_after_is_reported_not_slept_through() {
    let server = Scripted::start(Box::new(|_req, _n| {
        json_response(
            429,
            "retry-after: 3600\r\n",
            &json!({"ok": false, "error": "rate_limit_exceeded", "message": "Too many stacks today.", "request_id": "r", "retry_after_seconds": 3600}),
        )
    }));
    let cli = Client::with_env(&server.base, "sy_t");
    let run = cli.run(&["ls"]);
    run.code(5);
    assert_eq!(server.seen().len(), 1);
    assert!(run.took < Duration::from_secs(10), "{:?}", run.took);
}

#[test]
fn a_failed_deploy_exits_5_and_a_dropped_stream_resumes_with_last_event_id() {
    let server = Scripted::start(Box::new(move |req, _n| {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/stacks/new") => json_response(
                202,
                "",
                &json!({"ok": true, "stack_id": SLUG, "name": "x", "status": "building",
                        "services": [{"name": "web"}], "release": {"version": 1}, "note": ""}),
            ),
            ("GET", p) if p.starts_with(&format!("/stacks/{SLUG}/events")) => {
                if !req.headers.contains_key("last-event-id") {
                    // Two events, then the connection ends: the client must resume after id 2.
                    sse_response(&[
                        (
                            1,
                            "release.created",
                            json!({"release": 1, "env_version": 0}),
                        ),
                        (
                            2,
                            "service.status",
                            json!({"service": "web", "status": "building"}),
                        ),
                    ])
                } else {
                    sse_response(&[
                        (
                            3,
                            "service.status",
                            json!({"service": "web", "status": "failed", "error": "exited with status 1"}),
                        ),
                        (
                            4,
                            "release.status",
                            json!({"release": 1, "status": "failed", "error": "web exited with status 1"}),
                        ),
                        (5, "stack.status", json!({"status": "failed"})),
                    ])
                }
            }
            ("GET", p) if p == format!("/stacks/{SLUG}") => json_response(
                200,
                "",
                &json!({"ok": true, "stack_id": SLUG, "status": "failed",
                        "services": [{"name": "web", "status": "failed", "url": null, "error": "exited with status 1"}]}),
            ),
            _ => json_response(
                404,
                "",
                &json!({"ok": false, "error": "not_found", "message": "no"}),
            ),
        }
    }));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("app");
    std::fs::create_dir_all(dir.join("web")).unwrap();
    std::fs::write(dir.join("stackyard.yaml"), "services:\n  web: {}\n").unwrap();
    std::fs::write(dir.join("web/Procfile"), "web: ./run\n").unwrap();
    let cli = Client::with_env(&server.base, "sy_t");
    let run = cli.run(&["deploy", dir.to_str().unwrap()]);
    run.code(5);
    assert!(
        run.stderr
            .contains("release v1 failed: web exited with status 1"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&format!("stackyard logs {SLUG} web")),
        "{run:?}"
    );

    let seen = server.seen();
    let upload = &seen[0];
    assert!(upload.headers.contains_key("idempotency-key"));
    let body = String::from_utf8_lossy(&upload.body);
    assert!(body.contains("name=\"manifest\"") && body.contains("name=\"name\""));
    assert!(
        body.contains("name=\"web\"; filename=\"web.tar.gz\""),
        "{body}"
    );
    let streams: Vec<_> = seen.iter().filter(|s| s.path.contains("/events")).collect();
    assert_eq!(streams.len(), 2, "{seen:?}");
    assert!(!streams[0].headers.contains_key("last-event-id"));
    assert_eq!(streams[1].headers["last-event-id"], "2");

    // The same failure as JSON lines ends with a failed result.
    let run = cli.run(&["deploy", dir.to_str().unwrap(), "--json"]);
    run.code(5);
    let last = run.lines().pop().unwrap();
    assert_eq!(last["kind"], "deploy.result");
    assert_eq!(last["data"]["ok"], false);
}
