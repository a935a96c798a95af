//! Periodic housekeeping: anonymous stacks whose TTL ran out are marked `deleting` and torn
//! down (through the same path as a DELETE, so the teardown is a durable job), old events,
//! idempotency records and rate counters are pruned, and artifact files no release uses are
//! swept. Expired anonymous resources are dropped and half-done resource steps reconciled.

use crate::artifacts::Artifacts;
use crate::dns::Dns;
use crate::now;
use crate::resources::{Provisioner, stale_provisioning_cutoff};
use stackyard_core::model::{Access, Actor, AuditCtx};
use stackyard_core::runtime::Runtime;
use stackyard_core::store::{ArtifactStore, DomainStore, Housekeeping, ResourceStore, StackStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Events are kept this long after they happen (clients resume within minutes, not days).
const EVENT_RETENTION_MS: i64 = 24 * 3600 * 1000;
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How often expiry runs: often enough that a stack outlives its TTL by at most a fraction of
/// it (short TTLs in tests), at most every 30 s.
pub fn expiry_tick(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

pub async fn run<S: StackStore + ResourceStore + Housekeeping + DomainStore>(
    store: S,
    provisioner: Arc<Provisioner>,
    ttl: Duration,
    jobs_ready: Arc<Notify>,
    domains: (Dns, Arc<dyn Runtime>),
    mut shutdown: watch::Receiver<bool>,
) {
    let tick = expiry_tick(ttl);
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        expire(&store, &jobs_ready).await;
        crate::resources::expire(&store, &provisioner).await;
        // Creates that died mid-way on any server sharing the store, and drops that failed;
        // after a restart of the resource Redis, its users (ACLs do not survive one).
        let reapply = provisioner.redis_restarted().await;
        if reapply {
            tracing::info!("the resource Redis restarted: setting its users again");
        }
        crate::resources::reconcile(&store, &provisioner, stale_provisioning_cutoff(), reapply)
            .await;
        // Custom domains: the daily re-check, then the routes (another server sharing the
        // store may have verified or removed one).
        crate::domains::recheck_due(&store, &domains.0, now()).await;
        crate::domains::sync_routes(&store, domains.1.as_ref()).await;
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            let at = now();
            match store
                .prune(at, at.saturating_add_ms(-EVENT_RETENTION_MS))
                .await
            {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned old events and records"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning failed"),
            }
        }
    }
}

/// Marks every expired anonymous stack `deleting` and queues its teardown.
pub async fn expire<S: StackStore>(store: &S, jobs_ready: &Notify) {
    let expired = match store.expired_stacks(now(), 100).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "could not look for expired stacks");
            return;
        }
    };
    for slug in expired {
        let ctx = AuditCtx {
            actor: Actor::system(),
            request_id: None,
            now: now(),
        };
        match store.request_deletion(Access::Anonymous, &slug, ctx).await {
            Ok(Some(_)) => {
                metrics::counter!("stackyard_stacks_expired_total").increment(1);
                tracing::info!(stack = %slug, "anonymous stack expired; teardown queued");
                jobs_ready.notify_one();
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, stack = %slug, "could not expire a stack"),
        }
    }
}

/// How often the artifact sweep runs: once per grace period (a file left by a crash goes at
/// most two grace periods after it was written), between 1 s and 10 minutes.
pub fn sweep_every(grace: Duration) -> Duration {
    grace.clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Sweeps the artifact files and blobs at start-up and then every `sweep_every(grace)`: those
/// no release uses that no teardown removed (a create that crashed between writing its files and
/// committing, a teardown whose removal failed or came too soon after a create).
pub async fn sweep_artifacts<S: Housekeeping + ArtifactStore>(
    store: S,
    artifacts: Arc<Artifacts>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match store.sweep_artifacts().await {
            Ok(used) => {
                let removed = artifacts.sweep(&store, used).await;
                if removed > 0 {
                    tracing::info!(removed, "swept artifact files no release uses");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list the artifacts in use"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_ticks_follow_the_ttl_within_bounds() {
        assert_eq!(
            expiry_tick(Duration::from_secs(6 * 3600)),
            Duration::from_secs(30)
        );
        assert_eq!(
            expiry_tick(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            expiry_tick(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }
}
