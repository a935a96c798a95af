//! The `Runtime` trait: what runs a stack's services. The job worker drives it; it never touches
//! the store itself but reports progress through a `StatusSink`, which the worker turns into
//! fenced status writes. Nothing here assumes processes on this machine, so a cluster runtime
//! fits the same shape.

use crate::env::EnvMap;
use crate::ids::{ServiceName, StackSlug};
use crate::model::{ReleaseService, ServiceStatus};
use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future; runtimes are chosen at start-up, so the trait is object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a runtime needs to roll out one release of a stack.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    pub slug: StackSlug,
    pub release: i64,
    pub env_version: i64,
    pub services: Vec<ReleaseService>,
    /// The stack env map (applied last, winning over the manifest's `env:`).
    pub env: EnvMap,
}

/// Where a runtime reports service progress. Implementations must not fail the deploy: a
/// report that cannot be recorded is logged and dropped by the sink.
pub trait StatusSink: Send + Sync {
    fn service_status<'a>(
        &'a self,
        service: &'a ServiceName,
        status: ServiceStatus,
        url: Option<&'a str>,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, ()>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The release could not be started; the message is safe to show the stack owner.
    #[error("{0}")]
    Failed(String),
    /// An infrastructure problem worth retrying (disk full, API server down).
    #[error("{0}")]
    Transient(String),
}

/// Runs stacks. Deploy and teardown must be idempotent: a job retried after a crash calls them
/// again for the same release or stack.
pub trait Runtime: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Rolls out `plan`, reporting each service's progress to `sink`. `Ok` once every service is
    /// healthy; `Err(Failed)` when the release cannot become healthy (the runtime has already
    /// reported which services failed and why).
    fn deploy<'a>(
        &'a self,
        plan: &'a DeployPlan,
        sink: &'a dyn StatusSink,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Stops everything the stack runs and removes what the runtime keeps for it.
    fn teardown<'a>(&'a self, slug: &'a StackSlug) -> BoxFuture<'a, Result<(), RuntimeError>>;
}
