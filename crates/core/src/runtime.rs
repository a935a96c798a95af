//! The `Runtime` trait: what runs a stack's services. The job worker drives it; it never touches
//! the store itself but reports progress through a `StatusSink`, which the worker turns into
//! fenced status writes. Nothing here assumes processes on this machine, so a cluster runtime
//! fits the same shape.

use crate::env::EnvMap;
use crate::ids::{ServiceName, StackSlug};
use crate::lifecycle::status::Supervised;
use crate::manifest::resolve_service_refs;
use crate::model::{NewEvent, ReleaseService, ServiceStatus, StackId, TeamId};
use crate::time::Millis;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

/// A boxed, sendable future; runtimes are chosen at start-up, so the trait is object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a runtime needs to roll out one release of a stack.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    /// The stack's id: stable and unique, so the local runtime derives the stack's Unix user
    /// from it.
    pub stack_id: StackId,
    pub slug: StackSlug,
    /// The owning team (`None`: anonymous) and the stack's tier: a cluster runtime labels and
    /// sizes what it creates by them.
    pub team: Option<TeamId>,
    pub tier: String,
    pub release: i64,
    pub env_version: i64,
    pub services: Vec<ReleaseService>,
    /// The stack env map as of `env_version` (applied last, winning over the manifest's `env:`).
    pub env: EnvMap,
    /// The resources the release grants, their URLs read through the store for this deploy
    /// (never stored with the release).
    pub granted: Vec<GrantedResource>,
}

/// One resource granted to one service, resolved: its env name and URL (with its password),
/// and the port the sandbox opens for it.
#[derive(Clone, PartialEq, Eq)]
pub struct GrantedResource {
    pub service: ServiceName,
    pub env: String,
    pub url: String,
    /// The TCP port of the resource server, opened to this service only.
    pub port: Option<u16>,
}

impl std::fmt::Debug for GrantedResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantedResource")
            .field("service", &self.service)
            .field("env", &self.env)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl DeployPlan {
    /// The environment a runtime gives `svc`, later entries winning (`env.md`, "Applying"):
    /// the platform variables (`PORT` = `port`, where it listens), the URLs of the resources
    /// `needs:` granted it, the manifest's `env:` with `service://x` resolved by `address_of`
    /// (each runtime's address of `x`), the stack env map. Both runtimes use this one order.
    pub fn service_env(
        &self,
        svc: &ReleaseService,
        port: u16,
        address_of: impl Fn(&str) -> Option<String>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("PORT".to_owned(), port.to_string());
        env.insert("STACKYARD_STACK".to_owned(), self.slug.to_string());
        env.insert("STACKYARD_SERVICE".to_owned(), svc.name.to_string());
        env.insert("STACKYARD_RELEASE".to_owned(), self.release.to_string());
        env.extend(
            self.granted_to(&svc.name)
                .map(|g| (g.env.clone(), g.url.clone())),
        );
        env.extend(resolve_service_refs(&svc.env, address_of));
        env.extend(self.env.iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        env
    }

    /// The granted resources of `service`, in the manifest's order.
    pub fn granted_to<'a>(
        &'a self,
        service: &'a ServiceName,
    ) -> impl Iterator<Item = &'a GrantedResource> + 'a {
        self.granted.iter().filter(move |g| &g.service == service)
    }
}

/// Where the server keeps a service tarball: `<data dir>/artifacts/<sha256>.tar.gz`, written
/// once by digest before any row names it. Shared by the server (writer) and local runtimes.
pub fn artifact_path(data_dir: &Path, digest: &str) -> PathBuf {
    data_dir.join("artifacts").join(format!("{digest}.tar.gz"))
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line a service printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at: Millis,
    pub stream: LogStream,
    pub text: String,
}

/// New log lines as they arrive; ends when the service's logs are gone (teardown). A stream,
/// not a channel, so that a cluster runtime can merge the streams of a service's pods and
/// re-attach when a pod is replaced behind this one type. A follower that reads slowly must not
/// hold the service up: a runtime drops lines for it rather than wait.
pub type LogFollow = Pin<Box<dyn futures_core::Stream<Item = LogLine> + Send>>;

/// A service's logs as [`Runtime::logs`] hands them out.
#[derive(Default)]
pub struct Logs {
    /// The last lines, oldest first.
    pub backlog: Vec<LogLine>,
    /// With `follow`, the lines printed after `backlog` (none missed, none repeated, except
    /// those a lagging follower skips); `None` without `follow`.
    pub follow: Option<LogFollow>,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("backlog", &self.backlog)
            .field("follow", &self.follow.is_some())
            .finish()
    }
}

/// A service whose release could not become healthy, and why (safe to show the stack owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailure {
    pub service: ServiceName,
    pub message: String,
}

/// How a runtime words a failed release, the same for every runtime: the message of each
/// service of `plan` (its own failure, or that it was stopped because of the services that
/// failed) and the summary the deploy returns. `serving` is the release that keeps serving.
pub fn failure_report(
    plan: &DeployPlan,
    failures: &[ServiceFailure],
    serving: Option<i64>,
) -> (Vec<(ServiceName, String)>, String) {
    let culprits: Vec<String> = failures
        .iter()
        .map(|f| format!("`{}`", f.service))
        .collect();
    let culprits = culprits.join(", ");
    let messages = plan
        .services
        .iter()
        .map(|svc| {
            let message = match (failures.iter().find(|f| f.service == svc.name), serving) {
                (Some(f), _) => f.message.clone(),
                (None, Some(old)) => {
                    format!("stopped because {culprits} failed; release v{old} keeps serving")
                }
                (None, None) => format!("stopped because {culprits} failed"),
            };
            (svc.name.clone(), message)
        })
        .collect();
    let summary: Vec<String> = failures
        .iter()
        .map(|f| format!("`{}` {}", f.service, f.message))
        .collect();
    let mut summary = format!("release v{} failed: {}", plan.release, summary.join("\n\n"));
    if let Some(old) = serving {
        summary.push_str(&format!("\n\nRelease v{old} keeps serving."));
    }
    (messages, summary)
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

    /// A progress event of the operation (`build.step`), written while the operation still
    /// owns the stack. Dropped by sinks that record nothing.
    fn event(&self, event: NewEvent) -> BoxFuture<'_, ()> {
        let _ = event;
        Box::pin(async {})
    }
}

/// Records nothing: for a deploy with no job to report to (a runtime's recovery), whose
/// statuses are already stored.
pub struct UnreportedStatus;

impl StatusSink for UnreportedStatus {
    fn service_status<'a>(
        &'a self,
        _service: &'a ServiceName,
        _status: ServiceStatus,
        _url: Option<&'a str>,
        _error: Option<&'a str>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Where a runtime reports what it sees of a live release between operations: a service that
/// crashed, is restarting, is healthy again, or failed after a crash loop. The server writes
/// these fenced by the live release (`lifecycle::status::supervise`); a report about a release
/// that is no longer live changes nothing.
pub trait SupervisionSink: Send + Sync {
    fn report<'a>(&'a self, stack: StackId, report: Supervised<'a>) -> BoxFuture<'a, ()>;
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

    /// Whether this runtime starts each service by running its start command itself (the local
    /// runtime): then a build context with none — no manifest `command`, Procfile or Dockerfile
    /// `CMD`/`ENTRYPOINT`, such as a `FROM scratch` or `FROM nginx` image — cannot run, and
    /// creating it is refused (400 `missing_start_command`). Runtimes that run images start
    /// such a context with the image's own command, as InstaNode does, and accept it.
    fn needs_start_command(&self) -> bool;

    /// Hands the runtime where to report its supervision (called once, before `recover`).
    /// Runtimes that do not watch their services ignore it.
    fn set_supervision(&self, sink: Arc<dyn SupervisionSink>) {
        let _ = sink;
    }

    /// Routes custom domains: each `(hostname, service_url)` sends `hostname` where the
    /// service URL's host goes, replacing the previous set. Runtimes whose routing is not
    /// theirs (or that have none) ignore it.
    fn set_domain_routes(&self, routes: Vec<(String, String)>) {
        let _ = routes;
    }

    /// The isolation layers confining every service (`GET /readyz`); empty when services run
    /// unconfined or elsewhere.
    fn sandbox_layers(&self) -> Vec<String> {
        Vec::new()
    }

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

    /// Called once at start-up, before any job runs, with every stack that should be running
    /// (its live release): stops whatever a previous instance of this runtime left behind and
    /// starts these again. A stack that fails to start is logged and left to its stored status;
    /// recovery never blocks the server from starting.
    fn recover<'a>(&'a self, running: Vec<DeployPlan>) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let _ = running;
        Box::pin(async { Ok(()) })
    }

    /// The server is stopping: stop whatever this runtime runs on this machine (a restart
    /// starts it again through `recover`). Cluster runtimes leave their workloads running.
    fn shutdown<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// The last `backlog` log lines of a service and, with `follow`, the lines printed after
    /// them. Async and fallible because a cluster runtime asks its API server for them:
    /// `Err` when the runtime cannot reach the logs it has (the server answers 503);
    /// `Ok(None)` when it has none for that service (not started here, or a runtime that keeps
    /// none).
    fn logs<'a>(
        &'a self,
        slug: &'a StackSlug,
        service: &'a ServiceName,
        backlog: usize,
        follow: bool,
    ) -> BoxFuture<'a, Result<Option<Logs>, RuntimeError>> {
        let _ = (slug, service, backlog, follow);
        Box::pin(async { Ok(None) })
    }

    /// Restarts `service` (or every service) of the running `release` of the stack in place,
    /// one service after another: same code, same env, same port and route, each waited for
    /// until healthy before the next; reports `restarting` → `healthy` (or `failed`) per service
    /// to `sink`. `Ok` once every one is healthy again; `Err(Failed)` when one is not (reported;
    /// those not yet restarted keep running). A release that is not the one this runtime runs
    /// is left alone: `Err(Failed)` (the store ignores it when the stack has moved on).
    /// Runtimes that keep nothing running (noop) have nothing to restart: the default succeeds
    /// at once, and the job's end marks the services healthy.
    fn restart<'a>(
        &'a self,
        slug: &'a StackSlug,
        release: i64,
        service: Option<&'a ServiceName>,
        sink: &'a dyn StatusSink,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let _ = (slug, release, service, sink);
        Box::pin(async { Ok(()) })
    }
}
