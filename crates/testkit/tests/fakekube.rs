//! The fake Kubernetes API server, driven the way the runtime drives a cluster: typed
//! `kube::Api` calls through a real `kube::Client`.

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::core::WatchEvent;
use serde_json::json;
use stackyard_testkit::fakekube::{FakeKube, Fault, Kind};
use std::future::Future;
use std::time::Duration;

const NS: &str = "sy-shop";

fn apply() -> PatchParams {
    PatchParams::apply("stackyard").force()
}

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "stackyard", "stackyard.dev/stack": "shop"},
        },
    }))
    .expect("a Namespace")
}

/// Deployment `name` of `replicas` pods for release `release`.
fn deployment(name: &str, release: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"stackyard.dev/stack": "shop", "stackyard.dev/service": name},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"stackyard.dev/service": name}},
            "template": {
                "metadata": {
                    "labels": {"stackyard.dev/stack": "shop", "stackyard.dev/service": name},
                    "annotations": {
                        "stackyard.dev/release": release,
                        "stackyard.dev/env-sha256": "abc",
                    },
                },
                "spec": {
                    "initContainers": [{"name": "fetch", "image": "busybox"}],
                    "containers": [{"name": "app", "image": "stackyard/base:1"}],
                },
            },
        },
    }))
    .expect("a Deployment")
}

fn secret(name: &str, value: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "labels": {"stackyard.dev/service": "web"}},
        "type": "Opaque",
        "stringData": {"GREETING": value},
    }))
    .expect("a Secret")
}

/// Polls `f` until it returns `Some`, for up to five seconds.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Applies the namespace and Deployment `name` and returns the generation the apply reported.
async fn deploy(client: &kube::Client, name: &str, release: &str) -> i64 {
    Api::<Namespace>::all(client.clone())
        .patch(NS, &apply(), &Patch::Apply(namespace(NS)))
        .await
        .expect("apply the namespace");
    let applied = Api::<Deployment>::namespaced(client.clone(), NS)
        .patch(name, &apply(), &Patch::Apply(deployment(name, release, 1)))
        .await
        .expect("apply the Deployment");
    applied.metadata.generation.expect("a generation")
}

/// Waits until the controller has observed `generation` of Deployment `name`.
async fn observed(client: &kube::Client, name: &str, generation: i64) -> Deployment {
    let api = Api::<Deployment>::namespaced(client.clone(), NS);
    eventually("the controller observes the generation", || {
        let api = api.clone();
        async move {
            let d = api.get(name).await.expect("get the Deployment");
            let seen = d.status.as_ref()?.observed_generation?;
            (seen >= generation).then_some(d)
        }
    })
    .await
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test]
async fn reapply_unchanged_keeps_generation_and_version_and_changed_spec_bumps_generation() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    let first = deploy(&client, "web", "1").await;
    assert_eq!(first, 1);
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let s = secrets
        .patch("web-env", &apply(), &Patch::Apply(secret("web-env", "hi")))
        .await
        .expect("apply the Secret");
    let data = s.data.expect("stringData stored as data");
    assert_eq!(data["GREETING"].0, b"hi");

    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    let before = deployments.get("web").await.expect("get");
    let again = deployments
        .patch("web", &apply(), &Patch::Apply(deployment("web", "1", 1)))
        .await
        .expect("re-apply");
    assert_eq!(again.metadata.generation, before.metadata.generation);
    assert_eq!(
        again.metadata.resource_version,
        before.metadata.resource_version
    );
    assert!(again.metadata.uid.is_some() && again.metadata.creation_timestamp.is_some());

    let changed = deployments
        .patch("web", &apply(), &Patch::Apply(deployment("web", "2", 1)))
        .await
        .expect("apply release 2");
    assert_eq!(changed.metadata.generation, Some(2));
    let rv = |d: &Deployment| -> u64 {
        d.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("a numeric resourceVersion")
    };
    assert!(rv(&changed) > rv(&before));
}

#[tokio::test]
async fn apply_removes_labels_the_manager_no_longer_names() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    deploy(&client, "web", "1").await;
    let mut d = deployment("web", "1", 1);
    d.metadata
        .labels
        .as_mut()
        .expect("labels")
        .remove("stackyard.dev/stack");
    let got = Api::<Deployment>::namespaced(client, NS)
        .patch("web", &apply(), &Patch::Apply(d))
        .await
        .expect("apply");
    let labels = got.metadata.labels.expect("labels");
    assert!(!labels.contains_key("stackyard.dev/stack"), "{labels:?}");
    assert_eq!(got.metadata.generation, Some(1), "labels are not spec");
}

#[tokio::test]
async fn controller_makes_the_new_generation_ready_with_the_template_annotations() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    deploy(&client, "web", "1").await;
    let applied = deployments
        .patch("web", &apply(), &Patch::Apply(deployment("web", "2", 2)))
        .await
        .expect("apply release 2 with two replicas");
    let generation = applied.metadata.generation.expect("a generation");

    let d = observed(&client, "web", generation).await;
    let status = d.status.expect("a status");
    assert_eq!(status.observed_generation, Some(generation));
    assert_eq!(status.replicas, Some(2));
    assert_eq!(status.updated_replicas, Some(2));
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(status.available_replicas, Some(2));
    let conditions = status.conditions.expect("conditions");
    assert!(conditions.iter().any(
        |c| c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
    ));
    assert!(
        conditions
            .iter()
            .any(|c| c.type_.as_deref() == Some("Progressing")
                && c.reason.as_deref() == Some("NewReplicaSetAvailable"))
    );

    let pods = Api::<Pod>::namespaced(client, NS)
        .list(&ListParams::default().labels("stackyard.dev/service=web"))
        .await
        .expect("list pods");
    assert_eq!(pods.items.len(), 2, "release 1's pod is gone");
    for pod in &pods.items {
        let annotations = pod.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations["stackyard.dev/release"], "2");
        let name = pod.metadata.name.as_deref().expect("a name");
        assert!(name.starts_with("web-"), "{name}");
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(ready, "{name} is Ready");
    }
    assert!(
        fake.get(
            Kind::Pod,
            NS,
            pods.items[0].metadata.name.as_deref().unwrap_or_default()
        )
        .is_some()
    );
}

#[tokio::test]
async fn list_by_label_selector_supports_equality_existence_and_sets() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    deploy(&client, "web", "1").await;
    deploy(&client, "worker", "1").await;
    let api = Api::<Deployment>::namespaced(client.clone(), NS);
    let names = |lp: ListParams| {
        let api = api.clone();
        async move {
            let mut names: Vec<String> = api
                .list(&lp)
                .await
                .expect("list")
                .items
                .into_iter()
                .filter_map(|d| d.metadata.name)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(names(ListParams::default()).await, ["web", "worker"]);
    assert_eq!(
        names(ListParams::default().labels("stackyard.dev/stack=shop,stackyard.dev/service=web"))
            .await,
        ["web"]
    );
    assert_eq!(
        names(ListParams::default().labels("stackyard.dev/service")).await,
        ["web", "worker"]
    );
    assert!(
        names(ListParams::default().labels("!stackyard.dev/service"))
            .await
            .is_empty()
    );
    assert_eq!(
        names(ListParams::default().labels("stackyard.dev/service notin (web)")).await,
        ["worker"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name=worker")).await,
        ["worker"]
    );
    let all = Api::<Deployment>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list all");
    assert_eq!(all.items.len(), 2);
}

#[tokio::test]
async fn watch_from_a_resource_version_sees_added_then_modified() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    Api::<Namespace>::all(client.clone())
        .patch(NS, &apply(), &Patch::Apply(namespace(NS)))
        .await
        .expect("apply the namespace");
    let api = Api::<Deployment>::namespaced(client.clone(), NS);
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("a list resourceVersion");
    let wp = kube::api::WatchParams::default()
        .labels("stackyard.dev/service=web")
        .timeout(10);
    let mut events = api.watch(&wp, &rv).await.expect("watch").boxed();
    api.patch("web", &apply(), &Patch::Apply(deployment("web", "1", 1)))
        .await
        .expect("apply");

    let first = events
        .try_next()
        .await
        .expect("an event")
        .expect("not the end");
    let WatchEvent::Added(d) = first else {
        panic!("expected ADDED, got {first:?}");
    };
    assert_eq!(d.metadata.name.as_deref(), Some("web"));
    // The controller's status update.
    let second = events
        .try_next()
        .await
        .expect("an event")
        .expect("not the end");
    let WatchEvent::Modified(d) = second else {
        panic!("expected MODIFIED, got {second:?}");
    };
    assert_eq!(d.status.and_then(|s| s.observed_generation), Some(1));

    // Without a resourceVersion, what exists comes first as ADDED.
    let mut namespaces = Api::<Namespace>::all(client)
        .watch(&kube::api::WatchParams::default().timeout(5), "0")
        .await
        .expect("watch namespaces")
        .boxed();
    let first = namespaces
        .try_next()
        .await
        .expect("an event")
        .expect("not the end");
    assert!(matches!(first, WatchEvent::Added(ns) if ns.metadata.name.as_deref() == Some(NS)));
}

#[tokio::test]
async fn watch_ends_at_its_timeout() {
    let fake = FakeKube::start().await;
    let api = Api::<Pod>::namespaced(fake.client(), NS);
    let wp = kube::api::WatchParams::default().timeout(1);
    let started = tokio::time::Instant::now();
    let events: Vec<_> = api.watch(&wp, "1").await.expect("watch").collect().await;
    assert!(events.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// The pods of release `release` of `web`.
async fn pods_of(client: &kube::Client, release: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels("stackyard.dev/service=web"))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| {
            p.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a["stackyard.dev/release"] == release)
        })
        .collect()
}

#[tokio::test]
async fn waiting_faults_show_on_the_new_pods_while_the_old_pod_keeps_serving() {
    for (fault, reason) in [
        (Fault::ImagePullBackOff, "ImagePullBackOff"),
        (Fault::CrashLoopBackOff, "CrashLoopBackOff"),
    ] {
        let fake = FakeKube::start().await;
        let client = fake.client();
        let g1 = deploy(&client, "web", "1").await;
        observed(&client, "web", g1).await;
        fake.fail_next_rollout(NS, "web", fault);
        let g2 = Api::<Deployment>::namespaced(client.clone(), NS)
            .patch("web", &apply(), &Patch::Apply(deployment("web", "2", 1)))
            .await
            .expect("apply release 2")
            .metadata
            .generation
            .expect("a generation");
        let d = observed(&client, "web", g2).await;
        let status = d.status.expect("a status");
        assert_eq!(status.updated_replicas, Some(1));
        assert_eq!(status.available_replicas, Some(1), "the old pod serves");
        assert_eq!(
            status.replicas,
            Some(2),
            "{reason}: not ready for the new generation"
        );

        let new = pods_of(&client, "2").await;
        assert_eq!(new.len(), 1);
        let waiting = new[0]
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone());
        assert_eq!(waiting.as_deref(), Some(reason));
        assert_eq!(
            pods_of(&client, "1").await.len(),
            1,
            "{reason}: the old pod stays"
        );

        // The fault was for one rollout: the next release rolls out and replaces both.
        let g3 = Api::<Deployment>::namespaced(client.clone(), NS)
            .patch("web", &apply(), &Patch::Apply(deployment("web", "3", 1)))
            .await
            .expect("apply release 3")
            .metadata
            .generation
            .expect("a generation");
        let d = observed(&client, "web", g3).await;
        assert_eq!(d.status.and_then(|s| s.replicas), Some(1));
        assert!(pods_of(&client, "1").await.is_empty() && pods_of(&client, "2").await.is_empty());
    }
}

#[tokio::test]
async fn progress_deadline_exceeded_sets_the_progressing_condition_false() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    fake.fail_next_rollout(NS, "web", Fault::ProgressDeadlineExceeded);
    let g = deploy(&client, "web", "1").await;
    let d = observed(&client, "web", g).await;
    let status = d.status.expect("a status");
    assert_eq!(status.available_replicas, Some(0));
    let progressing = status
        .conditions
        .into_iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some("Progressing"))
        .expect("a Progressing condition");
    assert_eq!(progressing.status.as_deref(), Some("False"));
    assert_eq!(
        progressing.reason.as_deref(),
        Some("ProgressDeadlineExceeded")
    );
    assert!(
        progressing
            .message
            .unwrap_or_default()
            .contains("timed out progressing")
    );
}

#[tokio::test]
async fn too_many_requests_is_retried_by_the_client_and_internal_errors_surface_once() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    let namespaces = Api::<Namespace>::all(client);
    namespaces
        .patch(NS, &apply(), &Patch::Apply(namespace(NS)))
        .await
        .expect("apply");

    fake.answer_next(1, 429);
    namespaces
        .get(NS)
        .await
        .expect("kube retries a 429 after Retry-After");
    let answered: Vec<u16> = fake
        .requests()
        .iter()
        .rev()
        .take(2)
        .map(|r| r.status)
        .collect();
    assert_eq!(answered, [200, 429]);

    fake.answer_next_on("/api/v1/namespaces", 2, 500);
    for _ in 0..2 {
        let err = namespaces.get(NS).await.expect_err("a 500");
        assert_eq!(api_code(&err), Some(500), "{err}");
    }
    namespaces.get(NS).await.expect("recovered");

    fake.answer_next(1, 409);
    let err = namespaces.get(NS).await.expect_err("a 409");
    assert_eq!(api_code(&err), Some(409));
}

#[tokio::test]
async fn missing_objects_are_404_status_and_creating_an_existing_name_is_409() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    let err = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("nope")
        .await
        .expect_err("missing");
    let kube::Error::Api(status) = &err else {
        panic!("expected an API error, got {err}");
    };
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));

    // No namespace yet: a namespaced object cannot be created.
    let err = Api::<Secret>::namespaced(client.clone(), NS)
        .patch("web-env", &apply(), &Patch::Apply(secret("web-env", "x")))
        .await
        .expect_err("no namespace");
    assert_eq!(api_code(&err), Some(404));

    let namespaces = Api::<Namespace>::all(client);
    namespaces
        .create(&PostParams::default(), &namespace(NS))
        .await
        .expect("create");
    let err = namespaces
        .create(&PostParams::default(), &namespace(NS))
        .await
        .expect_err("exists");
    assert_eq!(api_code(&err), Some(409));
}

#[tokio::test]
async fn namespace_delete_stays_terminating_until_the_delay_then_is_gone_with_its_contents() {
    let fake = FakeKube::start().await;
    fake.namespace_delete_delay(Duration::from_millis(500));
    let client = fake.client();
    let g = deploy(&client, "web", "1").await;
    observed(&client, "web", g).await;
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .delete(NS, &DeleteParams::foreground())
        .await
        .expect("delete");

    let ns = namespaces.get(NS).await.expect("still there");
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert!(ns.metadata.deletion_timestamp.is_some());
    let err = Api::<Secret>::namespaced(client.clone(), NS)
        .patch("web-env", &apply(), &Patch::Apply(secret("web-env", "x")))
        .await
        .expect_err("no new content in a terminating namespace");
    assert_eq!(api_code(&err), Some(403));

    eventually("the namespace is gone", || {
        let namespaces = namespaces.clone();
        async move {
            match namespaces.get(NS).await {
                Err(e) if api_code(&e) == Some(404) => Some(()),
                Ok(_) => None,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert!(fake.list(Kind::Pod, NS).is_empty());
    assert!(fake.get(Kind::Deployment, NS, "web").is_none());
    assert!(fake.namespaces().is_empty());
}

#[tokio::test]
async fn stuck_finalizer_keeps_the_namespace_terminating() {
    let fake = FakeKube::start().await;
    fake.namespace_delete_delay(Duration::from_millis(50));
    fake.stuck_finalizer(NS);
    let client = fake.client();
    let namespaces = Api::<Namespace>::all(client);
    namespaces
        .patch(NS, &apply(), &Patch::Apply(namespace(NS)))
        .await
        .expect("apply");
    namespaces
        .delete(NS, &DeleteParams::foreground())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let ns = namespaces.get(NS).await.expect("still there");
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    assert!(ns.metadata.finalizers.is_some_and(|f| !f.is_empty()));

    fake.release_finalizer(NS);
    eventually("released, the namespace goes", || {
        let namespaces = namespaces.clone();
        async move { namespaces.get(NS).await.is_err().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn pod_log_follow_streams_the_tail_then_new_lines_and_ends_with_the_pod() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    let g = deploy(&client, "web", "1").await;
    observed(&client, "web", g).await;
    let pod = pods_of(&client, "1").await.remove(0);
    let name = pod.metadata.name.expect("a name");
    for line in ["one", "two", "three"] {
        fake.push_log(NS, &name, line);
    }
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    let lp = LogParams {
        follow: true,
        tail_lines: Some(2),
        timestamps: true,
        ..LogParams::default()
    };
    let mut lines = pods
        .log_stream(&name, &lp)
        .await
        .expect("log stream")
        .lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(5), lines.next())
            .await
            .expect("a line in time")
    };
    let strip = |l: String| -> String {
        let (ts, text) = l.split_once(' ').expect("a timestamp prefix");
        assert!(
            ts.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
            "RFC 3339: {ts}"
        );
        text.to_owned()
    };
    assert_eq!(strip(next().await.expect("a line").expect("io")), "two");
    assert_eq!(strip(next().await.expect("a line").expect("io")), "three");
    fake.push_log(NS, &name, "four");
    assert_eq!(strip(next().await.expect("a line").expect("io")), "four");

    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete the pod");
    assert!(next().await.is_none(), "the stream ends with the pod");

    // Without follow, the log is read once.
    let g = Api::<Deployment>::namespaced(client.clone(), NS)
        .patch("web", &apply(), &Patch::Apply(deployment("web", "2", 1)))
        .await
        .expect("apply")
        .metadata
        .generation
        .expect("a generation");
    observed(&client, "web", g).await;
    let pod = pods_of(&client, "2")
        .await
        .remove(0)
        .metadata
        .name
        .expect("a name");
    fake.push_log(NS, &pod, "hello");
    let text = pods.logs(&pod, &LogParams::default()).await.expect("logs");
    assert_eq!(text, "hello\n");
}

#[tokio::test]
async fn another_manager_conflicts_without_force_and_takes_over_with_it() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    deploy(&client, "web", "1").await;
    let api = Api::<Deployment>::namespaced(client, NS);
    let other = deployment("web", "9", 1);
    let err = api
        .patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(&other))
        .await
        .expect_err("spec is stackyard's");
    assert_eq!(api_code(&err), Some(409), "{err}");
    let took = api
        .patch(
            "web",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&other),
        )
        .await
        .expect("forced");
    assert_eq!(took.metadata.generation, Some(2));
}

#[tokio::test]
async fn discovery_and_replica_sets_answer() {
    let fake = FakeKube::start().await;
    let client = fake.client();
    let version = client.apiserver_version().await.expect("/version");
    assert_eq!(version.major, "1");
    let groups = client.list_api_groups().await.expect("/apis");
    assert!(groups.groups.iter().any(|g| g.name == "apps"));
    let g = deploy(&client, "web", "1").await;
    observed(&client, "web", g).await;
    let rs = Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(client, NS)
        .list(&ListParams::default())
        .await
        .expect("list ReplicaSets");
    assert_eq!(rs.items.len(), 1);
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path == "/version")
    );
}
