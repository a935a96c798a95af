//! `stackyard vault …` against a real server: values go in through stdin or a file, come out
//! only through `get`, and are never echoed by anything else.

use crate::support::*;

const SECRET: &str = "vault-cli-secret-9d2f";

#[test]
fn vault_set_from_stdin_then_get_prints_exactly_the_value_and_nothing_else_echoes_it() {
    let server = Server::start(&[]);
    let cli = Client::with_env(&server.base, &server.admin_token());

    let set = cli.run_with_stdin(
        &["vault", "set", "prod", "DB_PASS"],
        Some(&format!("{SECRET}\n")),
    );
    set.ok();
    assert!(!set.all().contains(SECRET), "set echoed the value: {set:?}");
    assert!(set.stdout.contains("version 1"), "{set:?}");

    let get = cli.run(&["vault", "get", "prod", "DB_PASS"]);
    get.ok();
    assert_eq!(
        get.stdout, SECRET,
        "the value only, its trailing newline dropped at set"
    );

    // A file's bytes are kept exactly; --version reads an older one.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("cert.pem");
    std::fs::write(&file, "line one\nline two\n").unwrap();
    let set = cli.run(&[
        "vault",
        "set",
        "prod",
        "DB_PASS",
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]);
    set.ok();
    assert_eq!(set.json()["version"], 2);
    assert_eq!(
        cli.run(&["vault", "get", "prod", "DB_PASS"]).ok().stdout,
        "line one\nline two\n"
    );
    assert_eq!(
        cli.run(&["vault", "get", "prod", "DB_PASS", "--version", "1"])
            .ok()
            .stdout,
        SECRET
    );

    // ls, copy (dry run, then for real), rm.
    let ls = cli.run(&["vault", "ls", "prod", "--json"]);
    assert_eq!(ls.ok().json()["keys"], serde_json::json!(["DB_PASS"]));
    let dry = cli.run(&["vault", "copy", "prod", "staging", "--dry-run", "--json"]);
    assert_eq!(dry.ok().json()["plan"][0]["action"], "copy");
    let copy = cli.run(&["vault", "copy", "prod", "staging", "--keys", "DB_PASS,NOPE"]);
    copy.ok();
    assert!(
        copy.all().contains("1 copied") && copy.all().contains("1 missing"),
        "{copy:?}"
    );
    assert!(!copy.all().contains(SECRET));
    cli.run(&["vault", "rm", "prod", "DB_PASS"]).ok();
    let gone = cli.run(&["vault", "get", "prod", "DB_PASS"]);
    assert_ne!(gone.code, 0, "{gone:?}");
    assert!(
        gone.stderr.contains("not_found") || gone.stderr.contains("No value"),
        "{gone:?}"
    );

    // A value is never taken from an argument.
    let argv = cli.run(&["vault", "set", "prod", "K", SECRET]);
    assert_ne!(argv.code, 0);
    assert!(!argv.all().contains(SECRET), "{argv:?}");
}
