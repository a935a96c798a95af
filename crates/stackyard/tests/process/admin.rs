//! `stackyard admin create-team` prints only the token, and the token works.

use crate::support::*;
use std::process::Command;

#[tokio::test]
async fn create_team_prints_only_the_new_token_on_stdout() {
    let db = Db::fresh(Backend::Sqlite).await.expect("sqlite");
    let data = tempfile::tempdir().unwrap();
    // First start on the empty database: team `default`, and its token in a private file.
    let server = Server::start(&db.url, data.path(), &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.path().join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = Command::new(BIN)
        .args([
            "admin",
            "create-team",
            "acme",
            "--max-stacks",
            "3",
            "--database-url",
            &db.url,
        ])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout:?}");
    let token = lines[0];
    assert!(token.starts_with("sy_") && token.len() == 67, "{token}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(token),
        "the token leaked into the log"
    );

    let again = Command::new(BIN)
        .args(["admin", "create-team", "acme", "--database-url", &db.url])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let client = stackyard_testkit::http_client();
    let (code, who) = json_of(
        client
            .get(server.url("/api/v1/whoami"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(who["team"]["name"], "acme");
    assert_eq!(who["team"]["max_stacks"], 3);
}
