//! The Kubernetes runtime driving the fake API server (`stackyard_testkit::fakekube`): no
//! kube-apiserver, kind or k3s can be had where these tests run, so the fake stands in for
//! the cluster; the runtime speaks the real wire protocol to it through a real `kube::Client`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use serde_json::Value;
use stackyard_core::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::{ReleaseService, ServiceStatus, StackId};
use stackyard_core::runtime::{BoxFuture, DeployPlan, Runtime, RuntimeError, StatusSink};
use stackyard_runtime_kubernetes::{
    Backoff, Compute, KubeSettings, KubernetesRuntime, Peer, RenderConfig, TierLimits,
};
use stackyard_testkit::fakekube::{CRASH_LOG_LINE, FakeKube, Fault, Kind};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SLUG: &str = "stk-0123456789abcdef01234567";
const NS: &str = "sy-stk-0123456789abcdef01234567";
/// A stack env value: it must reach the env Secrets and no other object.
const SENTINEL: &str = "sentinel-5d0c-k8s-runtime-value";

fn name(s: &str) -> ServiceName {
    ServiceName::parse(s).unwrap()
}

fn svc(n: &str, expose: bool, artifact: char) -> ReleaseService {
    ReleaseService {
        name: name(n),
        artifact: artifact.to_string().repeat(64),
        image: None,
        command: format!("./{n}"),
        workdir: String::new(),
        port: 8080,
        expose,
        health: None,
        env: BTreeMap::new(),
        needs: Vec::new(),
    }
}

fn plan(release: i64, services: Vec<ReleaseService>, secret: &str) -> DeployPlan {
    DeployPlan {
        stack_id: StackId(1),
        slug: StackSlug::parse(SLUG).unwrap(),
        team: None,
        tier: "free".into(),
        release,
        env_version: release,
        services,
        env: EnvMap::from_map(BTreeMap::from([("API_KEY".to_owned(), secret.to_owned())])),
        granted: Vec::new(),
    }
}

fn compute(cpu: &str, memory: &str) -> Compute {
    Compute {
        cpu: cpu.into(),
        memory: memory.into(),
    }
}

fn settings(exists: bool) -> KubeSettings {
    let limits = TierLimits {
        pods: 10,
        quota_requests: compute("1", "1Gi"),
        quota_limits: compute("2", "2Gi"),
        container_request: compute("100m", "128Mi"),
        container_limit: compute("500m", "512Mi"),
    };
    KubeSettings {
        render: RenderConfig {
            base_domain: "apps.test".into(),
            ingress_class: "nginx".into(),
            ingress_controller: Peer::default(),
            artifact_server: None,
            fetch_image: "busybox:1.37".into(),
            base_image: "debian:bookworm-slim".into(),
            egress_cidrs: Vec::new(),
            deploy_timeout_secs: 3,
            tiers: BTreeMap::new(),
            default_limits: limits,
        },
        artifact_urls: Arc::new(|digest: &str| {
            format!(
                "http://api.test/internal/artifacts/{digest}?expires={}&sig=x",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            )
        }),
        artifact_refresh: Duration::from_millis(100),
        stack_exists: Arc::new(move |_, _| Box::pin(async move { Ok(exists) })),
        url_scheme: "https".into(),
        deploy_timeout: Duration::from_secs(3),
        teardown_timeout: Duration::from_millis(800),
        poll: Duration::from_millis(20),
        backoff: Backoff {
            attempts: 5,
            first: Duration::from_millis(10),
            max: Duration::from_millis(40),
        },
        log_tail: 200,
    }
}

async fn start() -> (Arc<FakeKube>, KubernetesRuntime) {
    let fake = Arc::new(FakeKube::start().await);
    let runtime = KubernetesRuntime::new(fake.client(), settings(true));
    (fake, runtime)
}

/// One report: service, status, URL, error.
type Report = (String, ServiceStatus, Option<String>, Option<String>);

/// Every status a runtime reported, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<Report>>);

impl Recorder {
    fn last(&self, service: &str) -> (ServiceStatus, Option<String>, Option<String>) {
        let all = self.0.lock().unwrap();
        let (_, s, u, e) = all.iter().rev().find(|(n, ..)| n == service).unwrap();
        (*s, u.clone(), e.clone())
    }
}

impl StatusSink for Recorder {
    fn service_status<'a>(
        &'a self,
        service: &'a ServiceName,
        status: ServiceStatus,
        url: Option<&'a str>,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, ()> {
        self.0.lock().unwrap().push((
            service.to_string(),
            status,
            url.map(str::to_owned),
            error.map(str::to_owned),
        ));
        Box::pin(async {})
    }
}

fn template_annotation(deploy: &Value, key: &str) -> String {
    deploy["spec"]["template"]["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn names(objects: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_deploy_applies_every_object_and_reports_healthy_with_the_ingress_url() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    let p = plan(
        1,
        vec![svc("web", true, 'a'), svc("api", false, 'b')],
        SENTINEL,
    );
    runtime.deploy(&p, &sink).await.expect("deployed");

    assert_eq!(
        sink.last("web"),
        (
            ServiceStatus::Healthy,
            Some(format!("https://web-{SLUG}.apps.test")),
            None
        )
    );
    assert_eq!(sink.last("api").0, ServiceStatus::Healthy);
    assert_eq!(sink.last("api").1, None, "not exposed: no URL");
    assert!(fake.namespaces().contains(&NS.to_owned()));
    assert_eq!(names(&fake.list(Kind::Deployment, NS)), ["api", "web"]);
    assert_eq!(names(&fake.list(Kind::Service, NS)), ["api", "web"]);
    assert_eq!(names(&fake.list(Kind::Ingress, NS)), ["web"]);
    assert_eq!(
        names(&fake.list(Kind::Secret, NS)),
        ["api-env", "sy-artifacts", "web-env"]
    );
    assert_eq!(
        names(&fake.list(Kind::NetworkPolicy, NS)),
        ["sy-default", "sy-ingress"]
    );
    // The artifact URLs are keyed by digest; each init container names its key.
    let artifacts = fake.get(Kind::Secret, NS, "sy-artifacts").unwrap();
    let mut keys: Vec<&String> = artifacts["data"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, [&"a".repeat(64), &"b".repeat(64)]);
    let web = fake.get(Kind::Deployment, NS, "web").unwrap();
    let env = &web["spec"]["template"]["spec"]["initContainers"][0]["env"][0];
    assert_eq!(env["valueFrom"]["secretKeyRef"]["key"], "a".repeat(64));
    // Env values only in the env Secrets, in any encoding.
    let encoded = base64_of(SENTINEL);
    for kind in [
        Kind::Namespace,
        Kind::Deployment,
        Kind::Service,
        Kind::Ingress,
        Kind::Pod,
        Kind::NetworkPolicy,
    ] {
        let text = serde_json::to_string(&fake.list(kind, NS)).unwrap();
        assert!(
            !text.contains(SENTINEL) && !text.contains(&encoded),
            "{kind:?}"
        );
    }
    let web_env = fake.get(Kind::Secret, NS, "web-env").unwrap();
    assert_eq!(web_env["data"]["API_KEY"], encoded);
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn a_redeploy_rolls_the_pods_and_is_healthy_only_once_the_new_generation_is_observed() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    runtime
        .deploy(&plan(1, vec![svc("web", true, 'a')], "one"), &sink)
        .await
        .unwrap();
    let first_generation = fake.get(Kind::Deployment, NS, "web").unwrap()["metadata"]["generation"]
        .as_i64()
        .unwrap();
    // The controller now takes a while: a runtime that trusted the stale conditions (or
    // the old replica counts) would report healthy before it acts.
    fake.rollout_delay(Duration::from_millis(400));
    let started = std::time::Instant::now();
    runtime
        .deploy(&plan(2, vec![svc("web", true, 'a')], "two"), &sink)
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    let web = fake.get(Kind::Deployment, NS, "web").unwrap();
    assert_eq!(template_annotation(&web, "stackyard.dev/release"), "2");
    assert!(web["metadata"]["generation"].as_i64().unwrap() > first_generation);
    assert!(
        web["status"]["observedGeneration"].as_i64().unwrap()
            >= web["metadata"]["generation"].as_i64().unwrap()
    );
    let pods = fake.list(Kind::Pod, NS);
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pods[0]["metadata"]["annotations"]["stackyard.dev/release"],
        "2"
    );
}

#[tokio::test]
async fn a_crash_looping_release_fails_fast_with_its_reason_and_logs_while_the_old_one_serves() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    runtime
        .deploy(&plan(1, vec![svc("web", true, 'a')], "one"), &sink)
        .await
        .unwrap();
    fake.fail_next_rollout(NS, "web", Fault::CrashLoopBackOff);
    let started = std::time::Instant::now();
    let mut p2 = plan(
        2,
        vec![svc("web", true, 'c'), svc("extra", false, 'd')],
        "two",
    );
    p2.services[0].command = "./crash".into();
    let err = runtime.deploy(&p2, &sink).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed fast, not at the deadline"
    );
    let RuntimeError::Failed(summary) = err else {
        panic!("a failure, not {err:?}")
    };
    assert!(summary.contains("CrashLoopBackOff"), "{summary}");
    assert!(summary.contains("Release v1 keeps serving"), "{summary}");
    let (status, _, error) = sink.last("web");
    assert_eq!(status, ServiceStatus::Failed);
    let error = error.unwrap();
    assert!(error.contains("CrashLoopBackOff"), "{error}");
    assert!(
        error.contains(CRASH_LOG_LINE),
        "the last log lines: {error}"
    );
    // The previous template and env are back; the service this release added is gone.
    let web = fake.get(Kind::Deployment, NS, "web").unwrap();
    assert_eq!(template_annotation(&web, "stackyard.dev/release"), "1");
    let web_env = fake.get(Kind::Secret, NS, "web-env").unwrap();
    assert_eq!(web_env["data"]["API_KEY"], base64_of("one"));
    assert!(fake.get(Kind::Deployment, NS, "extra").is_none());
    assert!(fake.get(Kind::Secret, NS, "extra-env").is_none());
    // The old release's artifact is still fetchable.
    let artifacts = fake.get(Kind::Secret, NS, "sy-artifacts").unwrap();
    assert!(artifacts["data"].get("a".repeat(64)).is_some());
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_the_release_naming_the_reason() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    fake.fail_next_rollout(NS, "web", Fault::ImagePullBackOff);
    let err = runtime
        .deploy(&plan(1, vec![svc("web", true, 'a')], "one"), &sink)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Failed(m) if m.contains("ImagePullBackOff")),
        "{err:?}"
    );
    // A first release that failed leaves no workload behind.
    assert!(fake.get(Kind::Deployment, NS, "web").is_none());
}

#[tokio::test]
async fn a_removed_service_has_its_objects_deleted_once_the_new_release_is_in() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    runtime
        .deploy(
            &plan(1, vec![svc("web", true, 'a'), svc("old", true, 'b')], "x"),
            &sink,
        )
        .await
        .unwrap();
    assert!(fake.get(Kind::Ingress, NS, "old").is_some());
    runtime
        .deploy(&plan(2, vec![svc("web", true, 'a')], "x"), &sink)
        .await
        .unwrap();
    for kind in [Kind::Deployment, Kind::Service, Kind::Ingress] {
        assert!(fake.get(kind, NS, "old").is_none(), "{kind:?} left behind");
    }
    assert!(fake.get(Kind::Secret, NS, "old-env").is_none());
    let artifacts = fake.get(Kind::Secret, NS, "sy-artifacts").unwrap();
    let keys: Vec<&String> = artifacts["data"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [&"a".repeat(64)],
        "the removed service's URL is gone too"
    );
}

#[tokio::test]
async fn teardown_waits_until_the_namespace_is_gone_and_a_stuck_finalizer_is_retried() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    let slug = StackSlug::parse(SLUG).unwrap();
    runtime
        .deploy(&plan(1, vec![svc("web", true, 'a')], "x"), &sink)
        .await
        .unwrap();
    fake.namespace_delete_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    runtime.teardown(&slug).await.expect("torn down");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(fake.get(Kind::Namespace, "", NS).is_none());
    // Idempotent: a retried teardown of a gone stack succeeds.
    runtime.teardown(&slug).await.expect("again");

    runtime
        .deploy(&plan(1, vec![svc("web", true, 'a')], "x"), &sink)
        .await
        .unwrap();
    fake.stuck_finalizer(NS);
    let err = runtime.teardown(&slug).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Transient(_)), "{err:?}");
    assert!(
        fake.get(Kind::Namespace, "", NS).is_some(),
        "still terminating"
    );
    // A deploy into the terminating namespace is retried later, not failed.
    let again = runtime
        .deploy(&plan(2, vec![svc("web", true, 'a')], "x"), &sink)
        .await
        .unwrap_err();
    assert!(matches!(again, RuntimeError::Transient(_)), "{again:?}");
    fake.release_finalizer(NS);
    runtime.teardown(&slug).await.expect("the retry finishes");
    assert!(fake.get(Kind::Namespace, "", NS).is_none());
}

#[tokio::test]
async fn teardown_never_deletes_a_namespace_stackyard_did_not_create() {
    let (fake, runtime) = start().await;
    let client = fake.client();
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS},
    }))
    .unwrap();
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .create(&Default::default(), &ns)
        .await
        .unwrap();
    runtime
        .teardown(&StackSlug::parse(SLUG).unwrap())
        .await
        .unwrap();
    assert!(fake.get(Kind::Namespace, "", NS).is_some());
}

#[tokio::test]
async fn throttled_and_failing_api_calls_are_retried_and_an_outage_is_transient() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    // kube's client waits out a 429's `Retry-After` (1 s) itself; a 500 is the runtime's to
    // retry.
    fake.answer_next(1, 429);
    fake.answer_next_on("/apis/apps/v1/namespaces", 3, 500);
    runtime
        .deploy(&plan(1, vec![svc("web", true, 'a')], "x"), &sink)
        .await
        .expect("retried through");
    assert_eq!(sink.last("web").0, ServiceStatus::Healthy);
    let failed: Vec<u16> = fake
        .requests()
        .iter()
        .map(|r| r.status)
        .filter(|s| *s >= 429)
        .collect();
    assert_eq!(failed.iter().filter(|s| **s == 429).count(), 1);
    assert_eq!(failed.iter().filter(|s| **s == 500).count(), 3);

    // More failures than attempts: a transient error the job queue retries, not a failure.
    fake.answer_next(50, 500);
    let err = runtime
        .deploy(&plan(2, vec![svc("web", true, 'a')], "x"), &sink)
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn recovery_deletes_namespaces_of_gone_stacks_and_redeploys_missing_ones() {
    let fake = FakeKube::start().await;
    let first = KubernetesRuntime::new(fake.client(), settings(true));
    let sink = Recorder::default();
    first
        .deploy(&plan(1, vec![svc("web", true, 'a')], "x"), &sink)
        .await
        .unwrap();
    // Restarted with a store that no longer has that stack, and another that should run.
    let restarted = KubernetesRuntime::new(fake.client(), settings(false));
    let mut other = plan(4, vec![svc("api", false, 'b')], "y");
    other.slug = StackSlug::parse("stk-fedcba9876543210fedcba98").unwrap();
    restarted.recover(vec![other]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let namespaces = fake.namespaces();
        let gone = !namespaces.contains(&NS.to_owned());
        let back = fake
            .get(Kind::Deployment, "sy-stk-fedcba9876543210fedcba98", "api")
            .is_some_and(|d| d["status"]["availableReplicas"] == 1);
        if gone && back {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reconciled: {namespaces:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn artifact_urls_are_signed_anew_without_rolling_the_pods() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    runtime
        .deploy(&plan(1, vec![svc("web", true, 'a')], "x"), &sink)
        .await
        .unwrap();
    runtime.recover(Vec::new()).await.unwrap();
    let url = |fake: &FakeKube| {
        fake.get(Kind::Secret, NS, "sy-artifacts").unwrap()["data"]["a".repeat(64)].clone()
    };
    let before = url(&fake);
    let generation =
        fake.get(Kind::Deployment, NS, "web").unwrap()["metadata"]["generation"].clone();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_ne!(url(&fake), before, "re-signed");
    let after = fake.get(Kind::Deployment, NS, "web").unwrap();
    assert_eq!(
        after["metadata"]["generation"], generation,
        "no new rollout"
    );
}

#[tokio::test]
async fn logs_merge_the_pods_and_follow_re_attaches_to_a_replacement_pod() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    let slug = StackSlug::parse(SLUG).unwrap();
    runtime
        .deploy(&plan(1, vec![svc("web", true, 'a')], "x"), &sink)
        .await
        .unwrap();
    let pod = names(&fake.list(Kind::Pod, NS)).remove(0);
    fake.push_log(NS, &pod, "one");
    fake.push_log(NS, &pod, "two");
    fake.push_log(NS, &pod, "three");
    let logs = runtime
        .logs(&slug, &name("web"), 2, true)
        .await
        .unwrap()
        .expect("logs");
    let texts: Vec<&str> = logs.backlog.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["two", "three"]);
    let mut follow = logs.follow.expect("a follow");
    fake.push_log(NS, &pod, "four");
    let next = tokio::time::timeout(Duration::from_secs(5), follow.next()).await;
    assert_eq!(
        next.unwrap().unwrap().text,
        "four",
        "no repeat of the backlog"
    );

    // A new release replaces the pod: the follower attaches to the new one.
    runtime
        .deploy(&plan(2, vec![svc("web", true, 'a')], "y"), &sink)
        .await
        .unwrap();
    let new_pod = names(&fake.list(Kind::Pod, NS)).remove(0);
    assert_ne!(new_pod, pod);
    fake.push_log(NS, &new_pod, "from the new pod");
    let next = tokio::time::timeout(Duration::from_secs(5), follow.next()).await;
    assert_eq!(next.unwrap().unwrap().text, "from the new pod");

    let none = runtime
        .logs(
            &StackSlug::parse("stk-fedcba9876543210fedcba98").unwrap(),
            &name("web"),
            10,
            false,
        )
        .await
        .unwrap();
    assert!(none.is_none(), "no namespace, no logs");
}

#[tokio::test]
async fn restart_rolls_the_pods_of_the_running_release_in_place() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    let slug = StackSlug::parse(SLUG).unwrap();
    runtime
        .deploy(
            &plan(3, vec![svc("web", true, 'a'), svc("api", false, 'b')], "x"),
            &sink,
        )
        .await
        .unwrap();
    let before = names(&fake.list(Kind::Pod, NS));
    // Another replica, which did not deploy the stack, runs the restart job.
    let other = KubernetesRuntime::new(fake.client(), settings(true));
    other
        .restart(&slug, 3, Some(&name("web")), &sink)
        .await
        .expect("restarted");
    let after = names(&fake.list(Kind::Pod, NS));
    let web_before: Vec<_> = before.iter().filter(|p| p.starts_with("web-")).collect();
    let web_after: Vec<_> = after.iter().filter(|p| p.starts_with("web-")).collect();
    assert_ne!(web_before, web_after, "web's pod was replaced");
    let api = |v: &Vec<String>| {
        v.iter()
            .filter(|p| p.starts_with("api-"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(api(&before), api(&after), "api untouched");
    assert_eq!(
        sink.last("web"),
        (
            ServiceStatus::Healthy,
            Some(format!("https://web-{SLUG}.apps.test")),
            None
        )
    );
    let stale = other.restart(&slug, 2, None, &sink).await.unwrap_err();
    assert!(matches!(stale, RuntimeError::Failed(_)));
}

#[tokio::test]
async fn custom_domains_reach_the_ingress_whichever_replica_deployed_the_stack() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    runtime
        .deploy(
            &plan(1, vec![svc("web", true, 'a'), svc("api", false, 'b')], "x"),
            &sink,
        )
        .await
        .unwrap();
    let hosts = |fake: &FakeKube| -> Vec<String> {
        fake.get(Kind::Ingress, NS, "web").unwrap()["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["host"].as_str().unwrap().to_owned())
            .collect()
    };
    let own = format!("web-{SLUG}.apps.test");
    assert_eq!(hosts(&fake), std::slice::from_ref(&own));
    let other = KubernetesRuntime::new(fake.client(), settings(true));
    other.set_domain_routes(vec![
        ("shop.example.com".into(), format!("https://{own}")),
        (
            "elsewhere.example.com".into(),
            "https://web-stk-other.apps.test".into(),
        ),
    ]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hosts(&fake) != [own.clone(), "shop.example.com".to_owned()] {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", hosts(&fake));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.set_domain_routes(Vec::new());
    while hosts(&fake) != [own.clone()] {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", hosts(&fake));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The service URL the domain names is the Ingress's, so the deploy renders it too.
    runtime.set_domain_routes(vec![("shop.example.com".into(), format!("https://{own}"))]);
    runtime
        .deploy(
            &plan(2, vec![svc("web", true, 'a'), svc("api", false, 'b')], "x"),
            &sink,
        )
        .await
        .unwrap();
    assert_eq!(hosts(&fake), [own, "shop.example.com".to_owned()]);
}

#[tokio::test]
async fn a_stack_id_too_long_for_a_namespace_fails_and_creates_nothing() {
    let (fake, runtime) = start().await;
    let sink = Recorder::default();
    let mut p = plan(1, vec![svc("web", true, 'a')], "x");
    p.slug = StackSlug::parse(&format!("stk-{}", "a".repeat(60))).unwrap();
    let err = runtime.deploy(&p, &sink).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Failed(m) if m.contains("too long")),
        "{err:?}"
    );
    assert!(
        fake.namespaces()
            .iter()
            .all(|n| !n.starts_with("sy-stk-aaaa"))
    );
}
