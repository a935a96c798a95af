use crate::support::*;
use stackyard_core::runtime::Runtime;
use stackyard_runtime_local::service_url;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_stops_orphans_and_serves_the_same_urls_again() {
    let mut h = Harness::start(|_| {}).await;
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let (a, b) = (slug(), slug());
    let plan_a = plan(
        &a,
        3,
        vec![
            service(
                "web",
                &digest,
                "sleep 1000 & exec python3 app.py",
                true,
                &[("API_URL", "service://api")],
            ),
            service("api", &digest, "python3 app.py", false, &[]),
        ],
        &[],
    );
    let plan_b = plan(
        &b,
        1,
        vec![service("web", &digest, "python3 app.py", true, &[])],
        &[],
    );
    let sink = RecordingSink::default();
    h.rt.deploy(&plan_a, &sink).await.unwrap();
    let url_a = sink.last("web").url.unwrap();
    h.rt.deploy(&plan_b, &sink).await.unwrap();
    let url_b = sink.last("web").url.unwrap();
    let orphans = h.pgids(None);
    assert_eq!(orphans.len(), 3);

    // The server "crashes": its processes keep running.
    h.restart().await;
    for pgid in &orphans {
        assert!(live_members(*pgid) > 0, "group {pgid} outlived its server");
    }
    assert_eq!(
        h.get(&url_a, "/").await.unwrap().0,
        404,
        "the new router knows nothing yet"
    );

    h.rt.recover(vec![plan_a.clone(), plan_b.clone()])
        .await
        .unwrap();
    for pgid in &orphans {
        assert!(
            eventually(Duration::from_secs(10), || live_members(*pgid) == 0).await,
            "orphan group {pgid} was stopped"
        );
    }
    let now = h.pgids(None);
    assert_eq!(now.len(), 3);
    assert!(now.iter().all(|p| !orphans.contains(p)));

    // Same URLs, served again, with references resolved to the new ports.
    let port = h.router.port();
    assert_eq!(url_a, service_url("web", a.as_str(), "localhost", port));
    assert_eq!(url_b, service_url("web", b.as_str(), "localhost", port));
    assert_eq!(
        h.get(&url_a, "/").await.unwrap(),
        (200, "web release 3".into())
    );
    assert_eq!(
        h.get(&url_a, "/call/API_URL").await.unwrap(),
        (200, "via api release 3".into())
    );
    assert_eq!(
        h.get(&url_b, "/").await.unwrap(),
        (200, "web release 1".into())
    );

    h.rt.teardown(&a).await.unwrap();
    h.rt.teardown(&b).await.unwrap();
    assert!(h.records(None).is_empty());
}
