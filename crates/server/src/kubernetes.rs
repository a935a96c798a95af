//! `--runtime kubernetes`: the cluster client and the runtime's settings from the `--k8s-*`
//! flags. The runtime itself is `stackyard_runtime_kubernetes`.

use crate::config::{KubeArgs, ServeArgs, TierQuota};
use anyhow::Context;
use stackyard_core::artifact_url::ArtifactSigner;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::{Access, TeamId};
use stackyard_core::store::Store;
use stackyard_runtime_kubernetes::{
    Backoff, Compute, Endpoint, KubeSettings, KubernetesRuntime, Peer, RenderConfig, TierLimits,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The runtime on the cluster `--kubeconfig` (or the inferred one) names. Fails the start
/// when no cluster configuration can be found or the API server does not answer.
pub async fn runtime<S: Store>(
    args: &ServeArgs,
    store: &S,
    signer: Arc<ArtifactSigner>,
) -> anyhow::Result<KubernetesRuntime> {
    let kube = &args.kube;
    let config = match &kube.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding the Kubernetes cluster (KUBECONFIG, ~/.kube/config or in-cluster)")?,
    };
    let cluster = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
    let version = client
        .apiserver_version()
        .await
        .with_context(|| format!("reaching the Kubernetes API at {cluster}"))?;
    tracing::info!(cluster = %cluster, version = %version.git_version, "Kubernetes runtime");

    let base = kube.k8s_artifact_base_url.trim_end_matches('/').to_owned();
    let port = url_port(&base).with_context(|| {
        format!("--k8s-artifact-base-url {base}: expected http(s)://host[:port]")
    })?;
    let artifact_urls = {
        let base = base.clone();
        Arc::new(move |digest: &str| signer.url(&base, digest, crate::now()))
    };
    let stack_exists = {
        let store = store.clone();
        Arc::new(move |slug: StackSlug, team: Option<TeamId>| {
            let store = store.clone();
            let access = team.map_or(Access::Anonymous, Access::Team);
            Box::pin(async move {
                store
                    .get_stack(access, &slug)
                    .await
                    .map(|s| s.is_some())
                    .map_err(|e| e.to_string())
            }) as stackyard_core::runtime::BoxFuture<'static, Result<bool, String>>
        })
    };
    let settings = KubeSettings {
        render: render_config(args, port),
        artifact_urls,
        artifact_refresh: kube.k8s_artifact_refresh,
        stack_exists,
        url_scheme: kube.k8s_url_scheme.clone(),
        deploy_timeout: args.deploy_timeout,
        teardown_timeout: kube.k8s_teardown_timeout,
        poll: kube.k8s_poll,
        backoff: Backoff::default(),
        log_tail: 200,
    };
    Ok(KubernetesRuntime::new(client, settings))
}

fn render_config(args: &ServeArgs, api_port: u16) -> RenderConfig {
    let kube: &KubeArgs = &args.kube;
    let namespace =
        |ns: &str| BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), ns.to_owned())]);
    RenderConfig {
        base_domain: args.base_domain.clone(),
        ingress_class: kube.k8s_ingress_class.clone(),
        ingress_controller: Peer {
            namespace_labels: namespace(&kube.k8s_ingress_namespace),
            pod_labels: BTreeMap::new(),
        },
        artifact_server: Some(Endpoint {
            peer: Peer {
                namespace_labels: namespace(&kube.k8s_api_namespace),
                pod_labels: BTreeMap::from([(
                    "app.kubernetes.io/name".to_owned(),
                    "stackyard".to_owned(),
                )]),
            },
            port: api_port,
        }),
        fetch_image: kube.k8s_fetch_image.clone(),
        base_image: kube.k8s_base_image.clone(),
        egress_cidrs: kube
            .k8s_egress_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect(),
        deploy_timeout_secs: i32::try_from(args.deploy_timeout.as_secs().max(1))
            .unwrap_or(i32::MAX),
        tiers: kube
            .k8s_tier_quota
            .iter()
            .map(|(tier, q)| (tier.clone(), tier_limits(q)))
            .collect(),
        default_limits: tier_limits(&kube.k8s_default_quota),
    }
}

/// A tier's quota as the namespace's totals; every container gets the same defaults (a
/// tenth of a CPU requested, half one at most; 128 MiB requested, 512 MiB at most).
fn tier_limits(q: &TierQuota) -> TierLimits {
    let total = || Compute {
        cpu: q.cpu.clone(),
        memory: q.memory.clone(),
    };
    TierLimits {
        pods: q.pods,
        quota_requests: total(),
        quota_limits: total(),
        container_request: Compute {
            cpu: "100m".into(),
            memory: "128Mi".into(),
        },
        container_limit: Compute {
            cpu: "500m".into(),
            memory: "512Mi".into(),
        },
    }
}

/// The port of an `http(s)://host[:port]` URL, the scheme's default when none is given.
fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if authority.is_empty() {
        return None;
    }
    let port = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once("]:").map(|(_, p)| p),
        None => authority.split_once(':').map(|(_, p)| p),
    };
    match port {
        Some(p) => p.parse().ok(),
        None => Some(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_base_urls_give_their_port() {
        assert_eq!(url_port("http://stackyard.stackyard.svc:8700"), Some(8700));
        assert_eq!(url_port("https://api.example.net"), Some(443));
        assert_eq!(url_port("http://api.example.net/base"), Some(80));
        assert_eq!(url_port("ftp://x"), None);
        assert_eq!(url_port("http://"), None);
        assert_eq!(url_port("http://[fd00::1]:8700/"), Some(8700));
    }
}
