use crate::support::*;
use stackyard_core::runtime::{Runtime, RuntimeError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

    // A client hitting the router every 10 ms for the whole time; the test waits on what it
    // has seen, never on the clock.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let load = {
        let (h, url, stop, seen) = (h.clone(), url.clone(), stop.clone(), seen.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = match h.get(&url, "/").await {
                    Ok((200, body)) => Ok(body),
                    Ok((status, body)) => Err(format!("{status} {body}")),
                    Err(e) => Err(e.to_string()),
                };
                seen.lock().unwrap().push(answer);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // `more` answers from now on, the last of them `body`.
    let answered = |more: usize, body: &'static str| {
        let seen = seen.clone();
        let from = seen.lock().unwrap().len();
        wait_for(move || {
            let seen = seen.lock().unwrap();
            seen.len() >= from + more && seen.last().is_some_and(|a| a.as_deref() == Ok(body))
        })
    };
    answered(10, "web release 1").await;

    // v2 rolls out while v1 serves; v1 is stopped once v2 is routed.
    h.rt.deploy(&plan(&slug, 2, vec![web.clone()], &[]), &sink)
        .await
        .unwrap();
    answered(10, "web release 2").await;
    let stopped = v1.clone();
    wait_for(move || stopped.iter().all(|pgid| live_members(*pgid) == 0)).await;
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
    answered(10, "web release 2").await;

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let answers = std::mem::take(&mut *seen.lock().unwrap());
    let failures: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let bodies: Vec<&str> = answers.iter().filter_map(|a| a.as_deref().ok()).collect();
    assert!(bodies.len() >= 30, "the load really ran: {}", bodies.len());
    assert!(bodies.contains(&"web release 1") && bodies.contains(&"web release 2"));
    assert!(!bodies.iter().any(|b| b.contains("release 3")));
    // Once switched, never back.
    let first_v2 = bodies.iter().position(|b| *b == "web release 2").unwrap();
    assert!(bodies[first_v2..].iter().all(|b| *b == "web release 2"));

    assert_eq!(h.get(&url, "/").await.unwrap().1, "web release 2");
    assert_eq!(h.pgids(Some(&slug)), v2);
    h.rt.teardown(&slug).await.unwrap();
}

/// Polls `done` every 10 ms until it holds; panics after 30 s.
async fn wait_for(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
