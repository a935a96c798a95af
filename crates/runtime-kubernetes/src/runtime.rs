//! [`KubernetesRuntime`]: the `Runtime` that runs a stack as a namespace of a cluster
//! (kubernetes.md). It applies what [`render`] makes, decides each rollout with [`rollout`],
//! and reads logs through `pods/log`.
//!
//! Every call to the API server goes through `Kube::call`: 429 and 5xx answers and broken
//! connections are retried with exponential backoff (kube's client already waits out 429,
//! 503 and 504 answers itself, honouring `Retry-After`; this adds the other 5xx and the
//! connection), and what still fails is a `RuntimeError::Transient`, which the job queue
//! retries later. So a flaky API server delays a deploy or a teardown but never leaves a stack
//! stuck.
//!
//! The runtime polls rather than watches: one GET of a Deployment and one LIST of its pods per
//! service and poll interval is cheap, and a poll survives a dropped connection where a watch
//! would have to be re-established.

use crate::render::{
    self, ARTIFACTS_SECRET, EXPOSED_LABEL, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL,
    NAMESPACE_PREFIX, RELEASE_ANNOTATION, RenderConfig, SERVICE_LABEL, STACK_LABEL, TEAM_LABEL,
    artifact_secret, env_secret_name, fetched_artifact, labels_selector, namespace_name, removed,
    service_host,
};
use crate::rollout::{Rollout, rollout};
use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::{ServiceStatus, TeamId};
use stackyard_core::runtime::{
    BoxFuture, DeployPlan, LogLine, LogStream, Logs, Runtime, RuntimeError, ServiceFailure,
    StatusSink, UnreportedStatus, failure_report,
};
use stackyard_core::time::Millis;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Signs the URL an init container fetches an artifact from (digest → URL).
pub type ArtifactUrls = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Whether the store still has the stack of a team (`None`: anonymous), as the namespace's
/// labels name it: recovery deletes a namespace only when it has not.
pub type StackExists = Arc<
    dyn Fn(StackSlug, Option<TeamId>) -> BoxFuture<'static, Result<bool, String>> + Send + Sync,
>;

/// Log lines of a failed service quoted in its failure reason.
const FAILURE_LOG_LINES: i64 = 20;
/// The longest namespace name (an RFC 1123 label), and so the longest `sy-<slug>`.
const MAX_NAME: usize = 63;
/// Lines buffered for a log follower before new ones are dropped for it.
const FOLLOW_BUFFER: usize = 1024;

/// How API calls are retried.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            attempts: 6,
            first: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

/// Everything the runtime is configured with (`--k8s-*`).
pub struct KubeSettings {
    pub render: RenderConfig,
    pub artifact_urls: ArtifactUrls,
    /// How often every namespace's `sy-artifacts` is signed anew: well inside the URLs' TTL,
    /// so a pod started at any time finds a URL that has not expired.
    pub artifact_refresh: Duration,
    pub stack_exists: StackExists,
    /// `http` or `https`: the scheme of exposed services' URLs (the Ingress's).
    pub url_scheme: String,
    /// Time a rollout gets before it fails (also every Deployment's progress deadline).
    pub deploy_timeout: Duration,
    /// Time a namespace gets to go, finalizers included, before teardown is retried later.
    pub teardown_timeout: Duration,
    /// How often a rollout, a deletion and the pods a log follower reads are looked at.
    pub poll: Duration,
    pub backoff: Backoff,
    /// Lines a log follower starts from on a pod it has not read yet (`tailLines`).
    pub log_tail: i64,
}

/// Runs stacks on a Kubernetes cluster.
#[derive(Clone)]
pub struct KubernetesRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    kube: Kube,
    cfg: KubeSettings,
    /// `(hostname, service URL)` of every verified custom domain.
    domains: Mutex<Vec<(String, String)>>,
    refreshing: std::sync::atomic::AtomicBool,
}

/// A kube client whose calls retry.
#[derive(Clone)]
struct Kube {
    client: Client,
    backoff: Backoff,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KubernetesRuntime {
    pub fn new(client: Client, cfg: KubeSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                kube: Kube {
                    client,
                    backoff: cfg.backoff.clone(),
                },
                cfg,
                domains: Mutex::new(Vec::new()),
                refreshing: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

impl Runtime for KubernetesRuntime {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    /// Images have a command of their own.
    fn needs_start_command(&self) -> bool {
        false
    }

    fn set_domain_routes(&self, routes: Vec<(String, String)>) {
        let changed = {
            let mut domains = lock(&self.inner.domains);
            let before = std::mem::replace(&mut *domains, routes);
            before != *domains
        };
        if !changed {
            return;
        }
        // Every Ingress of the cluster gets its rules anew, whichever replica deployed its
        // stack: the domain was verified here, the stack may have been deployed elsewhere.
        let inner = self.inner.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = inner.apply_domains().await {
                    tracing::warn!(error = %e, "could not update the Ingresses for the custom domains");
                }
            });
        }
    }

    fn deploy<'a>(
        &'a self,
        plan: &'a DeployPlan,
        sink: &'a dyn StatusSink,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.inner.deploy(plan, sink))
    }

    fn teardown<'a>(&'a self, slug: &'a StackSlug) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.inner.teardown(slug))
    }

    fn recover<'a>(&'a self, running: Vec<DeployPlan>) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.inner.clone().recover(running))
    }

    fn logs<'a>(
        &'a self,
        slug: &'a StackSlug,
        service: &'a ServiceName,
        backlog: usize,
        follow: bool,
    ) -> BoxFuture<'a, Result<Option<Logs>, RuntimeError>> {
        Box::pin(self.inner.clone().logs(slug, service, backlog, follow))
    }

    fn restart<'a>(
        &'a self,
        slug: &'a StackSlug,
        release: i64,
        service: Option<&'a ServiceName>,
        sink: &'a dyn StatusSink,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.inner.restart(slug, release, service, sink))
    }
}

/// A Deployment applied: the generation its rollout must reach.
struct Applied {
    service: ServiceName,
    generation: i64,
    exposed: bool,
}

/// What ran before an apply, kept to put it back if the new release fails.
struct Previous {
    deployments: Vec<Deployment>,
    secrets: BTreeMap<String, Secret>,
}

impl Previous {
    fn services(&self) -> Vec<String> {
        self.deployments
            .iter()
            .filter_map(|d| d.metadata.labels.as_ref()?.get(SERVICE_LABEL).cloned())
            .collect()
    }

    fn release(&self) -> Option<String> {
        self.deployments.iter().find_map(|d| {
            d.spec
                .template
                .metadata
                .as_ref()?
                .annotations
                .as_ref()?
                .get(RELEASE_ANNOTATION)
                .cloned()
        })
    }
}

impl Inner {
    fn url(&self, slug: &StackSlug, svc: &ServiceName) -> String {
        format!(
            "{}://{}",
            self.cfg.url_scheme,
            service_host(slug, svc, &self.cfg.render.base_domain)
        )
    }

    /// The custom domains of `plan`'s services, as `render` takes them.
    fn domains_of(&self, plan: &DeployPlan) -> Vec<(String, ServiceName)> {
        let domains = lock(&self.domains);
        plan.services
            .iter()
            .flat_map(|svc| {
                let url = self.url(&plan.slug, &svc.name);
                domains
                    .iter()
                    .filter(move |(_, target)| *target == url)
                    .map(|(host, _)| (host.clone(), svc.name.clone()))
            })
            .collect()
    }

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.kube.client.clone(), ns)
    }

    fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.kube.client.clone())
    }

    async fn deploy(&self, plan: &DeployPlan, sink: &dyn StatusSink) -> Result<(), RuntimeError> {
        let ns = namespace_name(&plan.slug);
        // Generated stack ids fit with room to spare; a longer one cannot name a namespace
        // (a DNS label) nor a label value.
        if ns.len() > MAX_NAME {
            return Err(RuntimeError::Failed(format!(
                "the stack id is too long for a Kubernetes namespace ({} characters, at most {})",
                ns.len(),
                MAX_NAME
            )));
        }
        let rendered = render::render(plan, &self.domains_of(plan), &self.cfg.render);
        for svc in &plan.services {
            sink.service_status(&svc.name, ServiceStatus::Deploying, None, None)
                .await;
        }
        if let Some(existing) = self.kube.get_opt(&self.namespaces(), &ns).await?
            && existing.metadata.deletion_timestamp.is_some()
        {
            return Err(RuntimeError::Transient(format!(
                "namespace {ns} is still being deleted"
            )));
        }
        let kube = &self.kube;
        kube.apply(&self.namespaces(), &rendered.namespace).await?;
        kube.apply(&self.api(&ns), &rendered.default_policy).await?;
        kube.apply(&self.api(&ns), &rendered.ingress_policy).await?;
        kube.apply(&self.api(&ns), &rendered.quota).await?;
        kube.apply(&self.api(&ns), &rendered.limits).await?;

        let previous = self.previous(&plan.slug).await?;
        // The running release's artifacts stay fetchable until this one is in: its pods may
        // be rescheduled meanwhile, and it keeps serving if this one fails.
        let mut digests: BTreeSet<String> = previous
            .deployments
            .iter()
            .filter_map(fetched_artifact)
            .collect();
        digests.extend(fetched(plan));
        self.apply_artifact_urls(&plan.slug, &digests).await?;

        let mut applied = Vec::with_capacity(rendered.services.len());
        for objects in &rendered.services {
            kube.apply(&self.api(&ns), &objects.secret).await?;
            kube.apply(&self.api(&ns), &objects.service).await?;
            let deployment = kube.apply(&self.api(&ns), &objects.deployment).await?;
            let generation = deployment.metadata.generation.unwrap_or(1);
            match &objects.ingress {
                Some(ingress) => {
                    kube.apply(&self.api(&ns), ingress).await?;
                }
                None => {
                    kube.delete_opt(&self.api::<Ingress>(&ns), objects.name.as_str())
                        .await?;
                }
            }
            applied.push(Applied {
                service: objects.name.clone(),
                generation,
                exposed: objects.ingress.is_some(),
            });
        }

        let failures = self
            .wait_for_rollouts(&plan.slug, plan.release, &applied, sink)
            .await?;
        if failures.is_empty() {
            for gone in removed(&previous.services(), plan) {
                self.delete_service(&ns, &gone).await?;
            }
            self.apply_artifact_urls(&plan.slug, &fetched(plan).collect())
                .await?;
            tracing::info!(stack = %plan.slug, release = plan.release, "release rolled out");
            return Ok(());
        }
        self.fail(plan, &previous, failures, sink).await
    }

    /// The stack's Deployments and env Secrets as they are before an apply.
    async fn previous(&self, slug: &StackSlug) -> Result<Previous, RuntimeError> {
        let ns = namespace_name(slug);
        let lp = ListParams::default().labels(&labels_selector(slug));
        let deployments = self.kube.list(&self.api::<Deployment>(&ns), &lp).await?;
        let mut secrets = BTreeMap::new();
        for d in &deployments {
            let Some(name) = d.metadata.name.as_deref() else {
                continue;
            };
            let Ok(svc) = ServiceName::parse(name) else {
                continue;
            };
            let secret_name = env_secret_name(&svc);
            if let Some(s) = self
                .kube
                .get_opt(&self.api::<Secret>(&ns), &secret_name)
                .await?
            {
                secrets.insert(name.to_owned(), s);
            }
        }
        Ok(Previous {
            deployments,
            secrets,
        })
    }

    /// `sy-artifacts` with a freshly signed URL for each of `digests` (and no other key).
    async fn apply_artifact_urls(
        &self,
        slug: &StackSlug,
        digests: &BTreeSet<String>,
    ) -> Result<(), RuntimeError> {
        let urls = digests
            .iter()
            .map(|d| (d.clone(), (self.cfg.artifact_urls)(d)))
            .collect();
        let secret = artifact_secret(slug, &urls);
        self.kube
            .apply(&self.api(&namespace_name(slug)), &secret)
            .await?;
        Ok(())
    }

    /// Re-applies every Ingress Stackyard made in the cluster with the custom domains of its
    /// service as they are now.
    async fn apply_domains(&self) -> Result<(), RuntimeError> {
        let all: Api<Ingress> = Api::all(self.kube.client.clone());
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        for existing in self.kube.list(&all, &lp).await? {
            let labels = existing.metadata.labels.clone().unwrap_or_default();
            let (Some(slug), Some(svc)) = (
                labels
                    .get(STACK_LABEL)
                    .and_then(|s| StackSlug::parse(s).ok()),
                labels
                    .get(SERVICE_LABEL)
                    .and_then(|s| ServiceName::parse(s).ok()),
            ) else {
                continue;
            };
            let port = existing
                .spec
                .as_ref()
                .and_then(|s| {
                    s.rules
                        .as_ref()?
                        .first()?
                        .http
                        .as_ref()?
                        .paths
                        .first()
                        .cloned()
                })
                .and_then(|p| p.backend.service?.port?.number)
                .and_then(|n| u16::try_from(n).ok());
            let Some(port) = port else { continue };
            let url = self.url(&slug, &svc);
            let domains: Vec<String> = lock(&self.domains)
                .iter()
                .filter(|(_, target)| *target == url)
                .map(|(host, _)| host.clone())
                .collect();
            let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
            let ingress = render::ingress(&slug, &svc, port, &domains, &self.cfg.render);
            self.kube
                .apply(&self.api(&namespace_name(&slug)), &ingress)
                .await?;
        }
        Ok(())
    }

    /// Waits until every applied service is ready or one has failed (the others are then not
    /// waited for), reporting healthy services as they come. The failures; none when all are
    /// ready.
    async fn wait_for_rollouts(
        &self,
        slug: &StackSlug,
        release: i64,
        applied: &[Applied],
        sink: &dyn StatusSink,
    ) -> Result<Vec<ServiceFailure>, RuntimeError> {
        let ns = namespace_name(slug);
        // The progress deadline is the cluster's to report; this one is ours, a little later,
        // for a controller that reports nothing.
        let deadline = tokio::time::Instant::now() + self.cfg.deploy_timeout + self.cfg.poll * 4;
        let mut pending: Vec<&Applied> = applied.iter().collect();
        let mut failures = Vec::new();
        loop {
            let mut still = Vec::new();
            for entry in pending {
                let svc = &entry.service;
                match self.rollout_of(&ns, slug, svc, entry.generation).await? {
                    Rollout::Ready => {
                        let url = entry.exposed.then(|| self.url(slug, svc));
                        sink.service_status(svc, ServiceStatus::Healthy, url.as_deref(), None)
                            .await;
                    }
                    Rollout::Failed { reason } => failures.push(ServiceFailure {
                        service: svc.clone(),
                        message: self.with_log_lines(&ns, slug, svc, release, reason).await,
                    }),
                    Rollout::Progressing => still.push(entry),
                }
            }
            pending = still;
            if pending.is_empty() || !failures.is_empty() {
                return Ok(failures);
            }
            if tokio::time::Instant::now() >= deadline {
                for entry in pending {
                    let svc = &entry.service;
                    failures.push(ServiceFailure {
                        service: svc.clone(),
                        message: self
                            .with_log_lines(
                                &ns,
                                slug,
                                svc,
                                release,
                                "did not become ready within the deploy timeout".to_owned(),
                            )
                            .await,
                    });
                }
                return Ok(failures);
            }
            tokio::time::sleep(self.cfg.poll).await;
        }
    }

    async fn rollout_of(
        &self,
        ns: &str,
        slug: &StackSlug,
        svc: &ServiceName,
        generation: i64,
    ) -> Result<Rollout, RuntimeError> {
        let Some(deployment) = self
            .kube
            .get_opt(&self.api::<Deployment>(ns), svc.as_str())
            .await?
        else {
            return Ok(Rollout::Failed {
                reason: "its Deployment was deleted during the rollout".to_owned(),
            });
        };
        let pods = self.pods(ns, slug, svc).await?;
        Ok(rollout(&deployment, generation, &pods))
    }

    async fn pods(
        &self,
        ns: &str,
        slug: &StackSlug,
        svc: &ServiceName,
    ) -> Result<Vec<Pod>, RuntimeError> {
        let lp =
            ListParams::default().labels(&format!("{STACK_LABEL}={slug},{SERVICE_LABEL}={svc}"));
        self.kube.list(&self.api::<Pod>(ns), &lp).await
    }

    /// `reason` followed by the last log lines of the service's newest pod, when it has any.
    async fn with_log_lines(
        &self,
        ns: &str,
        slug: &StackSlug,
        svc: &ServiceName,
        release: i64,
        reason: String,
    ) -> String {
        let Ok(pods) = self.pods(ns, slug, svc).await else {
            return reason;
        };
        // A pod of the failed release, not one of the release still serving.
        let release = release.to_string();
        let Some(name) = pods
            .iter()
            .filter(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(RELEASE_ANNOTATION))
                    .is_some_and(|r| *r == release)
            })
            .filter_map(|p| p.metadata.name.clone())
            .next_back()
        else {
            return reason;
        };
        let params = LogParams {
            container: Some(svc.to_string()),
            tail_lines: Some(FAILURE_LOG_LINES),
            ..LogParams::default()
        };
        // Logs are a courtesy here: the reason stands without them.
        match self.api::<Pod>(ns).logs(&name, &params).await {
            Ok(text) if !text.trim().is_empty() => {
                format!("{reason}\n\nlast log lines:\n{}", text.trim_end())
            }
            _ => reason,
        }
    }

    /// Reports the failure, puts back what ran before for the services it had, and removes
    /// the services this release added. The previous release keeps serving.
    async fn fail(
        &self,
        plan: &DeployPlan,
        previous: &Previous,
        failures: Vec<ServiceFailure>,
        sink: &dyn StatusSink,
    ) -> Result<(), RuntimeError> {
        let ns = namespace_name(&plan.slug);
        let had = previous.services();
        for svc in &plan.services {
            match previous
                .deployments
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(svc.name.as_str()))
            {
                Some(old) => {
                    self.kube.apply(&self.api(&ns), &restorable(old)).await?;
                    if let Some(secret) = previous.secrets.get(svc.name.as_str()) {
                        self.kube
                            .apply(&self.api(&ns), &restorable_secret(secret))
                            .await?;
                    }
                }
                None => self.delete_service(&ns, svc.name.as_str()).await?,
            }
        }
        let serving = previous.release().and_then(|r| r.parse().ok());
        let (messages, summary) = failure_report(plan, &failures, serving);
        for (name, message) in &messages {
            // A service the previous release still serves keeps its URL.
            let exposed = plan.services.iter().any(|s| &s.name == name && s.expose);
            let url = (exposed && had.iter().any(|h| h == name.as_str()))
                .then(|| self.url(&plan.slug, name));
            sink.service_status(name, ServiceStatus::Failed, url.as_deref(), Some(message))
                .await;
        }
        let culprits: Vec<&str> = failures.iter().map(|f| f.service.as_str()).collect();
        let culprits = culprits.join(",");
        tracing::info!(stack = %plan.slug, release = plan.release, services = %culprits, "release failed");
        Err(RuntimeError::Failed(summary))
    }

    /// Deletes a service's Deployment (its pods with it), Service, Ingress and env Secret.
    async fn delete_service(&self, ns: &str, svc: &str) -> Result<(), RuntimeError> {
        self.kube
            .delete_opt(&self.api::<Deployment>(ns), svc)
            .await?;
        self.kube.delete_opt(&self.api::<Service>(ns), svc).await?;
        self.kube.delete_opt(&self.api::<Ingress>(ns), svc).await?;
        if let Ok(name) = ServiceName::parse(svc) {
            self.kube
                .delete_opt(&self.api::<Secret>(ns), &env_secret_name(&name))
                .await?;
        }
        Ok(())
    }

    /// Deletes the stack's namespace (foreground) and waits until it is gone. Only a
    /// namespace named `sy-<slug>` that carries our managed-by label is ever deleted.
    async fn teardown(&self, slug: &StackSlug) -> Result<(), RuntimeError> {
        let ns = namespace_name(slug);
        debug_assert!(ns.starts_with(NAMESPACE_PREFIX));
        let Some(existing) = self.kube.get_opt(&self.namespaces(), &ns).await? else {
            return Ok(());
        };
        let ours = existing
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_some_and(|v| v == MANAGED_BY);
        if !ours {
            // Someone else's namespace under our name: never ours to delete.
            tracing::warn!(namespace = %ns, "not deleting a namespace Stackyard did not create");
            return Ok(());
        }
        if existing.metadata.deletion_timestamp.is_none() {
            self.kube.delete_opt(&self.namespaces(), &ns).await?;
        }
        let deadline = tokio::time::Instant::now() + self.cfg.teardown_timeout;
        loop {
            if self.kube.get_opt(&self.namespaces(), &ns).await?.is_none() {
                tracing::info!(namespace = %ns, "namespace deleted");
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Transient(format!(
                    "namespace {ns} is still terminating (finalizers); teardown will be retried"
                )));
            }
            tokio::time::sleep(self.cfg.poll).await;
        }
    }

    /// Reconciles the cluster with the store after a start: a namespace whose stack is gone
    /// is deleted, a running stack without a namespace is deployed again (in the
    /// background: recovery must not hold the server's start). Starts the re-signing of
    /// artifact URLs.
    async fn recover(self: Arc<Self>, running: Vec<DeployPlan>) -> Result<(), RuntimeError> {
        self.clone().start_refreshing();
        let mut present = BTreeSet::new();
        for (ns, slug) in self.stack_namespaces().await? {
            present.insert(slug.clone());
            if running.iter().any(|p| p.slug == slug) {
                continue;
            }
            let team = ns
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(TEAM_LABEL))
                .and_then(|t| t.parse().ok())
                .map(TeamId);
            // Not running is not gone: a stack mid-first-deploy on another replica has a
            // namespace and no live release yet.
            match (self.cfg.stack_exists)(slug.clone(), team).await {
                Ok(false) => {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        match inner.teardown(&slug).await {
                            Ok(()) => {
                                tracing::info!(stack = %slug, "deleted the namespace of a stack that no longer exists")
                            }
                            Err(e) => {
                                tracing::warn!(stack = %slug, error = %e, "could not delete the namespace of a stack that no longer exists")
                            }
                        }
                    });
                }
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(stack = %slug, error = %e, "could not tell whether a namespace's stack exists; left alone")
                }
            }
        }
        for plan in running {
            if present.contains(&plan.slug) {
                continue;
            }
            let inner = self.clone();
            tokio::spawn(async move {
                match inner.deploy(&plan, &UnreportedStatus).await {
                    Ok(()) => {
                        tracing::info!(stack = %plan.slug, "redeployed a running stack whose namespace was missing")
                    }
                    Err(e) => {
                        tracing::warn!(stack = %plan.slug, error = %e, "could not redeploy a running stack whose namespace was missing")
                    }
                }
            });
        }
        Ok(())
    }

    /// The namespaces Stackyard made for stacks, each with its stack: those carrying our
    /// managed-by label, a stack label, and the name that stack's namespace has.
    async fn stack_namespaces(&self) -> Result<Vec<(Namespace, StackSlug)>, RuntimeError> {
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let namespaces = self.kube.list(&self.namespaces(), &lp).await?;
        Ok(namespaces
            .into_iter()
            .filter_map(|ns| {
                let slug = ns
                    .metadata
                    .labels
                    .as_ref()?
                    .get(STACK_LABEL)
                    .and_then(|s| StackSlug::parse(s).ok())?;
                let named = ns.metadata.name.as_deref() == Some(namespace_name(&slug).as_str());
                named.then_some((ns, slug))
            })
            .collect())
    }

    /// Re-signs every stack's artifact URLs every `artifact_refresh`, for as long as the
    /// runtime lives. Several replicas doing it at once is harmless: each writes valid URLs.
    fn start_refreshing(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let every = inner.cfg.artifact_refresh;
                if let Err(e) = inner.refresh_artifact_urls().await {
                    tracing::warn!(error = %e, "could not re-sign the artifact URLs");
                }
                drop(inner);
                tokio::time::sleep(every).await;
            }
        });
    }

    async fn refresh_artifact_urls(&self) -> Result<(), RuntimeError> {
        for (ns, slug) in self.stack_namespaces().await? {
            if ns.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(secret) = self
                .kube
                .get_opt(
                    &self.api::<Secret>(&namespace_name(&slug)),
                    ARTIFACTS_SECRET,
                )
                .await?
            else {
                continue;
            };
            // A merge patch of the keys read, not an apply of them: a deploy that added a
            // key since the read keeps it (an apply would remove what it does not name).
            let data: serde_json::Map<String, serde_json::Value> = secret
                .data
                .iter()
                .flatten()
                .map(|(digest, _)| {
                    let url = (self.cfg.artifact_urls)(digest);
                    (digest.clone(), serde_json::Value::String(base64(&url)))
                })
                .collect();
            let api = self.api::<Secret>(&namespace_name(&slug));
            let patch = Patch::Merge(serde_json::json!({ "data": data }));
            let params = PatchParams::default();
            self.kube
                .call("re-signing the artifact URLs", || {
                    api.patch(ARTIFACTS_SECRET, &params, &patch)
                })
                .await?;
        }
        Ok(())
    }

    /// Rolls the pods of `service` (or every service) of `release` one service at a time,
    /// each waited for: a new pod-template annotation, as `kubectl rollout restart` does.
    async fn restart(
        &self,
        slug: &StackSlug,
        release: i64,
        service: Option<&ServiceName>,
        sink: &dyn StatusSink,
    ) -> Result<(), RuntimeError> {
        // What runs is read from the cluster, not remembered: the restart may run on
        // another replica than the deploy did.
        let ns = namespace_name(slug);
        let lp = ListParams::default().labels(&labels_selector(slug));
        let mut targets = Vec::new();
        for d in self.kube.list(&self.api::<Deployment>(&ns), &lp).await? {
            let Some(name) = d
                .metadata
                .name
                .as_deref()
                .and_then(|n| ServiceName::parse(n).ok())
            else {
                continue;
            };
            if service.is_some_and(|want| *want != name) {
                continue;
            }
            let running = Previous {
                deployments: vec![d.clone()],
                secrets: BTreeMap::new(),
            }
            .release();
            if running.as_deref() != Some(release.to_string().as_str()) {
                return Err(RuntimeError::Failed(format!(
                    "release v{release} is not the one running `{name}`"
                )));
            }
            let exposed = d
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref()?.get(EXPOSED_LABEL))
                .is_some_and(|v| v == "true");
            targets.push((name, exposed));
        }
        if targets.is_empty() {
            return Err(RuntimeError::Failed(
                "nothing of that release runs on the cluster".to_owned(),
            ));
        }
        let stamp = Millis(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default(),
        )
        .to_rfc3339();
        for (svc, exposed) in targets {
            let svc = &svc;
            sink.service_status(svc, ServiceStatus::Restarting, None, None)
                .await;
            let patch = serde_json::json!({
                "spec": {"template": {"metadata": {"annotations": {
                    "kubectl.kubernetes.io/restartedAt": stamp,
                }}}}
            });
            let api = self.api::<Deployment>(&ns);
            let (params, patch) = (PatchParams::default(), Patch::Merge(patch));
            let patched = self
                .kube
                .call(&format!("restarting Deployment {svc}"), || {
                    api.patch(svc.as_str(), &params, &patch)
                })
                .await?;
            let generation = patched.metadata.generation.unwrap_or(1);
            let applied = Applied {
                service: svc.clone(),
                generation,
                exposed,
            };
            let failures = self
                .wait_for_rollouts(slug, release, &[applied], sink)
                .await?;
            if let Some(f) = failures.into_iter().next() {
                sink.service_status(svc, ServiceStatus::Failed, None, Some(&f.message))
                    .await;
                return Err(RuntimeError::Failed(format!(
                    "`{}` did not restart: {}",
                    f.service, f.message
                )));
            }
        }
        Ok(())
    }

    /// The last `backlog` lines of the service's pods, merged by time, and with `follow` the
    /// lines after them from every pod, re-attaching as pods are replaced.
    async fn logs(
        self: Arc<Self>,
        slug: &StackSlug,
        service: &ServiceName,
        backlog: usize,
        follow: bool,
    ) -> Result<Option<Logs>, RuntimeError> {
        let ns = namespace_name(slug);
        if self.kube.get_opt(&self.namespaces(), &ns).await?.is_none() {
            return Ok(None);
        }
        let pods = self.pods(&ns, slug, service).await?;
        let mut lines: Vec<(SystemTime, LogLine)> = Vec::new();
        let mut seen: HashMap<String, Option<SystemTime>> = HashMap::new();
        for pod in &pods {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            let params = LogParams {
                container: Some(service.to_string()),
                tail_lines: Some(backlog.max(1) as i64),
                timestamps: true,
                ..LogParams::default()
            };
            // A pod whose container has not started has no logs yet: nothing to show.
            let text = match self.api::<Pod>(&ns).logs(&name, &params).await {
                Ok(text) => text,
                Err(kube::Error::Api(s)) if s.code == 400 || s.code == 404 => String::new(),
                Err(e) => return Err(transient("reading logs", &e)),
            };
            let mut last = None;
            for raw in text.lines() {
                if let Some((at, line)) = parse_line(raw) {
                    last = Some(at);
                    lines.push((at, line));
                }
            }
            seen.insert(name, last);
        }
        lines.sort_by_key(|(at, _)| *at);
        let skip = lines.len().saturating_sub(backlog);
        let backlog_lines = lines.into_iter().skip(skip).map(|(_, l)| l).collect();
        let follow = follow.then(|| {
            let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
            tokio::spawn(
                self.clone()
                    .follow(ns, slug.clone(), service.clone(), seen, tx),
            );
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|line| (line, rx))
            });
            Box::pin(stream) as stackyard_core::runtime::LogFollow
        });
        Ok(Some(Logs {
            backlog: backlog_lines,
            follow,
        }))
    }

    /// Feeds `tx` with the lines of every pod of the service, attaching to pods as they
    /// appear (and again when a container restarts), until the follower goes away or the
    /// namespace does. `seen` holds, per pod already read, the time of its last line read.
    async fn follow(
        self: Arc<Self>,
        ns: String,
        slug: StackSlug,
        service: ServiceName,
        seen: HashMap<String, Option<SystemTime>>,
        tx: mpsc::Sender<LogLine>,
    ) {
        let seen = Arc::new(Mutex::new(seen));
        let mut attached: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            if tx.is_closed() {
                break;
            }
            match self.pods(&ns, &slug, &service).await {
                Ok(pods) => {
                    let names: BTreeSet<String> = pods
                        .iter()
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    attached.retain(|name, task| {
                        let keep = names.contains(name);
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    if names.is_empty()
                        && matches!(self.kube.get_opt(&self.namespaces(), &ns).await, Ok(None))
                    {
                        break;
                    }
                    for name in names {
                        if attached.get(&name).is_some_and(|t| !t.is_finished()) {
                            continue;
                        }
                        let task = tokio::spawn(attach(
                            self.api::<Pod>(&ns),
                            name.clone(),
                            service.to_string(),
                            self.cfg.log_tail,
                            seen.clone(),
                            tx.clone(),
                        ));
                        attached.insert(name, task);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "listing pods to follow their logs"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll) => {}
                _ = tx.closed() => break,
            }
        }
        for task in attached.into_values() {
            task.abort();
        }
    }
}

/// Follows one pod's log, sending the lines later than the last one seen of it.
async fn attach(
    pods: Api<Pod>,
    pod: String,
    container: String,
    tail: i64,
    seen: Arc<Mutex<HashMap<String, Option<SystemTime>>>>,
    tx: mpsc::Sender<LogLine>,
) {
    let after = lock(&seen).get(&pod).copied();
    let params = LogParams {
        container: Some(container),
        follow: true,
        timestamps: true,
        // A pod read before: from a little before its last line (the rest is skipped by
        // time); a new one: from its start.
        tail_lines: after.map(|_| tail),
        ..LogParams::default()
    };
    let Ok(stream) = pods.log_stream(&pod, &params).await else {
        return;
    };
    let mut lines = stream.lines();
    while let Some(Ok(raw)) = lines.next().await {
        let Some((at, line)) = parse_line(&raw) else {
            continue;
        };
        {
            let mut seen = lock(&seen);
            let last = seen.entry(pod.clone()).or_insert(None);
            if last.is_some_and(|l| at <= l) {
                continue;
            }
            *last = Some(at);
        }
        match tx.try_send(line) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// The artifacts `plan`'s pods fetch: those of services not run from an image.
fn fetched(plan: &DeployPlan) -> impl Iterator<Item = String> + '_ {
    plan.services
        .iter()
        .filter(|s| s.image.is_none())
        .map(|s| s.artifact.clone())
}

fn base64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A `timestamps=true` log line: an RFC 3339 time, a space, the text.
fn parse_line(raw: &str) -> Option<(SystemTime, LogLine)> {
    let (stamp, text) = raw.split_once(' ').unwrap_or((raw, ""));
    let at = humantime::parse_rfc3339_weak(stamp).ok()?;
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    Some((
        at,
        LogLine {
            at: Millis(millis),
            // The cluster merges a container's stdout and stderr into one log.
            stream: LogStream::Stdout,
            text: text.to_owned(),
        },
    ))
}

/// A Deployment read from the server, as an apply that puts its template back.
fn restorable(old: &Deployment) -> Deployment {
    Deployment {
        metadata: clean_meta(&old.metadata),
        spec: old.spec.clone(),
        status: None,
    }
}

fn restorable_secret(old: &Secret) -> Secret {
    Secret {
        metadata: clean_meta(&old.metadata),
        data: old.data.clone(),
        type_: old.type_.clone(),
        ..Secret::default()
    }
}

fn clean_meta(
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        labels: m.labels.clone(),
        ..Default::default()
    }
}

/// Whether a failed call may succeed if made again: the API server throttling (429) or
/// failing (5xx), or the connection to it.
fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || (500..=599).contains(&s.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn transient(what: &str, e: &kube::Error) -> RuntimeError {
    RuntimeError::Transient(format!("{what}: {}", describe(e)))
}

/// An error of the API server in words safe to show: its status code and message (which
/// name objects and fields, never a Secret's values).
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("the Kubernetes API answered {} ({})", s.code, s.message),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            "the Kubernetes API could not be reached".to_owned()
        }
        other => format!("the Kubernetes API call failed: {other}"),
    }
}

impl Kube {
    /// Runs `f` until it succeeds, fails for good, or has been tried `backoff.attempts` times.
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RuntimeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut delay = self.backoff.first;
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && attempt < self.backoff.attempts => {
                    tracing::debug!(what, attempt, error = %describe(&e), "retrying a Kubernetes API call");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.backoff.max);
                    attempt += 1;
                }
                Err(e) if retryable(&e) => return Err(transient(what, &e)),
                Err(e) => {
                    return Err(RuntimeError::Failed(format!("{what}: {}", describe(&e))));
                }
            }
        }
    }

    /// Server-side apply of `obj` as field manager `stackyard`, forcing ownership: these
    /// objects are ours, and a field someone changed by hand is put back.
    async fn apply<K>(&self, api: &Api<K>, obj: &K) -> Result<K, RuntimeError>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug,
        <K as Resource>::DynamicType: Default,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        let what = format!("applying {} {name}", K::kind(&Default::default()));
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(obj);
        self.call(&what, || api.patch(&name, &params, &patch)).await
    }

    async fn get_opt<K>(&self, api: &Api<K>, name: &str) -> Result<Option<K>, RuntimeError>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
        <K as Resource>::DynamicType: Default,
    {
        let what = format!("reading {} {name}", K::kind(&Default::default()));
        self.call(&what, || api.get_opt(name)).await
    }

    async fn list<K>(&self, api: &Api<K>, lp: &ListParams) -> Result<Vec<K>, RuntimeError>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
        <K as Resource>::DynamicType: Default,
    {
        let what = format!("listing {}s", K::kind(&Default::default()));
        Ok(self.call(&what, || api.list(lp)).await?.items)
    }

    /// Deletes `name` with foreground propagation; one already gone is fine.
    async fn delete_opt<K>(&self, api: &Api<K>, name: &str) -> Result<(), RuntimeError>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
        <K as Resource>::DynamicType: Default,
    {
        let what = format!("deleting {} {name}", K::kind(&Default::default()));
        let params = DeleteParams::foreground();
        self.call(&what, || async {
            match api.delete(name, &params).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamped_lines_parse_to_their_millisecond() {
        let (_, line) = parse_line("2026-12-06T05:00:01.123456789Z hello world").unwrap();
        assert_eq!(line.text, "hello world");
        assert_eq!(line.at.to_rfc3339(), "2026-12-06T05:00:01.123Z");
        assert!(parse_line("not-a-time hello").is_none());
        let (_, empty) = parse_line("2026-12-06T05:00:01Z").unwrap();
        assert_eq!(empty.text, "");
    }
}
