//! What one release of a stack is in Kubernetes: the typed objects to apply (kubernetes.md,
//! "Objects"), each service's environment, and which objects a new release leaves behind.
//!
//! Everything here is a function of its arguments: no clock, no I/O. The signed artifact URLs,
//! the one input that changes with time, are not in any pod template: each init container
//! reads its URL from the namespace's `sy-artifacts` Secret under the artifact's digest, a
//! Secret the runtime re-signs before the URLs expire. So re-applying a release changes no
//! template (no pod rolls), and a pod rescheduled hours later still finds a valid URL.

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, LimitRange, LimitRangeItem, LimitRangeSpec, Namespace,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceQuota, ResourceQuotaSpec,
    SeccompProfile, Secret, SecretEnvSource, SecretKeySelector, SecurityContext, Service,
    ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, IPBlock, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, NetworkPolicy, NetworkPolicyEgressRule,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::ReleaseService;
use stackyard_core::runtime::DeployPlan;
use std::collections::BTreeMap;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "stackyard";
/// Marks everything Stackyard created; teardown deletes only namespaces carrying it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "stackyard";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const STACK_LABEL: &str = "stackyard.dev/stack";
pub const SERVICE_LABEL: &str = "stackyard.dev/service";
pub const TEAM_LABEL: &str = "stackyard.dev/team";
/// On the pods of exposed services only: what the `sy-ingress` policy opens to the ingress
/// controller. Not part of the Deployment's selector, which cannot change.
pub const EXPOSED_LABEL: &str = "stackyard.dev/exposed";
pub const RELEASE_ANNOTATION: &str = "stackyard.dev/release";
pub const ENV_SHA256_ANNOTATION: &str = "stackyard.dev/env-sha256";
/// Every stack namespace is `sy-<slug>`; teardown refuses any other name.
pub const NAMESPACE_PREFIX: &str = "sy-";
/// The `team` label of stacks without a team.
pub const ANONYMOUS_TEAM: &str = "anonymous";
pub const DEFAULT_POLICY: &str = "sy-default";
pub const INGRESS_POLICY: &str = "sy-ingress";
pub const QUOTA: &str = "sy-quota";
pub const LIMITS: &str = "sy-limits";
/// The Secret holding each artifact's current signed URL, keyed by digest.
pub const ARTIFACTS_SECRET: &str = "sy-artifacts";
/// The uid (and gid) every container runs as: not root, and no user any base image names.
pub const RUN_AS: i64 = 10001;
/// The init container that fetches and unpacks the artifact; rollout failures name it.
pub const FETCH_CONTAINER: &str = "fetch";
/// Where the artifact is unpacked, in an `emptyDir` shared by the init and main containers.
pub const SRV: &str = "/srv";
/// The name of every service's container port, so policies can open it whatever its number.
const PORT_NAME: &str = "http";

/// Cluster-wide rendering settings (the `--k8s-*` flags).
#[derive(Debug, Clone)]
pub struct RenderConfig {
    /// Exposed services answer at `<svc>-<slug>.<base_domain>`.
    pub base_domain: String,
    /// `spec.ingressClassName` of every Ingress.
    pub ingress_class: String,
    /// Where the ingress controller runs: the only peer outside the namespace allowed to
    /// reach a stack's pods, and only those of exposed services, on their service port.
    pub ingress_controller: Peer,
    /// The API replicas serving `/internal/artifacts`, when `artifact_url` names them inside
    /// the cluster: the init container's fetch needs egress to them. `None` when the URL goes
    /// out through one of `egress_cidrs`.
    pub artifact_server: Option<Endpoint>,
    /// The init container's image; it needs `/bin/sh`, `wget` and `tar` with gzip.
    pub fetch_image: String,
    /// The main container's image; it needs `/bin/sh` and whatever the start commands run.
    pub base_image: String,
    /// Where pods may connect outside the namespace besides DNS (`--k8s-egress-cidrs`).
    pub egress_cidrs: Vec<String>,
    /// `progressDeadlineSeconds` of every Deployment (`--deploy-timeout`).
    pub deploy_timeout_secs: i32,
    /// Quotas and container defaults per stack tier; tiers not listed get `default_limits`.
    pub tiers: BTreeMap<String, TierLimits>,
    pub default_limits: TierLimits,
}

impl RenderConfig {
    /// The limits of `tier`.
    pub fn limits(&self, tier: &str) -> &TierLimits {
        self.tiers.get(tier).unwrap_or(&self.default_limits)
    }
}

/// Pods selected by labels: pods matching `pod_labels` (any pod when empty) in namespaces
/// matching `namespace_labels` (any namespace when empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    pub namespace_labels: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
}

/// A [`Peer`] and the TCP port it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub peer: Peer,
    pub port: u16,
}

/// CPU and memory as Kubernetes quantities (`500m`, `512Mi`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compute {
    pub cpu: String,
    pub memory: String,
}

/// What one stack of a tier may use: the namespace's `sy-quota` totals and the per-container
/// defaults of `sy-limits` (the rendered containers set no resources of their own, so these
/// are what every container gets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierLimits {
    /// Pods in the namespace; a rolling update runs a second pod of the service it replaces.
    pub pods: u32,
    pub quota_requests: Compute,
    pub quota_limits: Compute,
    pub container_request: Compute,
    pub container_limit: Compute,
}

/// The objects of one release, in the order they are applied: the namespace first, the
/// LimitRange before any pod (the quota admits only pods that state requests and limits,
/// and the LimitRange is what states them), each Secret before its Deployment (a pod started without it waits in
/// `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub namespace: Namespace,
    /// `sy-default`: default deny; the namespace to itself, DNS, the artifact server and the
    /// egress CIDRs.
    pub default_policy: NetworkPolicy,
    /// `sy-ingress`: the ingress controller to the pods of exposed services. A policy of its
    /// own because a policy's rules cannot single out some of the pods it selects.
    pub ingress_policy: NetworkPolicy,
    pub quota: ResourceQuota,
    pub limits: LimitRange,
    /// One entry per service, in the release's order.
    pub services: Vec<ServiceObjects>,
}

/// One service's objects. The Secret is the only one holding env values; apply it first.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceObjects {
    pub name: ServiceName,
    pub secret: Secret,
    pub deployment: Deployment,
    pub service: Service,
    /// Exposed services only.
    pub ingress: Option<Ingress>,
}

/// The objects of `plan`, labelled with its team and sized by its tier. `domains` are the
/// stack's verified custom domains as `(hostname, service)`; each adds a rule to the Ingress
/// of its service, and is left out when that service is not exposed by this release.
pub fn render(
    plan: &DeployPlan,
    domains: &[(String, ServiceName)],
    cfg: &RenderConfig,
) -> Rendered {
    let ns = namespace_name(&plan.slug);
    let limits = cfg.limits(&plan.tier);
    let team = plan.team.map(|t| t.0.to_string());
    let address_of = |name: &str| {
        plan.services
            .iter()
            .find(|s| s.name.as_str() == name)
            .map(|s| service_address(&plan.slug, &s.name, s.port))
    };
    let services = plan
        .services
        .iter()
        .map(|svc| {
            let mut env = plan.service_env(svc, svc.port, address_of);
            // A pod is reached on its own address, not loopback: a service that binds
            // `$HOST` (as the examples do; the local runtime leaves it unset, for loopback)
            // listens where the probes and the Service connect.
            env.entry("HOST".to_owned())
                .or_insert_with(|| "0.0.0.0".to_owned());
            let svc_domains: Vec<&str> = domains
                .iter()
                .filter(|(_, s)| s == &svc.name)
                .map(|(host, _)| host.as_str())
                .collect();
            ServiceObjects {
                name: svc.name.clone(),
                secret: secret(&ns, &plan.slug, svc, &env),
                deployment: deployment(&ns, plan, svc, &env_sha256(&env), cfg),
                service: service(&ns, &plan.slug, svc),
                ingress: svc
                    .expose
                    .then(|| ingress(&plan.slug, &svc.name, svc.port, &svc_domains, cfg)),
            }
        })
        .collect();
    Rendered {
        namespace: namespace(&ns, &plan.slug, team.as_deref()),
        default_policy: default_policy(&ns, &plan.slug, cfg),
        ingress_policy: ingress_policy(&ns, &plan.slug, cfg),
        quota: quota(&ns, &plan.slug, limits),
        limits: limit_range(&ns, &plan.slug, limits),
        services,
    }
}

/// `sy-<slug>`.
pub fn namespace_name(slug: &StackSlug) -> String {
    format!("{NAMESPACE_PREFIX}{slug}")
}

/// What `service://<svc>` resolves to: the Service's in-cluster address.
pub fn service_address(slug: &StackSlug, svc: &ServiceName, port: u16) -> String {
    format!("http://{svc}.{}.svc:{port}", namespace_name(slug))
}

/// The hostname an exposed service answers at.
pub fn service_host(slug: &StackSlug, svc: &ServiceName, base_domain: &str) -> String {
    format!("{svc}-{slug}.{base_domain}")
}

/// The label selector of every object Stackyard made for the stack.
pub fn labels_selector(slug: &StackSlug) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{STACK_LABEL}={slug}")
}

/// What to delete after applying `plan`: the services found by label (`existing`, the
/// `stackyard.dev/service` values) that the release does not name, each once, in the order
/// found. Apply never deletes, so without this a removed service would keep running.
pub fn removed(existing: &[String], plan: &DeployPlan) -> Vec<String> {
    let mut gone: Vec<String> = Vec::new();
    for name in existing {
        let kept = plan.services.iter().any(|s| s.name.as_str() == name);
        if !kept && !gone.contains(name) {
            gone.push(name.clone());
        }
    }
    gone
}

/// SHA-256, hex, of the canonical form of `env`: in key order, each key and each value
/// preceded by its length in bytes (u64, big-endian), so no two maps share a form.
pub fn env_sha256(env: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in env {
        for part in [k, v] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    format!("{:x}", hasher.finalize())
}

fn namespace(ns: &str, slug: &StackSlug, team: Option<&str>) -> Namespace {
    let mut labels = stack_labels(slug);
    labels.insert(
        TEAM_LABEL.to_owned(),
        label_value(team.unwrap_or(ANONYMOUS_TEAM)),
    );
    labels.insert(
        "pod-security.kubernetes.io/enforce".to_owned(),
        "restricted".to_owned(),
    );
    Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn default_policy(ns: &str, slug: &StackSlug, cfg: &RenderConfig) -> NetworkPolicy {
    let same_namespace = || NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    let dns = NetworkPolicyPeer {
        namespace_selector: Some(match_labels([(
            "kubernetes.io/metadata.name",
            "kube-system",
        )])),
        pod_selector: Some(match_labels([("k8s-app", "kube-dns")])),
        ..NetworkPolicyPeer::default()
    };
    let mut egress = vec![
        NetworkPolicyEgressRule {
            to: Some(vec![same_namespace()]),
            ports: None,
        },
        NetworkPolicyEgressRule {
            to: Some(vec![dns]),
            ports: Some(vec![policy_port("UDP", 53), policy_port("TCP", 53)]),
        },
    ];
    if let Some(api) = &cfg.artifact_server {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![api.peer.to_k8s()]),
            ports: Some(vec![policy_port("TCP", api.port)]),
        });
    }
    // An egress rule with an empty `to` would allow every destination.
    if !cfg.egress_cidrs.is_empty() {
        egress.push(NetworkPolicyEgressRule {
            to: Some(
                cfg.egress_cidrs
                    .iter()
                    .map(|cidr| NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: cidr.clone(),
                            except: None,
                        }),
                        ..NetworkPolicyPeer::default()
                    })
                    .collect(),
            ),
            ports: None,
        });
    }
    NetworkPolicy {
        metadata: meta(DEFAULT_POLICY, ns, stack_labels(slug)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![same_namespace()]),
                ports: None,
            }]),
            egress: Some(egress),
        }),
    }
}

/// Always rendered, even when no service is exposed (it then selects no pod), so a release
/// that stops exposing services leaves nothing stale to delete.
fn ingress_policy(ns: &str, slug: &StackSlug, cfg: &RenderConfig) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(INGRESS_POLICY, ns, stack_labels(slug)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels([(EXPOSED_LABEL, "true")])),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![cfg.ingress_controller.to_k8s()]),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".to_owned()),
                    port: Some(IntOrString::String(PORT_NAME.to_owned())),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

fn quota(ns: &str, slug: &StackSlug, limits: &TierLimits) -> ResourceQuota {
    let hard = [
        ("pods", limits.pods.to_string()),
        ("requests.cpu", limits.quota_requests.cpu.clone()),
        ("requests.memory", limits.quota_requests.memory.clone()),
        ("limits.cpu", limits.quota_limits.cpu.clone()),
        ("limits.memory", limits.quota_limits.memory.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v)))
    .collect();
    ResourceQuota {
        metadata: meta(QUOTA, ns, stack_labels(slug)),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        status: None,
    }
}

fn limit_range(ns: &str, slug: &StackSlug, limits: &TierLimits) -> LimitRange {
    LimitRange {
        metadata: meta(LIMITS, ns, stack_labels(slug)),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_owned(),
                default: Some(compute(&limits.container_limit)),
                default_request: Some(compute(&limits.container_request)),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

fn secret(
    ns: &str,
    slug: &StackSlug,
    svc: &ReleaseService,
    env: &BTreeMap<String, String>,
) -> Secret {
    // `data`, not `stringData`: under server-side apply a key dropped from `stringData`
    // stays in the stored `data` (kubernetes/kubernetes#108008), so a deleted env var would
    // live on.
    let data = env
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
        .collect();
    Secret {
        metadata: meta(
            &env_secret_name(&svc.name),
            ns,
            service_labels(slug, &svc.name),
        ),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// `sy-artifacts`: the signed URL of each artifact in `urls` (digest → URL), read by the init
/// containers through `secretKeyRef`. Applied before the Deployments naming its keys.
pub fn artifact_secret(slug: &StackSlug, urls: &BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta(ARTIFACTS_SECRET, &namespace_name(slug), stack_labels(slug)),
        type_: Some("Opaque".to_owned()),
        data: Some(
            urls.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The artifact digest the init container of `deployment` fetches: the key of `sy-artifacts`
/// it reads. What a running release still needs when the next one is applied.
pub fn fetched_artifact(deployment: &Deployment) -> Option<String> {
    let spec = deployment.spec.template.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .filter(|c| c.name == FETCH_CONTAINER)
        .flat_map(|c| c.env.iter().flatten())
        .find_map(|e| Some(e.value_from.as_ref()?.secret_key_ref.as_ref()?.key.clone()))
}

/// `<svc>-env`.
pub fn env_secret_name(svc: &ServiceName) -> String {
    format!("{svc}-env")
}

fn deployment(
    ns: &str,
    plan: &DeployPlan,
    svc: &ReleaseService,
    env_sha: &str,
    cfg: &RenderConfig,
) -> Deployment {
    let slug = &plan.slug;
    let mut pod_labels = service_labels(slug, &svc.name);
    if svc.expose {
        pod_labels.insert(EXPOSED_LABEL.to_owned(), "true".to_owned());
    }
    let annotations = BTreeMap::from([
        (RELEASE_ANNOTATION.to_owned(), plan.release.to_string()),
        (ENV_SHA256_ANNOTATION.to_owned(), env_sha.to_owned()),
    ]);
    let port = i32::from(svc.port);
    let srv_mount = VolumeMount {
        name: "srv".to_owned(),
        mount_path: SRV.to_owned(),
        ..VolumeMount::default()
    };
    let tmp_mount = VolumeMount {
        name: "tmp".to_owned(),
        mount_path: "/tmp".to_owned(),
        ..VolumeMount::default()
    };
    let fetch = Container {
        name: FETCH_CONTAINER.to_owned(),
        image: Some(cfg.fetch_image.clone()),
        command: Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!(
                "set -eu; wget -q -O /tmp/artifact.tar.gz \"$ARTIFACT_URL\"; \
                 tar xzf /tmp/artifact.tar.gz -C {SRV}; rm -f /tmp/artifact.tar.gz"
            ),
        ]),
        env: Some(vec![EnvVar {
            name: "ARTIFACT_URL".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: ARTIFACTS_SECRET.to_owned(),
                    key: svc.artifact.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        }]),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![srv_mount.clone(), tmp_mount.clone()]),
        ..Container::default()
    };
    let probe = match &svc.health {
        Some(path) => Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(port),
                ..HTTPGetAction::default()
            }),
            ..readiness_timing()
        },
        None => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(port),
                host: None,
            }),
            ..readiness_timing()
        },
    };
    // A service run from its own image fetches nothing and keeps the image's `/srv` and
    // working directory; a tarball runs in the base image, unpacked into `/srv`.
    let prebuilt = svc.image.is_some();
    let main = Container {
        name: svc.name.to_string(),
        image: Some(svc.image.clone().unwrap_or_else(|| cfg.base_image.clone())),
        // No start command: the image's own runs (Runtime::needs_start_command).
        command: (!svc.command.is_empty())
            .then(|| vec!["/bin/sh".to_owned(), "-c".to_owned(), svc.command.clone()]),
        working_dir: (!prebuilt).then(|| working_dir(&svc.workdir)),
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: env_secret_name(&svc.name),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe),
        security_context: Some(container_security()),
        volume_mounts: Some(if prebuilt {
            vec![tmp_mount]
        } else {
            vec![srv_mount, tmp_mount]
        }),
        ..Container::default()
    };
    let (init_containers, volumes) = if prebuilt {
        (None, vec![empty_dir("tmp")])
    } else {
        (Some(vec![fetch]), vec![empty_dir("srv"), empty_dir("tmp")])
    };
    Deployment {
        metadata: meta(svc.name.as_str(), ns, service_labels(slug, &svc.name)),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: match_labels(
                selector_labels(slug, &svc.name)
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            ),
            // The old pod serves until the new one is ready; a failed rollout leaves it so.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            progress_deadline_seconds: Some(cfg.deploy_timeout_secs),
            revision_history_limit: Some(2),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    // Service links would add `<SVC>_SERVICE_HOST` variables the local
                    // runtime does not give.
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    init_containers,
                    containers: vec![main],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

fn service(ns: &str, slug: &StackSlug, svc: &ReleaseService) -> Service {
    let port = i32::from(svc.port);
    Service {
        metadata: meta(svc.name.as_str(), ns, service_labels(slug, &svc.name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(slug, &svc.name)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port,
                target_port: Some(IntOrString::Int(port)),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Ingress of exposed service `name` listening on `port`: the service's own host first,
/// then its custom domains in name order (a stable order, so re-applying the same domains
/// changes nothing).
pub fn ingress(
    slug: &StackSlug,
    name: &ServiceName,
    port: u16,
    domains: &[&str],
    cfg: &RenderConfig,
) -> Ingress {
    let ns = namespace_name(slug);
    let mut custom: Vec<&str> = domains.to_vec();
    custom.sort_unstable();
    custom.dedup();
    let hosts = std::iter::once(service_host(slug, name, &cfg.base_domain))
        .chain(custom.into_iter().map(str::to_owned));
    let rules = hosts
        .map(|host| IngressRule {
            host: Some(host),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some("/".to_owned()),
                    path_type: "Prefix".to_owned(),
                    backend: IngressBackend {
                        service: Some(IngressServiceBackend {
                            name: name.to_string(),
                            port: Some(ServiceBackendPort {
                                number: Some(i32::from(port)),
                                name: None,
                            }),
                        }),
                        resource: None,
                    },
                }],
            }),
        })
        .collect();
    Ingress {
        metadata: meta(name.as_str(), &ns, service_labels(slug, name)),
        spec: Some(IngressSpec {
            ingress_class_name: Some(cfg.ingress_class.clone()),
            rules: Some(rules),
            ..IngressSpec::default()
        }),
        status: None,
    }
}

impl Peer {
    fn to_k8s(&self) -> NetworkPolicyPeer {
        let selector = |labels: &BTreeMap<String, String>| {
            match_labels(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        };
        NetworkPolicyPeer {
            namespace_selector: Some(selector(&self.namespace_labels)),
            pod_selector: (!self.pod_labels.is_empty()).then(|| selector(&self.pod_labels)),
            ip_block: None,
        }
    }
}

fn meta(name: &str, ns: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

fn stack_labels(slug: &StackSlug) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (STACK_LABEL.to_owned(), slug.to_string()),
    ])
}

/// What a Deployment selects its pods by; fixed for the Deployment's life (the selector is
/// immutable), so it holds nothing a release can change.
fn selector_labels(slug: &StackSlug, svc: &ServiceName) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), svc.to_string()),
        (STACK_LABEL.to_owned(), slug.to_string()),
        (SERVICE_LABEL.to_owned(), svc.to_string()),
    ])
}

fn service_labels(slug: &StackSlug, svc: &ServiceName) -> BTreeMap<String, String> {
    let mut labels = selector_labels(slug, svc);
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    labels
}

fn match_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        ),
        match_expressions: None,
    }
}

fn policy_port(protocol: &str, port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(i32::from(port))),
        end_port: None,
    }
}

fn compute(c: &Compute) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(c.cpu.clone())),
        ("memory".to_owned(), Quantity(c.memory.clone())),
    ])
}

/// What Pod Security `restricted` asks of every container beyond the pod's own context.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

fn readiness_timing() -> Probe {
    Probe {
        period_seconds: Some(2),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// `/srv/<workdir>`: `workdir` is relative to the unpacked root (a Dockerfile's `WORKDIR /app`
/// means `/srv/app`); one that climbs out of it gives the root, as in the local runtime.
fn working_dir(workdir: &str) -> String {
    let mut parts = Vec::new();
    for part in workdir.split('/') {
        match part {
            "" | "." => {}
            ".." => return SRV.to_owned(),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        SRV.to_owned()
    } else {
        format!("{SRV}/{}", parts.join("/"))
    }
}

/// A label value from a name that may be longer than 63 characters or end in `.`, `-` or `_`
/// (team names may): cut to 63 and trimmed to end in a letter or digit.
fn label_value(s: &str) -> String {
    let mut v: String = s.chars().take(63).collect();
    while v.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        v.pop();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_stays_under_srv() {
        assert_eq!(working_dir(""), "/srv");
        assert_eq!(working_dir("/app"), "/srv/app");
        assert_eq!(working_dir("./app//src/"), "/srv/app/src");
        assert_eq!(working_dir("app/../../etc"), "/srv");
    }

    #[test]
    fn team_label_values_are_valid_labels() {
        assert_eq!(label_value("acme"), "acme");
        assert_eq!(label_value("acme.-_"), "acme");
        let long = format!("a{}", "b".repeat(70));
        assert_eq!(label_value(&long).len(), 63);
    }

    #[test]
    fn env_hash_tells_apart_maps_with_the_same_concatenation() {
        let a = BTreeMap::from([("A".to_owned(), "BC".to_owned())]);
        let b = BTreeMap::from([("AB".to_owned(), "C".to_owned())]);
        assert_ne!(env_sha256(&a), env_sha256(&b));
        assert_eq!(env_sha256(&a), env_sha256(&a.clone()));
        assert_eq!(env_sha256(&a).len(), 64);
    }
}
