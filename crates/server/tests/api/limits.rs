//! The anonymous daily create limit, counted in the database or in Redis.

use crate::support::*;

/// Creates anonymously until the limit: five pass, the sixth gets 429 with `Retry-After`.
async fn five_pass_then_429(app: &TestApp) {
    for i in 0..5 {
        let (code, b) = app
            .create_stack(None, two_service_form(&format!("a{i}")))
            .await;
        assert_eq!(code, 202, "create {i}: {b}");
    }
    let res = app
        .post("/stacks/new", None)
        .multipart(two_service_form("sixth"))
        .send()
        .await
        .unwrap();
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let (code, b) = json_of(res).await;
    assert_error(code, &b, 429, "rate_limit_exceeded");
    assert_eq!(b["retry_after_seconds"], retry);
    // Team callers are not limited per day.
    let (code, _) = app
        .create_stack(Some(&app.admin_token), two_service_form("team"))
        .await;
    assert_eq!(code, 202);
}

async fn sixth_anonymous_create_of_the_day_is_refused_by_the_database_counter(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    five_pass_then_429(&app).await;
    assert_eq!(app.count("rate_counters", "").await, 1);
}

both_backends!(sixth_anonymous_create_of_the_day_is_refused_by_the_database_counter);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixth_anonymous_create_of_the_day_is_refused_by_the_redis_counter() {
    let Some(url) = stackyard_testkit::redis::url() else {
        return;
    };
    let prefix = stackyard_testkit::redis::key_prefix();
    let Some(app) = TestApp::spawn_with(
        Backend::Sqlite,
        &["--redis-url", &url, "--redis-prefix", &prefix],
    )
    .await
    else {
        return;
    };
    five_pass_then_429(&app).await;
    assert_eq!(
        app.count("rate_counters", "").await,
        0,
        "the count lives in Redis"
    );
    // A second server sharing the Redis sees the same count.
    let Some(other) = TestApp::spawn_with(
        Backend::Sqlite,
        &["--redis-url", &url, "--redis-prefix", &prefix],
    )
    .await
    else {
        return;
    };
    let (code, _) = other
        .create_stack(None, two_service_form("elsewhere"))
        .await;
    assert_eq!(code, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_allows_anonymous_creates_and_counts_it() {
    let closed = stackyard_testkit::free_port().unwrap();
    let url = format!("redis://127.0.0.1:{closed}");
    let Some(app) = TestApp::spawn_with(Backend::Sqlite, &["--redis-url", &url]).await else {
        return;
    };
    for i in 0..6 {
        let (code, b) = app
            .create_stack(None, two_service_form(&format!("d{i}")))
            .await;
        assert_eq!(code, 202, "create {i}: {b}");
    }
    let text = app.metrics().await;
    assert!(
        text.contains("stackyard_rate_limit_redis_errors_total"),
        "{text}"
    );
}
