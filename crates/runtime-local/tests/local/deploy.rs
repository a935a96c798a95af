use crate::support::*;
use stackyard_core::model::ServiceStatus;
use stackyard_core::runtime::{Runtime, RuntimeError};
use stackyard_runtime_local::service_url;
use std::collections::BTreeSet;
use std::time::Duration;

const SECRET_VAR: &str = "STACKYARD_SECRET_TEST";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_deploy_route_reach_each_other_and_see_only_their_env() {
    if std::env::var_os(SECRET_VAR).is_none() {
        // Setting a variable in this (multi-threaded) process would need `unsafe`; instead the
        // test runs again in a child process whose environment holds the secret.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "deploy::two_services_deploy_route_reach_each_other_and_see_only_their_env",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SECRET_VAR, "leaked-if-you-see-this")
            .env("DATABASE_URL", "postgres://server:secret@db/stackyard")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "the test ran: {stdout}");
        return;
    }

    let h = Harness::start(|_| {}).await;
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let slug = slug();
    // `env` run by the shell itself records exactly what the runtime passed, before any
    // interpreter wrapper (a pyenv shim, say) adds its own variables.
    let web = service(
        "web",
        &digest,
        "env > env.txt && exec python3 app.py",
        true,
        &[
            ("API_URL", "service://api"),
            ("GREETING", "from the manifest"),
            ("ONLY_MANIFEST", "m"),
        ],
    );
    let api = service("api", &digest, "python3 app.py", false, &[]);
    let plan = plan(
        &slug,
        1,
        vec![web, api],
        &[("GREETING", "from the stack env")],
    );
    let sink = RecordingSink::default();
    h.rt.deploy(&plan, &sink).await.unwrap();

    use ServiceStatus::*;
    assert_eq!(sink.statuses("web"), vec![Building, Deploying, Healthy]);
    assert_eq!(sink.statuses("api"), vec![Building, Deploying, Healthy]);
    let url = sink.last("web").url.unwrap();
    assert_eq!(
        url,
        service_url("web", slug.as_str(), "localhost", h.router.port())
    );
    assert_eq!(sink.last("api").url, None, "api is not exposed");

    // The router reaches web by its host; web reaches api through the resolved reference.
    assert_eq!(
        h.get(&url, "/").await.unwrap(),
        (200, "web release 1".into())
    );
    assert_eq!(
        h.get(&url, "/call/API_URL").await.unwrap(),
        (200, "via api release 1".into())
    );
    let api_host = format!("api-{}.localhost:{}", slug, h.router.port());
    assert_eq!(h.get(&api_host, "/").await.unwrap().0, 404);

    let (status, body) = h.get(&url, "/env").await.unwrap();
    assert_eq!(status, 200);
    let env: BTreeSet<(String, String)> = serde_json::from_str::<serde_json::Map<_, _>>(&body)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap().to_owned()))
        .collect();
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        get("GREETING"),
        Some("from the stack env"),
        "stack env wins"
    );
    assert_eq!(get("ONLY_MANIFEST"), Some("m"));
    assert_eq!(get("STACKYARD_STACK"), Some(slug.as_str()));
    assert_eq!(get("STACKYARD_SERVICE"), Some("web"));
    assert_eq!(get("STACKYARD_RELEASE"), Some("1"));
    let port: u16 = get("PORT").unwrap().parse().unwrap();
    assert_ne!(port, 0);
    let api_url = get("API_URL").unwrap();
    assert!(api_url.starts_with("http://127.0.0.1:"), "{api_url}");
    assert_ne!(api_url, format!("http://127.0.0.1:{port}"));
    // The server's PATH (a pyenv shim may prepend its own directories to python's).
    let path = std::env::var("PATH").unwrap();
    assert!(get("PATH").unwrap().ends_with(&path), "{:?}", get("PATH"));
    for (_, v) in &env {
        assert!(!v.contains("leaked-if-you-see-this") && !v.contains("postgres://"));
    }

    // Nothing of the server's environment but PATH and HOME; `sh` adds PWD and friends.
    let recorded =
        std::fs::read_to_string(h.path(&["stacks", slug.as_str(), "r1", "web", "env.txt"]))
            .unwrap();
    let allowed = [
        "PATH",
        "HOME",
        "TMPDIR",
        "PORT",
        "STACKYARD_STACK",
        "STACKYARD_SERVICE",
        "STACKYARD_RELEASE",
        "API_URL",
        "GREETING",
        "ONLY_MANIFEST",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    for line in recorded.lines() {
        let (k, v) = line.split_once('=').unwrap();
        assert!(allowed.contains(&k), "unexpected variable {k}");
        assert!(!v.contains("leaked-if-you-see-this") && !v.contains("postgres://"));
    }
    assert!(recorded.contains(&format!("PATH={path}\n")), "{recorded}");

    h.rt.teardown(&slug).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_exits_at_start_fails_with_its_last_log_lines() {
    let h = Harness::start(|_| {}).await;
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let slug = slug();
    let web = service(
        "web",
        &digest,
        "python3 app.py",
        true,
        &[("CRASH", "1"), ("BOOT_LINES", "30")],
    );
    let api = service("api", &digest, "python3 app.py", false, &[]);
    let plan = plan(&slug, 1, vec![web, api], &[("API_TOKEN", "hunter2")]);
    let sink = RecordingSink::default();
    let err = h.rt.deploy(&plan, &sink).await.unwrap_err();
    let RuntimeError::Failed(summary) = err else {
        panic!("a crash is not transient: {err:?}")
    };
    assert!(summary.contains("`web` exited with status 3"), "{summary}");

    let web = sink.last("web");
    assert_eq!(web.status, ServiceStatus::Failed);
    let error = web.error.unwrap();
    assert!(
        error.contains("exited with status 3 before it became healthy"),
        "{error}"
    );
    assert!(
        error.contains("fatal: crashing on purpose"),
        "stderr is in it: {error}"
    );
    assert!(
        error.contains("boot line 29") && error.contains("about to crash"),
        "{error}"
    );
    assert!(
        !error.contains("boot line 5\n"),
        "only the last lines: {error}"
    );
    assert!(!error.contains("hunter2"));
    let api = sink.last("api");
    assert_eq!(api.status, ServiceStatus::Failed);
    assert!(api.error.unwrap().contains("stopped because `web` failed"));

    // Nothing of the failed release is left running or on disk.
    assert!(h.records(None).is_empty());
    assert!(!h.path(&["stacks", slug.as_str(), "r1"]).exists());
    h.rt.teardown(&slug).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_path_must_answer_2xx_or_3xx_within_the_timeout() {
    let h = Harness::start(|c| c.deploy_timeout = Duration::from_secs(3)).await;
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let slug = slug();
    let mut web = service(
        "web",
        &digest,
        "python3 app.py",
        true,
        &[("UNHEALTHY", "1")],
    );
    web.health = Some("/healthz".into());
    let sink = RecordingSink::default();
    let err =
        h.rt.deploy(&plan(&slug, 1, vec![web.clone()], &[]), &sink)
            .await;
    assert!(matches!(err, Err(RuntimeError::Failed(_))), "{err:?}");
    let error = sink.last("web").error.unwrap();
    assert!(
        error.contains("did not become healthy within 3s"),
        "{error}"
    );
    assert!(error.contains("GET /healthz answered 500"), "{error}");
    assert!(h.records(None).is_empty());

    // The same path answering 200 is healthy.
    web.env.clear();
    h.rt.deploy(&plan(&slug, 2, vec![web], &[]), &sink)
        .await
        .unwrap();
    assert_eq!(sink.last("web").status, ServiceStatus::Healthy);
    h.rt.teardown(&slug).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_the_same_release_again_leaves_no_duplicates() {
    let h = Harness::start(|_| {}).await;
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let slug = slug();
    let web = service("web", &digest, "python3 app.py", true, &[]);
    let plan1 = plan(&slug, 1, vec![web.clone()], &[]);
    let sink = RecordingSink::default();
    h.rt.deploy(&plan1, &sink).await.unwrap();
    let first = h.pgids(Some(&slug));
    assert_eq!(first.len(), 1);

    // A retried job: the running release is confirmed, nothing new starts.
    h.rt.deploy(&plan1, &sink).await.unwrap();
    assert_eq!(h.pgids(Some(&slug)), first);
    assert_eq!(sink.last("web").status, ServiceStatus::Healthy);

    // A deploy cancelled half way (its job's claim lost) leaves nothing behind once retried.
    let slow = service("web", &digest, "sleep 1; exec python3 app.py", true, &[]);
    let plan2 = plan(&slug, 2, vec![slow], &[]);
    let cancelled = tokio::time::timeout(Duration::from_millis(150), h.rt.deploy(&plan2, &sink));
    assert!(cancelled.await.is_err(), "it sleeps longer than that");
    h.rt.deploy(&plan2, &sink).await.unwrap();
    let url = sink.last("web").url.unwrap();
    assert_eq!(h.get(&url, "/").await.unwrap().1, "web release 2");
    assert!(
        eventually(Duration::from_secs(10), || h.pgids(Some(&slug)).len() == 1).await,
        "one process group left: {:?}",
        h.records(Some(&slug))
    );
    for pgid in first {
        assert!(eventually(Duration::from_secs(10), || live_members(pgid) == 0).await);
    }
    let releases: Vec<_> = std::fs::read_dir(h.path(&["stacks", slug.as_str()]))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(releases, vec![std::ffi::OsString::from("r2")]);

    // An older release can only come from a stale job: refused, the current one untouched.
    let stale = h.rt.deploy(&plan1, &sink).await;
    assert!(matches!(stale, Err(RuntimeError::Failed(_))), "{stale:?}");
    assert_eq!(h.get(&url, "/").await.unwrap().1, "web release 2");
    h.rt.teardown(&slug).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tarballs_are_refused_at_unpack() {
    let h = Harness::start(|_| {}).await;
    type Files<'a> = &'a [(&'a str, &'a [u8])];
    type Links<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Files<'_>, Links<'_>, &str); 4] = [
        (&[("app.py", b"x"), ("../escaped", b"x")], &[], "`..`"),
        (
            &[("app.py", b"x"), ("/tmp/stackyard-escaped", b"x")],
            &[],
            "absolute",
        ),
        (&[("app.py", b"x")], &[("out", "../../../../..")], "outside"),
        (&[("app.py", b"x")], &[("out", "/etc")], "outside"),
    ];
    for (files, links, why) in cases {
        let digest = h.store_artifact(&raw_targz(files, links));
        let slug = slug();
        let web = service("web", &digest, "python3 app.py", true, &[]);
        let sink = RecordingSink::default();
        let err = h.rt.deploy(&plan(&slug, 1, vec![web], &[]), &sink).await;
        assert!(matches!(err, Err(RuntimeError::Failed(_))), "{err:?}");
        let error = sink.last("web").error.unwrap();
        assert!(
            error.contains("cannot be unpacked") && error.contains(why),
            "{error}"
        );
        assert!(!h.path(&["stacks", slug.as_str(), "r1"]).exists());
        assert!(!h.path(&["stacks", slug.as_str(), "escaped"]).exists());
        assert!(!std::path::Path::new("/tmp/stackyard-escaped").exists());
        h.rt.teardown(&slug).await.unwrap();
    }
    // A digest that is not one never becomes a path.
    let slug = slug();
    let web = service("web", "../../etc/passwd", "true", true, &[]);
    let sink = RecordingSink::default();
    assert!(
        h.rt.deploy(&plan(&slug, 1, vec![web], &[]), &sink)
            .await
            .is_err()
    );
    assert!(sink.last("web").error.unwrap().contains("digest"));
}
