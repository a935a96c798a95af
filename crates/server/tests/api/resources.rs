//! Resources against real servers: the machine's PostgreSQL (through an admin role with only
//! CREATEDB and CREATEROLE, made per test) and Redis. Every database, role and ACL user a test
//! makes is dropped by the API or by the test before it ends.

use crate::support::*;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};
use stackyard_core::ids::random_hex;
use stackyard_core::resource::{
    ANONYMOUS_TIER, NewResource, Resource, ResourceKind, ResourceStatus, generate_id,
};
use stackyard_server::resources::Provisioner;

/// A per-test PostgreSQL admin role (CREATEDB, CREATEROLE, not superuser) and its URL.
pub(crate) struct PgAdmin {
    superuser_url: String,
    role: String,
    url: String,
}

impl PgAdmin {
    pub(crate) async fn create() -> PgAdmin {
        let superuser_url = stackyard_testkit::pg::admin_url()
            .await
            .expect("PostgreSQL for resource tests");
        let role = format!("sytestadm_{}", random_hex(6));
        let mut c = PgConnection::connect(&superuser_url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {role} LOGIN CREATEDB CREATEROLE"
        )))
        .execute(&mut c)
        .await
        .unwrap();
        let (_, rest) = superuser_url.split_once("://").unwrap();
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let url = format!("postgres://{role}@{host}");
        stackyard_testkit::leaks::register(&url);
        PgAdmin {
            superuser_url,
            role,
            url,
        }
    }

    /// Whether a database and a role named `name` exist.
    async fn exists(&self, name: &str) -> (bool, bool) {
        let mut c = PgConnection::connect(&self.superuser_url).await.unwrap();
        let db: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&mut c)
            .await
            .unwrap();
        let role: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_roles WHERE rolname = $1")
            .bind(name)
            .fetch_one(&mut c)
            .await
            .unwrap();
        (db > 0, role > 0)
    }

    /// Drops `names` (databases and roles) if a failed test left them, then the admin role.
    pub(crate) async fn cleanup(self, names: &[String]) {
        let mut c = PgConnection::connect(&self.superuser_url).await.unwrap();
        for n in names {
            for s in [
                format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)"),
                format!("DROP ROLE IF EXISTS \"{n}\""),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(s))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS {}",
            self.role
        )))
        .execute(&mut c)
        .await
        .unwrap();
    }
}

fn redis_url() -> String {
    stackyard_testkit::redis::url().expect("Redis for resource tests")
}

pub(crate) async fn spawn(backend: Backend, pg: &PgAdmin, extra: &[&str]) -> Option<TestApp> {
    let redis = redis_url();
    let mut args = vec![
        "--resource-postgres-url",
        pg.url.as_str(),
        "--resource-redis-url",
        redis.as_str(),
    ];
    args.extend_from_slice(extra);
    TestApp::spawn_with(backend, &args).await
}

async fn create(app: &TestApp, route: &str, token: Option<&str>, name: &str) -> (u16, Value) {
    let (code, b) = json_of(
        app.post(route, token)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    if let Some(url) = b["connection_url"].as_str() {
        stackyard_testkit::leaks::register(url);
    }
    (code, b)
}

async fn delete(app: &TestApp, token: &str, resource: &Value) -> (u16, Value) {
    let path = format!("/api/v1/resources/{}", resource["token"].as_str().unwrap());
    json_of(app.delete(&path, Some(token)).send().await.unwrap()).await
}

fn server_name(resource: &Value) -> String {
    format!("sy_{}", resource["id"].as_str().unwrap())
}

async fn db_new_gives_a_database_only_its_own_role_can_use_and_delete_drops_it(backend: Backend) {
    let pg = PgAdmin::create().await;
    let Some(app) = spawn(backend, &pg, &[]).await else {
        return;
    };
    let admin = app.admin_token.clone();
    let (code, a) = create(&app, "/db/new", Some(&admin), "orders").await;
    assert_eq!(code, 201, "{a}");
    let (_, b) = create(&app, "/db/new", Some(&admin), "other").await;
    let names = [server_name(&a), server_name(&b)];
    assert_eq!(a["resource_type"], "postgres");
    assert_eq!(a["env"], "DATABASE_URL");
    assert_eq!(a["tier"], "team");
    assert!(a["expires_at"].is_null());
    assert_eq!(a["limits"]["connections"], 20);
    assert!(a.get("key_prefix").is_none());

    let url = a["connection_url"].as_str().unwrap();
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query("CREATE TABLE t (x int)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    let row = sqlx::query("SELECT x FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.get::<i32, _>(0), 1);
    conn.close().await.unwrap();

    // B's role, pointed at A's database.
    let b_url = b["connection_url"].as_str().unwrap();
    let crossed = format!("{}/{}", b_url.rsplit_once('/').unwrap().0, names[0]);
    let err = PgConnection::connect(&crossed)
        .await
        .expect_err("another resource's role is refused");
    assert!(err.to_string().contains("permission denied"), "{err}");

    // The URL is read back (audited: a row naming the resource, never the URL).
    let path = format!("/api/v1/resources/{}", a["token"].as_str().unwrap());
    let (code, got) = json_of(app.get(&path, Some(&admin)).send().await.unwrap()).await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["connection_url"], a["connection_url"]);
    assert_eq!(got["status"], "ready");
    let (_, audit) = json_of(
        app.get("/api/v1/audit?kind=resource.url_read", Some(&admin))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
    assert!(!audit.to_string().contains(url));
    assert_eq!(audit["items"][0]["metadata"]["resource"], a["token"]);

    let (code, list) = json_of(
        app.get("/api/v1/resources?limit=1", Some(&admin))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0]["token"], b["token"]);
    assert!(list["items"][0].get("connection_url").is_none());
    let next = list["next_cursor"].as_str().unwrap();
    let (_, page2) = json_of(
        app.get(
            &format!("/api/v1/resources?limit=1&cursor={next}"),
            Some(&admin),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(page2["items"][0]["token"], a["token"]);
    assert!(page2["next_cursor"].is_null());

    for (r, name) in [(&a, &names[0]), (&b, &names[1])] {
        let (code, gone) = delete(&app, &admin, r).await;
        assert_eq!(code, 200, "{gone}");
        assert_eq!(
            gone,
            json!({"ok": true, "token": r["token"], "status": "deleted"})
        );
        assert_eq!(pg.exists(name).await, (false, false));
    }
    let (code, _) = json_of(app.get(&path, Some(&admin)).send().await.unwrap()).await;
    assert_eq!(code, 404);
    drop(app);
    pg.cleanup(&names).await;
}

async fn cache_new_confines_the_user_to_its_prefix_and_delete_removes_it(backend: Backend) {
    let pg = PgAdmin::create().await;
    let Some(app) = spawn(backend, &pg, &[]).await else {
        return;
    };
    let admin = app.admin_token.clone();
    let (code, r) = create(&app, "/cache/new", Some(&admin), "sessions").await;
    assert_eq!(code, 201, "{r}");
    assert_eq!(r["resource_type"], "redis");
    assert_eq!(r["env"], "REDIS_URL");
    let prefix = r["key_prefix"].as_str().unwrap().to_owned();
    assert_eq!(prefix, format!("sy:{}:", r["id"].as_str().unwrap()));

    let client = redis::Client::open(r["connection_url"].as_str().unwrap()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}k");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "v");
    for denied in [
        redis::cmd("SET").arg("sy:someoneelse:k").arg("v").clone(),
        redis::cmd("FLUSHALL").clone(),
        redis::cmd("KEYS").arg("*").clone(),
    ] {
        let err = denied.query_async::<()>(&mut conn).await.unwrap_err();
        assert_eq!(
            err.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm),
            "{err}"
        );
    }

    let (code, _) = delete(&app, &admin, &r).await;
    assert_eq!(code, 200);
    let admin_client = redis::Client::open(redis_url()).unwrap();
    let mut adm = admin_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut adm)
        .await
        .unwrap();
    assert!(!users.contains(&server_name(&r)), "{users:?}");
    let left: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut adm)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(client.get_multiplexed_async_connection().await.is_err());
    drop(app);
    pg.cleanup(&[]).await;
}

async fn without_an_admin_url_creates_answer_503_resource_unavailable_naming_the_flag(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    for (route, flag) in [
        ("/db/new", "--resource-postgres-url"),
        ("/cache/new", "--resource-redis-url"),
    ] {
        let (code, b) = create(&app, route, Some(&app.admin_token), "x").await;
        assert_error(code, &b, 503, "resource_unavailable");
        assert!(b["agent_action"].as_str().unwrap().contains(flag), "{b}");
    }
}

async fn a_bad_name_is_a_400_invalid_name_envelope(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    for name in ["", " x", "a;b", &"a".repeat(65)] {
        let (code, b) = create(&app, "/db/new", Some(&app.admin_token), name).await;
        assert_error(code, &b, 400, "invalid_name");
    }
    let (code, b) = json_of(
        app.post("/cache/new", None)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(code, &b, 400, "invalid_body");
}

async fn a_team_at_max_resources_gets_402_resource_limit_reached(backend: Backend) {
    let pg = PgAdmin::create().await;
    let Some(app) = spawn(backend, &pg, &["--max-resources", "1"]).await else {
        return;
    };
    let admin = app.admin_token.clone();
    let (code, first) = create(&app, "/cache/new", Some(&admin), "one").await;
    assert_eq!(code, 201, "{first}");
    let (code, b) = create(&app, "/db/new", Some(&admin), "two").await;
    assert_error(code, &b, 402, "resource_limit_reached");
    assert_eq!(delete(&app, &admin, &first).await.0, 200);
    let (code, again) = create(&app, "/cache/new", Some(&admin), "two").await;
    assert_eq!(code, 201, "{again}");
    assert_eq!(delete(&app, &admin, &again).await.0, 200);
    drop(app);
    pg.cleanup(&[]).await;
}

async fn anonymous_resources_expire_and_count_against_the_stack_daily_limit(backend: Backend) {
    let pg = PgAdmin::create().await;
    let Some(app) = spawn(backend, &pg, &["--anonymous-ttl", "2s"]).await else {
        return;
    };
    let mut made = Vec::new();
    for i in 0..4 {
        let (code, r) = create(&app, "/cache/new", None, &format!("c{i}")).await;
        assert_eq!(code, 201, "{r}");
        assert_eq!(r["tier"], "anonymous");
        assert_eq!(r["limits"]["expires_in"], "2s");
        assert!(r["expires_at"].is_string());
        made.push(r);
    }
    let (code, b) = app.create_stack(None, two_service_form("fifth")).await;
    assert_eq!(code, 202, "{b}");
    let (code, b) = create(&app, "/cache/new", None, "sixth").await;
    assert_error(code, &b, 429, "rate_limit_exceeded");

    // Expiry drops the users (the maintenance loop ticks every 500 ms with a 2 s TTL).
    let admin_client = redis::Client::open(redis_url()).unwrap();
    let mut adm = admin_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let names: Vec<String> = made.iter().map(server_name).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut adm)
            .await
            .unwrap();
        if !names.iter().any(|n| users.contains(n)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired users still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(app);
    pg.cleanup(&[]).await;
}

async fn a_create_replayed_with_its_idempotency_key_answers_the_same_resource_once(
    backend: Backend,
) {
    let pg = PgAdmin::create().await;
    let Some(app) = spawn(backend, &pg, &[]).await else {
        return;
    };
    let admin = app.admin_token.clone();
    let send = |name: &str| {
        app.post("/cache/new", Some(&admin))
            .header("Idempotency-Key", "create-sessions-1")
            .json(&json!({ "name": name }))
            .send()
    };
    let first = send("sessions").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    stackyard_testkit::leaks::register(first["connection_url"].as_str().unwrap());
    let again = send("sessions").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replay"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let (code, b) = json_of(send("other").await.unwrap()).await;
    assert_error(code, &b, 422, "idempotency_key_reused");
    let (_, list) = json_of(
        app.get("/api/v1/resources", Some(&admin))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["total"], 1);
    assert_eq!(delete(&app, &admin, &first).await.0, 200);
    drop(app);
    pg.cleanup(&[]).await;
}

/// Writes resource rows (with the status each has) as a server that died mid-step left them,
/// sealed by the master key of the data directory the server starts on.
struct InsertRows(Vec<Resource>, std::path::PathBuf);

impl stackyard_server::serve::WithStore for InsertRows {
    type Output = ();
    async fn run<S: stackyard_core::store::Store>(self, store: S) -> anyhow::Result<()> {
        let keys = stackyard_server::config::KeyArgs::default();
        let master = stackyard_server::masterkey::unlock(&store, &keys, &self.1).await?;
        stackyard_server::masterkey::install(&store, master, &keys, &self.1).await?;
        for resource in self.0 {
            store
                .insert_resource(NewResource {
                    resource,
                    fingerprint: None,
                    max_per_team: None,
                })
                .await?;
        }
        Ok(())
    }
}

async fn insert_rows(store: stackyard_server::StoreArgs, rows: Vec<Resource>) {
    let data_dir = store.data_dir.clone();
    stackyard_server::serve::with_store(
        &store,
        stackyard_server::serve::store_options_for(&store),
        InsertRows(rows, data_dir),
    )
    .await
    .unwrap();
}

/// An anonymous resource row of `kind` in `status`, created an hour ago, with its URL (and
/// password) as the server would have made it.
fn row(provisioner: &Provisioner, kind: ResourceKind, status: ResourceStatus) -> Resource {
    let id = generate_id();
    let url = provisioner
        .connection_url(kind, &id, &random_hex(16))
        .unwrap();
    stackyard_testkit::leaks::register(&url);
    Resource {
        id,
        token: stackyard_core::ResourceToken::generate(),
        kind,
        name: stackyard_core::ResourceName::parse("left").unwrap(),
        team_id: None,
        tier: ANONYMOUS_TIER.to_owned(),
        status,
        connection_url: url,
        created_at: stackyard_core::Millis(stackyard_server::now().0 - 3_600_000),
        expires_at: None,
        stack: None,
    }
}

async fn rows_a_crash_left_provisioning_or_deleting_are_dropped_at_start_up(backend: Backend) {
    let pg = PgAdmin::create().await;
    let provisioner = Provisioner::new(Some(&pg.url), None).unwrap();
    // The DDL ran, the row never became `ready` (or never went after its drop).
    let rows = vec![
        row(
            &provisioner,
            ResourceKind::Postgres,
            ResourceStatus::Provisioning,
        ),
        row(
            &provisioner,
            ResourceKind::Postgres,
            ResourceStatus::Deleting,
        ),
    ];
    let names: Vec<String> = rows.iter().map(Resource::server_name).collect();
    for r in &rows {
        provisioner.create(r).await.unwrap();
    }
    for n in &names {
        assert_eq!(pg.exists(n).await, (true, true));
    }
    let seed: Seed = Box::new(move |store| Box::pin(insert_rows(store, rows)));
    let Some(app) = spawn_seeded(backend, &pg, seed).await else {
        pg.cleanup(&names).await;
        return;
    };
    // The server reconciles before it answers: nothing to wait for.
    for n in &names {
        assert_eq!(pg.exists(n).await, (false, false), "{n}");
    }
    drop(app);
    pg.cleanup(&names).await;
}

async fn ready_redis_users_are_set_again_at_start_up(backend: Backend) {
    let pg = PgAdmin::create().await;
    let provisioner = Provisioner::new(None, Some(&redis_url())).unwrap();
    // A `ready` row whose ACL user is gone, as after a Redis restart.
    let r = row(&provisioner, ResourceKind::Redis, ResourceStatus::Ready);
    let (url, name, prefix) = (r.connection_url.clone(), r.server_name(), r.key_prefix());
    let seed: Seed = Box::new(move |store| Box::pin(insert_rows(store, vec![r])));
    let Some(app) = spawn_seeded(backend, &pg, seed).await else {
        pg.cleanup(&[]).await;
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}k"))
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let admin = redis::Client::open(redis_url()).unwrap();
    let mut adm = admin.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(&name)
        .query_async(&mut adm)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}k"))
        .query_async(&mut adm)
        .await
        .unwrap();
    drop(app);
    pg.cleanup(&[]).await;
}

async fn spawn_seeded(backend: Backend, pg: &PgAdmin, seed: Seed) -> Option<TestApp> {
    let redis = redis_url();
    let args = [
        "--resource-postgres-url",
        pg.url.as_str(),
        "--resource-redis-url",
        redis.as_str(),
    ];
    TestApp::spawn_seeded(backend, &args, seed).await
}

async fn a_provisioning_row_another_server_left_is_dropped_by_the_maintenance_pass(
    backend: Backend,
) {
    let pg = PgAdmin::create().await;
    let Some(app) = spawn(backend, &pg, &["--anonymous-ttl", "2s"]).await else {
        return;
    };
    let provisioner = Provisioner::new(Some(&pg.url), None).unwrap();
    let r = row(
        &provisioner,
        ResourceKind::Postgres,
        ResourceStatus::Provisioning,
    );
    let name = r.server_name();
    provisioner.create(&r).await.unwrap();
    assert_eq!(pg.exists(&name).await, (true, true));
    insert_rows(
        stackyard_server::StoreArgs {
            data_dir: app.data_dir.path().to_owned(),
            database_url: Some(app.db_url.clone()),
        },
        vec![r],
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while pg.exists(&name).await != (false, false) {
        assert!(
            std::time::Instant::now() < deadline,
            "the crashed resource is still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(app);
    pg.cleanup(&[name]).await;
}

/// PostgreSQL computes a verifier itself for a plaintext password; ours, with its salt and
/// iteration count, must be byte for byte the same (the machine's test server trusts local
/// connections, so a login alone would not prove the verifier right).
#[tokio::test]
async fn our_scram_verifier_is_the_one_postgresql_computes_for_the_same_salt() {
    use base64::Engine;
    let Some(url) = stackyard_testkit::pg::admin_url().await else {
        return;
    };
    let mut c = PgConnection::connect(&url).await.unwrap();
    let role = format!("sytestscram_{}", random_hex(6));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE {role} LOGIN PASSWORD 'correct horse battery staple'"
    )))
    .execute(&mut c)
    .await
    .unwrap();
    let theirs: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(&role)
        .fetch_one(&mut c)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&mut c)
        .await
        .unwrap();
    // SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
    let (iterations, rest) = theirs
        .strip_prefix("SCRAM-SHA-256$")
        .and_then(|r| r.split_once(':'))
        .unwrap();
    let salt = base64::engine::general_purpose::STANDARD
        .decode(rest.split_once('$').unwrap().0)
        .unwrap();
    let ours = stackyard_server::resources::scram_sha256_verifier(
        "correct horse battery staple",
        &salt,
        iterations.parse().unwrap(),
    );
    assert_eq!(ours, theirs);
}

both_backends!(
    db_new_gives_a_database_only_its_own_role_can_use_and_delete_drops_it,
    cache_new_confines_the_user_to_its_prefix_and_delete_removes_it,
    without_an_admin_url_creates_answer_503_resource_unavailable_naming_the_flag,
    a_bad_name_is_a_400_invalid_name_envelope,
    a_team_at_max_resources_gets_402_resource_limit_reached,
    a_create_replayed_with_its_idempotency_key_answers_the_same_resource_once,
    anonymous_resources_expire_and_count_against_the_stack_daily_limit,
    rows_a_crash_left_provisioning_or_deleting_are_dropped_at_start_up,
    ready_redis_users_are_set_again_at_start_up,
    a_provisioning_row_another_server_left_is_dropped_by_the_maintenance_pass,
);

/// On a scratch cluster where every login is SCRAM-SHA-256 (`initdb -A scram-sha-256`), the
/// verifier we compute is what PostgreSQL checks: the returned URL logs in, the same URL with
/// another password does not.
#[tokio::test]
async fn on_a_scram_cluster_the_returned_password_logs_in_and_a_wrong_one_fails() {
    let scratch = match stackyard_testkit::pg::ScramServer::start().await {
        Ok(s) => s,
        Err(why) if !stackyard_testkit::under_ci() => {
            eprintln!("skipping: no scratch PostgreSQL cluster: {why}");
            return;
        }
        Err(why) => panic!("no scratch PostgreSQL cluster: {why}"),
    };
    stackyard_testkit::leaks::register(&scratch.url);
    let admin_password = random_hex(16);
    let mut su = PgConnection::connect(&scratch.url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE sy_admin LOGIN CREATEDB CREATEROLE PASSWORD '{admin_password}'"
    )))
    .execute(&mut su)
    .await
    .unwrap();
    let (_, rest) = scratch.url.split_once('@').unwrap();
    let admin_url = format!("postgres://sy_admin:{admin_password}@{rest}");
    stackyard_testkit::leaks::register(&admin_url);
    let Some(app) =
        TestApp::spawn_with(Backend::Sqlite, &["--resource-postgres-url", &admin_url]).await
    else {
        return;
    };
    let admin = app.admin_token.clone();
    let (code, r) = create(&app, "/db/new", Some(&admin), "scram").await;
    assert_eq!(code, 201, "{r}");
    let url = r["connection_url"].as_str().unwrap().to_owned();

    let mut conn = PgConnection::connect(&url)
        .await
        .expect("the returned URL logs in");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();

    let password = url.split_once("://").unwrap().1.split_once('@').unwrap().0;
    let (user, _) = password.split_once(':').unwrap();
    let wrong = url.replacen(password, &format!("{user}:{}", random_hex(16)), 1);
    let err = PgConnection::connect(&wrong).await.unwrap_err();
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );

    let (code, gone) = delete(&app, &admin, &r).await;
    assert_eq!(code, 200, "{gone}");
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "the role is gone"
    );
    drop(app);
}

/// A Redis of the test's own, so it can be restarted (by its pid) on the same port.
struct OwnRedis {
    port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        OwnRedis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resource's user can use its prefix (one `SET`), or the error it met.
async fn use_prefix(url: &str, prefix: &str) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("SET")
        .arg(format!("{prefix}k"))
        .arg("v")
        .query_async::<()>(&mut conn)
        .await
}

/// ACL users do not survive a Redis restart: the maintenance pass notices the new run id and
/// sets every `ready` user again, without a restart of Stackyard.
#[tokio::test]
async fn after_a_restart_of_the_resource_redis_its_users_are_set_again() {
    let port = stackyard_testkit::free_port().unwrap();
    let redis = OwnRedis::start(port);
    let Some(app) = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            "--resource-redis-url",
            &redis.url(),
            "--anonymous-ttl",
            "2s",
        ],
    )
    .await
    else {
        return;
    };
    let admin = app.admin_token.clone();
    let (code, r) = create(&app, "/cache/new", Some(&admin), "restart").await;
    assert_eq!(code, 201, "{r}");
    let (url, prefix) = (
        r["connection_url"].as_str().unwrap().to_owned(),
        r["key_prefix"].as_str().unwrap().to_owned(),
    );
    use_prefix(&url, &prefix).await.unwrap();

    drop(redis);
    let _redis = OwnRedis::start(port);
    // The new server holds no users (nothing was persisted) until the next maintenance pass
    // (every 0.5 s with a 2 s TTL) sets them again; without it they would never come back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match use_prefix(&url, &prefix).await {
            Ok(()) => break,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the user was not set again: {e}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, gone) = delete(&app, &admin, &r).await;
    assert_eq!(code, 200, "{gone}");
    assert!(use_prefix(&url, &prefix).await.is_err(), "the user is gone");
}
