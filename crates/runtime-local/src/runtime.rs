//! [`LocalRuntime`]: the `Runtime` implementation. Owns, per stack, which release is routed and
//! every process group it has started, and drives rolling deploys (start the new release next
//! to the old one, wait until it is healthy, switch the routes, drain, stop the old one),
//! teardown, recovery after a restart, and access to service logs.
//!
//! On disk, under the data dir: `stacks/<slug>/r<release>/<service>/` (unpacked code),
//! `run/<slug>/<release>-<service>.json` (one record per live process group) and
//! `logs/<slug>/<service>.log`.

use crate::build::{BuildError, Prepared};
use crate::health::probe;
use crate::logs::{RING_LINES, ServiceLogs, ended, read_tail};
use crate::procs::{Proc, RunRecord, read_records, stop_group};
use crate::routes::{RouteTable, Upstream};
use crate::supervisor::{ServiceStart, StartError, supervise};
use crate::unpack::{UnpackError, unpack_artifact};
use crate::{LocalConfig, lock, service_host, service_url};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use stackyard_core::model::{ReleaseService, ServiceStatus};
use stackyard_core::runtime::{
    BoxFuture, DeployPlan, Logs, Runtime, RuntimeError, ServiceFailure, StatusSink,
    SupervisionSink, UnreportedStatus, artifact_path, failure_report,
};
use stackyard_core::tarball::safe_relative_path;
use stackyard_core::{ServiceName, StackSlug, TarballLimits};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// How often a starting service is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a service that exited gets to flush its last lines into the failure message.
const OUTPUT_FLUSH_WAIT: Duration = Duration::from_secs(1);
/// How long teardown waits for a log file writer to finish before deleting its directory.
const LOG_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How many stacks recovery starts at once.
const RECOVER_PARALLELISM: usize = 4;
/// Used when the server itself has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The local runtime (a cheap `Clone` handle). See the module docs.
#[derive(Clone)]
pub struct LocalRuntime {
    shared: Arc<Shared>,
}

/// State shared by every handle.
///
/// Lock order, when more than one is held: a stack's `op` (async, held for a whole operation)
/// → its `files` (async, held by blocking file work) → the `stacks` map → a stack's `state` →
/// the route table → `logs` → `ports`. The `std` mutexes are only held for map edits, never
/// across an `.await`.
pub(crate) struct Shared {
    pub(crate) cfg: LocalConfig,
    routes: RouteTable,
    limits: TarballLimits,
    /// `PATH` and `HOME` of the server: the only part of its environment a service inherits.
    pub(crate) inherited: Vec<(String, String)>,
    stacks: Mutex<HashMap<StackSlug, Arc<StackSlot>>>,
    logs: Mutex<HashMap<(StackSlug, ServiceName), Arc<ServiceLogs>>>,
    /// Ports handed to processes this runtime started and not yet stopped, so two services
    /// never get the same one even though each was free when picked.
    ports: Mutex<HashSet<u16>>,
    /// Where the supervisor reports (set once by the server).
    pub(crate) supervision: OnceLock<Arc<dyn SupervisionSink>>,
}

/// One stack. `op` serialises its deploys and teardowns (the job queue already runs one
/// operation per stack at a time; this also covers a retried job overlapping a cancelled one).
/// `files` is held by every blocking task that writes or removes the stack's directories; the
/// task owns the guard, so an unpack that outlives its cancelled deploy still keeps the next
/// operation from touching the same files until it is done.
#[derive(Default)]
pub(crate) struct StackSlot {
    pub(crate) op: tokio::sync::Mutex<()>,
    files: Arc<tokio::sync::Mutex<()>>,
    pub(crate) state: Mutex<StackState>,
}

/// Invariant: `hosts` are exactly the routes pointing at `current`'s processes; `starts` are
/// how `current`'s services were started (what a restart starts again: same command, env and
/// port), empty when nothing is routed; `procs` holds every process group of the stack that
/// has not been stopped, of any release (so teardown finds even those of an attempt still
/// starting or being cleaned up).
#[derive(Default)]
pub(crate) struct StackState {
    pub(crate) current: Option<i64>,
    hosts: Vec<String>,
    pub(crate) starts: Vec<Arc<ServiceStart>>,
    pub(crate) procs: Vec<Arc<Proc>>,
}

impl LocalRuntime {
    /// A runtime on `cfg.data_dir`. Starts nothing: call `recover` to take over what a
    /// previous instance left, then deploy.
    pub fn new(cfg: LocalConfig) -> Self {
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned());
        let mut inherited = vec![("PATH".to_owned(), path)];
        if let Ok(home) = std::env::var("HOME") {
            inherited.push(("HOME".to_owned(), home));
        }
        Self {
            shared: Arc::new(Shared {
                cfg,
                routes: RouteTable::new(),
                limits: TarballLimits::default(),
                inherited,
                stacks: Mutex::new(HashMap::new()),
                logs: Mutex::new(HashMap::new()),
                ports: Mutex::new(HashSet::new()),
                supervision: OnceLock::new(),
            }),
        }
    }

    /// The route table this runtime maintains; hand it to [`crate::run_router`].
    pub fn routes(&self) -> RouteTable {
        self.shared.routes.clone()
    }
}

impl Runtime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    /// It runs each service's start command as a process: no command, nothing to run.
    fn needs_start_command(&self) -> bool {
        true
    }

    fn set_supervision(&self, sink: Arc<dyn SupervisionSink>) {
        let _ = self.shared.supervision.set(sink);
    }

    fn sandbox_layers(&self) -> Vec<String> {
        self.shared.cfg.sandbox.layers().names()
    }

    fn set_domain_routes(&self, routes: Vec<(String, String)>) {
        let aliases = routes
            .into_iter()
            .filter_map(|(host, url)| Some((host, url_host(&url)?)))
            .collect();
        self.shared.routes.set_aliases(aliases);
    }

    fn deploy<'a>(
        &'a self,
        plan: &'a DeployPlan,
        sink: &'a dyn StatusSink,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.deploy(plan, sink))
    }

    fn shutdown<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(self.shared.shutdown())
    }

    fn teardown<'a>(&'a self, slug: &'a StackSlug) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.teardown(slug))
    }

    fn recover<'a>(&'a self, running: Vec<DeployPlan>) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.recover(running))
    }

    fn restart<'a>(
        &'a self,
        slug: &'a StackSlug,
        release: i64,
        service: Option<&'a ServiceName>,
        sink: &'a dyn StatusSink,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.shared.restart(slug, release, service, sink))
    }

    /// Never `Err`: the logs are in this process or on its disk, and a file that cannot be
    /// read is logged and answered with an empty backlog.
    fn logs<'a>(
        &'a self,
        slug: &'a StackSlug,
        service: &'a ServiceName,
        backlog: usize,
        follow: bool,
    ) -> BoxFuture<'a, Result<Option<Logs>, RuntimeError>> {
        Box::pin(async move {
            let key = (slug.clone(), service.clone());
            let live = lock(&self.shared.logs).get(&key).cloned();
            if let Some(logs) = live {
                return Ok(Some(logs.snapshot(backlog, follow)));
            }
            // Not started by this instance (a stack that failed before a restart): what is on
            // disk, read off the async workers since it can be megabytes.
            let path = self.shared.log_file(slug, service);
            let read = tokio::task::spawn_blocking(move || {
                if !path.is_file() {
                    return None;
                }
                let lines = read_tail(&path, backlog.min(RING_LINES)).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, path = %path.display(), "cannot read a log file");
                    Vec::new()
                });
                Some(lines)
            })
            .await;
            let lines = match read {
                Ok(lines) => lines,
                Err(e) => {
                    tracing::warn!(error = %e, "reading a log file did not finish");
                    Some(Vec::new())
                }
            };
            Ok(lines.map(|backlog| Logs {
                backlog,
                follow: follow.then(ended),
            }))
        })
    }
}

impl Shared {
    pub(crate) fn slot(&self, slug: &StackSlug) -> Arc<StackSlot> {
        lock(&self.stacks).entry(slug.clone()).or_default().clone()
    }

    /// Forgets a stack's slot once nothing runs and nobody else holds it, so the map does not
    /// grow with every stack ever deployed.
    pub(crate) fn release_slot(&self, slug: &StackSlug, slot: Arc<StackSlot>) {
        let mut stacks = lock(&self.stacks);
        let idle = {
            let st = lock(&slot.state);
            st.current.is_none() && st.procs.is_empty()
        };
        // Two references: the map's and ours.
        if idle && Arc::strong_count(&slot) == 2 {
            stacks.remove(slug);
        }
    }

    pub(crate) fn dir(&self, kind: &str, slug: &StackSlug) -> PathBuf {
        self.cfg.data_dir.join(kind).join(slug.as_str())
    }

    fn release_dir(&self, slug: &StackSlug, release: i64) -> PathBuf {
        self.dir("stacks", slug).join(format!("r{release}"))
    }

    fn log_file(&self, slug: &StackSlug, service: &ServiceName) -> PathBuf {
        self.dir("logs", slug).join(format!("{service}.log"))
    }

    pub(crate) fn url(&self, slug: &StackSlug, service: &ReleaseService) -> Option<String> {
        service.expose.then(|| {
            service_url(
                service.name.as_str(),
                slug.as_str(),
                &self.cfg.base_domain,
                self.cfg.router_port,
            )
        })
    }

    fn host(&self, slug: &StackSlug, service: &ServiceName) -> String {
        service_host(service.as_str(), slug.as_str(), &self.cfg.base_domain)
    }

    /// A free port: the OS picks one, we let it go again and remember it as taken.
    fn allocate_port(&self) -> std::io::Result<u16> {
        for _ in 0..64 {
            let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            if lock(&self.ports).insert(port) {
                return Ok(port);
            }
        }
        Err(std::io::Error::other("no free port found"))
    }

    fn free_ports(&self, ports: impl IntoIterator<Item = u16>) {
        let mut taken = lock(&self.ports);
        for p in ports {
            taken.remove(&p);
        }
    }

    /// The logs of a stack service, created (and seeded from its file) on first use.
    pub(crate) async fn service_logs(
        &self,
        slug: &StackSlug,
        service: &ServiceName,
    ) -> std::io::Result<Arc<ServiceLogs>> {
        let key = (slug.clone(), service.clone());
        if let Some(l) = lock(&self.logs).get(&key) {
            return Ok(l.clone());
        }
        let path = self.log_file(slug, service);
        let seed = {
            let path = path.clone();
            blocking(move || {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                read_tail(&path, RING_LINES)
            })
            .await?
        };
        Ok(lock(&self.logs)
            .entry(key)
            .or_insert_with(|| ServiceLogs::open(path, seed))
            .clone())
    }

    /// Removes the stack's routes and forgets its current release (keeps `hosts` and the
    /// route table in step, see [`StackState`]).
    fn unroute(&self, st: &mut StackState) {
        self.routes.replace(&st.hosts, Vec::new());
        st.hosts.clear();
        st.starts.clear();
        st.current = None;
    }

    /// Stops process groups in parallel and forgets them.
    pub(crate) async fn stop_procs(&self, slot: &StackSlot, procs: Vec<Arc<Proc>>) {
        let grace = self.cfg.stop_grace;
        futures_util::future::join_all(procs.iter().map(|p| p.stop(grace))).await;
        lock(&slot.state)
            .procs
            .retain(|q| !procs.iter().any(|p| Arc::ptr_eq(p, q)));
        self.free_ports(procs.iter().map(|p| p.port));
    }

    /// Stops process groups known only from their run records (a previous instance's).
    async fn stop_recorded<'r>(&self, records: impl IntoIterator<Item = &'r RunRecord>) {
        let grace = self.cfg.stop_grace;
        futures_util::future::join_all(
            records
                .into_iter()
                .map(|r| stop_group(r.pgid, r.start_time, None, grace)),
        )
        .await;
    }

    async fn deploy(
        self: &Arc<Self>,
        plan: &DeployPlan,
        sink: &dyn StatusSink,
    ) -> Result<(), RuntimeError> {
        let slot = self.slot(&plan.slug);
        let result = {
            let _op = slot.op.lock().await;
            self.deploy_locked(&slot, plan, sink).await
        };
        self.release_slot(&plan.slug, slot);
        result
    }

    async fn deploy_locked(
        self: &Arc<Self>,
        slot: &Arc<StackSlot>,
        plan: &DeployPlan,
        sink: &dyn StatusSink,
    ) -> Result<(), RuntimeError> {
        let (slug, release) = (&plan.slug, plan.release);
        let (current, same) = {
            let st = lock(&slot.state);
            let same: Vec<Arc<Proc>> = st
                .procs
                .iter()
                .filter(|p| p.release == release)
                .cloned()
                .collect();
            (st.current, same)
        };
        if let Some(cur) = current {
            if release < cur {
                // Release numbers only grow; an older one can only come from a stale job.
                return Err(RuntimeError::Failed(format!(
                    "release v{release} is older than the running release v{cur}; not deploying it"
                )));
            }
            let all_running = release == cur
                && same.len() == plan.services.len()
                && same.iter().all(|p| p.exit_description().is_none());
            if all_running {
                // A retried job: the release already runs and is routed. Finish what the first
                // try may not have (it could have been cancelled while retiring the old one).
                for svc in &plan.services {
                    let url = self.url(slug, svc);
                    sink.service_status(&svc.name, ServiceStatus::Healthy, url.as_deref(), None)
                        .await;
                }
                self.retire_others(slot, slug, release).await;
                return Ok(());
            }
        }
        if !same.is_empty() {
            // What is left of an earlier attempt at this release (or a current release that
            // lost a process) goes before its directory is replaced.
            if current == Some(release) {
                self.unroute(&mut lock(&slot.state));
            }
            self.stop_procs(slot, same).await;
        }

        let release_dir = self.release_dir(slug, release);
        let mut attempt = Attempt {
            shared: self.clone(),
            slot: slot.clone(),
            procs: Vec::new(),
            ports: Vec::new(),
            release_dir: release_dir.clone(),
            done: false,
        };

        for svc in &plan.services {
            sink.service_status(&svc.name, ServiceStatus::Building, None, None)
                .await;
        }
        let mut prepared: Vec<Prepared> = Vec::with_capacity(plan.services.len());
        for svc in &plan.services {
            if !is_digest(&svc.artifact) {
                let message = "its artifact digest is not a SHA-256 hex string".to_owned();
                return self
                    .fail(attempt, plan, sink, vec![failure(svc, message)])
                    .await;
            }
            let artifact = artifact_path(&self.cfg.data_dir, &svc.artifact);
            let dest = release_dir.join(svc.name.as_str());
            let limits = self.limits;
            let unpacked =
                with_files(slot, move || Ok(unpack_artifact(&artifact, &dest, &limits))).await;
            match unpacked {
                Ok(Ok(())) => {}
                Ok(Err(UnpackError::Io(e))) | Err(e) => {
                    attempt.abort().await;
                    return Err(RuntimeError::Transient(format!(
                        "cannot unpack `{}`: {e}",
                        svc.name
                    )));
                }
                Ok(Err(e)) => {
                    let message = format!("cannot be unpacked: {e}");
                    return self
                        .fail(attempt, plan, sink, vec![failure(svc, message)])
                        .await;
                }
            }
            let dest = release_dir.join(svc.name.as_str());
            match self
                .prepare_service(&mut attempt, plan, svc, &dest, sink)
                .await
            {
                Ok(p) => prepared.push(p),
                Err(BuildError::Transient(message)) => {
                    attempt.abort().await;
                    return Err(RuntimeError::Transient(message));
                }
                Err(BuildError::Failed(message)) => {
                    return self
                        .fail(attempt, plan, sink, vec![failure(svc, message)])
                        .await;
                }
            }
        }
        for _ in &plan.services {
            match self.allocate_port() {
                Ok(p) => attempt.ports.push(p),
                Err(e) => {
                    attempt.abort().await;
                    return Err(RuntimeError::Transient(format!(
                        "cannot find a free port: {e}"
                    )));
                }
            }
        }
        let ports: HashMap<&str, u16> = plan
            .services
            .iter()
            .map(|s| s.name.as_str())
            .zip(attempt.ports.iter().copied())
            .collect();

        let assigned = attempt.ports.clone();
        let starts: Vec<Arc<ServiceStart>> = plan
            .services
            .iter()
            .zip(&assigned)
            .zip(&prepared)
            .map(|((svc, &port), prep)| {
                let tmp = release_dir.join(".tmp").join(svc.name.as_str());
                let root = release_dir.join(svc.name.as_str());
                // The sandbox's TMPDIR and HOME sit with the inherited variables, below the
                // image's ENV and what the stack sets.
                let mut base = self.inherited.clone();
                base.extend(self.cfg.sandbox.base_env(&tmp));
                if prep.built {
                    // Where the build's `pip install` put packages (see `build`).
                    base.push((
                        "PYTHONUSERBASE".to_owned(),
                        root.join(".local").display().to_string(),
                    ));
                }
                base.extend(image_env(&prep.image_env, &self.inherited));
                Arc::new(ServiceStart {
                    stack_id: plan.stack_id,
                    slug: slug.clone(),
                    release,
                    env: service_env(plan, svc, &ports, port, &base),
                    port_overridden: port_overridden(plan, svc, port),
                    service: svc.clone(),
                    port,
                    // Its stack's services and, for this service only, the ports of the
                    // resources its release granted it.
                    siblings: assigned
                        .iter()
                        .copied()
                        .chain(plan.granted_to(&svc.name).filter_map(|g| g.port))
                        .collect(),
                    root,
                    tmp,
                })
            })
            .collect();
        // Procfile `release:` commands, once per release, before any process starts.
        let deadline = Instant::now() + self.cfg.build_timeout;
        for (start, prep) in starts.iter().zip(&prepared) {
            let Some(command) = &prep.release_command else {
                continue;
            };
            let failed = match self
                .release_command(&mut attempt, plan, start, command, deadline)
                .await
            {
                Ok(None) => continue,
                Ok(Some(message)) => message,
                Err(message) => {
                    attempt.abort().await;
                    return Err(RuntimeError::Transient(message));
                }
            };
            let failed = vec![failure(&start.service, failed)];
            return self.fail(attempt, plan, sink, failed).await;
        }
        for start in &starts {
            match self.start_service(slot, start).await {
                Ok(p) => {
                    lock(&slot.state).procs.push(p.clone());
                    attempt.procs.push(p);
                }
                Err(StartError::Transient(message)) => {
                    attempt.abort().await;
                    return Err(RuntimeError::Transient(message));
                }
                Err(StartError::Failed(message)) => {
                    let failed = vec![failure(&start.service, message)];
                    return self.fail(attempt, plan, sink, failed).await;
                }
            }
            sink.service_status(&start.service.name, ServiceStatus::Deploying, None, None)
                .await;
        }

        let deadline = Instant::now() + self.cfg.deploy_timeout;
        let failures = self.wait_all_healthy(&attempt.procs, plan, deadline).await;
        if !failures.is_empty() {
            return self.fail(attempt, plan, sink, failures).await;
        }

        // Healthy: route the exposed services to the new processes in one step.
        let displaced = {
            let mut st = lock(&slot.state);
            let mut hosts = Vec::new();
            let mut routes = Vec::new();
            for (svc, &port) in plan.services.iter().zip(&attempt.ports) {
                if svc.expose {
                    let host = self.host(slug, &svc.name);
                    hosts.push(host.clone());
                    routes.push((host, SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
                }
            }
            let displaced = self.routes.replace(&st.hosts, routes);
            st.hosts = hosts;
            st.starts = starts.clone();
            st.current = Some(release);
            displaced
        };
        attempt.done = true;
        for svc in &plan.services {
            let url = self.url(slug, svc);
            sink.service_status(&svc.name, ServiceStatus::Healthy, url.as_deref(), None)
                .await;
        }
        for (p, start) in attempt.procs.iter().zip(&starts) {
            tokio::spawn(supervise(
                self.clone(),
                slot.clone(),
                p.clone(),
                start.clone(),
            ));
        }

        // Retire the previous release once the requests it was serving have finished.
        drain(displaced, self.cfg.stop_grace).await;
        self.retire_others(slot, slug, release).await;
        tracing::info!(stack = %slug, release, "release is healthy and routed");
        Ok(())
    }

    /// Stops every process of the stack not of `release` and removes the other releases'
    /// files. Called with the stack's `op` lock held, once `release` is routed.
    async fn retire_others(&self, slot: &StackSlot, slug: &StackSlug, release: i64) {
        let others: Vec<Arc<Proc>> = lock(&slot.state)
            .procs
            .iter()
            .filter(|p| p.release != release)
            .cloned()
            .collect();
        self.stop_procs(slot, others).await;
        let stack_dir = self.dir("stacks", slug);
        let keep = format!("r{release}");
        if let Err(e) = with_files(slot, move || remove_children_except(&stack_dir, &[keep])).await
        {
            tracing::warn!(error = %e, stack = %slug, "cannot remove an old release's files");
        }
    }

    /// Waits until every new process is healthy; on the first failure returns it, plus any
    /// other service that has already died. Also checks, once all were healthy, that none has
    /// died since (a service can pass its probe and crash while another is still starting).
    async fn wait_all_healthy(
        &self,
        procs: &[Arc<Proc>],
        plan: &DeployPlan,
        deadline: Instant,
    ) -> Vec<ServiceFailure> {
        let timeout = self.cfg.deploy_timeout;
        let mut waits: FuturesUnordered<_> = procs
            .iter()
            .zip(&plan.services)
            .map(|(p, svc)| async move {
                let overridden = port_overridden(plan, svc, p.port);
                (
                    svc,
                    wait_healthy(p, svc, overridden, deadline, timeout).await,
                )
            })
            .collect();
        let mut failures = Vec::new();
        while let Some((svc, result)) = waits.next().await {
            if let Err(message) = result {
                failures.push(failure(svc, message));
                break;
            }
        }
        drop(waits);
        for (p, svc) in procs.iter().zip(&plan.services) {
            if failures.iter().any(|f| f.service == svc.name) {
                continue;
            }
            if let Some(exit) = p.exit_description() {
                p.output_closed(OUTPUT_FLUSH_WAIT).await;
                failures.push(failure(svc, exit_message(&exit, &p.tail())));
            }
        }
        failures
    }

    /// Ends a failed attempt: stops its processes, removes its files, leaves the routed release
    /// alone, and reports every service.
    async fn fail(
        &self,
        attempt: Attempt,
        plan: &DeployPlan,
        sink: &dyn StatusSink,
        failures: Vec<ServiceFailure>,
    ) -> Result<(), RuntimeError> {
        let slot = attempt.slot.clone();
        attempt.abort().await;
        let (serving, routed) = {
            let st = lock(&slot.state);
            (st.current, st.hosts.clone())
        };
        let (messages, summary) = failure_report(plan, &failures, serving);
        for (svc, (name, message)) in plan.services.iter().zip(&messages) {
            // A service the previous release still serves keeps its URL.
            let url = routed
                .contains(&self.host(&plan.slug, &svc.name))
                .then(|| self.url(&plan.slug, svc))
                .flatten();
            sink.service_status(name, ServiceStatus::Failed, url.as_deref(), Some(message))
                .await;
        }
        let culprits: Vec<&str> = failures.iter().map(|f| f.service.as_str()).collect();
        let culprits = culprits.join(",");
        tracing::info!(stack = %plan.slug, release = plan.release, services = %culprits, "release failed");
        Err(RuntimeError::Failed(summary))
    }

    /// Stops every process this instance runs, keeping files and logs: the server is going
    /// away and the next one starts the stacks again (`recover`). Operations in flight are not
    /// waited for; an attempt cancelled with the server stops what it started (`Attempt`).
    async fn shutdown(&self) {
        let slots: Vec<Arc<StackSlot>> = lock(&self.stacks).values().cloned().collect();
        futures_util::future::join_all(slots.iter().map(|slot| async move {
            let procs = {
                let mut st = lock(&slot.state);
                self.unroute(&mut st);
                st.procs.clone()
            };
            self.stop_procs(slot, procs).await;
        }))
        .await;
        tracing::info!(stacks = slots.len(), "stopped the local services");
    }

    async fn teardown(self: &Arc<Self>, slug: &StackSlug) -> Result<(), RuntimeError> {
        let slot = self.slot(slug);
        let result = {
            let _op = slot.op.lock().await;
            self.teardown_locked(&slot, slug).await
        };
        self.release_slot(slug, slot);
        result
    }

    async fn teardown_locked(
        &self,
        slot: &StackSlot,
        slug: &StackSlug,
    ) -> Result<(), RuntimeError> {
        let procs = {
            let mut st = lock(&slot.state);
            self.unroute(&mut st);
            st.procs.clone()
        };
        self.stop_procs(slot, procs).await;

        // Groups recorded on disk that this instance does not know (left by a previous one).
        let run_dir = self.dir("run", slug);
        let records = blocking(move || Ok(read_records(&run_dir)))
            .await
            .unwrap_or_default();
        self.stop_recorded(&records).await;

        // Followers' streams end here; the writers finish before their directory goes.
        let closing: Vec<Arc<ServiceLogs>> = {
            let mut logs = lock(&self.logs);
            let keys: Vec<_> = logs.keys().filter(|k| &k.0 == slug).cloned().collect();
            keys.iter().filter_map(|k| logs.remove(k)).collect()
        };
        for logs in closing {
            if let Some(writer) = logs.close() {
                let _ = tokio::time::timeout(LOG_CLOSE_WAIT, writer).await;
            }
        }

        let dirs = ["stacks", "builds", "run", "logs"].map(|kind| self.dir(kind, slug));
        with_files(slot, move || {
            for d in &dirs {
                remove_dir_if_exists(d)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| RuntimeError::Transient(format!("cannot remove the stack's files: {e}")))?;
        tracing::info!(stack = %slug, "stack torn down");
        Ok(())
    }

    async fn recover(self: &Arc<Self>, running: Vec<DeployPlan>) -> Result<(), RuntimeError> {
        // Groups this instance started are not orphans (recover runs first, but be exact).
        let (ours, active): (HashSet<i32>, HashSet<String>) = {
            let stacks = lock(&self.stacks);
            let mut ours = HashSet::new();
            let mut active = HashSet::new();
            for (slug, slot) in stacks.iter() {
                let st = lock(&slot.state);
                ours.extend(st.procs.iter().map(|p| p.pgid));
                if !st.procs.is_empty() || st.current.is_some() {
                    active.insert(slug.to_string());
                }
            }
            (ours, active)
        };
        let run_root = self.cfg.data_dir.join("run");
        let records = {
            let run_root = run_root.clone();
            blocking(move || Ok(read_records(&run_root)))
                .await
                .unwrap_or_default()
        };
        let orphans: Vec<_> = records.iter().filter(|r| !ours.contains(&r.pgid)).collect();
        if !orphans.is_empty() {
            tracing::info!(
                count = orphans.len(),
                "stopping processes left by a previous server"
            );
        }
        self.stop_recorded(orphans).await;

        // Nothing of those runs any more: their records and unpacked code can go (a
        // deploy below unpacks afresh). Logs stay.
        let stacks_root = self.cfg.data_dir.join("stacks");
        let keep: Vec<String> = active.into_iter().collect();
        if let Err(e) = blocking(move || {
            remove_children_except(&run_root, &keep)?;
            remove_children_except(&stacks_root, &keep)
        })
        .await
        {
            tracing::warn!(error = %e, "cannot clear what a previous server left");
        }

        let count = running.len();
        futures_util::stream::iter(running)
            .map(|plan| async move {
                if let Err(e) = self.deploy(&plan, &UnreportedStatus).await {
                    tracing::warn!(stack = %plan.slug, release = plan.release, error = %e, "could not restart a stack");
                }
            })
            .buffer_unordered(RECOVER_PARALLELISM)
            .collect::<()>()
            .await;
        tracing::info!(stacks = count, "local runtime recovered");
        Ok(())
    }
}

/// The not-yet-committed part of a deploy. Dropped without `done` (the deploy future was
/// cancelled, e.g. its job's claim was lost) it still stops what it started, from a task; its
/// files are then left for the next deploy or teardown of the stack, which hold the lock.
pub(crate) struct Attempt {
    shared: Arc<Shared>,
    pub(crate) slot: Arc<StackSlot>,
    pub(crate) procs: Vec<Arc<Proc>>,
    /// Every port allocated for this attempt (a started process owns its port from then on).
    ports: Vec<u16>,
    release_dir: PathBuf,
    done: bool,
}

impl Attempt {
    /// Stops the attempt's processes, frees its ports and removes its release directory. Only
    /// called with the stack's `op` lock held: a later attempt may unpack the same release.
    async fn abort(mut self) {
        self.done = true;
        let procs = std::mem::take(&mut self.procs);
        self.shared.stop_procs(&self.slot, procs).await;
        self.shared.free_ports(self.ports.iter().copied());
        let dir = self.release_dir.clone();
        if let Err(e) = with_files(&self.slot, move || remove_dir_if_exists(&dir)).await {
            tracing::warn!(error = %e, "cannot remove a failed release's files");
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let procs = std::mem::take(&mut self.procs);
        let ports = std::mem::take(&mut self.ports);
        let (shared, slot) = (self.shared.clone(), self.slot.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    shared.stop_procs(&slot, procs).await;
                    shared.free_ports(ports);
                });
            }
            Err(_) => {
                // No runtime to wait in: kill outright rather than leave them running.
                for p in &procs {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(p.pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn failure(svc: &ReleaseService, message: String) -> ServiceFailure {
    ServiceFailure {
        service: svc.name.clone(),
        message,
    }
}

/// Probes one service until it is healthy, exits, or the deadline passes.
pub(crate) async fn wait_healthy(
    p: &Proc,
    svc: &ReleaseService,
    port_overridden: bool,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), String> {
    loop {
        if let Some(exit) = p.exit_description() {
            p.output_closed(OUTPUT_FLUSH_WAIT).await;
            return Err(exit_message(&exit, &p.tail()));
        }
        let last = match probe(p.port, svc.health.as_deref()).await {
            // Alive after answering, not a process that answered on its way out.
            Ok(()) if p.exit_description().is_none() => return Ok(()),
            Ok(()) => continue,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let mut message = format!(
                "did not become healthy within {}: {last}.",
                human_duration(timeout)
            );
            if port_overridden {
                message.push_str(
                    " PORT is set in the manifest or the stack env, but the local runtime assigns \
                     PORT itself and probes that port; the service must listen on $PORT.",
                );
            }
            push_tail(&mut message, &p.tail());
            return Err(message);
        }
        tokio::select! {
            _ = p.exited() => {}
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

pub(crate) fn exit_message(exit: &str, tail: &[String]) -> String {
    let mut message = format!("{exit} before it became healthy.");
    push_tail(&mut message, tail);
    message
}

/// Appends the last log lines (the service's own output, never its environment).
pub(crate) fn push_tail(message: &mut String, tail: &[String]) {
    if tail.is_empty() {
        message.push_str(" It printed nothing.");
    } else {
        message.push_str(" Last log lines:\n");
        message.push_str(&tail.join("\n"));
    }
}

fn port_overridden(plan: &DeployPlan, svc: &ReleaseService, port: u16) -> bool {
    let set = |v: Option<&str>| v.is_some_and(|v| v != port.to_string());
    set(svc.env.get("PORT").map(String::as_str)) || set(plan.env.get("PORT"))
}

pub(crate) fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Waits until no request is in flight to any of `upstreams` (each request holds a clone of
/// its upstream's `Arc`), or `limit` passes.
async fn drain(upstreams: Vec<Arc<Upstream>>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while upstreams.iter().any(|u| Arc::strong_count(u) > 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A service's environment: `inherited` (the server's `PATH` and `HOME`, the sandbox's
/// variables, the image's `ENV`), then `DeployPlan::service_env` winning over it, with
/// `service://x` resolved to this release's local address of `x`.
fn service_env(
    plan: &DeployPlan,
    svc: &ReleaseService,
    ports: &HashMap<&str, u16>,
    port: u16,
    inherited: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = inherited.iter().cloned().collect();
    env.extend(plan.service_env(svc, port, |name| {
        ports.get(name).map(|p| format!("http://127.0.0.1:{p}"))
    }));
    env
}

/// The image's `ENV` as a service sees it: a `PATH` that named the base image's (`$PATH`,
/// empty here: there is no base image) gets the server's in its empty entries.
fn image_env<'a>(
    env: &'a BTreeMap<String, String>,
    inherited: &'a [(String, String)],
) -> impl Iterator<Item = (String, String)> + 'a {
    let host_path = inherited
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    env.iter().map(move |(k, v)| {
        let value = if k == "PATH" {
            v.split(':')
                .map(|entry| if entry.is_empty() { host_path } else { entry })
                .collect::<Vec<_>>()
                .join(":")
        } else {
            v.clone()
        };
        (k.clone(), value)
    })
}

/// Where a service starts: its `workdir` under the unpacked root when that is a directory
/// inside the root, else the root (a Dockerfile's `WORKDIR /app` often names a directory the
/// image build would have created, not one in the tarball).
pub(crate) fn working_dir(root: &Path, workdir: &str) -> PathBuf {
    if workdir.is_empty() {
        return root.to_path_buf();
    }
    let Ok(rel) = safe_relative_path(workdir.as_bytes()) else {
        return root.to_path_buf();
    };
    let candidate = root.join(rel);
    let inside = match (candidate.canonicalize(), root.canonicalize()) {
        (Ok(c), Ok(r)) => c.starts_with(&r) && c.is_dir(),
        _ => false,
    };
    if inside {
        candidate
    } else {
        root.to_path_buf()
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runs blocking work on a stack's files while holding its `files` lock (see [`StackSlot`]).
pub(crate) async fn with_files<T: Send + 'static>(
    slot: &StackSlot,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let guard = slot.files.clone().lock_owned().await;
    blocking(move || {
        let _guard = guard;
        f()
    })
    .await
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

fn remove_dir_if_exists(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes every entry of `dir` whose name is not in `keep` (nothing if `dir` is missing).
fn remove_children_except(dir: &Path, keep: &[String]) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == k.as_str()) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            remove_dir_if_exists(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The host of a service URL (`http://web-stk-….localhost:8080` → `web-stk-….localhost`).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split(':').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackyard_core::EnvMap;

    fn svc(name: &str, env: &[(&str, &str)]) -> ReleaseService {
        ReleaseService {
            name: ServiceName::parse(name).unwrap(),
            artifact: "0".repeat(64),
            image: None,
            command: "true".into(),
            workdir: String::new(),
            port: 8080,
            expose: true,
            health: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            needs: Vec::new(),
        }
    }

    #[test]
    fn env_layers_apply_in_order() {
        let web = svc(
            "web",
            &[
                ("API", "service://api/v1"),
                ("SHARED", "manifest"),
                ("ONLY_MANIFEST", "m"),
                ("STACKYARD_RELEASE", "manifest wins over platform"),
                ("PATH", "/opt/bin"),
            ],
        );
        let plan = DeployPlan {
            stack_id: stackyard_core::model::StackId(1),
            slug: StackSlug::parse("stk-0123456789abcdef01234567").unwrap(),
            team: None,
            tier: "free".into(),
            release: 7,
            env_version: 3,
            services: vec![web.clone(), svc("api", &[])],
            env: EnvMap::from_map(
                [("SHARED".to_string(), "stack".to_string())]
                    .into_iter()
                    .collect(),
            ),
            granted: Vec::new(),
        };
        let ports: HashMap<&str, u16> = [("web", 4001), ("api", 4002)].into_iter().collect();
        let inherited = vec![
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let env = service_env(&plan, &web, &ports, 4001, &inherited);
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("PORT"), Some("4001"));
        assert_eq!(get("STACKYARD_STACK"), Some("stk-0123456789abcdef01234567"));
        assert_eq!(get("STACKYARD_SERVICE"), Some("web"));
        assert_eq!(
            get("STACKYARD_RELEASE"),
            Some("manifest wins over platform")
        );
        assert_eq!(get("API"), Some("http://127.0.0.1:4002/v1"));
        assert_eq!(get("SHARED"), Some("stack"));
        assert_eq!(get("ONLY_MANIFEST"), Some("m"));
        assert_eq!(get("PATH"), Some("/opt/bin"));
        assert_eq!(get("HOME"), Some("/root"));
        assert_eq!(env.len(), 9);
        assert!(!port_overridden(&plan, &web, 4001));
    }

    #[test]
    fn workdir_falls_back_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("svc");
        std::fs::create_dir_all(root.join("app/src")).unwrap();
        std::fs::write(root.join("file"), b"").unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("out")).unwrap();
        assert_eq!(working_dir(&root, ""), root);
        assert_eq!(working_dir(&root, "app/src"), root.join("app/src"));
        assert_eq!(working_dir(&root, "missing"), root);
        assert_eq!(working_dir(&root, "file"), root);
        assert_eq!(working_dir(&root, "../svc"), root);
        assert_eq!(
            working_dir(&root, "out"),
            root,
            "a link out is not followed"
        );
    }

    #[test]
    fn digests_are_checked_before_building_a_path() {
        assert!(is_digest(&"ab12".repeat(16)));
        assert!(!is_digest(&"AB12".repeat(16)));
        assert!(!is_digest("../../etc/passwd"));
        assert!(!is_digest(&"a".repeat(63)));
    }

    #[test]
    fn children_are_removed_except_the_kept_ones() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["r1", "r2", "r3"] {
            std::fs::create_dir_all(dir.path().join(d).join("x")).unwrap();
        }
        std::fs::write(dir.path().join("stray"), b"").unwrap();
        remove_children_except(dir.path(), &["r2".into()]).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("r2")]);
        remove_children_except(&dir.path().join("missing"), &[]).unwrap();
    }
}
