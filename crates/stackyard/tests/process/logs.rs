//! The server's log on stderr: text without colour codes when stderr is not a terminal (a log
//! file stays readable), one JSON object per line with `STACKYARD_LOG_FORMAT=json`.

use crate::support::*;
use serde_json::Value;
use stackyard_testkit::process::ServerProcess;

/// Starts a server with `env`, sends it a request, and returns what it printed (at least up to
/// its `api listening` line).
async fn log_of(env: &[(&str, &str)]) -> Vec<String> {
    let db = Db::fresh(Backend::Sqlite).await.expect("sqlite");
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with_env(BIN, &db.url, data.path(), &[], env);
    let res = stackyard_testkit::http_client()
        .get(server.url("/no-such-route"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let lines = server.log_lines();
    assert!(
        lines.iter().any(|l| l.contains("api listening on http://")),
        "{lines:?}"
    );
    lines
}

#[tokio::test]
async fn a_redirected_log_is_plain_text_without_colour_codes() {
    let lines = log_of(&[]).await;
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
}

#[tokio::test]
async fn json_log_format_prints_one_object_per_line() {
    let lines = log_of(&[("STACKYARD_LOG_FORMAT", "json")]).await;
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
}
