//! The client against an HTTPS API (`serve --tls-cert/--tls-key`): trusted through `--cacert`
//! or `STACKYARD_CACERT`, and an untrusted certificate reported as such, at once and without
//! the token.

use crate::support::*;
use stackyard_testkit::write_test_certs as write_certs;

#[test]
fn the_cli_talks_to_a_tls_api_with_cacert_and_refuses_an_untrusted_one() {
    let certs = tempfile::tempdir().unwrap();
    write_certs(certs.path());
    let path = |name: &str| certs.path().join(name).to_str().unwrap().to_owned();
    let server = Server::start(&[
        "--tls-cert",
        &path("cert.pem"),
        "--tls-key",
        &path("key.pem"),
    ]);
    assert!(
        server.base.starts_with("https://127.0.0.1:"),
        "{}",
        server.base
    );
    let token = server.admin_token();
    let cli = Client::with_env(&server.base, &token);

    cli.run(&["--cacert", &path("ca.pem"), "whoami"]).ok();
    let run = cli.run(&["--cacert", &path("ca.pem"), "ls", "--json"]);
    run.ok();
    assert!(run.json().is_object() || run.json().is_array(), "{run:?}");
    Client::with_env(&server.base, &token)
        .with("STACKYARD_CACERT", &path("ca.pem"))
        .run(&["whoami"])
        .ok();

    // Without the CA: refused as untrusted, not retried as a network fault (exit 1, not 5).
    let run = cli.run(&["ls"]);
    run.code(1);
    assert!(run.stderr.contains("not trusted"), "{run:?}");
    assert!(run.stderr.contains("--cacert"), "{run:?}");
    assert!(!run.stderr.contains("retrying"), "{run:?}");
    // One report of it: no log line from the verifier before the error.
    assert!(run.stderr.starts_with("error:"), "{run:?}");
    assert!(!run.all().contains(&token), "{run:?}");
    let e = cli.run(&["ls", "--json"]).json_error();
    assert_eq!(e["error"], "untrusted_certificate");

    // A CA file that is not one is a local error naming it, before anything is sent.
    let run = cli.run(&["--cacert", &path("key.pem"), "ls"]);
    run.code(1);
    assert!(run.stderr.contains("key.pem"), "{run:?}");
    assert!(!run.all().contains("PRIVATE KEY"), "{run:?}");
}
