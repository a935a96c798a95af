//! `stackyard domains …` against a real server: add prints the records to create, verify says
//! why it is not verified yet, ls shows the state, rm removes it (by hostname or id).

use crate::support::*;

#[test]
fn domains_add_prints_the_records_and_verify_ls_rm_follow_the_domain() {
    // Nothing answers DNS on port 1: every look-up fails, as before the records exist.
    let server = Server::start(&["--dns-resolver", "127.0.0.1:1"]);
    let cli = Client::with_env(&server.base, &server.admin_token());
    let work = tempfile::tempdir().unwrap();
    let dir = two_service_copy(work.path());
    let slug = cli.run(&["deploy", dir.to_str().unwrap(), "-q"]);
    let slug = slug.ok().stdout.trim().to_owned();

    let add = cli.run(&["domains", "add", &slug, "Shop.Example.com"]);
    add.ok();
    assert!(
        add.stdout.contains("_stackyard.shop.example.com"),
        "{add:?}"
    );
    assert!(add.stdout.contains("stackyard-verify-"), "{add:?}");
    assert!(add.stdout.contains("CNAME"), "{add:?}");
    assert!(add.stderr.contains("stackyard domains verify"), "{add:?}");

    let verify = cli.run(&["domains", "verify", &slug, "shop.example.com"]);
    verify.ok();
    assert!(verify.stdout.contains("pending_verification"), "{verify:?}");
    assert!(verify.stderr.contains("not verified yet"), "{verify:?}");

    let ls = cli.run(&["domains", "ls", &slug, "--json"]);
    assert_eq!(ls.ok().json()["items"][0]["hostname"], "shop.example.com");
    let bad = cli.run(&["domains", "add", &slug, "https://x.example.com/"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("invalid_hostname"), "{bad:?}");

    cli.run(&["domains", "rm", &slug, "shop.example.com"]).ok();
    assert_eq!(
        cli.run(&["domains", "ls", &slug, "--json"]).ok().json()["total"],
        0
    );
}
