use crate::support::*;
use stackyard_core::runtime::Runtime;
use std::time::Duration;

/// A service that leaves a grandchild behind: `sleep` forked into the background.
const FORKING: &str = "sleep 1000 & exec python3 app.py";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_kills_grandchildren_and_removes_everything() {
    let h = Harness::start(|_| {}).await;
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let slug = slug();
    let web = service("web", &digest, FORKING, true, &[]);
    let sink = RecordingSink::default();
    h.rt.deploy(&plan(&slug, 1, vec![web], &[]), &sink)
        .await
        .unwrap();
    let url = sink.last("web").url.unwrap();
    let pgids = h.pgids(Some(&slug));
    assert_eq!(pgids.len(), 1);
    let pgid = pgids[0];
    assert_eq!(live_members(pgid), 2, "python and the forked sleep");

    h.rt.teardown(&slug).await.unwrap();
    assert_eq!(live_members(pgid), 0, "the whole group is gone");
    for kind in ["stacks", "run", "logs"] {
        assert!(
            !h.path(&[kind, slug.as_str()]).exists(),
            "{kind}/ is removed"
        );
    }
    assert!(h.rt.routes().is_empty());
    assert_eq!(h.get(&url, "/").await.unwrap().0, 404);

    // Idempotent, and harmless for a stack it never ran.
    h.rt.teardown(&slug).await.unwrap();
    h.rt.teardown(&crate::support::slug()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_stacks_deployed_and_torn_down_concurrently_leave_nothing() {
    let h = Harness::start(|c| c.deploy_timeout = Duration::from_secs(90)).await;
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let plans: Vec<_> = (0..20)
        .map(|_| {
            plan(
                &slug(),
                1,
                vec![service("web", &digest, FORKING, true, &[])],
                &[],
            )
        })
        .collect();
    let sink = RecordingSink::default();
    let deployed =
        futures_util::future::join_all(plans.iter().map(|p| h.rt.deploy(p, &sink))).await;
    for r in &deployed {
        assert!(r.is_ok(), "{r:?}");
    }
    let pgids = h.pgids(None);
    assert_eq!(pgids.len(), 20);
    assert_eq!(h.rt.routes().len(), 20);

    let torn = futures_util::future::join_all(plans.iter().map(|p| h.rt.teardown(&p.slug))).await;
    for r in &torn {
        assert!(r.is_ok(), "{r:?}");
    }
    for pgid in pgids {
        assert_eq!(live_members(pgid), 0, "group {pgid} is gone");
    }
    for kind in ["stacks", "run", "logs"] {
        let left = std::fs::read_dir(h.path(&[kind]))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{kind}/ is empty");
    }
    assert!(h.rt.routes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_after_a_restart_stops_what_the_previous_server_left() {
    let mut h = Harness::start(|_| {}).await;
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let slug = slug();
    let web = service("web", &digest, FORKING, true, &[]);
    let sink = RecordingSink::default();
    h.rt.deploy(&plan(&slug, 1, vec![web], &[]), &sink)
        .await
        .unwrap();
    let pgid = h.pgids(Some(&slug))[0];

    // The stack was queued for deletion while the server was down: the new server's first
    // job is its teardown, with no recovery of it.
    h.restart().await;
    assert_eq!(live_members(pgid), 2);
    h.rt.teardown(&slug).await.unwrap();
    assert_eq!(live_members(pgid), 0);
    for kind in ["stacks", "run", "logs"] {
        assert!(
            !h.path(&[kind, slug.as_str()]).exists(),
            "{kind}/ is removed"
        );
    }
}
