//! The rendered objects of a three-service stack: snapshots of every one, the env kept to the
//! Secrets, and the files CI validates against the Kubernetes schemas (`k8s-validate`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::Secret;
use stackyard_core::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::{ReleaseService, StackId};
use stackyard_core::needs::{Grant, GrantSource};
use stackyard_core::resource::ResourceKind;
use stackyard_core::runtime::{DeployPlan, GrantedResource};
use stackyard_runtime_kubernetes::render::{
    Compute, Endpoint, Peer, RenderConfig, Rendered, TierLimits, artifact_secret, labels_selector,
    removed, render,
};
use std::collections::BTreeMap;

const SLUG: &str = "stk-0123456789abcdef01234567";
/// A stack env value that must reach the Secrets and nothing else.
const SENTINEL: &str = "sentinel-7c1e0b5d-secret-value";
const DB_URL: &str = "postgres://sy_u:db-password-4471@db.internal:5432/sy_db";

fn name(s: &str) -> ServiceName {
    ServiceName::parse(s).unwrap()
}

fn svc(
    n: &str,
    port: u16,
    expose: bool,
    health: Option<&str>,
    env: &[(&str, &str)],
) -> ReleaseService {
    ReleaseService {
        name: name(n),
        artifact: format!("{:0>64}", format!("{n}0")),
        image: None,
        command: format!("./bin/{n} --port \"$PORT\""),
        workdir: String::new(),
        port,
        expose,
        health: health.map(str::to_owned),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        needs: Vec::new(),
    }
}

/// `web` (exposed, health path, a custom domain) calls `api`, which has a database and calls
/// `worker` (not exposed, started from a Dockerfile `WORKDIR`).
fn plan() -> DeployPlan {
    let web = svc(
        "web",
        8080,
        true,
        Some("/healthz"),
        &[
            ("API_URL", "service://api/v1"),
            ("MESSAGE", "from the manifest"),
        ],
    );
    let mut api = svc(
        "api",
        9000,
        false,
        None,
        &[("WORKER_URL", "service://worker"), ("LOG_LEVEL", "info")],
    );
    api.needs = vec![Grant {
        source: GrantSource::Stack,
        kind: ResourceKind::Postgres,
        env: "DATABASE_URL".into(),
    }];
    let mut worker = svc("worker", 8080, false, None, &[]);
    worker.workdir = "/app".into();
    DeployPlan {
        stack_id: StackId(42),
        slug: StackSlug::parse(SLUG).unwrap(),
        team: Some(stackyard_core::model::TeamId(7)),
        tier: "team".into(),
        release: 3,
        env_version: 5,
        services: vec![web, api, worker],
        env: EnvMap::from_map(BTreeMap::from([
            ("API_KEY".to_owned(), SENTINEL.to_owned()),
            ("MESSAGE".to_owned(), "from the stack env".to_owned()),
        ])),
        granted: vec![GrantedResource {
            service: name("api"),
            env: "DATABASE_URL".into(),
            url: DB_URL.into(),
            port: Some(5432),
        }],
    }
}

fn artifact_url(digest: &str) -> String {
    format!(
        "http://stackyard.stackyard.svc:8700/internal/artifacts/{digest}?expires=1767225600&sig=0f1e2d"
    )
}

/// `plan` as an anonymous stack of `tier`.
fn anonymous(mut plan: DeployPlan, tier: &str) -> DeployPlan {
    plan.team = None;
    plan.tier = tier.to_owned();
    plan
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn limits(pods: u32, scale: u32) -> TierLimits {
    TierLimits {
        pods,
        quota_requests: Compute {
            cpu: format!("{}m", 1000 * scale),
            memory: format!("{}Gi", scale),
        },
        quota_limits: Compute {
            cpu: format!("{}", 2 * scale),
            memory: format!("{}Gi", 2 * scale),
        },
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

fn config(egress_cidrs: &[&str]) -> RenderConfig {
    RenderConfig {
        base_domain: "apps.example.net".into(),
        ingress_class: "nginx".into(),
        ingress_controller: Peer {
            namespace_labels: labels(&[("kubernetes.io/metadata.name", "ingress-nginx")]),
            pod_labels: labels(&[("app.kubernetes.io/name", "ingress-nginx")]),
        },
        artifact_server: Some(Endpoint {
            peer: Peer {
                namespace_labels: labels(&[("kubernetes.io/metadata.name", "stackyard")]),
                pod_labels: labels(&[("app.kubernetes.io/name", "stackyard")]),
            },
            port: 8700,
        }),
        fetch_image: "busybox:1.37".into(),
        base_image: "debian:bookworm-slim".into(),
        egress_cidrs: egress_cidrs.iter().map(|c| (*c).to_owned()).collect(),
        deploy_timeout_secs: 60,
        tiers: BTreeMap::from([("team".to_owned(), limits(40, 4))]),
        default_limits: limits(10, 1),
    }
}

fn domains() -> Vec<(String, ServiceName)> {
    vec![("app.example.com".to_owned(), name("web"))]
}

fn rendered() -> Rendered {
    render(
        &plan(),
        &domains(),
        &config(&["203.0.113.0/24", "2001:db8::/32"]),
    )
}

/// Every object in apply order as `(file stem, JSON)`; the stem is `NN-kind-name`.
fn objects(r: &Rendered) -> Vec<(String, serde_json::Value)> {
    let mut values = vec![
        serde_json::to_value(&r.namespace).unwrap(),
        serde_json::to_value(&r.default_policy).unwrap(),
        serde_json::to_value(&r.ingress_policy).unwrap(),
    ];
    values.push(serde_json::to_value(&r.quota).unwrap());
    values.push(serde_json::to_value(&r.limits).unwrap());
    for s in &r.services {
        values.push(serde_json::to_value(&s.secret).unwrap());
        values.push(serde_json::to_value(&s.service).unwrap());
        values.push(serde_json::to_value(&s.deployment).unwrap());
        if let Some(ingress) = &s.ingress {
            values.push(serde_json::to_value(ingress).unwrap());
        }
    }
    // Last, though applied before the Deployments: its place keeps the other snapshots' names.
    let urls = plan()
        .services
        .iter()
        .map(|s| (s.artifact.clone(), artifact_url(&s.artifact)))
        .collect();
    values.push(
        serde_json::to_value(artifact_secret(&StackSlug::parse(SLUG).unwrap(), &urls)).unwrap(),
    );
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let kind = v["kind"].as_str().unwrap().to_ascii_lowercase();
            let name = v["metadata"]["name"].as_str().unwrap().to_owned();
            (format!("{i:02}-{kind}-{name}"), v)
        })
        .collect()
}

#[test]
fn every_object_of_a_three_service_stack_matches_its_snapshot() {
    let objects = objects(&rendered());
    let stems: Vec<&str> = objects.iter().map(|(stem, _)| stem.as_str()).collect();
    assert_eq!(
        stems,
        [
            "00-namespace-sy-stk-0123456789abcdef01234567",
            "01-networkpolicy-sy-default",
            "02-networkpolicy-sy-ingress",
            "03-resourcequota-sy-quota",
            "04-limitrange-sy-limits",
            "05-secret-web-env",
            "06-service-web",
            "07-deployment-web",
            "08-ingress-web",
            "09-secret-api-env",
            "10-service-api",
            "11-deployment-api",
            "12-secret-worker-env",
            "13-service-worker",
            "14-deployment-worker",
            "15-secret-sy-artifacts",
        ]
    );
    for (stem, value) in &objects {
        insta::assert_yaml_snapshot!(stem.as_str(), value);
    }
}

/// The Secrets' `data` is base64 in their snapshots; this is the same env, readable.
#[test]
fn the_env_of_each_service_matches_its_snapshot() {
    let envs: BTreeMap<String, BTreeMap<String, String>> = rendered()
        .services
        .iter()
        .map(|s| (s.name.to_string(), secret_env(&s.secret)))
        .collect();
    insta::assert_yaml_snapshot!("env", envs);
}

fn secret_env(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).unwrap()))
        .collect()
}

#[test]
fn env_values_appear_in_no_object_but_the_secrets() {
    let objects = objects(&rendered());
    let secret_values = [SENTINEL, DB_URL, "from the stack env"];
    let mut secrets = 0;
    for (stem, value) in &objects {
        let text = serde_json::to_string(value).unwrap();
        // The env Secrets; `sy-artifacts` holds URLs only and is checked like the rest.
        if value["kind"] == "Secret" && stem.ends_with("-env") {
            secrets += 1;
            continue;
        }
        for needle in secret_values {
            assert!(!text.contains(needle), "{stem} holds an env value");
        }
        // Nor encoded, nor inline in a container's env.
        assert!(!text.contains("API_KEY"), "{stem} names a stack env key");
    }
    assert_eq!(secrets, 3);
    let r = rendered();
    for s in &r.services {
        let data = s.secret.data.as_ref().unwrap();
        assert_eq!(data["API_KEY"].0, SENTINEL.as_bytes(), "{}", s.name);
        let pod = s.deployment.spec.template.spec.as_ref().unwrap();
        assert!(pod.containers.iter().all(|c| c.env.is_none()));
    }
}

#[test]
fn env_follows_the_local_runtime_order_with_cluster_addresses() {
    let plan = plan();
    let r = rendered();
    let api = &r.services[1];
    let env = secret_env(&api.secret);
    assert_eq!(env["PORT"], "9000");
    assert_eq!(env["STACKYARD_STACK"], SLUG);
    assert_eq!(env["STACKYARD_SERVICE"], "api");
    assert_eq!(env["STACKYARD_RELEASE"], "3");
    assert_eq!(env["DATABASE_URL"], DB_URL);
    assert_eq!(
        env["WORKER_URL"],
        "http://worker.sy-stk-0123456789abcdef01234567.svc:8080"
    );
    assert_eq!(env["LOG_LEVEL"], "info");
    assert_eq!(env["API_KEY"], SENTINEL);

    // Later layers win: the manifest over the platform and the grants, the stack env over
    // the manifest.
    let mut web = plan.services[0].clone();
    web.env.insert("PORT".into(), "1".into());
    web.env
        .insert("STACKYARD_RELEASE".into(), "manifest".into());
    let web_env = plan.service_env(&web, web.port, |n| Some(format!("http://{n}.test")));
    assert_eq!(web_env["PORT"], "1");
    assert_eq!(web_env["STACKYARD_RELEASE"], "manifest");
    assert_eq!(web_env["API_URL"], "http://api.test/v1");
    assert_eq!(web_env["MESSAGE"], "from the stack env");
    assert!(!web_env.contains_key("DATABASE_URL"), "granted to api only");
}

#[test]
fn a_changed_env_changes_the_pod_template_hash() {
    let before = rendered();
    let mut plan = plan();
    plan.env = EnvMap::from_map(BTreeMap::from([(
        "API_KEY".to_owned(),
        "rotated".to_owned(),
    )]));
    let after = render(&plan, &domains(), &config(&[]));
    let hash = |r: &Rendered| {
        r.services[0]
            .deployment
            .spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["stackyard.dev/env-sha256"]
            .clone()
    };
    assert_ne!(hash(&before), hash(&after));
}

#[test]
fn a_service_run_from_its_image_fetches_nothing() {
    let mut p = plan();
    p.services[2].image = Some("nginx:1.27".into());
    p.services[2].command.clear();
    let r = render(&p, &[], &config(&[]));
    let pod = r.services[2].deployment.spec.template.spec.clone().unwrap();
    assert!(pod.init_containers.is_none());
    let main = &pod.containers[0];
    assert_eq!(main.image.as_deref(), Some("nginx:1.27"));
    assert!(main.command.is_none(), "the image's own command");
    assert!(main.working_dir.is_none(), "the image's own directory");
    let mounts: Vec<&str> = main
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(mounts, ["/tmp"], "the image's /srv is left alone");
    // The others still fetch theirs.
    let web = r.services[0].deployment.spec.template.spec.clone().unwrap();
    assert_eq!(web.init_containers.unwrap().len(), 1);
}

#[test]
fn removed_names_the_services_the_release_no_longer_has() {
    let existing: Vec<String> = ["web", "api", "worker", "old", "old"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(removed(&existing[..4], &plan()), ["old"]);
    assert_eq!(removed(&existing, &plan()), ["old"]);
    assert!(removed(&[], &plan()).is_empty());
}

#[test]
fn every_object_carries_the_labels_the_selector_lists() {
    let selector = labels_selector(&StackSlug::parse(SLUG).unwrap());
    assert_eq!(
        selector,
        "app.kubernetes.io/managed-by=stackyard,stackyard.dev/stack=stk-0123456789abcdef01234567"
    );
    for (stem, value) in objects(&rendered()) {
        for pair in selector.split(',') {
            let (k, v) = pair.split_once('=').unwrap();
            assert_eq!(value["metadata"]["labels"][k], v, "{stem}");
        }
    }
}

#[test]
fn only_exposed_services_get_an_ingress_and_domains_of_others_are_dropped() {
    let domains = vec![
        ("app.example.com".to_owned(), name("web")),
        ("api.example.com".to_owned(), name("api")),
        ("gone.example.com".to_owned(), name("gone")),
    ];
    let r = render(&anonymous(plan(), "free"), &domains, &config(&[]));
    let ingresses: Vec<_> = r
        .services
        .iter()
        .filter_map(|s| s.ingress.as_ref())
        .collect();
    assert_eq!(ingresses.len(), 1);
    let hosts: Vec<_> = ingresses[0]
        .spec
        .as_ref()
        .unwrap()
        .rules
        .iter()
        .flatten()
        .map(|rule| rule.host.clone().unwrap())
        .collect();
    assert_eq!(
        hosts,
        [
            "web-stk-0123456789abcdef01234567.apps.example.net",
            "app.example.com"
        ]
    );
    let ns_labels = r.namespace.metadata.labels.unwrap();
    assert_eq!(ns_labels["stackyard.dev/team"], "anonymous");
}

#[test]
fn no_egress_cidrs_opens_no_egress_beyond_the_namespace_dns_and_the_api() {
    let r = render(&anonymous(plan(), "free"), &[], &config(&[]));
    let spec = r.default_policy.spec.as_ref().unwrap();
    let egress = spec.egress.as_ref().unwrap();
    assert_eq!(egress.len(), 3);
    // An empty or absent `to` would mean every destination.
    assert!(
        egress
            .iter()
            .all(|rule| rule.to.as_ref().is_some_and(|to| !to.is_empty()))
    );
}

#[test]
fn tiers_not_configured_get_the_default_limits() {
    let r = render(&anonymous(plan(), "anonymous"), &[], &config(&[]));
    let hard = r.quota.spec.unwrap().hard.unwrap();
    assert_eq!(hard["pods"].0, "10");
    assert_eq!(rendered().quota.spec.unwrap().hard.unwrap()["pods"].0, "40");
}

/// With `STACKYARD_K8S_RENDER_DIR` set, writes every rendered object there as a YAML file
/// (`NN-kind-name.yaml`) for `kubernetes-validate --strict` (`k8s-validate`); else does
/// nothing.
#[test]
fn write_rendered_objects_for_schema_validation() {
    let Some(dir) = std::env::var_os("STACKYARD_K8S_RENDER_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The full stack, and the variants the others leave out (no egress CIDRs, no API peer,
    // anonymous, an unexposed-only stack).
    let mut bare = config(&[]);
    bare.artifact_server = None;
    let mut quiet = plan();
    for s in &mut quiet.services {
        s.expose = false;
        s.command.clear();
    }
    let variants = [
        ("full", rendered()),
        ("bare", render(&anonymous(quiet, "anonymous"), &[], &bare)),
    ];
    for (variant, r) in variants {
        for (stem, value) in objects(&r) {
            let yaml = serde_saphyr::to_string(&value).unwrap();
            std::fs::write(dir.join(format!("{variant}-{stem}.yaml")), yaml).unwrap();
        }
    }
}
