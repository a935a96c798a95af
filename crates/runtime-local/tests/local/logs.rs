use crate::support::*;
use futures_util::StreamExt;
use stackyard_core::runtime::{LogStream, Logs, Runtime};
use stackyard_runtime_local::LocalRuntime;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_a_backlog_followers_and_a_file() {
    let h = Harness::start(|_| {}).await;
    let digest = h.artifact(&[("app.py", APP.as_bytes())]);
    let slug = slug();
    let web = service(
        "web",
        &digest,
        "python3 app.py",
        true,
        &[("BOOT_LINES", "50"), ("STDERR_LINE", "a line on stderr")],
    );
    let sink = RecordingSink::default();
    h.rt.deploy(&plan(&slug, 1, vec![web], &[]), &sink)
        .await
        .unwrap();
    let url = sink.last("web").url.unwrap();

    // The backlog is the last N lines, oldest first, from both streams.
    let Logs {
        backlog: all,
        follow: none,
    } =
        h.rt.logs(&slug, &name("web"), 1000, false)
            .await
            .unwrap()
            .unwrap();
    assert!(none.is_none());
    assert!(
        all.iter()
            .any(|l| l.stream == LogStream::Stderr && l.text == "a line on stderr")
    );
    let boot: Vec<&str> = all
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(boot.len(), 51);
    assert_eq!(boot[50], "boot line 49");
    let last =
        h.rt.logs(&slug, &name("web"), 3, false)
            .await
            .unwrap()
            .unwrap()
            .backlog;
    assert_eq!(last.len(), 3);
    assert_eq!(last.as_slice(), &all[all.len() - 3..]);
    assert!(last.windows(2).all(|w| w[0].at <= w[1].at));

    // A follower sees a new line within a second.
    let logs =
        h.rt.logs(&slug, &name("web"), 0, true)
            .await
            .unwrap()
            .unwrap();
    let mut follow = logs.follow.unwrap();
    assert_eq!(h.get(&url, "/hello-logs").await.unwrap().0, 404);
    let seen = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(line) = follow.next().await {
            if line.text == "GET /hello-logs" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "the line reached the follower within 1 s");

    // Unknown services and stacks have no logs.
    assert!(
        h.rt.logs(&slug, &name("nope"), 10, true)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        h.rt.logs(&crate::support::slug(), &name("web"), 10, true)
            .await
            .unwrap()
            .is_none()
    );

    // On disk too; a new runtime (a restarted server) reads the file's tail.
    let path = h.path(&["logs", slug.as_str(), "web.log"]);
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || read()
            .contains("GET /hello-logs"))
        .await
    );
    let file = read();
    assert!(file.contains(" stdout boot line 49\n") && file.contains(" stderr a line on stderr\n"));
    let fresh = LocalRuntime::new(h.cfg.clone());
    let Logs {
        backlog: tail,
        follow: follow_fresh,
    } = fresh
        .logs(&slug, &name("web"), 2, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail.last().unwrap().text, "GET /hello-logs");
    assert!(
        follow_fresh.unwrap().next().await.is_none(),
        "nothing runs there to follow"
    );

    // Teardown ends followers and the logs go with the stack.
    h.rt.teardown(&slug).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while follow.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the follower's stream ended");
    assert!(
        h.rt.logs(&slug, &name("web"), 10, false)
            .await
            .unwrap()
            .is_none()
    );
}
