//! Shared application state and the route table.

use crate::config::ServeArgs;
use crate::envqueue::EnvQueue;
use crate::error::ApiError;
use crate::middleware;
use crate::ratelimit::RateLimiter;
use crate::routes::{audit, env, ops, releases, stacks, streams, tokens};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use stackyard_core::StackSlug;
use stackyard_core::model::{Access, StackId};
use stackyard_core::runtime::Runtime;
use stackyard_core::store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Request bodies are capped at 50 MiB in total (spec).
pub const MAX_BODY_BYTES: usize = 50 * 1024 * 1024;

/// Cheap-to-clone handle on everything a handler needs. The store type is a generic, not a
/// trait object, so the hot paths are monomorphised (the backend is picked once in `serve`).
pub struct AppState<S: Store> {
    inner: Arc<Shared<S>>,
}

impl<S: Store> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

pub struct Shared<S: Store> {
    pub store: S,
    pub config: ServeArgs,
    /// Woken whenever this process queues a job, so an idle worker claims it at once instead
    /// of at its next poll.
    pub jobs_ready: Arc<Notify>,
    pub metrics: PrometheusHandle,
    pub env_queue: EnvQueue<S>,
    pub auth_cache: crate::auth::AuthCache,
    /// Runs the services; also the source of their logs.
    pub runtime: Arc<dyn Runtime>,
    pub rate_limiter: RateLimiter,
    pub stack_ids: StackIdCache,
}

/// slug → (who may see it, id). Both never change for a slug and slugs are never reused, so
/// entries never go stale in a way that matters: a deleted stack is reported by the store.
#[derive(Default)]
pub struct StackIdCache {
    map: Mutex<HashMap<StackSlug, (Access, StackId)>>,
}

impl StackIdCache {
    /// Bound on entries; past it the cache starts over (it is only a shortcut).
    const MAX: usize = 100_000;

    pub fn get(&self, access: Access, slug: &StackSlug) -> Option<StackId> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(slug)
            .filter(|(a, _)| *a == access)
            .map(|(_, id)| *id)
    }

    pub fn put(&self, access: Access, slug: StackSlug, id: StackId) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(slug, (access, id));
    }

    pub fn forget(&self, slug: &StackSlug) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(slug);
    }
}

impl<S: Store> std::ops::Deref for AppState<S> {
    type Target = Shared<S>;
    fn deref(&self) -> &Shared<S> {
        &self.inner
    }
}

impl<S: Store> AppState<S> {
    pub fn new(
        store: S,
        config: ServeArgs,
        jobs_ready: Arc<Notify>,
        metrics: PrometheusHandle,
        runtime: Arc<dyn Runtime>,
        rate_limiter: RateLimiter,
    ) -> Self {
        let env_queue = EnvQueue::new(store.clone(), config.lock_timeout);
        let auth_cache = crate::auth::AuthCache::new(!store.is_shared());
        Self {
            inner: Arc::new(Shared {
                store,
                config,
                jobs_ready,
                metrics,
                env_queue,
                auth_cache,
                stack_ids: StackIdCache::default(),
                runtime,
                rate_limiter,
            }),
        }
    }
}

pub fn router<S: Store>(state: AppState<S>) -> Router {
    Router::new()
        .route("/stacks/new", post(stacks::create::<S>))
        .route(
            "/stacks/{slug}",
            get(stacks::get_compat::<S>).delete(stacks::delete::<S>),
        )
        .route("/stacks/{slug}/redeploy", post(releases::redeploy::<S>))
        .route("/stacks/{slug}/releases", get(releases::list::<S>))
        .route("/stacks/{slug}/logs/{svc}", get(streams::logs::<S>))
        .route("/stacks/{slug}/events", get(streams::events::<S>))
        .route("/api/v1/stacks", get(stacks::list::<S>))
        .route("/api/v1/stacks/{slug}", get(stacks::get_v1::<S>))
        .route(
            "/stacks/{slug}/env",
            get(env::get::<S>).patch(env::patch::<S>),
        )
        .route("/stacks/{slug}/env/versions", get(env::versions::<S>))
        .route("/stacks/{slug}/env/rollback", post(env::rollback::<S>))
        .route("/api/v1/whoami", get(tokens::whoami::<S>))
        .route(
            "/api/v1/tokens",
            get(tokens::list::<S>).post(tokens::create::<S>),
        )
        .route("/api/v1/tokens/{id}", delete(tokens::revoke::<S>))
        .route("/api/v1/audit", get(audit::list::<S>))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz::<S>))
        .route("/metrics", get(ops::metrics::<S>))
        .route("/openapi.json", get(ops::openapi))
        .fallback(|| async { ApiError::from_status(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panic_response,
        ))
        .layer(axum::middleware::from_fn(middleware::envelope))
        .with_state(state)
}
