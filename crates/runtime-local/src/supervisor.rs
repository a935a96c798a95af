//! Starting one service (for a deploy and for a restart), and the supervisor that watches each
//! service of the routed release (`isolation.md`, "Supervision"): a service whose process ends
//! on its own is `crashed`, restarted after a backoff (1 s doubling to 60 s) in place — same
//! port, so its route stays — as `restarting`, and `healthy` again once its probe passes. More
//! than five crashes within ten minutes: `failed` with its last log lines, left stopped until a
//! redeploy. Every transition goes to the server's `SupervisionSink`, which records it fenced by
//! the live release. A service with a `health` path that fails three checks in a row (one every
//! `health_interval`, 10 s by default) is stopped and restarted the same way.
//!
//! A supervisor ends when its process is stopped on purpose (retire, teardown, shutdown, a
//! requested restart: `Proc` marks itself stopping first) or when its process or release is no
//! longer the current one. A restart, the supervisor's or a requested one (`Shared::restart`,
//! the `restart` job: service by service from the routed release's kept `ServiceStart`s, in
//! place, each with a new supervisor and a clean crash count), takes the stack's `op` lock and
//! checks under it that what it restarts is still current, so the two never race and neither
//! overlaps a deploy or a teardown of the same stack.

use crate::health::probe;
use crate::lock;
use crate::procs::{Proc, SpawnSpec};
use crate::runtime::{Shared, StackSlot, push_tail, wait_healthy, with_files, working_dir};
use crate::sandbox::ServiceBox;
use stackyard_core::lifecycle::status::Supervised;
use stackyard_core::model::{ReleaseService, ServiceStatus, StackId};
use stackyard_core::runtime::{RuntimeError, StatusSink};
use stackyard_core::{ServiceName, StackSlug};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Crashes within [`CRASH_WINDOW`] beyond which a service is given up on.
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(600);
/// The longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Failed health checks in a row that count as a crash.
const HEALTH_FAILURES: u32 = 3;
/// How long a crashed process gets to flush its last lines.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Everything needed to start one service of a release, again if need be.
pub(crate) struct ServiceStart {
    pub(crate) stack_id: StackId,
    pub(crate) slug: StackSlug,
    pub(crate) release: i64,
    pub(crate) service: ReleaseService,
    pub(crate) port: u16,
    /// The ports of the release's services (the sandbox lets it connect to them).
    pub(crate) siblings: Vec<u16>,
    pub(crate) env: BTreeMap<String, String>,
    /// Whether the stack sets a `PORT` of its own (explained when the probe fails).
    pub(crate) port_overridden: bool,
    pub(crate) root: PathBuf,
    pub(crate) tmp: PathBuf,
}

impl ServiceStart {
    /// Waits up to `timeout` for a process started from this spec to answer its probe.
    async fn healthy(&self, proc: &Proc, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        wait_healthy(proc, &self.service, self.port_overridden, deadline, timeout).await
    }
}

/// Why a service could not be started.
pub(crate) enum StartError {
    /// Worth retrying the whole operation (logs or sandbox could not be set up).
    Transient(String),
    /// The service itself cannot be started.
    Failed(String),
}

/// The wait before restart number `n` (1 for the first crash in the window): `base`, doubling,
/// at most a minute.
pub(crate) fn backoff(base: Duration, n: usize) -> Duration {
    let doublings = u32::try_from(n.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    base.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// The crashes of one service within the last [`CRASH_WINDOW`], which decide the wait before
/// its next restart and when it is given up on.
pub(crate) struct Crashes {
    base: Duration,
    at: VecDeque<Instant>,
}

impl Crashes {
    pub(crate) fn new(base: Duration) -> Self {
        Self {
            base,
            at: VecDeque::new(),
        }
    }

    /// Records a crash at `now`: the wait before restarting ([`backoff`] by the crashes in the
    /// window), or `None` when that makes more than [`MAX_CRASHES`] and the service is given
    /// up on.
    pub(crate) fn record(&mut self, now: Instant) -> Option<Duration> {
        self.at.push_back(now);
        while self
            .at
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            self.at.pop_front();
        }
        (self.at.len() <= MAX_CRASHES).then(|| backoff(self.base, self.at.len()))
    }

    /// Crashes within the window.
    pub(crate) fn len(&self) -> usize {
        self.at.len()
    }
}

impl Shared {
    /// Prepares the service's sandbox and starts its process group.
    pub(crate) async fn start_service(
        &self,
        slot: &StackSlot,
        start: &ServiceStart,
    ) -> Result<Arc<Proc>, StartError> {
        let name = &start.service.name;
        let logs = self
            .service_logs(&start.slug, name)
            .await
            .map_err(|e| StartError::Transient(format!("cannot open the logs of `{name}`: {e}")))?;
        let sandboxed = ServiceBox {
            stack_id: start.stack_id.0,
            slug: start.slug.to_string(),
            release: start.release,
            service: name.to_string(),
            root: start.root.clone(),
            tmp: start.tmp.clone(),
            port: start.port,
            siblings: start.siblings.clone(),
        };
        let sandbox = self.cfg.sandbox.clone();
        let launch = with_files(slot, move || sandbox.prepare(&sandboxed))
            .await
            .map_err(|e| {
                StartError::Transient(format!("cannot prepare the sandbox of `{name}`: {e}"))
            })?;
        let cwd = working_dir(&start.root, &start.service.workdir);
        let spec = SpawnSpec {
            service: name.clone(),
            slug: start.slug.as_str(),
            release: start.release,
            port: start.port,
            command: &start.service.command,
            cwd: &cwd,
            env: &start.env,
            record_path: self
                .dir("run", &start.slug)
                .join(format!("{}-{name}.json", start.release)),
            launch,
        };
        Proc::spawn(spec, logs)
            .map_err(|e| StartError::Failed(format!("could not be started: {e}")))
    }

    /// Restarts `service`, or every service, of the routed `release` in place and in manifest
    /// order (`Runtime::restart`), under the stack's `op` lock. Each one: `restarting`, its old
    /// process group stopped (its supervisor ends with it), started again from its kept
    /// `ServiceStart` on the same port (so its route stays), probed until healthy, `healthy`,
    /// and watched by a new supervisor. The first that does not come up is stopped and
    /// `failed` (left so until a redeploy or another restart); the ones after it are not
    /// touched and reported as they are. Not the routed release (redeployed, torn down, or
    /// never started by this server): nothing is touched, `Err(Failed)`.
    pub(crate) async fn restart(
        self: &Arc<Self>,
        slug: &StackSlug,
        release: i64,
        service: Option<&ServiceName>,
        sink: &dyn StatusSink,
    ) -> Result<(), RuntimeError> {
        let slot = self.slot(slug);
        let result = {
            let _op = slot.op.lock().await;
            self.restart_locked(&slot, slug, release, service, sink)
                .await
        };
        self.release_slot(slug, slot);
        result
    }

    async fn restart_locked(
        self: &Arc<Self>,
        slot: &Arc<StackSlot>,
        slug: &StackSlug,
        release: i64,
        service: Option<&ServiceName>,
        sink: &dyn StatusSink,
    ) -> Result<(), RuntimeError> {
        let starts: Vec<Arc<ServiceStart>> = {
            let st = lock(&slot.state);
            if st.current != Some(release) {
                return Err(RuntimeError::Failed(format!(
                    "release v{release} is not running on this server; redeploy the stack to start it again"
                )));
            }
            st.starts
                .iter()
                .filter(|s| service.is_none_or(|n| n == &s.service.name))
                .cloned()
                .collect()
        };
        let mut failed: Option<(ServiceName, String)> = None;
        for start in &starts {
            let name = &start.service.name;
            let url = self.url(slug, &start.service);
            if let Some((culprit, _)) = &failed {
                // Not restarted: still the process it had, if that one still runs.
                let running = lock(&slot.state).procs.iter().any(|p| {
                    p.release == release
                        && &p.service == name
                        && !p.is_stopping()
                        && p.exit_description().is_none()
                });
                let note = format!("not restarted because `{culprit}` did not come up");
                let (status, error) = if running {
                    (ServiceStatus::Healthy, None)
                } else {
                    (ServiceStatus::Failed, Some(note.as_str()))
                };
                sink.service_status(name, status, url.as_deref(), error)
                    .await;
                continue;
            }
            sink.service_status(name, ServiceStatus::Restarting, url.as_deref(), None)
                .await;
            let old: Vec<Arc<Proc>> = lock(&slot.state)
                .procs
                .iter()
                .filter(|p| p.release == release && &p.service == name)
                .cloned()
                .collect();
            // The old group goes (and its port with it) before the new one binds the same port;
            // the port stays this release's, so it is not freed.
            futures_util::future::join_all(old.iter().map(|p| p.stop(self.cfg.stop_grace))).await;
            lock(&slot.state)
                .procs
                .retain(|q| !old.iter().any(|p| Arc::ptr_eq(p, q)));
            let fresh = match self.start_service(slot, start).await {
                Ok(p) => p,
                Err(StartError::Transient(m) | StartError::Failed(m)) => {
                    sink.service_status(name, ServiceStatus::Failed, url.as_deref(), Some(&m))
                        .await;
                    failed = Some((name.clone(), m));
                    continue;
                }
            };
            lock(&slot.state).procs.push(fresh.clone());
            match start.healthy(&fresh, self.cfg.deploy_timeout).await {
                Ok(()) => {
                    tracing::info!(stack = %slug, service = %name, release, "restarted");
                    sink.service_status(name, ServiceStatus::Healthy, url.as_deref(), None)
                        .await;
                    tokio::spawn(supervise(self.clone(), slot.clone(), fresh, start.clone()));
                }
                Err(message) => {
                    fresh.stop(self.cfg.stop_grace).await;
                    sink.service_status(
                        name,
                        ServiceStatus::Failed,
                        url.as_deref(),
                        Some(&message),
                    )
                    .await;
                    failed = Some((name.clone(), message));
                }
            }
        }
        match failed {
            None => Ok(()),
            Some((name, message)) => Err(RuntimeError::Failed(format!(
                "`{name}` did not come up after the restart: {message}"
            ))),
        }
    }

    async fn report(
        &self,
        start: &ServiceStart,
        status: ServiceStatus,
        error: Option<&str>,
        restarts: i64,
        last_exit: Option<&str>,
    ) {
        let Some(sink) = self.supervision.get() else {
            return;
        };
        let report = Supervised {
            release: start.release,
            service: &start.service.name,
            status,
            error,
            restarts,
            last_exit,
        };
        sink.report(start.stack_id, report).await;
    }
}

/// Watches one service of a routed release until it is stopped on purpose or replaced; see the
/// module docs.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    slot: Arc<StackSlot>,
    mut proc: Arc<Proc>,
    start: Arc<ServiceStart>,
) {
    let name = &start.service.name;
    let mut restarts = 0i64;
    let mut crashes = Crashes::new(shared.cfg.restart_backoff);
    // An ending already known (a restarted process that never became healthy), and whether
    // that process was stopped by us rather than by a retire or teardown.
    let mut known: Option<String> = None;
    let mut stopped_by_us = false;
    loop {
        let exit = match known.take() {
            Some(exit) => exit,
            None => {
                let health = start.service.health.as_deref();
                let failing = tokio::select! {
                    () = proc.exited() => None,
                    reason = failing_health(&proc, health, shared.cfg.health_interval) => Some(reason),
                };
                if proc.is_stopping() {
                    return;
                }
                match failing {
                    Some(reason) => {
                        proc.stop(shared.cfg.stop_grace).await;
                        stopped_by_us = true;
                        reason
                    }
                    None => {
                        proc.output_closed(FLUSH_WAIT).await;
                        proc.exit_description().unwrap_or_else(|| "ended".into())
                    }
                }
            }
        };
        if proc.is_stopping() && !stopped_by_us {
            // Stopped on purpose while its output was flushing (a requested restart, a retire):
            // whoever stopped it reports what comes next; a crash report now would land after.
            return;
        }
        let wait = crashes.record(Instant::now());
        tracing::warn!(stack = %start.slug, service = %name, exit = %exit, crashes = crashes.len(), "a service ended on its own");
        let Some(wait) = wait else {
            let mut message = format!(
                "crashed {} times within 10 minutes and is left stopped; the last time it {exit}.",
                crashes.len()
            );
            push_tail(&mut message, &proc.tail());
            proc.stop(shared.cfg.stop_grace).await;
            shared
                .report(
                    &start,
                    ServiceStatus::Failed,
                    Some(&message),
                    restarts,
                    Some(&exit),
                )
                .await;
            return;
        };
        shared
            .report(
                &start,
                ServiceStatus::Crashed,
                Some(&exit),
                restarts,
                Some(&exit),
            )
            .await;
        tokio::time::sleep(wait).await;

        let _op = slot.op.lock().await;
        let ours = {
            let st = lock(&slot.state);
            st.current == Some(start.release) && st.procs.iter().any(|p| Arc::ptr_eq(p, &proc))
        };
        if !ours || (proc.is_stopping() && !stopped_by_us) {
            return;
        }
        stopped_by_us = false;
        shared
            .report(
                &start,
                ServiceStatus::Restarting,
                None,
                restarts,
                Some(&exit),
            )
            .await;
        // What is left of the old group (children it forked, its record, its cgroup) goes
        // before the new one takes the port.
        proc.stop(shared.cfg.stop_grace).await;
        let fresh = match shared.start_service(&slot, &start).await {
            Ok(p) => p,
            Err(StartError::Transient(m) | StartError::Failed(m)) => {
                shared
                    .report(
                        &start,
                        ServiceStatus::Failed,
                        Some(&m),
                        restarts,
                        Some(&exit),
                    )
                    .await;
                return;
            }
        };
        {
            let mut st = lock(&slot.state);
            st.procs.retain(|p| !Arc::ptr_eq(p, &proc));
            st.procs.push(fresh.clone());
        }
        proc = fresh;
        restarts += 1;
        match start.healthy(&proc, shared.cfg.deploy_timeout).await {
            Ok(()) => {
                tracing::info!(stack = %start.slug, service = %name, restarts, "a restarted service is healthy");
                shared
                    .report(&start, ServiceStatus::Healthy, None, restarts, Some(&exit))
                    .await;
            }
            Err(message) => {
                // Counted as another crash; a process that hangs unhealthy is stopped first.
                if proc.exit_description().is_none() {
                    proc.stop(shared.cfg.stop_grace).await;
                }
                stopped_by_us = proc.is_stopping();
                known = Some(first_line(&message));
            }
        }
    }
}

/// Probes the service's health path every `interval` and returns once [`HEALTH_FAILURES`]
/// checks in a row failed; never returns for a service without a health path (its liveness is
/// its process).
async fn failing_health(proc: &Proc, health: Option<&str>, interval: Duration) -> String {
    let Some(path) = health else {
        return std::future::pending().await;
    };
    let mut failures = 0;
    loop {
        tokio::time::sleep(interval).await;
        match probe(proc.port, Some(path)).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= HEALTH_FAILURES {
                    return format!("failed {failures} health checks in a row ({e})");
                }
            }
        }
    }
}

/// The first line of a failure message (the exit, without the log tail).
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message);
    let exit = line
        .split(" before it became healthy")
        .next()
        .unwrap_or(line);
    exit.trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::exit_message;

    #[test]
    fn backoff_doubles_from_its_base_and_stops_at_a_minute() {
        let s = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=8).map(|n| backoff(s, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(s, 0), s);
        assert_eq!(backoff(s, usize::MAX), MAX_BACKOFF);
        assert_eq!(
            backoff(Duration::from_millis(50), 3),
            Duration::from_millis(200)
        );
    }

    /// The supervisor's waits on a paused clock: a service that crashes again as soon as it is
    /// back waits 1, 2, 4, 8 and 16 s (31 s in all) and is given up on at the sixth crash; one
    /// that stays up longer than the window starts again from the base.
    #[tokio::test(start_paused = true)]
    async fn restarts_back_off_on_the_clock_and_a_crash_loop_is_given_up_on() {
        let mut crashes = Crashes::new(Duration::from_secs(1));
        let started = Instant::now();
        let mut waits = Vec::new();
        while let Some(wait) = crashes.record(Instant::now()) {
            let before = Instant::now();
            tokio::time::sleep(wait).await;
            waits.push(before.elapsed().as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(crashes.len(), MAX_CRASHES + 1);
        assert_eq!(started.elapsed(), Duration::from_secs(31));

        let mut crashes = Crashes::new(Duration::from_secs(1));
        for _ in 0..MAX_CRASHES {
            let wait = crashes.record(Instant::now()).unwrap();
            tokio::time::sleep(wait).await;
        }
        tokio::time::advance(CRASH_WINDOW + Duration::from_secs(1)).await;
        assert_eq!(crashes.record(Instant::now()), Some(Duration::from_secs(1)));
        assert_eq!(crashes.len(), 1, "older crashes left the window");
    }

    #[test]
    fn a_failure_message_shortens_to_its_exit() {
        let m = exit_message("exited with status 3", &["boom".into()]);
        assert_eq!(first_line(&m), "exited with status 3");
    }
}
