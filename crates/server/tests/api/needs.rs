//! `needs:` at create and redeploy against real PostgreSQL: which tokens a stack may name, the
//! error of each refusal with nothing written, and what its release records (tokens, never URLs).

use crate::resources::{PgAdmin, spawn};
use crate::support::*;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

fn form(name: &str, needs: &str) -> Form {
    let manifest = format!("services:\n  web:\n    needs: {needs}\n");
    Form::new()
        .text("manifest", manifest)
        .text("name", name.to_owned())
        .part(
            "web",
            Part::bytes(tarball(&[(
                "Procfile",
                "web: python3 -m http.server $PORT\n",
            )]))
            .file_name("web.tar.gz"),
        )
}

async fn db_new(app: &TestApp, token: Option<&str>, name: &str) -> Value {
    let (code, b) = call(app.post("/db/new", token).json(&json!({ "name": name }))).await;
    assert_eq!(code, 201, "{b}");
    stackyard_testkit::leaks::register(b["connection_url"].as_str().unwrap());
    b
}

fn server_name(r: &Value) -> String {
    format!("sy_{}", r["id"].as_str().unwrap())
}

async fn redeploy(app: &TestApp, token: &str, slug: &str, form: Form) -> (u16, Value) {
    call(
        app.post(&format!("/stacks/{slug}/redeploy"), Some(token))
            .multipart(form),
    )
    .await
}

/// Every refusal of a `needs:` entry, at create and at redeploy, leaves no stack, release or
/// job behind; a team's own token is accepted and the release records it without its URL.
async fn needs_tokens_are_checked_at_create_and_redeploy_and_releases_record_no_url(
    backend: Backend,
) {
    let pg = PgAdmin::create().await;
    let Some(app) = spawn(backend, &pg, &[]).await else {
        return;
    };
    let admin = app.admin_token.clone();
    let other = app.create_team("other", None).await;
    let mine = db_new(&app, Some(&admin), "mine").await;
    let theirs = db_new(&app, Some(&other), "theirs").await;
    let anon = db_new(&app, None, "anon").await;
    let gone = db_new(&app, Some(&admin), "gone").await;
    let (code, _) = call(app.delete(
        &format!("/api/v1/resources/{}", gone["token"].as_str().unwrap()),
        Some(&admin),
    ))
    .await;
    assert_eq!(code, 200);
    let tok = |r: &Value| r["token"].as_str().unwrap().to_owned();

    let refusals: Vec<(Option<&str>, String, u16, &str)> = vec![
        (
            Some(&admin),
            format!("[{}]", tok(&theirs)),
            403,
            "forbidden",
        ),
        (Some(&admin), format!("[{}]", tok(&anon)), 403, "forbidden"),
        (None, format!("[{}]", tok(&mine)), 403, "forbidden"),
        (
            Some(&admin),
            format!("[{}]", tok(&gone)),
            400,
            "resource_not_found",
        ),
        (
            Some(&admin),
            "[6f9619ff-8b86-4011-b42d-00c04fc964ff]".to_owned(),
            400,
            "resource_not_found",
        ),
        (Some(&admin), "[mysql]".to_owned(), 400, "invalid_token"),
        (
            Some(&admin),
            "[\"postgres://u:hunter2@127.0.0.1/db\"]".to_owned(),
            400,
            "invalid_token",
        ),
        (
            Some(&admin),
            "[{kind: mongo}]".to_owned(),
            400,
            "invalid_token",
        ),
    ];
    for (token, needs, status, error) in &refusals {
        let (code, body) = app.create_stack(*token, form("refused", needs)).await;
        assert_error(code, &body, *status, error);
        assert!(!body.to_string().contains("hunter2"), "{body}");
    }
    assert_eq!(app.count("stacks", "").await, 0);
    assert_eq!(app.count("jobs", "").await, 0);
    assert_eq!(app.count("releases", "").await, 0);

    // An anonymous stack may name an anonymous resource; a team stack its team's.
    let (code, anon_stack) = app
        .create_stack(None, form("anon", &format!("[{}]", tok(&anon))))
        .await;
    assert_eq!(code, 202, "{anon_stack}");
    let (code, created) = app
        .create_stack(Some(&admin), form("mine", &format!("[{}]", tok(&mine))))
        .await;
    assert_eq!(code, 202, "{created}");
    let slug = created["stack_id"].as_str().unwrap().to_owned();
    assert!(created["note"].as_str().unwrap().is_empty(), "{created}");
    app.wait_for(&slug, Some(&admin), |_, b| b["status"] == "healthy")
        .await;

    for (_, needs, status, error) in refusals.iter().filter(|r| r.0.is_some()) {
        let (code, body) = redeploy(&app, &admin, &slug, form("refused", needs)).await;
        assert_error(code, &body, *status, error);
    }
    assert_eq!(app.count("releases", "").await, 2);
    assert_eq!(app.count("jobs", "").await, 2);

    // The release names the resource by token and env name; its URL and password are not there.
    let url = mine["connection_url"].as_str().unwrap();
    let password = url
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .and_then(|(cred, _)| cred.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("a password in the URL");
    let like = |s: &str| format!("CAST(spec AS TEXT) LIKE '%{s}%'");
    assert_eq!(app.count("releases", &like(&tok(&mine))).await, 1);
    assert_eq!(app.count("releases", &like("DATABASE_URL")).await, 2);
    assert_eq!(app.count("releases", &like(&password)).await, 0);
    assert_eq!(app.count("releases", &like(&server_name(&mine))).await, 0);
    // The deploy read the URL through the store, audited as the system.
    assert!(
        app.count(
            "audit_log",
            "kind = 'resource.url_read' AND actor = 'system'"
        )
        .await
            >= 1
    );
    let names: Vec<String> = [&mine, &theirs, &anon, &gone]
        .iter()
        .map(|r| server_name(r))
        .collect();
    drop(app);
    pg.cleanup(&names).await;
}

/// A stack-owned database is made by the first deploy, kept (the same one) by redeploys, not
/// counted against `--max-resources`, refused by token in another stack, and dropped by the
/// stack's teardown.
async fn a_stack_owned_database_outlives_redeploys_and_goes_with_the_stack(backend: Backend) {
    let pg = PgAdmin::create().await;
    let Some(app) = spawn(backend, &pg, &["--max-resources", "1"]).await else {
        return;
    };
    let admin = app.admin_token.clone();
    let (code, created) = app
        .create_stack(
            Some(&admin),
            form("owns", "[postgres, {kind: postgres, as: OTHER_DB}]"),
        )
        .await;
    assert_eq!(code, 202, "{created}");
    let slug = created["stack_id"].as_str().unwrap().to_owned();
    app.wait_for(&slug, Some(&admin), |_, b| b["status"] == "healthy")
        .await;
    assert_eq!(
        app.count("resources", "status = 'ready' AND stack_id IS NOT NULL")
            .await,
        2
    );
    let (_, list) = call(app.get("/api/v1/resources", Some(&admin))).await;
    let owned: Vec<Value> = list["items"].as_array().unwrap().clone();
    assert_eq!(owned.len(), 2, "{list}");
    assert!(owned.iter().all(|i| i["stack"] == json!(slug)), "{list}");
    let names: Vec<String> = owned.iter().map(server_name).collect();

    // The team's one resource of its own still fits under --max-resources 1.
    let mine = db_new(&app, Some(&admin), "mine").await;
    let mut all = names.clone();
    all.push(server_name(&mine));

    // Another stack cannot name a stack-owned resource by token.
    let (code, body) = app
        .create_stack(
            Some(&admin),
            form(
                "borrow",
                &format!("[{}]", owned[0]["token"].as_str().unwrap()),
            ),
        )
        .await;
    assert_error(code, &body, 403, "forbidden");

    let (code, body) = call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&admin))).await;
    assert_eq!(code, 202, "{body}");
    app.wait_for(&slug, Some(&admin), |_, b| {
        b["status"] == "healthy" && b["release"]["version"] == 2
    })
    .await;
    let (_, again) = call(app.get("/api/v1/resources", Some(&admin))).await;
    let tokens = |v: &Value| -> Vec<String> {
        let mut t: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["token"].as_str().unwrap().to_owned())
            .collect();
        t.sort();
        t
    };
    let mut before: Vec<String> = owned
        .iter()
        .map(|i| i["token"].as_str().unwrap().to_owned())
        .collect();
    before.push(mine["token"].as_str().unwrap().to_owned());
    before.sort();
    assert_eq!(tokens(&again), before, "redeploy keeps the same resources");

    let (code, _) = call(app.delete(&format!("/stacks/{slug}"), Some(&admin))).await;
    assert!(code == 200 || code == 202);
    app.wait_for(&slug, Some(&admin), |c, _| c == 404).await;
    assert_eq!(app.count("resources", "stack_id IS NOT NULL").await, 0);
    assert_eq!(
        app.count("resources", "").await,
        1,
        "the team's own resource stays"
    );
    drop(app);
    pg.cleanup(&all).await;
}

both_backends!(
    needs_tokens_are_checked_at_create_and_redeploy_and_releases_record_no_url,
    a_stack_owned_database_outlives_redeploys_and_goes_with_the_stack
);
