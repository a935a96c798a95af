//! The README's walk-through, against a real server: login → deploy → status → env
//! set/unset/history/rollback → redeploy → logs → ls → rm --wait, checking `--json` output,
//! exit codes, and that env values never appear in anything the client prints.

use crate::support::*;
use serde_json::Value;

/// Values that must never be printed by `env set` and friends.
const SECRET: &str = "hunter2-very-secret";
const PLAIN: &str = "plain-value-not-to-print";

fn kinds(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["kind"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[track_caller]
fn assert_no_values(run: &Run) {
    let all = run.all();
    assert!(!all.contains(SECRET), "a value leaked: {all}");
    assert!(!all.contains(PLAIN), "a value leaked: {all}");
}

#[test]
fn login_deploy_env_redeploy_logs_rm() {
    let server = Server::start(&[]);
    let token = server.admin_token();
    let work = tempfile::tempdir().unwrap();
    let cli = Client::new();

    // login: token on stdin, verified, saved privately, never printed.
    let run = cli.run_with_stdin(
        &["login", "--url", &server.base],
        Some(&format!("{token}\n")),
    );
    run.ok();
    assert!(
        !run.all().contains(&token),
        "login printed the token: {run:?}"
    );
    assert!(run.stdout.contains("default"), "{run:?}");
    let saved = std::fs::read_to_string(cli.config_file()).unwrap();
    assert!(saved.contains(&token) && saved.contains(&server.base));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cli.config_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let who = cli.run(&["whoami", "--json"]);
    who.ok();
    assert_eq!(who.json()["team"]["name"], "default");

    // deploy: JSON lines from packing to the final result.
    let dir = two_service_copy(work.path());
    let run = cli.run(&["deploy", dir.to_str().unwrap(), "--json"]);
    run.ok();
    let lines = run.lines();
    let k = kinds(&lines);
    assert_eq!(
        &k[..3],
        ["deploy.packed", "deploy.packed", "deploy.accepted"],
        "{k:?}"
    );
    assert_eq!(k.last().unwrap(), "deploy.result", "{k:?}");
    assert!(k.contains(&"release.created".to_owned()), "{k:?}");
    assert!(k.contains(&"service.status".to_owned()), "{k:?}");
    assert!(k.contains(&"release.status".to_owned()), "{k:?}");
    let result = &lines.last().unwrap()["data"];
    assert_eq!(result["ok"], true);
    assert_eq!(result["status"], "healthy");
    let slug = result["stack_id"].as_str().unwrap().to_owned();
    assert!(slug.starts_with("stk-"));
    assert_eq!(lines[2]["data"]["name"], "two-service");
    // The web archive skipped the ignored log, `.git` and the link out (with a warning).
    let web = &lines[1]["data"];
    assert_eq!(web["service"], "web");
    assert_eq!(web["files"], 3, "Procfile, app.py, .stackyardignore: {web}");
    assert!(run.stderr.contains("outside-link"), "{run:?}");
    assert!(
        !run.stdout.contains('\u{1b}') && !run.stderr.contains('\u{1b}'),
        "colour without a terminal"
    );

    // status: healthy, env version 0 live.
    let st = cli.run(&["status", &slug, "--json"]);
    st.ok();
    let st = st.json();
    assert_eq!(st["status"], "healthy");
    assert_eq!(st["env_version"], 0);
    assert_eq!(st["env_live"], true);
    assert_eq!(st["services"].as_array().unwrap().len(), 2);
    let text = cli.run(&["status", &slug]);
    text.ok();
    assert!(
        text.stdout.contains("healthy") && text.stdout.contains("api"),
        "{text:?}"
    );

    // Colour on a terminal, never with NO_COLOR.
    if let Some(screen) = cli.run_on_terminal(&["status", &slug], &[]) {
        assert!(screen.contains("\u{1b}[32mhealthy"), "{screen:?}");
        let plain = cli
            .run_on_terminal(&["status", &slug], &[("NO_COLOR", "1")])
            .unwrap();
        assert!(
            plain.contains("healthy") && !plain.contains('\u{1b}'),
            "{plain:?}"
        );
    }

    // env set: one PATCH, key names only in every output form.
    let run = cli.run(&[
        "env",
        "set",
        &slug,
        &format!("DB_PASSWORD={SECRET}"),
        &format!("LOG_LEVEL={PLAIN}"),
    ]);
    run.ok();
    assert_no_values(&run);
    assert!(
        run.stdout.contains("DB_PASSWORD") && run.stdout.contains("version 1"),
        "{run:?}"
    );
    let run = cli.run(&["env", "set", &slug, &format!("EXTRA={PLAIN}"), "--json"]);
    run.ok();
    assert_no_values(&run);
    let j = run.json();
    assert_eq!(j["version"], 2);
    assert_eq!(j["changed"]["set"], serde_json::json!(["EXTRA"]));
    assert_eq!(
        j["keys"],
        serde_json::json!(["DB_PASSWORD", "EXTRA", "LOG_LEVEL"])
    );
    // `KEY=` is a usage error pointing at `unset`; nothing is sent.
    let run = cli.run(&["env", "set", &slug, "EXTRA="]);
    run.code(2);
    assert!(run.stderr.contains("env unset"), "{run:?}");
    // A stale --if-version is a precondition failure (412 → 4), with the current version.
    let run = cli.run(&[
        "env",
        "set",
        &slug,
        &format!("A={SECRET}"),
        "--if-version",
        "1",
    ]);
    run.code(4);
    assert_no_values(&run);
    assert!(run.stderr.contains("--if-version 2"), "{run:?}");
    // A matching one applies; a dry run writes nothing.
    cli.run(&[
        "env",
        "set",
        &slug,
        &format!("A={SECRET}"),
        "--if-version",
        "2",
    ])
    .ok();
    let dotenv = work.path().join(".env");
    std::fs::write(
        &dotenv,
        format!("# from a file\nB=\"{SECRET}\"\nexport C='{PLAIN}'\n"),
    )
    .unwrap();
    let run = cli.run(&[
        "env",
        "set",
        &slug,
        "--from-file",
        dotenv.to_str().unwrap(),
        "--dry-run",
        "--json",
    ]);
    run.ok();
    assert_no_values(&run);
    assert_eq!(run.json()["dry_run"], true);
    assert_eq!(run.json()["version"], 4);
    // The same from stdin, keeping values out of argv.
    let run = cli.run_with_stdin(
        &["env", "set", &slug, "--from-file", "-", "--dry-run"],
        Some(&format!("B={SECRET}\n")),
    );
    run.ok();
    assert_no_values(&run);
    assert!(run.stdout.contains("Dry run: would have set B"), "{run:?}");
    let env = cli.run(&["env", &slug, "--json"]);
    env.ok();
    let env = env.json();
    assert_eq!(env["version"], 3, "the dry run wrote nothing");
    assert_eq!(env["env"]["DB_PASSWORD"], "***", "masked");
    assert!(env["env"].get("B").is_none());

    // unset, history, rollback.
    let run = cli.run(&["env", "unset", &slug, "LOG_LEVEL", "A"]);
    run.ok();
    assert_no_values(&run);
    assert!(
        run.stdout.contains("LOG_LEVEL") && run.stdout.contains("version 4"),
        "{run:?}"
    );
    let run = cli.run(&["env", "unset", &slug, "NEVER_SET"]);
    run.ok();
    assert!(run.stdout.contains("No change"), "{run:?}");
    let hist = cli.run(&["env", "history", &slug, "--json"]);
    hist.ok();
    assert_no_values(&hist);
    let versions: Vec<i64> = hist.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![4, 3, 2, 1]);
    let text = cli.run(&["env", "history", &slug]);
    text.ok();
    assert_no_values(&text);
    assert!(text.stdout.contains("LOG_LEVEL"), "{text:?}");
    let run = cli.run(&["env", "rollback", &slug, "2", "--json"]);
    run.ok();
    assert_no_values(&run);
    let j = run.json();
    assert_eq!(j["version"], 5);
    assert_eq!(j["changed"]["set"], serde_json::json!(["LOG_LEVEL"]));
    cli.run(&["env", "rollback", &slug, "99"]).code(3);

    // The latest env is not live until a redeploy.
    assert_eq!(
        cli.run(&["status", &slug, "--json"]).json()["env_live"],
        false
    );
    let run = cli.run(&["redeploy", &slug, "--json"]);
    run.ok();
    let lines = run.lines();
    let last = lines.last().unwrap();
    assert_eq!(last["kind"], "deploy.result");
    assert_eq!(last["data"]["ok"], true);
    assert_eq!(last["data"]["release"], 2);
    // Events before the new release (release 1's history) are not reported.
    assert_eq!(lines[0]["kind"], "deploy.accepted");
    assert_eq!(lines[1]["kind"], "release.created", "{lines:?}");
    assert_eq!(lines[1]["data"]["release"], 2);
    let st = cli.run(&["status", &slug, "--json"]).json();
    assert_eq!(st["env_live"], true);
    assert_eq!(st["release"]["version"], 2);
    assert_eq!(st["release"]["status"], "live");

    // env set --redeploy applies at once; redeploy DIR ships new code. Plain output this time.
    let run = cli.run(&["env", "set", &slug, &format!("D={SECRET}"), "--redeploy"]);
    run.ok();
    assert_no_values(&run);
    assert!(run.stdout.contains("is live (release v3)"), "{run:?}");
    std::fs::write(dir.join("web/VERSION"), "2\n").unwrap();
    let run = cli.run(&["redeploy", &slug, dir.to_str().unwrap()]);
    run.ok();
    assert!(run.stdout.contains("release v4"), "{run:?}");
    let st = cli.run(&["status", &slug, "--json"]).json();
    assert_eq!(st["release"]["version"], 4);
    assert_eq!(st["env_live"], true);

    // logs: the noop runtime keeps no lines, but the stream must end at its marker.
    let run = cli.run(&["logs", &slug, "web"]);
    run.ok();
    assert_eq!(run.stdout, "");
    cli.run(&["logs", &slug, "web", "--json"]).ok();
    cli.run(&["logs", &slug, "nosuch"]).code(3);

    // ls lists it.
    let ls = cli.run(&["ls", "--json"]);
    ls.ok();
    assert!(
        ls.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["stack_id"] == slug.as_str())
    );
    let ls = cli.run(&["ls"]);
    ls.ok();
    assert!(
        ls.stdout.contains(&slug) && ls.stdout.contains("two-service"),
        "{ls:?}"
    );

    // rm --wait: follows the teardown to the end; afterwards the stack is gone.
    let run = cli.run(&["rm", &slug, "--wait", "--json"]);
    run.ok();
    let lines = run.lines();
    assert_eq!(lines.last().unwrap()["kind"], "rm.result");
    assert!(
        kinds(&lines).contains(&"stack.deleted".to_owned()),
        "{lines:?}"
    );
    cli.run(&["status", &slug]).code(3);
    cli.run(&["rm", &slug]).code(3);
}

#[test]
fn quiet_deploy_prints_only_the_stack_id_and_env_overrides_the_config_file() {
    let server = Server::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let dir = example_stack(work.path());
    // No login: STACKYARD_URL / STACKYARD_TOKEN only.
    let cli = Client::with_env(&server.base, &server.admin_token());
    let run = cli.run(&["deploy", dir.to_str().unwrap(), "--name", "quiet one", "-q"]);
    run.ok();
    let slug = run.stdout.trim();
    assert!(slug.starts_with("stk-") && !slug.contains('\n'), "{run:?}");
    // Only the warning about the link out reaches stderr.
    assert!(
        run.stderr.lines().all(|l| l.starts_with("warning:")),
        "{run:?}"
    );
    let st = cli.run(&["status", slug, "--json"]).json();
    assert_eq!(st["name"], "quiet one");
    assert_eq!(st["status"], "healthy");
    cli.run(&["rm", slug, "-q"]).ok();
}

/// A service that names a prebuilt `image:` is not packed: `deploy` sends the other
/// services' tarballs only, and the server takes the stack (a runtime that runs images).
#[test]
fn deploy_packs_no_tarball_for_a_service_run_from_an_image() {
    let server = Server::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("stack");
    std::fs::create_dir_all(dir.join("api")).unwrap();
    std::fs::write(dir.join("api/Procfile"), "web: ./api\n").unwrap();
    std::fs::write(
        dir.join("stackyard.yaml"),
        "services:\n  proxy:\n    image: nginx:1.27\n    port: 80\n    expose: true\n  api:\n    build: ./api\n",
    )
    .unwrap();
    let cli = Client::with_env(&server.base, &server.admin_token());
    let run = cli.run(&[
        "deploy",
        dir.to_str().unwrap(),
        "--name",
        "imaged",
        "--json",
    ]);
    run.ok();
    let packed: Vec<Value> = run
        .lines()
        .into_iter()
        .filter(|l| l["kind"] == "deploy.packed")
        .collect();
    assert_eq!(packed.len(), 1, "{run:?}");
    assert_eq!(packed[0]["data"]["service"], "api", "{run:?}");
    let last = run.lines().pop().unwrap();
    assert_eq!(last["kind"], "deploy.result", "{run:?}");
}
