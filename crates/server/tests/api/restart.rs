//! `POST /stacks/:slug/restart`: the accepted restart and what it writes, and each refusal with
//! its code (noop runtime: the job ends at once and settles the services healthy).

use crate::support::*;
use serde_json::json;

/// A team stack of `api` and `web`, healthy on release 1.
async fn running_stack(app: &TestApp, token: &str) -> String {
    let (code, body) = app
        .create_stack(Some(token), two_service_form("restartable"))
        .await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    app.wait_for(&slug, Some(token), |_, b| {
        b["status"] == "healthy" && b["release"]["status"] == "live"
    })
    .await;
    slug
}

async fn restart_answers_202_with_the_services_it_restarts_and_the_stack_heals(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let slug = running_stack(&app, &t).await;
    let path = format!("/stacks/{slug}/restart");

    // No body: every service of the live release.
    let (code, body) = call(app.post(&path, Some(&t))).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["stack_id"], slug.as_str());
    assert_eq!(body["status"], "degraded", "services are restarting");
    assert_eq!(body["services"], json!(["api", "web"]));
    assert_eq!(body["release"]["version"], 1);
    assert_eq!(body["release"]["name"], "v1");
    assert_eq!(body["release"]["status"], "live");
    assert!(body["release"]["created_at"].is_string());
    let (_, healed) = app
        .wait_for(&slug, Some(&t), |_, b| b["status"] == "healthy")
        .await;
    assert_eq!(healed["release"]["version"], 1, "no new release");
    for svc in healed["services"].as_array().unwrap() {
        assert_eq!(svc["status"], "healthy", "{healed}");
    }

    // One service, named in the body.
    let (code, body) = call(app.post(&path, Some(&t)).json(&json!({ "service": "web" }))).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["services"], json!(["web"]));
    app.wait_for(&slug, Some(&t), |_, b| b["status"] == "healthy")
        .await;

    // An empty JSON body, a `null` service and a `null` body mean the whole stack too.
    for req in [
        app.post(&path, Some(&t))
            .header("content-type", "application/json"),
        app.post(&path, Some(&t)).json(&json!({ "service": null })),
        app.post(&path, Some(&t)).json(&json!(null)),
    ] {
        let (code, body) = call(req).await;
        assert_eq!(code, 202, "{body}");
        assert_eq!(body["services"], json!(["api", "web"]));
        app.wait_for(&slug, Some(&t), |_, b| b["status"] == "healthy")
            .await;
    }
    assert_eq!(app.count("jobs", "kind = 'restart'").await, 5);
    assert_eq!(
        app.count("jobs", "kind = 'restart' AND service = 'web'")
            .await,
        1
    );
}

async fn restart_of_an_unknown_service_is_400_unknown_service_in_the_envelope(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let slug = running_stack(&app, &t).await;
    let path = format!("/stacks/{slug}/restart");
    for service in ["db", "Not a name!"] {
        let (code, body) = call(
            app.post(&path, Some(&t))
                .json(&json!({ "service": service })),
        )
        .await;
        assert_error(code, &body, 400, "unknown_service");
        assert!(body["agent_action"].is_string(), "{body}");
    }
    let (code, body) = call(
        app.post(&path, Some(&t))
            .header("content-type", "application/json")
            .body("{\"service\":"),
    )
    .await;
    assert_error(code, &body, 400, "invalid_body");
    let (code, body) = call(
        app.post(&path, Some(&t))
            .header("content-type", "text/plain")
            .body("web"),
    )
    .await;
    assert_error(code, &body, 415, "unsupported_media_type");
    assert_eq!(app.count("jobs", "kind = 'restart'").await, 0);
    let (_, s) = call(app.get(&format!("/stacks/{slug}"), Some(&t))).await;
    assert_eq!(s["status"], "healthy", "a refused restart changes nothing");
}

async fn restart_of_another_teams_stack_is_404_and_needs_a_token(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let owner = app.admin_token.clone();
    let other = app.create_team("other", None).await;
    let slug = running_stack(&app, &owner).await;
    let path = format!("/stacks/{slug}/restart");
    let (code, body) = call(app.post(&path, Some(&other))).await;
    assert_error(code, &body, 404, "not_found");
    let (code, body) =
        call(app.post("/stacks/stk-0123456789abcdef01234567/restart", Some(&owner))).await;
    assert_error(code, &body, 404, "not_found");
    let (code, body) = call(app.post(&path, None)).await;
    assert_error(code, &body, 401, "unauthorized");

    // An anonymous stack: redeploy's rule, a token is required and a team never sees it.
    let (_, anon) = app.create_stack(None, two_service_form("anon")).await;
    let anon = anon["stack_id"].as_str().unwrap().to_owned();
    let (code, body) = call(app.post(&format!("/stacks/{anon}/restart"), None)).await;
    assert_error(code, &body, 401, "unauthorized");
    let (code, body) = call(app.post(&format!("/stacks/{anon}/restart"), Some(&owner))).await;
    assert_error(code, &body, 404, "not_found");
    assert_eq!(app.count("jobs", "kind = 'restart'").await, 0);
}

async fn restart_while_deleting_is_409_stack_deleting_and_before_going_live_409_not_running(
    backend: Backend,
) {
    // Slow noop steps: the first deploy and the teardown are each seen in flight.
    let extra = ["--noop-step", "1s", "--delete-wait", "0s"];
    let Some(app) = TestApp::spawn_with(backend, &extra).await else {
        return;
    };
    let t = app.admin_token.clone();
    let (code, body) = app.create_stack(Some(&t), two_service_form("slow")).await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    let path = format!("/stacks/{slug}/restart");
    let (code, body) = call(app.post(&path, Some(&t))).await;
    assert_error(code, &body, 409, "not_running");
    assert!(
        body["message"].as_str().unwrap().contains("building"),
        "{body}"
    );

    app.wait_for(&slug, Some(&t), |_, b| b["status"] == "healthy")
        .await;
    let (code, body) = call(app.delete(&format!("/stacks/{slug}?wait=false"), Some(&t))).await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = call(app.post(&path, Some(&t))).await;
    assert_error(code, &body, 409, "stack_deleting");
    assert_eq!(app.count("jobs", "kind = 'restart'").await, 0);
}

async fn restart_writes_an_audit_row_and_a_restart_requested_event_with_the_request_id(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let slug = running_stack(&app, &t).await;
    let res = app
        .post(&format!("/stacks/{slug}/restart"), Some(&t))
        .header("x-request-id", "req-restart-audit-1")
        .json(&json!({ "service": "api" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-restart-audit-1");
    let (code, body) = json_of(res).await;
    assert_eq!(code, 202, "{body}");

    let (code, audit) = call(app.get(
        &format!("/api/v1/audit?stack={slug}&kind=stack.restart_requested"),
        Some(&t),
    ))
    .await;
    assert_eq!(code, 200, "{audit}");
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{audit}");
    assert_eq!(items[0]["request_id"], "req-restart-audit-1");
    assert_eq!(
        items[0]["metadata"],
        json!({ "release": 1, "services": ["api"] })
    );
    assert!(items[0]["actor"].as_str().unwrap().starts_with("token:"));
    let events = app
        .count(
            "stack_events",
            "kind = 'restart.requested' AND CAST(data AS TEXT) LIKE '%req-restart-audit-1%'",
        )
        .await;
    assert_eq!(events, 1);
    app.wait_for(&slug, Some(&t), |_, b| b["status"] == "healthy")
        .await;
}

both_backends!(
    restart_answers_202_with_the_services_it_restarts_and_the_stack_heals,
    restart_of_an_unknown_service_is_400_unknown_service_in_the_envelope,
    restart_of_another_teams_stack_is_404_and_needs_a_token,
    restart_while_deleting_is_409_stack_deleting_and_before_going_live_409_not_running,
    restart_writes_an_audit_row_and_a_restart_requested_event_with_the_request_id,
);
