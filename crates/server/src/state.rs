//! The application state every handler gets: the store, the config, the queues and caches.
//! Imports no route module (the route table is `router`), so nothing here can form an import
//! circle with the handlers that read it.

use crate::artifacts::Artifacts;
use crate::authcache::AuthCache;
use crate::config::ServeArgs;
use crate::envqueue::EnvQueue;
use crate::ratelimit::RateLimiter;
use crate::resources::Provisioner;
use metrics_exporter_prometheus::PrometheusHandle;
use stackyard_core::StackSlug;
use stackyard_core::artifact_url::ArtifactSigner;
use stackyard_core::model::{Access, StackId};
use stackyard_core::runtime::Runtime;
use stackyard_core::store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::Notify;

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
    pub auth_cache: AuthCache,
    /// Runs the services; also the source of their logs.
    pub runtime: Arc<dyn Runtime>,
    pub rate_limiter: RateLimiter,
    /// The admin connections resources are provisioned through (shared with maintenance).
    pub provisioner: Arc<Provisioner>,
    /// The uploaded tarballs in the data directory (shared with the job workers, which remove
    /// the ones a teardown left unused).
    pub artifacts: Arc<Artifacts>,
    pub stack_ids: StackIdCache,
    /// Look-ups of custom domains' TXT records (`--dns-resolver`).
    pub dns: crate::dns::Dns,
    /// Certificates for custom domains (`--router-tls-listen`); none without it.
    pub acme: Option<Arc<crate::acme::Acme>>,
    /// Notified (every waiter) when this process's workers finish a teardown, so the `DELETE`
    /// requests waiting for theirs look again at once.
    pub teardowns_done: Arc<Notify>,
    /// Checks the signed URLs pods fetch their artifacts with (`GET /internal/artifacts/…`);
    /// with none, that route answers 404.
    pub artifact_signer: Option<Arc<ArtifactSigner>>,
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
    // One argument per service the handlers share with the workers and maintenance tasks.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: S,
        config: ServeArgs,
        jobs_ready: Arc<Notify>,
        runtime: Arc<dyn Runtime>,
        rate_limiter: RateLimiter,
        provisioner: Arc<Provisioner>,
        artifacts: Arc<Artifacts>,
        acme: Option<Arc<crate::acme::Acme>>,
        artifact_signer: Option<Arc<ArtifactSigner>>,
    ) -> Self {
        let env_queue = EnvQueue::new(store.clone(), config.lock_timeout);
        let dns = crate::dns::Dns::new(config.dns_resolver);
        let auth_cache = AuthCache::new(!store.is_shared());
        // The process has one metrics recorder; every state renders the same one.
        let metrics = crate::telemetry::metrics_handle();
        Self {
            inner: Arc::new(Shared {
                store,
                config,
                jobs_ready,
                metrics,
                env_queue,
                auth_cache,
                stack_ids: StackIdCache::default(),
                dns,
                acme,
                teardowns_done: Arc::new(Notify::new()),
                runtime,
                rate_limiter,
                provisioner,
                artifacts,
                artifact_signer,
            }),
        }
    }
}
