//! The API with `--runtime kubernetes` against the fake API server
//! (`stackyard_testkit::fakekube`): no kube-apiserver, kind or k3s can be had where these
//! tests run, so the fake stands in for the cluster. The server reaches it through a
//! kubeconfig, as it would a real one.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use stackyard_testkit::fakekube::{FakeKube, Fault, Kind};
use std::time::Duration;

/// A server on `backend` whose runtime is the fake cluster's.
async fn spawn(
    backend: Backend,
    fake: &FakeKube,
    dir: &tempfile::TempDir,
    extra: &[&str],
) -> Option<TestApp> {
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: fake, user: {{}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
            fake.url()
        ),
    )
    .unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let mut args = vec![
        "--runtime",
        "kubernetes",
        "--kubeconfig",
        &kubeconfig,
        "--k8s-poll",
        "20ms",
        "--deploy-timeout",
        "5s",
        "--k8s-teardown-timeout",
        "1s",
        "--base-domain",
        "apps.test",
    ];
    args.extend_from_slice(extra);
    TestApp::spawn_with(backend, &args).await
}

fn ns(slug: &str) -> String {
    format!("sy-{slug}")
}

fn names(objects: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn release_of(deploy: &Value) -> String {
    deploy["spec"]["template"]["metadata"]["annotations"]["stackyard.dev/release"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn create_healthy(app: &TestApp, token: &str) -> String {
    let (code, body) = app
        .create_stack(Some(token), two_service_form("on a cluster"))
        .await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    app.wait_for(&slug, Some(token), |_, b| {
        b["status"] == "healthy" && b["release"]["status"] == "live"
    })
    .await;
    slug
}

/// Create → healthy with the objects of kubernetes.md and the Ingress URL; an env change
/// and a redeploy roll the pods, healthy only once the new generation is observed; env
/// values only in Secrets; DELETE answers once the namespace is gone.
async fn a_stack_runs_redeploys_and_goes_on_the_cluster(backend: Backend) {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = spawn(backend, &fake, &dir, &[]).await else {
        return;
    };
    let token = app.admin_token.clone();
    let slug = create_healthy(&app, &token).await;
    let ns = ns(&slug);
    let (_, stack) = call(app.get(&format!("/stacks/{slug}"), Some(&token))).await;
    assert_eq!(
        stack["services"][1]["url"],
        format!("https://web-{slug}.apps.test"),
        "{stack}"
    );
    assert_eq!(names(&fake.list(Kind::Deployment, &ns)), ["api", "web"]);
    assert_eq!(names(&fake.list(Kind::Ingress, &ns)), ["web"]);
    // `service://web` resolved to the cluster address.
    let api_env = fake.get(Kind::Secret, &ns, "api-env").unwrap();
    assert_eq!(
        decode(&api_env["data"]["WEB"]),
        format!("http://web.{ns}.svc:8080")
    );

    // What an init container fetches: the signed URL in `sy-artifacts`, served by the API.
    let web = fake.get(Kind::Deployment, &ns, "web").unwrap();
    let key =
        web["spec"]["template"]["spec"]["initContainers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
            ["key"]
            .as_str()
            .unwrap()
            .to_owned();
    let artifacts = fake.get(Kind::Secret, &ns, "sy-artifacts").unwrap();
    let signed = decode(&artifacts["data"][&key]);
    let path = signed
        .strip_prefix("http://stackyard.stackyard.svc:8700")
        .expect("the default --k8s-artifact-base-url");
    let res = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.bytes().await.unwrap();
    let digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert_eq!(digest, key, "the tarball of web's release");

    // Logs come from the pods, through the API's stream.
    let pod = names(&fake.list(Kind::Pod, &ns))
        .into_iter()
        .find(|p| p.starts_with("web-"))
        .unwrap();
    fake.push_log(&ns, &pod, "GET / 200");
    let res = app
        .get(
            &format!("/stacks/{slug}/logs/web?follow=false"),
            Some(&token),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains("data: GET / 200"), "{text}");

    let secret = stackyard_testkit::leaks::register("k8s-api-secret-4f1d9a").to_owned();
    let (code, body) = call(
        app.patch(&format!("/stacks/{slug}/env"), Some(&token))
            .json(&json!({"env": {"API_SECRET": secret}})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // The controller now takes a while to act: healthy must wait for it.
    fake.rollout_delay(Duration::from_millis(300));
    let (code, body) = call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&token))).await;
    assert_eq!(code, 202, "{body}");
    let (_, live) = app
        .wait_for(&slug, Some(&token), |_, b| {
            b["release"]["version"] == 2 && b["release"]["status"] == "live"
        })
        .await;
    assert_eq!(live["status"], "healthy");
    for name in ["api", "web"] {
        let d = fake.get(Kind::Deployment, &ns, name).unwrap();
        assert_eq!(release_of(&d), "2");
        assert!(
            d["status"]["observedGeneration"].as_i64() >= d["metadata"]["generation"].as_i64(),
            "healthy before the controller saw the new template"
        );
    }
    for pod in fake.list(Kind::Pod, &ns) {
        assert_eq!(pod["metadata"]["annotations"]["stackyard.dev/release"], "2");
    }
    let encoded = base64(&secret);
    for kind in [
        Kind::Deployment,
        Kind::Pod,
        Kind::Service,
        Kind::Ingress,
        Kind::Namespace,
    ] {
        let text = serde_json::to_string(&fake.list(kind, &ns)).unwrap();
        assert!(
            !text.contains(&secret) && !text.contains(&encoded),
            "{kind:?}"
        );
    }
    let web_env = fake.get(Kind::Secret, &ns, "web-env").unwrap();
    assert_eq!(decode(&web_env["data"]["API_SECRET"]), secret);

    fake.namespace_delete_delay(Duration::from_millis(300));
    let (code, body) = call(app.delete(&format!("/stacks/{slug}"), Some(&token))).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        !fake.namespaces().contains(&ns),
        "DELETE answered before the namespace was gone"
    );
}

/// A crash-looping release fails fast with its reason while the previous one keeps serving;
/// a redeploy that drops a service deletes that service's objects.
async fn a_failing_release_leaves_the_old_one_and_a_dropped_service_is_pruned(backend: Backend) {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = spawn(backend, &fake, &dir, &[]).await else {
        return;
    };
    let token = app.admin_token.clone();
    let slug = create_healthy(&app, &token).await;
    let ns = ns(&slug);

    fake.fail_next_rollout(&ns, "web", Fault::CrashLoopBackOff);
    let started = std::time::Instant::now();
    let (code, body) = call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&token))).await;
    assert_eq!(code, 202, "{body}");
    let (_, failed) = app
        .wait_for(&slug, Some(&token), |_, b| {
            b["release"]["status"] == "failed"
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed at the deadline, not fast"
    );
    // The stack stays healthy on release 1, and says why release 2 failed.
    assert_eq!(failed["status"], "healthy", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("CrashLoopBackOff"), "{failed}");
    assert!(error.contains("Release v1 keeps serving"), "{failed}");
    let (_, releases) = call(app.get(&format!("/stacks/{slug}/releases"), Some(&token))).await;
    let text = releases.to_string();
    assert!(text.contains("failed"), "{releases}");
    for name in ["api", "web"] {
        let d = fake.get(Kind::Deployment, &ns, name).unwrap();
        assert_eq!(release_of(&d), "1", "{name} is back on the serving release");
    }

    // Release 3 drops `api`.
    let form = Form::new()
        .text("manifest", "services:\n  web:\n    expose: true\n")
        .part(
            "web",
            Part::bytes(tarball(&[("Procfile", "web: python3 -m http.server\n")]))
                .file_name("web.tar.gz"),
        );
    let (code, body) = call(
        app.post(&format!("/stacks/{slug}/redeploy"), Some(&token))
            .multipart(form),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    app.wait_for(&slug, Some(&token), |_, b| {
        b["release"]["version"] == 3 && b["release"]["status"] == "live"
    })
    .await;
    assert_eq!(names(&fake.list(Kind::Deployment, &ns)), ["web"]);
    assert!(fake.get(Kind::Service, &ns, "api").is_none());
    assert!(fake.get(Kind::Secret, &ns, "api-env").is_none());
}

/// A service that names an `image:` runs that image with no tarball and no fetch; its
/// neighbour's artifact is the only URL in `sy-artifacts`.
async fn an_image_service_runs_its_image_and_fetches_nothing(backend: Backend) {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = spawn(backend, &fake, &dir, &[]).await else {
        return;
    };
    let token = app.admin_token.clone();
    let form = Form::new()
        .text("name", "with an image")
        .text(
            "manifest",
            "services:\n  proxy:\n    image: nginx:1.27\n    port: 80\n    expose: true\n  api:\n    port: 3000\n",
        )
        .part(
            "api",
            Part::bytes(tarball(&[("Procfile", "web: ./api\n")])).file_name("api.tar.gz"),
        );
    let (code, body) = app.create_stack(Some(&token), form).await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    let (_, live) = app
        .wait_for(&slug, Some(&token), |_, b| {
            b["status"] == "healthy" && b["release"]["status"] == "live"
        })
        .await;
    assert_eq!(live["services"][0]["name"], "proxy", "manifest order kept");
    let ns = ns(&slug);
    let proxy = fake.get(Kind::Deployment, &ns, "proxy").unwrap();
    let pod = &proxy["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "nginx:1.27");
    assert!(pod["initContainers"].is_null(), "{pod}");
    let artifacts = fake.get(Kind::Secret, &ns, "sy-artifacts").unwrap();
    assert_eq!(
        artifacts["data"].as_object().unwrap().len(),
        1,
        "api's only"
    );
    // A redeploy without a body keeps running the image.
    let (code, body) = call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&token))).await;
    assert_eq!(code, 202, "{body}");
    app.wait_for(&slug, Some(&token), |_, b| {
        b["release"]["version"] == 2 && b["release"]["status"] == "live"
    })
    .await;
    let proxy = fake.get(Kind::Deployment, &ns, "proxy").unwrap();
    assert_eq!(
        proxy["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
}

/// 429 and 500 answers are retried with backoff; an outage longer than the retries leaves
/// the job queued for later, and the stack gets healthy once the cluster answers again.
async fn cluster_errors_are_retried_and_never_leave_a_stack_stuck(backend: Backend) {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(app) = spawn(backend, &fake, &dir, &[]).await else {
        return;
    };
    let token = app.admin_token.clone();
    fake.answer_next_on("/apis/apps/v1/namespaces", 3, 500);
    fake.answer_next_on("/api/v1/namespaces", 1, 429);
    let slug = create_healthy(&app, &token).await;
    assert!(fake.requests().iter().any(|r| r.status == 500));

    // An outage outlasting the runtime's retries: the deploy job is retried later, and the
    // stack ends healthy, not stuck `deploying`.
    fake.answer_next_on("/apis/apps/v1/namespaces", 8, 500);
    let (code, body) = call(app.post(&format!("/stacks/{slug}/redeploy"), Some(&token))).await;
    assert_eq!(code, 202, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (_, s) = call(app.get(&format!("/stacks/{slug}"), Some(&token))).await;
        if s["release"]["version"] == 2 && s["release"]["status"] == "live" {
            assert_eq!(s["status"], "healthy");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server stopped mid-deploy finishes the deploy after its restart; at start-up the
/// runtime deletes the namespace of a stack the store does not have and redeploys a running
/// stack whose namespace is gone.
async fn a_restarted_server_finishes_the_deploy_and_reconciles_the_cluster(backend: Backend) {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(mut app) = spawn(backend, &fake, &dir, &["--job-lease", "1s"]).await else {
        return;
    };
    let token = app.admin_token.clone();
    fake.rollout_delay(Duration::from_secs(2));
    let (code, body) = app
        .create_stack(Some(&token), two_service_form("restarted"))
        .await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    let ns = ns(&slug);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.get(Kind::Deployment, &ns, "web").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deploy never applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.restart().await;
    fake.rollout_delay(Duration::from_millis(50));
    app.wait_for(&slug, Some(&token), |_, b| {
        b["status"] == "healthy" && b["release"]["status"] == "live"
    })
    .await;

    // A namespace whose stack does not exist, and a running stack whose namespace went.
    let orphan = "sy-stk-00000000000000000000dead";
    let namespace: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": orphan, "labels": {
            "app.kubernetes.io/managed-by": "stackyard",
            "stackyard.dev/stack": "stk-00000000000000000000dead",
            "stackyard.dev/team": "anonymous",
        }},
    }))
    .unwrap();
    let namespaces = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(fake.client());
    namespaces
        .create(&Default::default(), &namespace)
        .await
        .unwrap();
    namespaces.delete(&ns, &Default::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.namespaces().contains(&ns) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the namespace stayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let orphan_gone = !fake.namespaces().contains(&orphan.to_owned());
        let back = fake
            .get(Kind::Deployment, &ns, "web")
            .is_some_and(|d| d["status"]["availableReplicas"] == 1);
        if orphan_gone && back {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reconciled: orphan gone {orphan_gone}, stack back {back}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On a real cluster, when `STACKYARD_TEST_KUBECONFIG` names one: the two-service example
/// deploys, answers, and is torn down with its namespace. The cluster's pods fetch the
/// tarballs from this test's server, so it listens on `STACKYARD_TEST_K8S_LISTEN` (default
/// `0.0.0.0:18700`) and `STACKYARD_TEST_K8S_ARTIFACT_BASE_URL` must say how pods reach that
/// (e.g. `http://10.0.0.5:18700`). `STACKYARD_TEST_K8S_BASE_IMAGE` (default `python:3-slim`)
/// runs the example's Python. Skipped, saying why, when they are not set: these machines
/// have no cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_real_cluster_the_two_service_example_deploys_and_tears_down() {
    let (Ok(kubeconfig), Ok(base_url)) = (
        std::env::var("STACKYARD_TEST_KUBECONFIG"),
        std::env::var("STACKYARD_TEST_K8S_ARTIFACT_BASE_URL"),
    ) else {
        eprintln!(
            "skipping the real-cluster test: STACKYARD_TEST_KUBECONFIG and STACKYARD_TEST_K8S_ARTIFACT_BASE_URL are not both set"
        );
        return;
    };
    let listen =
        std::env::var("STACKYARD_TEST_K8S_LISTEN").unwrap_or_else(|_| "0.0.0.0:18700".into());
    let image =
        std::env::var("STACKYARD_TEST_K8S_BASE_IMAGE").unwrap_or_else(|_| "python:3-slim".into());
    let Some(app) = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            "--runtime",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--listen",
            &listen,
            "--k8s-artifact-base-url",
            &base_url,
            "--k8s-base-image",
            &image,
            "--deploy-timeout",
            "5m",
        ],
    )
    .await
    else {
        return;
    };
    let token = app.admin_token.clone();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-service");
    let read = |p: &str| std::fs::read_to_string(example.join(p)).unwrap();
    let part = |svc: &str| {
        let files = [
            ("Procfile", read(&format!("{svc}/Procfile"))),
            ("app.py", read(&format!("{svc}/app.py"))),
        ];
        let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
        Part::bytes(tarball(&files)).file_name(format!("{svc}.tar.gz"))
    };
    let form = Form::new()
        .text("manifest", read("stackyard.yaml"))
        .part("api", part("api"))
        .part("web", part("web"));
    let (code, body) = app.create_stack(Some(&token), form).await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let (_, s) = call(app.get(&format!("/stacks/{slug}"), Some(&token))).await;
        if s["status"] == "healthy" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && s["status"] != "failed",
            "{s}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (code, body) = call(app.delete(&format!("/stacks/{slug}?wait=false"), Some(&token))).await;
    assert!(code == 200 || code == 202, "{body}");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let namespaces = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(
        kube::Client::try_from(config).unwrap(),
    );
    loop {
        let gone = namespaces.get_opt(&ns(&slug)).await.unwrap().is_none();
        let (code, _) = call(app.get(&format!("/stacks/{slug}"), Some(&token))).await;
        if gone && code == 404 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not torn down");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn base64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn decode(v: &Value) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

both_backends!(
    a_stack_runs_redeploys_and_goes_on_the_cluster,
    a_failing_release_leaves_the_old_one_and_a_dropped_service_is_pruned,
    cluster_errors_are_retried_and_never_leave_a_stack_stuck,
    an_image_service_runs_its_image_and_fetches_nothing,
    a_restarted_server_finishes_the_deploy_and_reconciles_the_cluster,
);
