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

/// An anonymous create sending `X-Forwarded-For: xff`: its status code.
async fn create_forwarded_for(app: &TestApp, xff: &str) -> u16 {
    let (code, body) = call(
        app.post("/stacks/new", None)
            .header("x-forwarded-for", xff)
            .multipart(two_service_form("proxied")),
    )
    .await;
    assert!(matches!(code, 202 | 429), "{code} {body}");
    code
}

async fn without_trusted_proxies_forwarded_for_is_ignored_and_callers_share_the_peer_limit(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn_with(backend, &["--anonymous-daily-limit", "1"]).await else {
        return;
    };
    assert_eq!(create_forwarded_for(&app, "198.51.100.7").await, 202);
    assert_eq!(
        create_forwarded_for(&app, "203.0.113.9").await,
        429,
        "keyed on 127.0.0.1, the peer"
    );
}

async fn behind_a_trusted_proxy_the_right_most_untrusted_forwarded_address_is_the_client(
    backend: Backend,
) {
    let flags = [
        "--anonymous-daily-limit",
        "1",
        "--trusted-proxies",
        "127.0.0.1/32,10.0.0.0/8",
    ];
    let Some(app) = TestApp::spawn_with(backend, &flags).await else {
        return;
    };
    // Different forwarded clients: a limit each; the same network again: refused.
    assert_eq!(create_forwarded_for(&app, "198.51.100.7").await, 202);
    assert_eq!(create_forwarded_for(&app, "203.0.113.9").await, 202);
    assert_eq!(create_forwarded_for(&app, "198.51.100.8").await, 429);
    // A forged chain: the caller put 203.0.113.9's address on the left, our proxy appended
    // the caller's own (untrusted) address, which is what the limit keys on.
    assert_eq!(
        create_forwarded_for(&app, "203.0.113.9, 192.0.2.1").await,
        202
    );
    assert_eq!(create_forwarded_for(&app, "192.0.2.1").await, 429);
    // A second trusted hop (10.1.2.3) is skipped.
    assert_eq!(
        create_forwarded_for(&app, "100.64.0.1, 10.1.2.3").await,
        202
    );
    assert_eq!(create_forwarded_for(&app, "100.64.0.2").await, 429);
}

both_backends!(
    sixth_anonymous_create_of_the_day_is_refused_by_the_database_counter,
    without_trusted_proxies_forwarded_for_is_ignored_and_callers_share_the_peer_limit,
    behind_a_trusted_proxy_the_right_most_untrusted_forwarded_address_is_the_client,
);

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
