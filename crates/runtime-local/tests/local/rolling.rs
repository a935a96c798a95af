use crate::support::*;
use stackyard_core::runtime::{Runtime, RuntimeError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_under_load_drops_no_request_and_a_crashing_one_keeps_the_old() {
    let h = Arc::new(Harness::start(|_| {}).await);
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let slug = slug();
    let web = service("web", &digest, "python3 app.py", true, &[]);
    let sink = RecordingSink::default();
    h.rt.deploy(&plan(&slug, 1, vec![web.clone()], &[]), &sink)
        .await
        .unwrap();
    let url = sink.last("web").url.unwrap();
    let v1 = h.pgids(Some(&slug));

    // A client hitting the router every 10 ms for the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (h, url, stop) = (h.clone(), url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(match h.get(&url, "/").await {
                    Ok((200, body)) => Ok(body),
                    Ok((status, body)) => Err(format!("{status} {body}")),
                    Err(e) => Err(e.to_string()),
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // v2 rolls out while v1 serves.
    h.rt.deploy(&plan(&slug, 2, vec![web.clone()], &[]), &sink)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for pgid in &v1 {
        assert_eq!(live_members(*pgid), 0, "v1 was stopped after the switch");
    }
    let v2 = h.pgids(Some(&slug));
    assert_eq!(v2.len(), 1);

    // v3 crashes at start: the deploy fails and v2 keeps serving, untouched.
    let crashing = plan(&slug, 3, vec![web.clone()], &[("CRASH", "1")]);
    let err = h.rt.deploy(&crashing, &sink).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::Failed(ref m) if m.contains("v2 keeps serving")),
        "{err:?}"
    );
    let last = sink.last("web");
    assert_eq!(
        last.url.as_deref(),
        Some(url.as_str()),
        "v2 still serves web"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let answers = load.await.unwrap();
    let failures: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let bodies: Vec<&str> = answers.iter().filter_map(|a| a.as_deref().ok()).collect();
    assert!(bodies.len() > 20, "the load really ran: {}", bodies.len());
    assert!(bodies.contains(&"web release 1") && bodies.contains(&"web release 2"));
    assert!(!bodies.iter().any(|b| b.contains("release 3")));
    // Once switched, never back.
    let first_v2 = bodies.iter().position(|b| *b == "web release 2").unwrap();
    assert!(bodies[first_v2..].iter().all(|b| *b == "web release 2"));

    assert_eq!(h.get(&url, "/").await.unwrap().1, "web release 2");
    assert_eq!(h.pgids(Some(&slug)), v2);
    h.rt.teardown(&slug).await.unwrap();
}
