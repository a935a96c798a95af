//! `needs:` end to end on the local runtime with the sandbox on, against the machine's
//! PostgreSQL: a service granted a team resource (by token) and a stack-owned one sees
//! `DATABASE_URL` and `DATABASE_URL_2` and queries both (and its own Redis as `REDIS_URL`); a service of a stack without `needs`
//! cannot even open a TCP connection to PostgreSQL's port; the teardown drops the stack-owned
//! database only.

use crate::runtime::{create, delete_and_wait_gone, form_of, via_router, wait_healthy};
use crate::support::*;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use std::time::Duration;

const PROBE: &str = include_str!("needs/probe.py");

fn landlock_tcp_or_skip(ready: &Value) -> bool {
    let layers: Vec<&str> = ready["sandbox"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if layers.contains(&"landlock-tcp") {
        return true;
    }
    let why = format!("Landlock TCP rules are not available here (have {layers:?})");
    assert!(!stackyard_testkit::under_ci(), "{why}");
    eprintln!("skipping: {why}");
    false
}

fn pg_port(url: &str) -> u16 {
    let (_, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split('/').next().unwrap();
    host.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5432)
}

async fn database_exists(admin: &str, name: &str) -> bool {
    let mut c = PgConnection::connect(admin).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut c)
        .await
        .unwrap();
    n > 0
}

fn probe_form(
    apps: &std::path::Path,
    name: &str,
    needs: Option<&str>,
    (port, redis_port): (u16, u16),
) -> reqwest::multipart::Form {
    let dir = apps.join(name);
    let needs = needs.map_or(String::new(), |n| format!("    needs: {n}\n"));
    let manifest = format!(
        "services:\n  app:\n    build: ./app\n    expose: true\n{needs}    env:\n      T_PG_PORT: \"{port}\"\n      T_REDIS_PORT: \"{redis_port}\"\n"
    );
    write_app(
        &dir,
        &manifest,
        &[
            ("app/probe.py", PROBE),
            ("app/Procfile", "web: exec python3 probe.py\n"),
        ],
    );
    form_of(&dir, &[("app", &dir.join("app"))], name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stack_needing_a_token_and_its_own_database_sees_and_reaches_both_and_teardown_drops_only_its_own()
 {
    let Some(admin) = stackyard_testkit::pg::admin_url().await else {
        assert!(
            !stackyard_testkit::under_ci(),
            "PostgreSQL is required in CI"
        );
        return;
    };
    let port = pg_port(&admin);
    let redis = stackyard_testkit::redis::url().expect("Redis for needs tests");
    let redis_port = pg_port(&redis);
    let ports = (port, redis_port);
    let (_db, _data, server) = local_server(&[
        "--resource-postgres-url",
        &admin,
        "--resource-redis-url",
        &redis,
    ])
    .await;
    let client = stackyard_testkit::http_client();
    let (code, ready) = json_of(client.get(server.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(code, 200, "{ready}");
    if !landlock_tcp_or_skip(&ready) {
        return;
    }
    let token = server.admin_token();
    let (code, res) = json_of(
        client
            .post(server.url("/db/new"))
            .bearer_auth(&token)
            .json(&json!({ "name": "shared" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{res}");
    let url = res["connection_url"].as_str().unwrap().to_owned();
    stackyard_testkit::leaks::register(&url);
    let shared_db = format!("sy_{}", res["id"].as_str().unwrap());

    let apps = tempfile::tempdir().unwrap();
    let needs = format!("[{}, postgres, redis]", res["token"].as_str().unwrap());
    let uses = create(
        &client,
        &server,
        Some(&token),
        probe_form(apps.path(), "uses", Some(&needs), ports),
    )
    .await;
    let plain = create(
        &client,
        &server,
        Some(&token),
        probe_form(apps.path(), "plain", None, ports),
    )
    .await;
    wait_healthy(&client, &server, Some(&token), &uses).await;
    wait_healthy(&client, &server, Some(&token), &plain).await;

    // The stack-owned database is listed among the team's resources.
    let (_, list) = json_of(
        client
            .get(server.url("/api/v1/resources"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{list}");
    let owned = items
        .iter()
        .find(|i| i["token"] != res["token"] && i["resource_type"] == "postgres")
        .expect("the stack-owned resource");
    assert_eq!(owned["stack"], json!(uses), "{list}");
    assert!(items.iter().any(|i| i.get("stack").is_none()), "{list}");
    let owned_db = format!("sy_{}", owned["id"].as_str().unwrap());
    assert!(database_exists(&admin, &owned_db).await);

    let (code, report) = via_router(&client, &server, "app", &uses).await.unwrap();
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["db1"], json!(shared_db), "{report}");
    assert_eq!(report["db2"], json!(owned_db), "{report}");
    assert_eq!(report["pg_port"], "connected", "{report}");
    assert_eq!(report["redis"], "+PONG", "{report}");
    assert_eq!(report["redis_port"], "connected", "{report}");

    let (code, report) = via_router(&client, &server, "app", &plain).await.unwrap();
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["db1"], Value::Null, "{report}");
    assert_eq!(
        report["pg_port"], "errno 13",
        "the sandbox denies the connect: {report}"
    );

    // Teardown drops the stack's own database; the token resource it used stays and works.
    delete_and_wait_gone(&client, &server, &token, &uses, Duration::from_secs(60)).await;
    assert!(
        !database_exists(&admin, &owned_db).await,
        "{owned_db} dropped"
    );
    assert!(database_exists(&admin, &shared_db).await);
    let (_, list) = json_of(
        client
            .get(server.url("/api/v1/resources"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["total"], 1, "only the token resource is left: {list}");
    let mut c = PgConnection::connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(one, 1);
    c.close().await.unwrap();

    let (code, _) = json_of(
        client
            .delete(server.url(&format!(
                "/api/v1/resources/{}",
                res["token"].as_str().unwrap()
            )))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200);
    assert!(!database_exists(&admin, &shared_db).await);
}

/// The server dies between a stack-owned resource's row and its DDL (a test hook exits the
/// process there): after a restart the reconciler drops the half-made row, the requeued deploy
/// makes the resource anew, and the stack ends healthy with exactly one ready database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_stack_resources_row_and_its_ddl_is_reconciled_and_the_deploy_finishes() {
    let Some(admin) = stackyard_testkit::pg::admin_url().await else {
        assert!(
            !stackyard_testkit::under_ci(),
            "PostgreSQL is required in CI"
        );
        return;
    };
    let db = Db::fresh(Backend::Sqlite).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let flags = ["--resource-postgres-url", admin.as_str()];
    let server = Server::start_with_env(
        &db.url,
        data.path(),
        &flags,
        &[("STACKYARD_TEST_CRASH_AFTER_STACK_RESOURCE_ROW", "1")],
    );
    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let form = reqwest::multipart::Form::new()
        .text("manifest", "services:\n  app:\n    needs: [postgres]\n")
        .text("name", "crash")
        .part(
            "app",
            reqwest::multipart::Part::bytes(tarball()).file_name("app.tar.gz"),
        );
    let slug = create(&client, &server, Some(&token), form).await;
    // The deploy job writes the row and the process exits.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.get(server.url("/healthz")).send().await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not exit at the hook"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    assert_eq!(
        db.scalar(
            "SELECT COUNT(*) FROM resources WHERE status = 'provisioning' AND stack_id IS NOT NULL"
        )
        .await,
        1
    );

    let server = Server::start(&db.url, data.path(), &flags);
    wait_until(
        &client,
        &server,
        &token,
        &slug,
        Duration::from_secs(60),
        |c, b| c == 200 && b["status"] == "healthy",
    )
    .await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM resources").await, 1);
    assert_eq!(
        db.scalar(
            "SELECT COUNT(*) FROM resources WHERE status = 'ready' AND stack_env = 'DATABASE_URL'"
        )
        .await,
        1
    );
    delete_and_wait_gone(&client, &server, &token, &slug, Duration::from_secs(60)).await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM resources").await, 0);
}
