//! Start-up: pick the store from the database URL, bootstrap the first team, start the job
//! workers and the HTTP listener. `start` returns once the server is ready.

use crate::acme::Acme;
use crate::artifacts::Artifacts;
use crate::config::{RuntimeKind, SandboxArg, ServeArgs, StoreArgs, redact_url};
use crate::jobs::{StoreSupervision, Workers, deploy_plan, resolve_grants, with_vault_values};
use crate::noop::NoopRuntime;
use crate::ratelimit::RateLimiter;
use crate::resources::Provisioner;
use crate::router::router;
use crate::state::AppState;
use anyhow::{Context, bail};
use stackyard_core::artifact_url::ArtifactSigner;
use stackyard_core::runtime::Runtime;
use stackyard_core::store::{NewToken, Store, StoreOptions};
use stackyard_core::{ApiToken, Millis};
use stackyard_runtime_local::sandbox::{Sandbox, SandboxMode, SandboxSettings};
use stackyard_runtime_local::{LocalConfig, LocalRuntime, run_router, run_tls_router};
use stackyard_store_postgres::PgStore;
use stackyard_store_sqlite::SqliteStore;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// Something to do with whichever store the URL selects; lets `main` stay generic over the
/// backend without `dyn` (the choice is made once, here).
pub trait WithStore {
    type Output;
    fn run<S: Store>(self, store: S) -> impl Future<Output = anyhow::Result<Self::Output>> + Send;
}

/// Connects to the store `args` names (running its migrations) and hands it to `user`.
pub async fn with_store<U: WithStore>(
    args: &StoreArgs,
    opts: StoreOptions,
    user: U,
) -> anyhow::Result<U::Output> {
    let url = args.database_url();
    let shown = redact_url(&url);
    if is_postgres(&url) {
        let store = PgStore::connect(&url, opts)
            .await
            .with_context(|| format!("connecting to {shown}"))?;
        user.run(store).await
    } else if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
        let store = SqliteStore::connect(&url, opts)
            .await
            .with_context(|| format!("opening {shown}"))?;
        user.run(store).await
    } else {
        bail!("unsupported --database-url {shown}: use sqlite://PATH or postgres://…")
    }
}

/// Whether `url` names a PostgreSQL database (else SQLite, or nothing we support).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Store settings for one-off commands (`admin`): the defaults, few connections.
pub fn store_options_for(_args: &StoreArgs) -> StoreOptions {
    StoreOptions {
        max_connections: 2,
        ..StoreOptions::default()
    }
}

pub fn store_options(args: &ServeArgs) -> StoreOptions {
    StoreOptions {
        lock_timeout: args.lock_timeout,
        env_history: args.env_history,
        max_connections: args.db_connections,
    }
}

/// A running server; dropping it does not stop it, call `stop`.
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting requests and jobs, and waits for open requests (bounded).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Waits until the server stops (after `stop` elsewhere or a fatal error).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Serves until `signal` (SIGTERM, Ctrl-C), then stops within `limit`. An error means
    /// something was still stopping at the bound: the process should exit anyway, and the next
    /// start stops the services left behind (from their run records) and resumes the jobs.
    pub async fn serve_until(
        self,
        signal: impl Future<Output = ()>,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let stop = self.shutdown.clone();
        let mut stopped = std::pin::pin!(self.wait());
        tokio::select! {
            _ = &mut stopped => return Ok(()),
            _ = signal => {}
        }
        tracing::info!(timeout = %humantime::format_duration(limit), "shutting down");
        let _ = stop.send(true);
        match tokio::time::timeout(limit, stopped).await {
            Ok(()) => {
                tracing::info!("stopped");
                Ok(())
            }
            Err(_) => bail!(
                "still stopping after the shutdown timeout ({}); the next start stops what is left",
                humantime::format_duration(limit)
            ),
        }
    }
}

/// Starts a server with `args`; returns once it listens.
pub async fn start(args: ServeArgs) -> anyhow::Result<RunningServer> {
    let opts = store_options(&args);
    let store_args = args.store.clone();
    with_store(&store_args, opts, Start(args)).await
}

struct Start(ServeArgs);

impl WithStore for Start {
    type Output = RunningServer;

    async fn run<S: Store>(self, store: S) -> anyhow::Result<RunningServer> {
        start_with(store, self.0).await
    }
}

async fn start_with<S: Store>(store: S, args: ServeArgs) -> anyhow::Result<RunningServer> {
    // A bad `--tls-cert`/`--tls-key` stops the start before anything is written.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::load_server_config(cert, key)?),
        _ => None,
    };
    std::fs::create_dir_all(&args.store.data_dir).with_context(|| {
        format!(
            "creating the data directory {}",
            args.store.data_dir.display()
        )
    })?;
    // Before anything is written or served: a wrong master key must stop the start here.
    let master = crate::masterkey::unlock(&store, &args.keys, &args.store.data_dir).await?;
    let artifact_signer = Arc::new(crate::artifacts::url_signer(
        &master,
        &args.keys,
        &args.store.data_dir,
    ));
    crate::masterkey::install(&store, master, &args.keys, &args.store.data_dir).await?;
    bootstrap(&store, &args.store.data_dir).await?;
    if !store.is_shared() {
        let n = store
            .requeue_running_jobs()
            .await
            .context("requeueing jobs of the previous run")?;
        if n > 0 {
            tracing::info!(jobs = n, "requeued jobs left running by the previous run");
        }
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let (runtime, acme) =
        make_runtime(&args, &store, &artifact_signer, &shutdown_rx, &mut tasks).await?;
    if let Some(acme) = &acme {
        // Before the TLS listener's first handshake matters: what is stored is served.
        acme.reload(&store).await;
        tasks.push(tokio::spawn(crate::acme::run(
            store.clone(),
            acme.clone(),
            args.acme_every,
            shutdown_rx.clone(),
        )));
    }
    runtime.set_supervision(Arc::new(StoreSupervision {
        store: store.clone(),
    }));
    let rate_limiter = RateLimiter::new(
        args.anonymous_daily_limit,
        args.redis_url.as_deref(),
        &args.redis_prefix,
    )?;
    let provisioner = Arc::new(Provisioner::new(
        args.resource_postgres_url.as_ref().map(|u| u.0.as_str()),
        args.resource_redis_url.as_ref().map(|u| u.0.as_str()),
    )?);
    // Before the API answers: rows a crash left between steps are finished, and the Redis
    // users (lost if Redis restarted) re-applied. An unshared store has no other server whose
    // create may be in flight, so every `provisioning` row is a crash's.
    let cutoff = if store.is_shared() {
        crate::resources::stale_provisioning_cutoff()
    } else {
        Millis(i64::MAX)
    };
    // Notes the resource Redis's run id first, so the maintenance pass sees its next restart.
    provisioner.redis_restarted().await;
    crate::resources::reconcile(&store, &provisioner, cutoff, true).await;
    let artifacts = Arc::new(Artifacts::new(
        &args.store.data_dir,
        args.artifact_grace,
        // Pods fetch tarballs from any API replica: every replica must find every one.
        args.runtime == RuntimeKind::Kubernetes,
    ));
    let jobs_ready = Arc::new(Notify::new());
    let state = AppState::new(
        store.clone(),
        args.clone(),
        jobs_ready.clone(),
        runtime.clone(),
        rate_limiter,
        provisioner.clone(),
        artifacts.clone(),
        acme,
        Some(artifact_signer),
    );
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the API address {}", args.listen))?;
    let addr = listener.local_addr()?;

    let backend = store.backend();
    let workers = Workers {
        store: store.clone(),
        runtime: runtime.clone(),
        ready: jobs_ready.clone(),
        worker_id: format!("{}:{}", hostname(), std::process::id()),
        lease: args.job_lease,
        slots: args.job_workers,
        torn_down: state.teardowns_done.clone(),
        artifacts: artifacts.clone(),
        provisioner: provisioner.clone(),
    };
    // Jobs start only after the runtime recovered what should be running, so a deploy never
    // races the restart of the same stack. Stopping the server stops what the runtime runs
    // here (a restart brings it back), but only once recovery and the jobs are cancelled: a
    // deploy still running could otherwise start a process after the runtime stopped them all.
    let (store2, runtime2, provisioner2) = (store.clone(), runtime.clone(), provisioner.clone());
    let (rx, mut rx2) = (shutdown_rx.clone(), shutdown_rx.clone());
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            _ = recover(&store2, &provisioner2, runtime2.as_ref()) => workers.run(rx).await,
            _ = crate::stopped(&mut rx2) => {}
        }
        runtime2.shutdown().await;
    }));
    tasks.push(tokio::spawn(crate::maintenance::sweep_artifacts(
        store.clone(),
        artifacts,
        crate::maintenance::sweep_every(args.artifact_grace),
        shutdown_rx.clone(),
    )));
    crate::domains::sync_routes(&store, runtime.as_ref()).await;
    tasks.push(tokio::spawn(crate::maintenance::run(
        store,
        provisioner,
        args.anonymous_ttl,
        jobs_ready,
        (state.dns.clone(), runtime.clone()),
        shutdown_rx.clone(),
    )));
    let scheme = if tls.is_some() { "https" } else { "http" };
    tasks.push(tokio::spawn(crate::http::serve(
        listener,
        tls,
        router(state),
        shutdown_rx,
        args.shutdown_timeout.min(Duration::from_secs(10)),
    )));
    tracing::info!(store = backend, "api listening on {scheme}://{addr}");
    Ok(RunningServer {
        addr,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// The runtime `--runtime` names, with whatever it serves besides: the local runtime's router
/// is bound first (service URLs carry its port) and served until shutdown, and with
/// `--router-tls-listen` its HTTPS listener and the ACME client whose certificates it serves.
async fn make_runtime<S: Store>(
    args: &ServeArgs,
    store: &S,
    signer: &Arc<ArtifactSigner>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<(Arc<dyn Runtime>, Option<Arc<Acme>>)> {
    Ok(match args.runtime {
        RuntimeKind::Noop => {
            if args.router_tls_listen.is_some() {
                bail!("--router-tls-listen needs the local runtime's router (--runtime local)");
            }
            let noop = NoopRuntime {
                step: args.noop_step,
            };
            (Arc::new(noop), None)
        }
        RuntimeKind::Kubernetes => {
            if args.router_tls_listen.is_some() {
                bail!(
                    "--router-tls-listen needs the local runtime's router; on Kubernetes the ingress controller serves TLS"
                );
            }
            let runtime = crate::kubernetes::runtime(args, store, signer.clone()).await?;
            (Arc::new(runtime), None)
        }
        RuntimeKind::Local => {
            let listener = TcpListener::bind(args.router_listen)
                .await
                .with_context(|| format!("binding the router address {}", args.router_listen))?;
            let addr = listener.local_addr()?;
            let mut cfg = LocalConfig::new(&args.store.data_dir);
            cfg.base_domain = args.base_domain.clone();
            cfg.router_port = addr.port();
            cfg.deploy_timeout = args.deploy_timeout;
            cfg.build_timeout = args.build_timeout;
            cfg.sandbox = Arc::new(sandbox(args)?);
            cfg.restart_backoff = args.restart_backoff;
            cfg.health_interval = args.health_interval;
            let runtime = LocalRuntime::new(cfg);
            tasks.push(tokio::spawn(run_router(
                listener,
                runtime.routes(),
                shutdown.clone(),
            )));
            tracing::info!("router listening on http://{addr}");
            let acme = match args.router_tls_listen {
                Some(tls_addr) => {
                    let acme = Arc::new(Acme::new(
                        args.acme_directory.clone(),
                        args.acme_email.clone(),
                        args.acme_ca_file.clone(),
                        runtime.routes(),
                    ));
                    let listener = TcpListener::bind(tls_addr)
                        .await
                        .with_context(|| format!("binding the router's TLS address {tls_addr}"))?;
                    let tls_addr = listener.local_addr()?;
                    let tls = TlsAcceptor::from(acme.certs.server_config()?);
                    tasks.push(tokio::spawn(run_tls_router(
                        listener,
                        runtime.routes(),
                        tls,
                        shutdown.clone(),
                    )));
                    tracing::info!(directory = %args.acme_directory, "router listening on https://{tls_addr} for verified custom domains");
                    Some(acme)
                }
                None => None,
            };
            (Arc::new(runtime), acme)
        }
    })
}

/// The local runtime's sandbox from the flags, with one log line naming its active layers.
fn sandbox(args: &ServeArgs) -> anyhow::Result<Sandbox> {
    let mode = match args.sandbox {
        SandboxArg::Auto => SandboxMode::Auto,
        SandboxArg::Required => SandboxMode::Required,
        SandboxArg::Off => SandboxMode::Off,
    };
    let settings = SandboxSettings {
        mode,
        launcher: std::env::current_exe().context("finding the sandbox launcher (this binary)")?,
        egress_ports: args.sandbox_egress_ports.clone(),
        uid_base: args.sandbox_uid_base,
        memory_bytes: args.service_memory,
        pids: args.service_pids,
        ignore_landlock: args.sandbox_ignore_landlock,
    };
    let sandbox = Sandbox::detect(settings, &args.store.data_dir)?;
    sandbox.sweep();
    if mode == SandboxMode::Off {
        tracing::warn!("--sandbox off: services run unconfined, as this server's user");
    } else {
        tracing::info!(mode = %format!("{:?}", args.sandbox).to_lowercase(), layers = %sandbox.layers(), "service sandbox");
    }
    Ok(sandbox)
}

/// Hands the runtime every stack that should be running (after a restart: the previous
/// instance's processes are gone or orphaned). Failures are logged; the server starts anyway.
async fn recover<S: Store>(store: &S, provisioner: &Provisioner, runtime: &dyn Runtime) {
    let running = match store.running_stacks().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the stacks to restart");
            return;
        }
    };
    let mut plans = Vec::with_capacity(running.len());
    for (stack, release, env) in running {
        let slug = stack.slug.clone();
        let (release, env) = match with_vault_values(store, &stack, release, env).await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(e)) => {
                tracing::warn!(stack = %slug, error = %e, "not restarting a stack: its vault values are gone");
                continue;
            }
            Err(e) => {
                tracing::warn!(stack = %slug, error = %e, "not restarting a stack: its vault values could not be read");
                continue;
            }
        };
        // A stack whose granted resources cannot be read now is left to its stored status
        // rather than started without them.
        match resolve_grants(store, provisioner, &stack, &release).await {
            Ok(granted) => plans.push(deploy_plan(stack, release, env, granted)),
            Err(e) => {
                tracing::warn!(stack = %slug, error = %e, "not restarting a stack: its granted resources could not be read")
            }
        }
    }
    let n = plans.len();
    match runtime.recover(plans).await {
        Ok(()) if n > 0 => {
            tracing::info!(stacks = n, "restarted the stacks that should be running")
        }
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "runtime recovery failed"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "stackyard".into())
}

/// First start on an empty database: team `default` and an admin token in
/// `<data dir>/admin-token` (mode 0600). The token is written to a temporary file before the
/// database commits it, so a committed token always reached the disk; the log says where it
/// is, never what it is.
async fn bootstrap<S: Store>(store: &S, data_dir: &Path) -> anyhow::Result<()> {
    let token = ApiToken::generate();
    let final_path = data_dir.join("admin-token");
    let tmp = data_dir.join(".admin-token.tmp");
    write_private(&tmp, token.expose()).context("writing the admin token")?;
    let created = store
        .bootstrap_default_team(
            NewToken {
                name: "admin".into(),
                digest: token.digest(),
            },
            crate::now(),
        )
        .await;
    match created {
        Ok(true) => {
            std::fs::rename(&tmp, &final_path).context("writing the admin token")?;
            tracing::info!(path = %final_path.display(), "created team `default`; its admin token is in this file");
            Ok(())
        }
        Ok(false) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e).context("creating the default team")
        }
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}
