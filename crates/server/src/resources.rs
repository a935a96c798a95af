//! Resources in the servers named by `--resource-postgres-url` and `--resource-redis-url`: the
//! DDL that creates and drops them, and the steps around it that keep the store's row and the
//! resource server in agreement (row `provisioning` → DDL → `ready`; `deleting` → drop → row
//! removed), shared by the routes, expiry and the start-up reconciler.
//!
//! Nothing here logs a connection URL or a password: errors carry the server's error kind
//! and the resource's token, never the statement (a statement holds a verifier) or the URL.

use crate::now;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor};
use stackyard_core::ResourceToken;
use stackyard_core::ids::random_hex;
use stackyard_core::model::{Actor, AuditCtx, TeamId};
use stackyard_core::resource::{Resource, ResourceKind, ResourceStatus, tier_limits};
use stackyard_core::store::{ResourceStore, StoreError};
use stackyard_core::time::Millis;
use std::str::FromStr;
use std::time::Duration;

/// A resource server call that takes longer than this counts as the server being down.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a resource could not be created or dropped.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// No admin URL is configured for this kind; `flag` names the option that would give one.
    #[error("no {kind} server is configured ({flag})")]
    NotConfigured {
        kind: &'static str,
        flag: &'static str,
    },
    /// The resource server refused or could not be reached; nothing usable was created.
    #[error("the {kind} server failed: {reason}")]
    Server { kind: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The admin connections to the resource servers. Cheap to share behind an `Arc`.
pub struct Provisioner {
    postgres: Option<PgAdmin>,
    redis: Option<RedisAdmin>,
}

struct PgAdmin {
    pool: PgPool,
    host: String,
    port: u16,
}

struct RedisAdmin {
    client: redis::Client,
    host: String,
    port: u16,
    db: i64,
    /// The `run_id` the server had when last seen: a new one means it restarted, and with it
    /// every ACL user is gone.
    run_id: std::sync::Mutex<Option<String>>,
}

impl Provisioner {
    /// Parses the admin URLs; connections are made on first use, so a resource server that is
    /// down at start-up does not keep Stackyard from serving stacks.
    pub fn new(postgres_url: Option<&str>, redis_url: Option<&str>) -> anyhow::Result<Self> {
        let postgres = match postgres_url {
            None => None,
            Some(url) => {
                let opts = PgConnectOptions::from_str(url).map_err(|_| {
                    anyhow::anyhow!("--resource-postgres-url is not a valid PostgreSQL URL")
                })?;
                Some(PgAdmin {
                    host: opts.get_host().to_owned(),
                    port: opts.get_port(),
                    pool: PgPoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(ADMIN_TIMEOUT)
                        .connect_lazy_with(opts),
                })
            }
        };
        let redis = match redis_url {
            None => None,
            Some(url) => {
                let client = redis::Client::open(url).map_err(|_| {
                    anyhow::anyhow!("--resource-redis-url is not a valid Redis URL")
                })?;
                let info = client.get_connection_info();
                let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
                    anyhow::bail!("--resource-redis-url must be a plain TCP redis:// URL");
                };
                let db = info.redis_settings().db();
                Some(RedisAdmin {
                    client,
                    host,
                    port,
                    db,
                    run_id: std::sync::Mutex::new(None),
                })
            }
        };
        Ok(Self { postgres, redis })
    }

    /// Refuses early (before any row is written) when `kind` has no server.
    pub fn check_configured(&self, kind: ResourceKind) -> Result<(), ResourceError> {
        match kind {
            ResourceKind::Postgres => self.pg().map(|_| ()),
            ResourceKind::Redis => self.redis().map(|_| ()),
        }
    }

    /// Whether the resource Redis restarted since the last call (its `run_id` changed); the
    /// first call only notes it. False when Redis is not configured or does not answer.
    pub async fn redis_restarted(&self) -> bool {
        let Some(redis) = &self.redis else {
            return false;
        };
        let Ok(Some(now)) = redis.run_id().await else {
            return false;
        };
        let mut seen = redis.run_id.lock().unwrap_or_else(|e| e.into_inner());
        let before = seen.replace(now.clone());
        before.is_some_and(|b| b != now)
    }

    fn pg(&self) -> Result<&PgAdmin, ResourceError> {
        self.postgres
            .as_ref()
            .ok_or_else(|| not_configured(ResourceKind::Postgres))
    }

    fn redis(&self) -> Result<&RedisAdmin, ResourceError> {
        self.redis
            .as_ref()
            .ok_or_else(|| not_configured(ResourceKind::Redis))
    }

    /// The connection URL of a new resource `id` of `kind` with `password`.
    pub fn connection_url(
        &self,
        kind: ResourceKind,
        id: &str,
        password: &str,
    ) -> Result<String, ResourceError> {
        let name = stackyard_core::resource::server_name(id);
        match kind {
            ResourceKind::Postgres => {
                let pg = self.pg()?;
                Ok(format!(
                    "postgres://{name}:{password}@{}:{}/{name}",
                    url_host(&pg.host),
                    pg.port
                ))
            }
            ResourceKind::Redis => {
                let r = self.redis()?;
                Ok(format!(
                    "redis://{name}:{password}@{}:{}/{}",
                    url_host(&r.host),
                    r.port,
                    r.db
                ))
            }
        }
    }

    /// Creates the database and role, or the ACL user, of `r` (whose URL holds the password).
    pub async fn create(&self, r: &Resource) -> Result<(), ResourceError> {
        let password = password_of(&r.connection_url);
        match r.kind {
            ResourceKind::Postgres => {
                let pg = self
                    .postgres
                    .as_ref()
                    .ok_or_else(|| not_configured(r.kind))?;
                pg.create(&r.server_name(), password, tier_limits(&r.tier).connections)
                    .await
            }
            ResourceKind::Redis => {
                let redis = self.redis.as_ref().ok_or_else(|| not_configured(r.kind))?;
                redis.set_user(r, password).await
            }
        }
    }

    /// Drops whatever of `r` exists; dropping what is already gone succeeds.
    pub async fn drop(&self, r: &Resource) -> Result<(), ResourceError> {
        match r.kind {
            ResourceKind::Postgres => {
                let pg = self
                    .postgres
                    .as_ref()
                    .ok_or_else(|| not_configured(r.kind))?;
                pg.drop(&r.server_name()).await
            }
            ResourceKind::Redis => {
                let redis = self.redis.as_ref().ok_or_else(|| not_configured(r.kind))?;
                redis.drop(r).await
            }
        }
    }
}

fn not_configured(kind: ResourceKind) -> ResourceError {
    ResourceError::NotConfigured {
        kind: kind.as_str(),
        flag: match kind {
            ResourceKind::Postgres => "--resource-postgres-url",
            ResourceKind::Redis => "--resource-redis-url",
        },
    }
}

/// An IPv6 literal needs brackets in a URL.
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The password inside a URL we built (`scheme://user:password@…`).
fn password_of(url: &str) -> &str {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map_or("", |(_, p)| p)
}

/// A new resource password: 256 random bits, hex (nothing to escape in a URL).
pub fn generate_password() -> String {
    random_hex(32)
}

fn pg_error(e: &sqlx::Error) -> ResourceError {
    let reason = match e {
        sqlx::Error::Database(d) => format!(
            "{} ({})",
            d.message(),
            d.code().as_deref().unwrap_or("no code")
        ),
        sqlx::Error::PoolTimedOut => "timed out connecting".to_owned(),
        sqlx::Error::Io(_) => "connection failed".to_owned(),
        _ => "unexpected error".to_owned(),
    };
    ResourceError::Server {
        kind: "postgres",
        reason,
    }
}

fn redis_error(e: &redis::RedisError) -> ResourceError {
    ResourceError::Server {
        kind: "redis",
        reason: format!("{:?}", e.kind()),
    }
}

impl PgAdmin {
    /// The role (with our SCRAM verifier, so no password reaches the server's logs), the
    /// admin's membership in it (a CREATEROLE admin that is not superuser may only create a
    /// database owned by a role it belongs to), the database, and CONNECT for its owner only.
    async fn create(&self, name: &str, password: &str, limit: i64) -> Result<(), ResourceError> {
        let verifier = scram_sha256_verifier(password, &random_salt(), 4096);
        let statements = [
            format!("CREATE ROLE \"{name}\" LOGIN PASSWORD '{verifier}' CONNECTION LIMIT {limit}"),
            format!("GRANT \"{name}\" TO CURRENT_USER"),
            format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""),
            format!("REVOKE CONNECT, TEMPORARY ON DATABASE \"{name}\" FROM PUBLIC"),
        ];
        self.run(&statements).await
    }

    /// `WITH (FORCE)` ends the resource's own sessions first; `IF EXISTS` makes a repeat (a
    /// reconciler after a crash mid-drop) succeed.
    async fn drop(&self, name: &str) -> Result<(), ResourceError> {
        self.run(&[
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS \"{name}\""),
        ])
        .await
    }

    /// Runs each statement on its own (CREATE/DROP DATABASE cannot run in a transaction).
    async fn run(&self, statements: &[String]) -> Result<(), ResourceError> {
        let work = async {
            let mut conn = self.pool.acquire().await.map_err(|e| pg_error(&e))?;
            for s in statements {
                conn.execute(sqlx::raw_sql(AssertSqlSafe(s.clone())))
                    .await
                    .map_err(|e| pg_error(&e))?;
            }
            Ok(())
        };
        tokio::time::timeout(ADMIN_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(ResourceError::Server {
                    kind: "postgres",
                    reason: "timed out".to_owned(),
                })
            })
    }
}

impl RedisAdmin {
    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, ResourceError> {
        tokio::time::timeout(
            ADMIN_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| ResourceError::Server {
            kind: "redis",
            reason: "timed out connecting".to_owned(),
        })?
        .map_err(|e| redis_error(&e))
    }

    /// The server's `run_id` (`INFO server`), new at every start.
    async fn run_id(&self) -> Result<Option<String>, ResourceError> {
        let mut conn = self.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned()))
    }

    /// `ACL SETUSER`: confined to the resource's key prefix, every command but `@dangerous`
    /// (FLUSHALL, KEYS, CONFIG, …), no channels; the password given as its SHA-256 (`#…`) so
    /// the plaintext never reaches Redis. Repeating it (start-up re-apply) changes nothing.
    async fn set_user(&self, r: &Resource, password: &str) -> Result<(), ResourceError> {
        let mut conn = self.conn().await?;
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(r.server_name())
            .arg("reset")
            .arg("on")
            .arg(format!(
                "#{}",
                hex::encode(Sha256::digest(password.as_bytes()))
            ))
            .arg(format!("~{}*", r.key_prefix()))
            .arg("resetchannels")
            .arg("+@all")
            .arg("-@dangerous")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| redis_error(&e))
    }

    /// `ACL DELUSER`, `CLIENT KILL USER` (a user that is already gone is not an error), then
    /// the prefix's keys, `SCAN` + `UNLINK` a batch at a time.
    async fn drop(&self, r: &Resource) -> Result<(), ResourceError> {
        let mut conn = self.conn().await?;
        let user = r.server_name();
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| redis_error(&e))?;
        let _: Result<i64, _> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(&user)
            .query_async(&mut conn)
            .await;
        let pattern = format!("{}*", r.key_prefix());
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error(&e))?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| redis_error(&e))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

fn random_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    if let Ok(bytes) = hex::decode(random_hex(16)) {
        salt.copy_from_slice(&bytes);
    }
    salt
}

/// HMAC-SHA-256 (RFC 2104) over the workspace's `sha2`, to avoid a second `digest` generation
/// in the build for the one place that needs it.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The verifier PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677):
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, all base64. Given to
/// `CREATE ROLE … PASSWORD`, PostgreSQL stores it as is, so the plaintext never reaches the
/// server (nor its statement log). The password is used as is (no SASLprep): ours are hex.
pub fn scram_sha256_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    // PBKDF2-HMAC-SHA-256 with one output block: U1 = HMAC(p, salt || 1), Ui = HMAC(p, Ui-1).
    let mut u = hmac_sha256(password.as_bytes(), &[salt, &1u32.to_be_bytes()]);
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac_sha256(password.as_bytes(), &[&u]);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let client_key = hmac_sha256(&salted, &[b"Client Key"]);
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, &[b"Server Key"]);
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// The context of what the server does on its own (expiry, reconciler).
fn system_ctx() -> AuditCtx {
    AuditCtx {
        actor: Actor::system(),
        request_id: None,
        now: now(),
    }
}

/// Marks the row `deleting` (audit `resource.deleted`; `team` `None`: any team's), drops the
/// resource and removes the row: the one way a resource goes (DELETE, expiry, a failed create,
/// the reconciler). On a failure the row stays `deleting` for the next reconciler pass, or
/// the next DELETE. `Ok(None)`: no such resource for `team`.
pub async fn delete<S: ResourceStore>(
    store: &S,
    provisioner: &Provisioner,
    team: Option<TeamId>,
    token: &ResourceToken,
    ctx: AuditCtx,
) -> Result<Option<Resource>, ResourceError> {
    let Some(r) = store.mark_resource_deleting(team, token, ctx).await? else {
        return Ok(None);
    };
    provisioner.drop(&r).await?;
    store.remove_resource(&r.token).await?;
    Ok(Some(r))
}

/// How long a `provisioning` row belongs to the request that wrote it. Older ones were left by
/// a server that died between the row and `ready` (a request gives up well before this).
const PROVISIONING_GRACE_MS: i64 = 120_000;

/// `provisioning` rows written before this may be reconciled: older than the grace period.
pub fn stale_provisioning_cutoff() -> Millis {
    now().saturating_add_ms(-PROVISIONING_GRACE_MS)
}

/// Finishes what a crash left between two steps: `deleting` rows are dropped and removed,
/// `provisioning` rows written before `provisioning_before` are dropped and removed (their
/// creator never answered, so nobody holds their URL), and with `reapply` every `ready` Redis
/// user is set again (ACL users do not survive a Redis restart). Errors are logged per
/// resource and retried on the next pass.
pub async fn reconcile<S: ResourceStore>(
    store: &S,
    provisioner: &Provisioner,
    provisioning_before: Millis,
    reapply: bool,
) {
    let rows = match store
        .resources_to_reconcile(provisioning_before, reapply)
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "could not list resources to reconcile");
            return;
        }
    };
    // A server that failed once is not asked again this pass: each try may wait the whole
    // `ADMIN_TIMEOUT`, and the start-up pass runs before the API answers.
    let mut down = std::collections::HashSet::new();
    for r in rows {
        if down.contains(&r.kind) {
            continue;
        }
        let result = match r.status {
            ResourceStatus::Ready if r.kind == ResourceKind::Redis => provisioner.create(&r).await,
            ResourceStatus::Ready => Ok(()),
            ResourceStatus::Provisioning | ResourceStatus::Deleting => {
                delete(store, provisioner, None, &r.token, system_ctx())
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) if r.status != ResourceStatus::Ready => {
                tracing::info!(resource = %r.token, was = r.status.as_str(), "reconciled a resource: dropped");
            }
            Ok(()) => {}
            // A kind whose server is not configured on this server is left for one that has it.
            Err(ResourceError::NotConfigured { .. }) => {}
            Err(e) => {
                if matches!(e, ResourceError::Server { .. }) {
                    down.insert(r.kind);
                }
                tracing::warn!(resource = %r.token, error = %e, "could not reconcile a resource; the next pass retries");
            }
        }
    }
}

/// Drops every expired anonymous resource: marked `deleting` first, so a crash in between is
/// finished by the reconciler.
pub async fn expire<S: ResourceStore>(store: &S, provisioner: &Provisioner) {
    let expired = match store.expired_resources(now(), 100).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "could not look for expired resources");
            return;
        }
    };
    for r in expired {
        match delete(store, provisioner, None, &r.token, system_ctx()).await {
            Ok(_) => {
                metrics::counter!("stackyard_resources_expired_total").increment(1);
                tracing::info!(resource = %r.token, "anonymous resource expired; dropped");
            }
            Err(ResourceError::NotConfigured { .. }) => {}
            Err(e) => {
                tracing::warn!(resource = %r.token, error = %e, "could not expire a resource")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example: user "user", password "pencil", this salt, 4096 iterations; the
    /// server signature in the RFC is derived from exactly this ServerKey.
    #[test]
    fn scram_verifier_matches_the_rfc_7677_keys() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap_or_default();
        let v = scram_sha256_verifier("pencil", &salt, 4096);
        assert!(
            v.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{v}"
        );
        let keys = v.rsplit_once('$').map(|(_, k)| k).unwrap_or_default();
        let (stored, server) = keys.split_once(':').unwrap_or_default();
        assert_eq!(stored, "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=");
        assert_eq!(server, "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=");
    }

    #[test]
    fn the_password_is_read_back_from_urls_we_build() {
        assert_eq!(
            password_of("postgres://sy_ab:0123abcd@h:5432/sy_ab"),
            "0123abcd"
        );
        assert_eq!(password_of("redis://sy_ab:ff@h:6379/0"), "ff");
        assert_eq!(password_of("redis://h:6379"), "");
    }
}
