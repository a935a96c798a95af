//! Artifact retention: an uploaded tarball stays while a release of any stack uses it and goes
//! with the last one; `/readyz` counts what is kept.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use std::time::Duration;

/// The `.tar.gz` files in the data directory's `artifacts/`.
pub(crate) fn artifact_files(app: &TestApp) -> usize {
    match std::fs::read_dir(app.data_dir.path().join("artifacts")) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
            .count(),
        Err(_) => 0,
    }
}

/// A one-service stack whose tarball's content (so its digest) is `code`.
fn form_with_code(code: &str) -> Form {
    Form::new()
        .text("manifest", "services:\n  app: {}\n")
        .text("name", "app")
        .part(
            "app",
            Part::bytes(tarball(&[("Procfile", "web: ./run\n"), ("code.txt", code)]))
                .file_name("app.tar.gz"),
        )
}

async fn create(app: &TestApp, token: Option<&str>, code: &str) -> String {
    let (status, body) = app.create_stack(token, form_with_code(code)).await;
    assert_eq!(status, 202, "{body}");
    body["stack_id"].as_str().unwrap().to_owned()
}

/// `/readyz`'s artifact count, which must agree with the files on disk.
async fn ready_count(app: &TestApp) -> u64 {
    let (status, body) = call(app.get("/readyz", None)).await;
    assert_eq!(status, 200, "{body}");
    body["artifacts"]["count"].as_u64().unwrap()
}

const GRACE: &str = "1s";

async fn an_artifact_is_removed_with_the_last_stack_that_uses_it(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--artifact-grace", GRACE]).await else {
        return;
    };
    let token = app.admin_token.clone();
    let mut distinct = Vec::new();
    for i in 0..5 {
        distinct.push(create(&app, Some(&token), &format!("distinct {i}")).await);
    }
    let shared = [
        create(&app, Some(&token), "shared").await,
        create(&app, Some(&token), "shared").await,
    ];
    assert_eq!(artifact_files(&app), 6);
    assert_eq!(ready_count(&app).await, 6);
    // Past the grace period a create has to commit in, a teardown removes what it left unused.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut expected = 6;
    let mut delete = |slug: String, removes: bool| {
        let app = &app;
        let token = token.clone();
        if removes {
            expected -= 1;
        }
        let expected = expected;
        async move {
            let (status, body) = call(app.delete(&format!("/stacks/{slug}"), Some(&token))).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(artifact_files(app), expected, "after deleting {slug}");
            assert_eq!(ready_count(app).await, expected as u64);
        }
    };
    delete(shared[0].clone(), false).await;
    for slug in distinct {
        delete(slug, true).await;
    }
    delete(shared[1].clone(), true).await;
    assert_eq!(app.count("artifacts", "").await, 0);
}

async fn an_expired_anonymous_stack_takes_its_artifact_with_it(backend: Backend) {
    let Some(app) = TestApp::spawn_with(
        backend,
        &["--artifact-grace", GRACE, "--anonymous-ttl", "1s"],
    )
    .await
    else {
        return;
    };
    let slug = create(&app, None, "anonymous").await;
    assert_eq!(artifact_files(&app), 1);
    app.wait_for(&slug, None, |status, _| status == 404).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while artifact_files(&app) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the artifact stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready_count(&app).await, 0);
    assert_eq!(app.count("artifacts", "").await, 0);
}

both_backends!(
    an_artifact_is_removed_with_the_last_stack_that_uses_it,
    an_expired_anonymous_stack_takes_its_artifact_with_it,
);
