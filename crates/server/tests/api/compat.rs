//! What InstaNode's clients expect beyond the happy path: DELETE that finishes the job,
//! build contexts a runtime that runs images accepts, structural checks before contents, and an
//! anonymous stack that says how long it lives.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use serde_json::json;
use std::time::{Duration, Instant};

fn one_service(manifest: &str, parts: &[(&str, Vec<u8>)]) -> Form {
    let mut f = Form::new()
        .text("manifest", manifest.to_owned())
        .text("name", "compat");
    for (field, bytes) in parts {
        f = f.part(
            field.to_string(),
            Part::bytes(bytes.clone()).file_name("t.tar.gz"),
        );
    }
    f
}

/// A teardown slower than `--delete-wait` (noop steps of 1 s, a wait of 300 ms): DELETE answers
/// 202 after the wait, and with `?wait=false` at once; the stack is gone later.
async fn delete_answers_202_while_a_slow_teardown_runs_and_at_once_without_wait(backend: Backend) {
    let extra = ["--noop-step", "1s", "--delete-wait", "300ms"];
    let Some(app) = TestApp::spawn_with(backend, &extra).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    let (code, body) = app.create_stack(t, two_service_form("slow")).await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    app.wait_for(&slug, t, |_, b| b["status"] == "healthy")
        .await;

    let started = Instant::now();
    let (code, body) = call(app.delete(&format!("/stacks/{slug}"), t)).await;
    let waited = started.elapsed();
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "deleting");
    assert!(waited >= Duration::from_millis(250), "waited {waited:?}");
    assert!(waited < Duration::from_millis(900), "waited {waited:?}");

    let started = Instant::now();
    let (code, body) = call(app.delete(&format!("/stacks/{slug}?wait=false"), t)).await;
    assert_eq!(code, 202, "{body}");
    assert!(started.elapsed() < Duration::from_millis(250));
    app.wait_for(&slug, t, |c, _| c == 404).await;
}

/// `FROM scratch` or `FROM nginx` without a `CMD` is a complete app where images are built:
/// the noop runtime (like a runtime that runs images) accepts it and deploys it.
async fn contexts_without_a_start_command_are_accepted_by_the_noop_runtime(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    for dockerfile in [
        "FROM scratch\nCOPY index.html /\n",
        "FROM nginx:1.27\nCOPY . /usr/share/nginx/html\n",
    ] {
        let web = tarball(&[("Dockerfile", dockerfile), ("index.html", "<h1>hi</h1>\n")]);
        let (code, body) = app
            .create_stack(
                t,
                one_service("services:\n  web:\n    expose: true\n", &[("web", web)]),
            )
            .await;
        assert_eq!(code, 202, "{dockerfile}: {body}");
        let slug = body["stack_id"].as_str().unwrap().to_owned();
        app.wait_for(&slug, t, |_, b| b["status"] == "healthy")
            .await;
        let (_, releases) = call(app.get(&format!("/stacks/{slug}/releases"), t)).await;
        assert_eq!(
            releases["items"][0]["services"][0]["command"], "",
            "{releases}"
        );
    }
}

/// The local runtime runs start commands itself: a context without one cannot run there.
async fn the_local_runtime_refuses_a_context_without_a_start_command(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--runtime", "local"]).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    let web = tarball(&[("Dockerfile", "FROM scratch\nCOPY index.html /\n")]);
    let (code, body) = app
        .create_stack(t, one_service("services:\n  web: {}\n", &[("web", web)]))
        .await;
    assert_error(code, &body, 400, "missing_start_command");
    assert_eq!(app.count("stacks", "").await, 0);
}

/// The local runtime builds Dockerfiles: one it cannot build (`COPY --from` an earlier stage,
/// an unknown instruction) is refused with `invalid_dockerfile` naming the service and the
/// instruction, before any row is written. A Procfile next to it means it is not built.
async fn the_local_runtime_refuses_a_dockerfile_it_cannot_build(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--runtime", "local"]).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    let multi_stage = "FROM node:20 AS deps\nRUN npm ci\nFROM node:20-slim\n\
                       COPY --from=deps /app/node_modules ./node_modules\nCMD [\"node\", \"s.js\"]\n";
    for (dockerfile, says) in [
        (multi_stage, "only the last stage"),
        ("FROM node:20\nFROBNICATE x\nCMD node s.js\n", "FROBNICATE"),
        (
            "FROM alpine\nADD https://example.com/x.tgz /x\nCMD ./x\n",
            "URL",
        ),
    ] {
        let web = tarball(&[("Dockerfile", dockerfile)]);
        let (code, body) = app
            .create_stack(t, one_service("services:\n  web: {}\n", &[("web", web)]))
            .await;
        assert_error(code, &body, 400, "invalid_dockerfile");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("`web`") && message.contains(says),
            "{message}"
        );
    }
    assert_eq!(app.count("stacks", "").await, 0);
    let with_procfile = tarball(&[
        ("Dockerfile", multi_stage),
        ("Procfile", "web: node s.js\n"),
    ]);
    let (code, body) = app
        .create_stack(
            t,
            one_service("services:\n  web: {}\n", &[("web", with_procfile)]),
        )
        .await;
    assert_eq!(code, 202, "{body}");
}

/// A manifest `image:` is for runtimes that run images: the local runtime refuses it with
/// `image_unsupported` before any row is written; one that runs images refuses a tarball
/// sent for a service that names an image.
async fn an_image_service_is_refused_where_images_do_not_run_and_takes_no_tarball(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn_with(backend, &["--runtime", "local"]).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    let manifest = "services:\n  web:\n    image: nginx:1.27\n    port: 80\n";
    let (code, body) = app.create_stack(t, one_service(manifest, &[])).await;
    assert_error(code, &body, 400, "image_unsupported");
    assert!(
        body["message"].as_str().unwrap().contains("`web`"),
        "{body}"
    );
    assert_eq!(app.count("stacks", "").await, 0);

    let Some(noop) = TestApp::spawn(backend).await else {
        return;
    };
    let t = Some(noop.admin_token.as_str());
    let web = tarball(&[("Procfile", "web: ./serve\n")]);
    let (code, body) = noop
        .create_stack(t, one_service(manifest, &[("web", web)]))
        .await;
    assert_error(code, &body, 400, "invalid_form");
    let (code, body) = noop.create_stack(t, one_service(manifest, &[])).await;
    assert_eq!(code, 202, "{body}");
}

/// Structure first: a two-service manifest with one tarball (itself unreadable) answers
/// `missing_tarball` naming the missing service, before that tarball is judged.
async fn a_missing_tarball_is_reported_before_any_tarball_is_judged(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--runtime", "local"]).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    let (code, body) = app
        .create_stack(
            t,
            one_service(TWO_SERVICES, &[("web", b"not a tarball".to_vec())]),
        )
        .await;
    assert_error(code, &body, 400, "missing_tarball");
    assert!(
        body["message"].as_str().unwrap().contains("`api`"),
        "{body}"
    );
    let no_command = tarball(&[("README", "nothing to run\n")]);
    let (code, body) = app
        .create_stack(t, one_service(TWO_SERVICES, &[("web", no_command)]))
        .await;
    assert_error(code, &body, 400, "missing_tarball");
}

/// An anonymous stack's `note` says when it expires and how to keep the app; a team stack's
/// says nothing when the manifest is clean.
async fn an_anonymous_stacks_note_says_when_it_expires_and_how_to_keep_it(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (code, anon) = app.create_stack(None, two_service_form("anon")).await;
    assert_eq!(code, 202, "{anon}");
    let note = anon["note"].as_str().unwrap();
    let expires_at = anon["expires_at"].as_str().unwrap();
    assert!(
        note.contains(expires_at) && note.contains("(in 6h)"),
        "{note}"
    );
    assert!(note.contains("team API token"), "{note}");
    let (code, team) = app
        .create_stack(Some(&app.admin_token), two_service_form("team"))
        .await;
    assert_eq!(code, 202, "{team}");
    assert_eq!(team["note"], json!(""));
}

both_backends!(
    delete_answers_202_while_a_slow_teardown_runs_and_at_once_without_wait,
    contexts_without_a_start_command_are_accepted_by_the_noop_runtime,
    the_local_runtime_refuses_a_context_without_a_start_command,
    the_local_runtime_refuses_a_dockerfile_it_cannot_build,
    a_missing_tarball_is_reported_before_any_tarball_is_judged,
    an_image_service_is_refused_where_images_do_not_run_and_takes_no_tarball,
    an_anonymous_stacks_note_says_when_it_expires_and_how_to_keep_it,
);
