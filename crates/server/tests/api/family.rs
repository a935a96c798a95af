//! Env families and promotion over HTTP: a first promote creates the family's stack for the
//! env (202 `created`), the next updates it (200 `updated_existing`); nothing is uploaded or
//! written to artifact storage; concurrent promotes of one source make one target; the
//! refusals answer their codes and write nothing.

use crate::artifacts::artifact_files;
use crate::support::*;
use serde_json::{Value, json};
use stackyard_testkit::both_backends;

/// A stack whose first release is live.
async fn live_stack(app: &TestApp, name: &str) -> String {
    let t = &app.admin_token;
    let (code, body) = app.create_stack(Some(t), two_service_form(name)).await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    app.wait_for(&slug, Some(t), |_, b| b["release"]["status"] == "live")
        .await;
    slug
}

async fn promote(app: &TestApp, slug: &str, body: Value) -> (u16, Value) {
    call(
        app.post(
            &format!("/api/v1/stacks/{slug}/promote"),
            Some(&app.admin_token),
        )
        .json(&body),
    )
    .await
}

async fn promote_creates_then_updates_the_family_stack_and_writes_no_artifact(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let src = live_stack(&app, "fam").await;
    let files = artifact_files(&app);
    assert!(files > 0);

    let (code, first) = promote(&app, &src, json!({ "to": "staging" })).await;
    assert_eq!(code, 202, "{first}");
    assert_eq!(first["action"], "created");
    assert_eq!(
        (&first["parent_id"], &first["source"]),
        (&json!(src), &json!(src))
    );
    assert_eq!(
        (&first["env"], &first["release"]),
        (&json!("staging"), &json!(1))
    );
    let target = first["stack_id"].as_str().unwrap().to_owned();
    assert_ne!(target, src);
    app.wait_for(&target, Some(&t), |_, b| b["release"]["status"] == "live")
        .await;

    let (code, second) = promote(
        &app,
        &src,
        json!({ "from": "development", "to": "staging" }),
    )
    .await;
    assert_eq!(code, 200, "{second}");
    assert_eq!(second["action"], "updated_existing");
    assert_eq!(
        (&second["stack_id"], &second["release"]),
        (&json!(target), &json!(2))
    );
    assert_eq!(
        artifact_files(&app),
        files,
        "a promote uploads and writes nothing"
    );

    let res = app
        .get(&format!("/api/v1/stacks/{target}/family"), Some(&t))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["cache-control"].to_str().unwrap(),
        "private, max-age=60"
    );
    let (code, family) = json_of(res).await;
    assert_eq!(code, 200, "{family}");
    assert_eq!(family["total"], 2);
    assert_eq!(family["family"][0]["slug"], src);
    assert_eq!(family["family"][0]["is_root"], true);
    assert_eq!(family["family"][1]["parent_stack_id"], src);
    assert_eq!(family["family"][1]["env"], "staging");
}

async fn concurrent_promotes_of_one_source_make_one_target(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let src = live_stack(&app, "race").await;
    let app = std::sync::Arc::new(app);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (app, src, barrier) = (app.clone(), src.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            promote(&app, &src, json!({ "to": "qa" })).await
        }));
    }
    let mut created = Vec::new();
    let mut targets = std::collections::BTreeSet::new();
    for t in tasks {
        let (code, body) = t.await.unwrap();
        match code {
            202 => created.push(body["stack_id"].clone()),
            200 => assert_eq!(body["action"], "updated_existing"),
            409 => assert_eq!(body["error"], "promote_conflict", "{body}"),
            _ => panic!("{code} {body}"),
        }
        if let Some(s) = body["stack_id"].as_str() {
            targets.insert(s.to_owned());
        }
    }
    assert_eq!(created.len(), 1, "exactly one promote creates the target");
    assert_eq!(targets.len(), 1, "never two targets: {targets:?}");
    assert_eq!(app.count("stacks", "environment = 'qa'").await, 1);
}

async fn promote_refusals_answer_their_codes_and_write_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let (code, body) = app.create_stack(Some(&t), two_service_form("young")).await;
    assert_eq!(code, 202, "{body}");
    let young = body["stack_id"].as_str().unwrap().to_owned();
    let src = live_stack(&app, "refuse").await;
    let cases = [
        (
            src.as_str(),
            json!({ "to": "development", "from": "development" }),
            400,
            "invalid_target",
        ),
        (
            src.as_str(),
            json!({ "to": "no such env" }),
            400,
            "invalid_env",
        ),
        (
            src.as_str(),
            json!({ "to": "prod", "from": "staging" }),
            409,
            "env_mismatch",
        ),
        (
            src.as_str(),
            json!({ "to": "prod", "extra": 1 }),
            400,
            "invalid_body",
        ),
        (
            "stk-00000000000000000000000000",
            json!({ "to": "prod" }),
            404,
            "not_found",
        ),
    ];
    for (slug, body, status, error) in cases {
        let (code, b) = promote(&app, slug, body.clone()).await;
        assert_eq!(
            (code, b["error"].as_str()),
            (status, Some(error)),
            "{body}: {b}"
        );
    }
    // A stack whose first deploy has not finished has no live release: 412, unless it already
    // went live meanwhile (the noop runtime is fast), in which case it promotes.
    let (code, b) = promote(&app, &young, json!({ "to": "qa" })).await;
    assert!(
        code == 412 && b["error"] == "no_live_release" || code == 202,
        "{code} {b}"
    );
    let before = app.count("stacks", "").await;
    let (code, b) = call(
        app.post(&format!("/api/v1/stacks/{src}/promote"), None)
            .json(&json!({ "to": "prod" })),
    )
    .await;
    assert_eq!(code, 401, "{b}");
    assert_eq!(app.count("stacks", "").await, before);
}

/// A second token of the admin's team.
async fn second_token(app: &TestApp) -> String {
    let (code, b) = call(
        app.post("/api/v1/tokens", Some(&app.admin_token))
            .json(&json!({ "name": "approver" })),
    )
    .await;
    assert_eq!(code, 201, "{b}");
    let token = b["token"].as_str().unwrap().to_owned();
    stackyard_testkit::leaks::register(&token);
    token
}

async fn decide(app: &TestApp, id: &str, verb: &str, token: &str) -> (u16, Value) {
    call(app.post(&format!("/api/v1/promotions/{id}/{verb}"), Some(token))).await
}

async fn a_promote_to_production_waits_for_another_token_and_runs_once(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let src = live_stack(&app, "gated").await;
    let (code, pending) = promote(&app, &src, json!({ "to": "production" })).await;
    assert_eq!(code, 202, "{pending}");
    assert_eq!(pending["status"], "pending_approval");
    assert_eq!(
        (&pending["from"], &pending["to"]),
        (&json!("development"), &json!("production"))
    );
    let id = pending["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.count("stacks", "environment = 'production'").await,
        0,
        "nothing ran yet"
    );
    let (_, audit) = call(app.get(
        "/api/v1/audit?kind=promotion.requested",
        Some(&app.admin_token),
    ))
    .await;
    assert!(audit.to_string().contains(&id), "{audit}");

    let (code, list) =
        call(app.get("/api/v1/promotions?status=pending", Some(&app.admin_token))).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["items"][0]["id"], id);
    // Executing before the approval, deciding with the asking token, or from another team.
    let run = json!({ "to": "production", "approval_id": id });
    let (code, b) = promote(&app, &src, run.clone()).await;
    assert_eq!(
        (code, b["error"].as_str()),
        (409, Some("approval_not_pending")),
        "{b}"
    );
    let (code, b) = decide(&app, &id, "approve", &app.admin_token).await;
    assert_eq!((code, b["error"].as_str()), (403, Some("forbidden")), "{b}");
    let other = app.create_team("other", None).await;
    let (code, b) = decide(&app, &id, "approve", &other).await;
    assert_eq!((code, b["error"].as_str()), (404, Some("not_found")), "{b}");

    let approver = second_token(&app).await;
    let (code, b) = decide(&app, &id, "approve", &approver).await;
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["promotion"]["status"], "approved");
    let (code, b) = decide(&app, &id, "reject", &approver).await;
    assert_eq!(
        (code, b["error"].as_str()),
        (409, Some("approval_not_pending")),
        "{b}"
    );

    // Three runs of the approval at once: it executes once.
    let app = std::sync::Arc::new(app);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3));
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (app, src, run, barrier) = (app.clone(), src.clone(), run.clone(), barrier.clone());
        runs.push(tokio::spawn(async move {
            barrier.wait().await;
            promote(&app, &src, run).await
        }));
    }
    let mut done = Vec::new();
    for r in runs {
        let (code, b) = r.await.unwrap();
        match code {
            202 => done.push(b),
            409 => assert_eq!(b["error"], "approval_already_executed", "{b}"),
            _ => panic!("{code} {b}"),
        }
    }
    assert_eq!(done.len(), 1, "an approval runs once");
    let done = done.remove(0);
    assert_eq!(done["action"], "created");
    assert_eq!(app.count("stacks", "environment = 'production'").await, 1);
    let (_, list) = call(app.get("/api/v1/promotions", Some(&app.admin_token))).await;
    assert_eq!(list["items"][0]["status"], "executed");
    assert_eq!(list["items"][0]["target"], done["stack_id"]);
}

async fn an_expired_approval_answers_410(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, &["--approval-ttl", "1s"]).await else {
        return;
    };
    let src = live_stack(&app, "late").await;
    let (code, pending) = promote(&app, &src, json!({ "to": "production" })).await;
    assert_eq!(code, 202, "{pending}");
    let id = pending["approval_id"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let approver = second_token(&app).await;
    let (code, b) = decide(&app, id, "approve", &approver).await;
    assert_eq!(
        (code, b["error"].as_str()),
        (410, Some("approval_expired")),
        "{b}"
    );
    let (_, list) = call(app.get("/api/v1/promotions", Some(&app.admin_token))).await;
    assert_eq!(list["items"][0]["expired"], true);
}

both_backends!(
    a_promote_to_production_waits_for_another_token_and_runs_once,
    an_expired_approval_answers_410,
    promote_creates_then_updates_the_family_stack_and_writes_no_artifact,
    concurrent_promotes_of_one_source_make_one_target,
    promote_refusals_answer_their_codes_and_write_nothing,
);
