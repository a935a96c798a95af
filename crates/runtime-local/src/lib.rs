//! The local runtime: every service of a stack runs as a child process in its own process
//! group on this machine, and an HTTP reverse proxy (the router) sends each exposed service's
//! public host to the port that process listens on.
//!
//! Modules, each owning one concern:
//! - `runtime`: [`LocalRuntime`], the `Runtime` implementation (rolling deploys, teardown,
//!   recovery after a restart, log access) and the per-stack state it keeps;
//! - `procs`: starting and stopping process groups, `/proc` checks, run records on disk;
//! - `logs`: per-service log rings, followers and log files;
//! - `unpack`: writing a service tarball to disk under core's tarball rules;
//! - `health`: the readiness probe (TCP connect or HTTP GET);
//! - `routes`: [`RouteTable`], the host → upstream map shared with the router;
//! - `router`: [`run_router`], the reverse proxy itself;
//! - `sandbox`: what a service may touch, and the launcher that confines it;
//! - `supervisor`: starting a service, and restarting one of the routed release that crashed.

mod build;
mod health;
mod logs;
mod procs;
mod router;
mod routes;
mod runtime;
pub mod sandbox;
mod supervisor;
mod unpack;

pub use router::{run_router, run_tls_router};
pub use routes::RouteTable;
pub use runtime::LocalRuntime;

use sandbox::Sandbox;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How the local runtime is set up.
///
/// `router_port` is the port the router is bound to; it only goes into service URLs, so the
/// router must be bound before the runtime is built. URLs depend on nothing else than the
/// slug, the service, `base_domain` and `router_port`, so they survive restarts.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Holds `artifacts/` (read), and `stacks/`, `builds/`, `run/` and `logs/` (owned by this
    /// runtime).
    pub data_dir: PathBuf,
    /// Suffix of every service host, `localhost` by default.
    pub base_domain: String,
    /// The router's bound port, for service URLs.
    pub router_port: u16,
    /// How long a service gets to become healthy.
    pub deploy_timeout: Duration,
    /// How long a service's build (all its steps) may take.
    pub build_timeout: Duration,
    /// How long a process group gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// What confines each service (`Sandbox::off()` by default).
    pub sandbox: Arc<Sandbox>,
    /// The supervisor's first wait before restarting a crashed service (doubling to 60 s).
    pub restart_backoff: Duration,
    /// How often the supervisor checks the health path of a live service.
    pub health_interval: Duration,
}

impl LocalConfig {
    /// The spec's defaults: base domain `localhost`, router port 8080, a 60 s deploy timeout,
    /// a 10 min build timeout, a 5 s stop grace, a 1 s restart backoff and a 10 s health
    /// check; no sandbox (the server sets one up from its flags).
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            base_domain: "localhost".into(),
            router_port: 8080,
            deploy_timeout: Duration::from_secs(60),
            build_timeout: Duration::from_secs(600),
            stop_grace: Duration::from_secs(5),
            sandbox: Arc::new(Sandbox::off()),
            restart_backoff: Duration::from_secs(1),
            health_interval: Duration::from_secs(10),
        }
    }
}

/// Locks a `std` mutex, recovering it if poisoned: every critical section in this crate leaves
/// its data consistent, so a panic elsewhere must not take the runtime or the router down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The public host of a service: `<service>-<slug>.<base domain>`, lowercase, without a
/// trailing dot. This is the key the router looks requests up by.
pub fn service_host(service: &str, slug: &str, base_domain: &str) -> String {
    let domain = base_domain.trim_end_matches('.');
    format!("{service}-{slug}.{domain}").to_ascii_lowercase()
}

/// The URL of an exposed service: `http://<service host>:<router port>` (the port is left
/// out when it is 80, as browsers write it).
pub fn service_url(service: &str, slug: &str, base_domain: &str, router_port: u16) -> String {
    let host = service_host(service, slug, base_domain);
    if router_port == 80 {
        format!("http://{host}")
    } else {
        format!("http://{host}:{router_port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_urls_are_lowercase_and_stable() {
        assert_eq!(
            service_host("web", "stk-abc", "Example.COM."),
            "web-stk-abc.example.com"
        );
        assert_eq!(
            service_url("web", "stk-abc", "localhost", 8080),
            "http://web-stk-abc.localhost:8080"
        );
        assert_eq!(
            service_url("web", "stk-abc", "localhost", 80),
            "http://web-stk-abc.localhost"
        );
    }
}
