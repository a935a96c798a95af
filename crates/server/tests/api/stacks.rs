//! `/stacks/*`: create, read, list, delete, idempotency, limits, ownership.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use serde_json::json;
use std::sync::Arc;

const STACK_TABLES: [&str; 5] = ["stacks", "services", "releases", "jobs", "env_versions"];

async fn create_get_list_delete_round_trip(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let token = app.admin_token.clone();
    let (code, body) = app
        .create_stack(Some(&token), two_service_form("My app"))
        .await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    assert!(slug.starts_with("stk-") && slug.len() >= 24, "{slug}");
    assert_eq!(body["status"], "building");
    assert_eq!(body["name"], "My app");
    assert_eq!(body["env"], "development");
    assert_eq!(body["tier"], "team");
    assert_eq!(body["expires_in"], "");
    assert_eq!(body["services"].as_array().unwrap().len(), 2);

    let (_, healthy) = app
        .wait_for(&slug, Some(&token), |_, b| b["release"]["status"] == "live")
        .await;
    assert_eq!(healthy["status"], "healthy");
    for svc in healthy["services"].as_array().unwrap() {
        assert_eq!(svc["status"], "healthy", "{healthy}");
    }
    assert_eq!(healthy["services"][0]["name"], "api");
    assert_eq!(healthy["services"][0]["port"], 3000);
    assert_eq!(healthy["services"][1]["expose"], true);
    assert_eq!(healthy["env_version"], 0);
    assert_eq!(healthy["release"]["version"], 1);
    assert_eq!(healthy["release"]["status"], "live");
    assert!(healthy.get("expires_at").is_none());

    let (code, v1) = call(app.get(&format!("/api/v1/stacks/{slug}"), Some(&token))).await;
    assert_eq!(code, 200);
    assert_eq!(v1["stack_id"], slug.as_str());

    let (code, list) = call(app.get("/api/v1/stacks", Some(&token))).await;
    assert_eq!(code, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["stack_id"], slug.as_str());
    assert_eq!(list["items"][0]["status"], "healthy");

    // DELETE waits for the teardown (5 ms here): 200, and the stack is gone at once.
    let (code, del) = call(app.delete(&format!("/stacks/{slug}"), Some(&token))).await;
    assert_eq!(code, 200, "{del}");
    assert_eq!(
        del,
        json!({"ok": true, "stack_id": slug, "message": "Stack deleted"})
    );
    let (code, _) = call(app.get(&format!("/stacks/{slug}"), Some(&token))).await;
    assert_eq!(code, 404);
    let (code, _) = call(app.delete(&format!("/stacks/{slug}"), Some(&token))).await;
    assert_eq!(code, 404);

    let (_, audit) = call(app.get(&format!("/api/v1/audit?stack={slug}"), Some(&token))).await;
    let kinds: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    for k in [
        "stack.created",
        "stack.deployed",
        "stack.deletion_requested",
        "stack.deleted",
    ] {
        assert_eq!(
            kinds.iter().filter(|x| **x == k).count(),
            1,
            "{k} in {kinds:?}"
        );
    }
    let created = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "stack.created")
        .unwrap();
    assert!(created["request_id"].as_str().is_some());
    assert!(created["actor"].as_str().unwrap().starts_with("token:"));
    for t in STACK_TABLES.iter().filter(|t| **t != "jobs") {
        assert_eq!(app.count(t, "").await, 0, "{t} left behind after teardown");
    }
}

async fn anonymous_stacks_expire_and_are_visible_only_anonymously(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (code, body) = app.create_stack(None, two_service_form("anon")).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["tier"], "anonymous");
    assert_eq!(body["expires_in"], "6h");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    let (code, got) = call(app.get(&format!("/stacks/{slug}"), None)).await;
    assert_eq!(code, 200);
    assert!(got["expires_at"].is_string());
    // A team cannot see an anonymous stack, and the v1 route requires a token.
    let (code, _) = call(app.get(&format!("/stacks/{slug}"), Some(&app.admin_token))).await;
    assert_eq!(code, 404);
    let (code, b) = call(app.get(&format!("/api/v1/stacks/{slug}"), None)).await;
    assert_eq!(assert_envelope(code, &b), "unauthorized");
    // Anonymous callers may delete anonymous stacks (the slug is the secret).
    let (code, _) = call(app.delete(&format!("/stacks/{slug}"), None)).await;
    assert_eq!(code, 200);
}

/// Every route that takes a stack's slug, read from the OpenAPI document (so a new route is
/// covered without touching this test): another team's token gets 404 `not_found` and leaves
/// the stack as it was; once revoked, that token gets 401 on every one of them.
async fn another_teams_token_gets_404_on_every_stack_route_and_revoked_tokens_401(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let owner = app.admin_token.clone();
    let other = app.create_team("other", None).await;
    let (_, body) = app
        .create_stack(Some(&owner), two_service_form("mine"))
        .await;
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    let (_, before) = app
        .wait_for(&slug, Some(&owner), |_, b| {
            b["status"] == "healthy" && b["release"]["status"] == "live"
        })
        .await;
    let routes = slug_routes(&app, &slug).await;
    assert!(routes.len() >= 10, "{routes:?}");

    for route in &routes {
        let (code, b) = call(slug_route(&app, route, &other)).await;
        assert_eq!(
            (code, b["error"].as_str()),
            (404, Some("not_found")),
            "{} {}: {b}",
            route.0,
            route.1
        );
    }
    let (_, list) = call(app.get("/api/v1/stacks", Some(&other))).await;
    assert_eq!(list["total"], 0);
    // Nothing the other team sent changed the owner's stack.
    let (code, after) = call(app.get(&format!("/stacks/{slug}"), Some(&owner))).await;
    assert_eq!(code, 200);
    assert_eq!(
        (&after["status"], &after["release"], &after["env_version"]),
        (
            &before["status"],
            &before["release"],
            &before["env_version"]
        )
    );

    // Revoke the other team's token: it stops working at once, everywhere.
    let (_, who) = call(app.get("/api/v1/whoami", Some(&other))).await;
    let id = who["token"]["id"].as_i64().unwrap();
    let (code, _) = call(app.delete(&format!("/api/v1/tokens/{id}"), Some(&other))).await;
    assert_eq!(code, 200);
    for route in &routes {
        let (code, b) = call(slug_route(&app, route, &other)).await;
        assert_eq!(
            (code, b["error"].as_str()),
            (401, Some("unauthorized")),
            "{} {}: {b}",
            route.0,
            route.1
        );
    }
    for path in ["/api/v1/whoami", "/api/v1/stacks"] {
        let (code, b) = call(app.get(path, Some(&other))).await;
        assert_eq!(assert_envelope(code, &b), "unauthorized", "{path}");
    }
    // An invalid token on an optional-auth route is 401, not a downgrade to anonymous.
    let (code, b) = app
        .create_stack(Some("sy_not-a-real-token"), two_service_form("x"))
        .await;
    assert_error(code, &b, 401, "unauthorized");
}

/// A route of the API: method, path, and the JSON body a well-formed request carries.
type Route = (String, String, Option<Value>);

/// Every operation of the OpenAPI document whose path has `{slug}`, with `slug` and the other
/// parameters filled in, and a well-formed JSON body where the operation takes one (so what
/// answers is the stack lookup, not body validation).
async fn slug_routes(app: &TestApp, slug: &str) -> Vec<Route> {
    let (code, doc) = call(app.get("/openapi.json", None)).await;
    assert_eq!(code, 200);
    let mut routes = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        if !template.contains("{slug}") {
            continue;
        }
        let mut path = template
            .replace("{slug}", slug)
            .replace("{svc}", "web")
            .replace("{service}", "web")
            .replace("{version}", "1")
            .replace("{id}", "dom_000000000000000000000000");
        assert!(
            !path.contains('{'),
            "a parameter this test does not fill: {template}"
        );
        // Streams answer their status first; `follow=false` ends them when they would stream.
        if path.ends_with("/events") || path.contains("/logs/") {
            path.push_str("?follow=false");
        }
        for (method, op) in item.as_object().unwrap() {
            let json = op["requestBody"]["content"]["application/json"].is_object();
            let body = json.then(|| match method.as_str() {
                "patch" => json!({"env": {"GREETING": "x"}}),
                _ if path.ends_with("/rollback") => json!({"version": 1}),
                _ if path.ends_with("/promote") => json!({"to": "staging"}),
                _ if path.ends_with("/domains") => json!({"hostname": "app.example.com"}),
                _ => json!({}),
            });
            routes.push((method.to_uppercase(), path.clone(), body));
        }
    }
    routes
}

fn slug_route(app: &TestApp, (method, path, body): &Route, token: &str) -> reqwest::RequestBuilder {
    let rb = match method.as_str() {
        "GET" => app.get(path, Some(token)),
        "DELETE" => app.delete(path, Some(token)),
        "PATCH" => app.patch(path, Some(token)),
        "POST" => app.post(path, Some(token)),
        other => panic!("a method this test does not send: {other}"),
    };
    match body {
        Some(b) => rb.json(b),
        None => rb,
    }
}

async fn create_rejects_each_invalid_form_with_its_code_and_writes_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = Some(app.admin_token.as_str());
    let procfile = || Part::bytes(tarball(&[("Procfile", "web: ./run\n")]));
    let one = "services:\n  api: {}\n";
    let cases: Vec<(&str, Form)> = vec![
        (
            "missing_manifest",
            Form::new().text("name", "x").part("api", procfile()),
        ),
        (
            "name_required",
            Form::new().text("manifest", one).part("api", procfile()),
        ),
        (
            "invalid_name",
            Form::new()
                .text("manifest", one)
                .text("name", "-bad;name")
                .part("api", procfile()),
        ),
        (
            "invalid_env",
            Form::new()
                .text("manifest", one)
                .text("name", "x")
                .text("env", "prod env")
                .part("api", procfile()),
        ),
        (
            "invalid_manifest",
            Form::new()
                .text("manifest", "services: [1, 2")
                .text("name", "x")
                .part("api", procfile()),
        ),
        (
            "invalid_manifest",
            Form::new()
                .text("manifest", "services:\n  Bad_Name: {}\n")
                .text("name", "x"),
        ),
        (
            "invalid_env_key",
            Form::new()
                .text(
                    "manifest",
                    "services:\n  api:\n    env:\n      BAD-KEY: v\n",
                )
                .text("name", "x")
                .part("api", procfile()),
        ),
        (
            "missing_tarball",
            Form::new()
                .text("manifest", TWO_SERVICES)
                .text("name", "x")
                .part("api", procfile()),
        ),
        (
            "invalid_tarball",
            Form::new()
                .text("manifest", one)
                .text("name", "x")
                .part("api", Part::bytes(b"not a tarball".to_vec())),
        ),
        // (`missing_start_command` is the local runtime's: see compat.rs.)
        (
            "invalid_form",
            Form::new()
                .text("manifest", one)
                .text("name", "x")
                .part("api", procfile())
                .part("ghost", procfile()),
        ),
        (
            "invalid_form",
            Form::new()
                .text("manifest", one)
                .text("name", "x")
                .text("name", "y")
                .part("api", procfile()),
        ),
    ];
    for (want, form) in cases {
        let (code, body) = app.create_stack(t, form).await;
        assert_eq!(code, 400, "{want}: {body}");
        assert_eq!(assert_envelope(code, &body), want, "{body}");
    }
    // Not multipart at all.
    let (code, body) = call(
        app.post("/stacks/new", t)
            .json(&serde_json::json!({"manifest": one})),
    )
    .await;
    assert_eq!(assert_envelope(code, &body), "invalid_form");

    for table in STACK_TABLES {
        assert_eq!(
            app.count(table, "").await,
            0,
            "{table} has rows after rejected creates"
        );
    }
    assert_eq!(app.count("audit_log", "kind LIKE 'stack.%'").await, 0);
    assert_eq!(app.count("artifacts", "").await, 0);
}

async fn concurrent_creates_respect_the_team_cap_exactly(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let token = app.create_team("capped", Some(5)).await;
    let app = Arc::new(app);
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (app, token, barrier) = (app.clone(), token.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let form = two_service_form(&format!("s{i}"));
            barrier.wait().await;
            app.create_stack(Some(&token), form).await
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        let (code, body) = t.await.unwrap();
        if code == 402 {
            assert_eq!(body["error"], "deployment_limit_reached");
            assert!(body["agent_action"].is_string());
        }
        codes.push(code);
    }
    assert_eq!(codes.iter().filter(|c| **c == 202).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 402).count(), 15, "{codes:?}");
    let (_, list) = call(app.get("/api/v1/stacks", Some(&token))).await;
    assert_eq!(list["total"], 5);
}

async fn idempotency_key_replays_and_rejects_reuse(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let send = |name: &'static str| {
        app.post("/stacks/new", Some(&t))
            .header("Idempotency-Key", "create-1")
            .multipart(two_service_form(name))
            .send()
    };
    let first = send("same").await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replay").is_none());
    let (_, first) = json_of(first).await;
    let second = send("same").await.unwrap();
    assert_eq!(second.status(), 202);
    assert_eq!(second.headers()["idempotent-replay"], "true");
    let (_, second) = json_of(second).await;
    assert_eq!(first, second);
    let (code, body) = json_of(send("different").await.unwrap()).await;
    assert_error(code, &body, 422, "idempotency_key_reused");
    assert_eq!(app.count("stacks", "").await, 1);
    // A request that fails validation does not burn the key.
    let bad = app
        .post("/stacks/new", Some(&t))
        .header("Idempotency-Key", "create-2")
        .multipart(
            Form::new()
                .text("manifest", "services: {}")
                .text("name", "x"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let ok = app
        .post("/stacks/new", Some(&t))
        .header("Idempotency-Key", "create-2")
        .multipart(two_service_form("y"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
}

async fn list_pages_newest_first_and_filters_by_status_and_env(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let t = app.admin_token.clone();
    let mut slugs = Vec::new();
    for i in 0..5 {
        let (_, b) = app
            .create_stack(Some(&t), two_service_form(&format!("n{i}")))
            .await;
        slugs.push(b["stack_id"].as_str().unwrap().to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let (_, p1) = call(app.get("/api/v1/stacks?limit=2", Some(&t))).await;
    assert_eq!(p1["total"], 5);
    let ids = |p: &Value| {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["stack_id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&p1), [slugs[4].clone(), slugs[3].clone()]);
    let cursor = p1["next_cursor"].as_str().unwrap().to_owned();
    let (_, p2) = call(app.get(&format!("/api/v1/stacks?limit=2&cursor={cursor}"), Some(&t))).await;
    assert_eq!(ids(&p2), [slugs[2].clone(), slugs[1].clone()]);
    let (code, b) = call(app.get("/api/v1/stacks?limit=abc", Some(&t))).await;
    assert_eq!(assert_envelope(code, &b), "invalid_query");

    let (_, b) = app
        .create_stack(Some(&t), two_service_form("staged").text("env", "staging"))
        .await;
    let staged = b["stack_id"].as_str().unwrap().to_owned();
    let (_, f) = call(app.get("/api/v1/stacks?env=staging", Some(&t))).await;
    assert_eq!((f["total"].as_i64(), ids(&f)), (Some(1), vec![staged]));
    let (_, f) = call(app.get("/api/v1/stacks?status=deleting&env=", Some(&t))).await;
    assert_eq!((f["total"].as_i64(), ids(&f).len()), (Some(0), 0));
    // Not a status, nor is an empty one (the schema's enum has no empty value).
    for bad in ["sleeping", ""] {
        let (code, b) = call(app.get(&format!("/api/v1/stacks?status={bad}"), Some(&t))).await;
        assert_eq!(assert_envelope(code, &b), "invalid_query", "{bad:?}");
    }
}

both_backends!(
    create_get_list_delete_round_trip,
    anonymous_stacks_expire_and_are_visible_only_anonymously,
    another_teams_token_gets_404_on_every_stack_route_and_revoked_tokens_401,
    create_rejects_each_invalid_form_with_its_code_and_writes_nothing,
    concurrent_creates_respect_the_team_cap_exactly,
    idempotency_key_replays_and_rejects_reuse,
    list_pages_newest_first_and_filters_by_status_and_env,
);
