//! Tokens, whoami, audit, operational routes, and the envelope on framework-level rejections.

use crate::support::*;
use serde_json::json;

async fn tokens_are_shown_once_listed_without_secrets_and_revocable(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let admin = app.admin_token.clone();
    let (code, who) = call(app.get("/api/v1/whoami", Some(&admin))).await;
    assert_eq!(code, 200);
    assert_eq!(who["team"]["name"], "default");
    assert!(who["team"]["max_stacks"].is_null());
    assert_eq!(who["token"]["name"], "admin");

    let (code, created) = call(
        app.post("/api/v1/tokens", Some(&admin))
            .json(&json!({"name": "ci"})),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sy_"));
    let (code, who2) = call(app.get("/api/v1/whoami", Some(&secret))).await;
    assert_eq!(code, 200);
    assert_eq!(who2["token"]["name"], "ci");

    let (_, list) = call(app.get("/api/v1/tokens", Some(&admin))).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&secret));

    let id = created["id"].as_i64().unwrap();
    let (code, _) = call(app.delete(&format!("/api/v1/tokens/{id}"), Some(&admin))).await;
    assert_eq!(code, 200);
    let (code, b) = call(app.get("/api/v1/whoami", Some(&secret))).await;
    assert_error(code, &b, 401, "unauthorized");
    let (code, b) = call(app.delete(&format!("/api/v1/tokens/{id}"), Some(&admin))).await;
    assert_error(code, &b, 404, "not_found");

    // Another team cannot revoke this team's tokens.
    let other = app.create_team("other", Some(1)).await;
    let admin_id = who["token"]["id"].as_i64().unwrap();
    let (code, _) = call(app.delete(&format!("/api/v1/tokens/{admin_id}"), Some(&other))).await;
    assert_eq!(code, 404);

    let (_, audit) = call(app.get("/api/v1/audit?kind=token.created", Some(&admin))).await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1);
    assert!(!audit.to_string().contains(&secret));
    let (_, audit) = call(app.get("/api/v1/audit?kind=token.revoked", Some(&admin))).await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1);

    // Required routes without a token.
    for path in [
        "/api/v1/whoami",
        "/api/v1/tokens",
        "/api/v1/audit",
        "/api/v1/stacks",
    ] {
        let (code, b) = call(app.get(path, None)).await;
        assert_eq!(
            (code, assert_envelope(code, &b).as_str()),
            (401, "unauthorized"),
            "{path}"
        );
    }
}

async fn framework_rejections_use_the_envelope(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    // Bad JSON, wrong content type, wrong shape.
    let (code, b) = call(
        app.post("/api/v1/tokens", t)
            .header("content-type", "application/json")
            .body("{nope"),
    )
    .await;
    assert_error(code, &b, 400, "invalid_body");
    let (code, b) = call(
        app.post("/api/v1/tokens", t)
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await;
    assert_error(code, &b, 415, "unsupported_media_type");
    let (code, b) = call(app.post("/api/v1/tokens", t).json(&json!({"nom": 1}))).await;
    assert_error(code, &b, 400, "invalid_body");
    // Unknown route and method not allowed.
    let (code, b) = call(app.get("/nope", None)).await;
    assert_error(code, &b, 404, "not_found");
    let (code, b) = call(app.client.put(app.url("/stacks/new"))).await;
    assert_error(code, &b, 405, "method_not_allowed");
    // Request ids: echoed when sane, minted otherwise, and always the one in the body.
    let res = app
        .get("/nope", None)
        .header("x-request-id", "my-trace.42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "my-trace.42");
    let (_, b) = json_of(res).await;
    assert_eq!(b["request_id"], "my-trace.42");
    let res = app
        .get("/healthz", None)
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(rid.starts_with("req_"), "{rid}");
}

async fn operational_routes_answer(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (code, b) = call(app.get("/healthz", None)).await;
    assert_eq!((code, &b["ok"]), (200, &json!(true)));
    let (code, b) = call(app.get("/readyz", None)).await;
    assert_eq!(code, 200, "{b}");
    let (code, doc) = call(app.get("/openapi.json", None)).await;
    assert_eq!(code, 200);
    for path in [
        "/stacks/new",
        "/stacks/{slug}",
        "/api/v1/stacks",
        "/api/v1/stacks/{slug}",
        "/api/v1/tokens",
        "/api/v1/tokens/{id}",
        "/api/v1/whoami",
        "/api/v1/audit",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    app.get("/nope", None).send().await.unwrap();
    let text = app.metrics().await;
    assert!(text.contains("stackyard_http_requests_total"), "{text}");
}

async fn audit_is_team_scoped_and_pages(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    for i in 0..3 {
        app.create_stack(Some(&t), two_service_form(&format!("a{i}")))
            .await;
    }
    let other = app.create_team("other", None).await;
    let (_, theirs) = call(app.get("/api/v1/audit", Some(&other))).await;
    assert!(!theirs.to_string().contains("stack.created"), "{theirs}");
    let (_, p1) = call(app.get("/api/v1/audit?kind=stack.created&limit=2", Some(&t))).await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap().to_owned();
    let (_, p2) = call(app.get(
        &format!("/api/v1/audit?kind=stack.created&limit=2&cursor={cursor}"),
        Some(&t),
    ))
    .await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert!(p1["items"][0]["id"].as_i64() > p1["items"][1]["id"].as_i64());
}

both_backends!(
    tokens_are_shown_once_listed_without_secrets_and_revocable,
    framework_rejections_use_the_envelope,
    operational_routes_answer,
    audit_is_team_scoped_and_pages,
);
