//! The anonymous daily create limit: per client network (fingerprint) per UTC day. The counter
//! lives in Redis when one is configured (shared by every server: `INCR` + `EXPIREAT` in one
//! transaction), else in the database. If Redis is unreachable the create is allowed and a
//! metric counts it, as the reference platform does: a cache outage must not stop deploys.

use crate::error::ApiError;
use axum::http::StatusCode;
use stackyard_core::Millis;
use stackyard_core::store::Housekeeping;
use std::time::Duration;
use tokio::sync::Mutex;

/// A Redis call that takes longer than this counts as Redis being down.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

pub struct RateLimiter {
    daily: i64,
    redis: Option<RedisCounter>,
}

struct RedisCounter {
    client: redis::Client,
    prefix: String,
    /// Connected on first use and kept; a broken one is dropped and re-made on the next call.
    conn: Mutex<Option<redis::aio::ConnectionManager>>,
}

impl RateLimiter {
    /// `redis_url` is only parsed here; the connection is made on first use, so a Redis that is
    /// down at start-up does not keep the server from starting.
    pub fn new(daily: i64, redis_url: Option<&str>, prefix: &str) -> anyhow::Result<Self> {
        let redis = match redis_url {
            Some(url) => Some(RedisCounter {
                client: redis::Client::open(url)
                    .map_err(|_| anyhow::anyhow!("--redis-url is not a valid Redis URL"))?,
                prefix: prefix.to_owned(),
                conn: Mutex::new(None),
            }),
            None => None,
        };
        Ok(Self { daily, redis })
    }

    /// Counts one anonymous create for `fingerprint` and refuses it past the daily limit.
    pub async fn check_anonymous<S: Housekeeping>(
        &self,
        store: &S,
        fingerprint: &str,
        now: Millis,
    ) -> Result<(), ApiError> {
        let count = match &self.redis {
            Some(r) => match r.incr(fingerprint, now).await {
                Ok(n) => n,
                Err(e) => {
                    metrics::counter!("stackyard_rate_limit_redis_errors_total").increment(1);
                    tracing::warn!(error = %e, "rate-limit counter unavailable in Redis; allowing the create");
                    return Ok(());
                }
            },
            None => store
                .count_anonymous_create(fingerprint, now)
                .await
                .map_err(|e| ApiError::store("provision_failed", &e))?,
        };
        if count <= self.daily {
            return Ok(());
        }
        metrics::counter!("stackyard_rate_limited_total").increment(1);
        let retry = u64::try_from((now.next_utc_midnight().0 - now.0 + 999) / 1000)
            .unwrap_or(1)
            .max(1);
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            format!("Anonymous callers from this network may create {} stacks per UTC day.", self.daily),
        )
        .with_action("Retry after the time in Retry-After (UTC midnight), or send an API token: team stacks are not limited per day.");
        err.retry_after = Some(retry);
        Err(err)
    }
}

impl RedisCounter {
    async fn incr(&self, fingerprint: &str, now: Millis) -> Result<i64, String> {
        let key = format!(
            "{}anon-creates:{}:{}",
            self.prefix,
            now.utc_day(),
            fingerprint
        );
        let expire_at = now.next_utc_midnight().0 / 1000 + 60;
        let mut guard = self.conn.lock().await;
        let conn = match guard.as_mut() {
            Some(c) => c,
            None => {
                let c = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_connection_manager())
                    .await
                    .map_err(|_| "timed out connecting".to_owned())?
                    .map_err(|e| format!("{:?}", e.kind()))?;
                guard.insert(c)
            }
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .incr(&key, 1)
            .expire_at(&key, expire_at)
            .ignore();
        let result: Result<Result<(i64,), redis::RedisError>, _> =
            tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async(conn)).await;
        match result {
            Ok(Ok((n,))) => Ok(n),
            Ok(Err(e)) => {
                *guard = None;
                Err(format!("{:?}", e.kind()))
            }
            Err(_) => {
                *guard = None;
                Err("timed out".to_owned())
            }
        }
    }
}
