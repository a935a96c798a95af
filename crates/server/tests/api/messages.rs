//! Error messages read as sentences for people and agents: every invalid input the API can be
//! sent gets a message (and an `agent_action`, where there is one) that names what was wrong
//! plainly — never a Rust `Debug` rendering such as `EnvKey("A")` or `Some(3)`.

use crate::support::*;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

/// A `Debug` rendering in a message: a type name wrapping its value (`EnvKey("A")`, `Some(3)`),
/// or a bare `None`.
fn debug_rendering(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    for (i, w) in text.char_indices() {
        let starts_word = i == 0 || !(bytes[i - 1] as char).is_ascii_alphanumeric();
        if !(starts_word && w.is_ascii_uppercase()) {
            continue;
        }
        let word: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = &text[i + word.len()..];
        if after.starts_with('(') || after.starts_with(" {") || word == "None" {
            return Some(text[i..].chars().take(40).collect());
        }
    }
    None
}

fn form(manifest: &str, name: &str, parts: &[(&str, Vec<u8>)]) -> Form {
    let mut f = Form::new()
        .text("manifest", manifest.to_owned())
        .text("name", name.to_owned());
    for (field, bytes) in parts {
        f = f.part(
            field.to_string(),
            Part::bytes(bytes.clone()).file_name("t.tar.gz"),
        );
    }
    f
}

fn web() -> Vec<u8> {
    tarball(&[("Procfile", "web: ./run\n")])
}

async fn every_invalid_input_gets_a_plain_message(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let token = app.admin_token.clone();
    let t = Some(token.as_str());
    let (code, created) = app
        .create_stack(t, form("services:\n  web: {}\n", "ok", &[("web", web())]))
        .await;
    assert_eq!(code, 202, "{created}");
    let slug = created["stack_id"].as_str().unwrap().to_owned();
    let env = format!("/stacks/{slug}/env");
    let raw_json = |body: &str| {
        app.patch(&env, t)
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let one_web = "services:\n  web: {}\n";
    let mut answers: Vec<(String, u16, Value)> = Vec::new();
    macro_rules! check {
        ($what:expr, $req:expr) => {{
            let (code, body) = call($req).await;
            answers.push(($what.to_string(), code, body));
        }};
    }
    check!("env key", raw_json(r#"{"env":{"1A":"x"}}"#));
    check!("duplicate key", raw_json(r#"{"env":{"A":"1","A":"2"}}"#));
    check!("number value", raw_json(r#"{"env":{"A":1}}"#));
    check!("NUL value", raw_json(r#"{"env":{"A":"x\u0000y"}}"#));
    check!("empty env", raw_json(r#"{"env":{}}"#));
    check!("no env", raw_json(r#"{"vars":{}}"#));
    check!("bad JSON", raw_json("{"));
    check!("text body", app.patch(&env, t).body("A=1"));
    check!(
        "stale If-Match",
        raw_json(r#"{"env":{"A":"1"}}"#).header("if-match", "\"7\"")
    );
    check!(
        "rollback body",
        app.post(&format!("{env}/rollback"), t)
            .json(&json!({"version": "x"}))
    );
    check!(
        "rollback version",
        app.post(&format!("{env}/rollback"), t)
            .json(&json!({"version": 99}))
    );
    check!("query", app.get(&format!("{env}/versions?limit=x"), t));
    check!(
        "idempotency key",
        raw_json(r#"{"env":{"A":"1"}}"#).header("idempotency-key", " ")
    );
    check!(
        "token name",
        app.post("/api/v1/tokens", t).json(&json!({"name": ""}))
    );
    check!("revoke id", app.delete("/api/v1/tokens/x", t));
    check!("bad token", app.get("/api/v1/stacks", Some("sy_nope")));
    check!("no route", app.get("/nope", None));
    check!("method", app.delete("/api/v1/audit", t));
    check!(
        "unknown stack",
        app.get("/stacks/stk-0123456789abcdef01234567", t)
    );
    let creates: Vec<(&str, Form)> = vec![
        ("no manifest", Form::new().text("name", "x")),
        ("YAML", form("services: [", "x", &[])),
        ("service name", form("services:\n  Web_1: {}\n", "x", &[])),
        (
            "manifest env key",
            form(
                "services:\n  web:\n    env:\n      1A: x\n",
                "x",
                &[("web", web())],
            ),
        ),
        ("no name", form(one_web, "", &[("web", web())])),
        ("stack name", form(one_web, "bad/name", &[("web", web())])),
        (
            "env name",
            form(one_web, "x", &[("web", web())]).text("env", "prod/1"),
        ),
        ("missing tarball", form(one_web, "x", &[])),
        (
            "not a tarball",
            form(one_web, "x", &[("web", b"not gzip".to_vec())]),
        ),
        (
            "extra part",
            form(one_web, "x", &[("web", web()), ("db", web())]),
        ),
        (
            "unsafe path",
            form(
                one_web,
                "x",
                &[(
                    "web",
                    raw_tarball(&[(b"../escape", tar::EntryType::Regular, None, b"x")]),
                )],
            ),
        ),
    ];
    for (what, f) in creates {
        let (code, body) = app.create_stack(t, f).await;
        answers.push((what.to_owned(), code, body));
    }
    check!("not multipart", app.post("/stacks/new", t).json(&json!({})));

    for (what, code, body) in &answers {
        assert_envelope(*code, body);
        for field in ["message", "agent_action"] {
            let Some(text) = body[field].as_str() else {
                continue;
            };
            assert!(
                debug_rendering(text).is_none(),
                "{what}: the {field} shows a Debug rendering {:?}: {text}",
                debug_rendering(text)
            );
        }
    }
}

#[test]
fn the_debug_rendering_check_finds_what_it_must() {
    assert!(debug_rendering(r#"the value of env key EnvKey("A") must be"#).is_some());
    assert!(debug_rendering("got Some(3)").is_some());
    assert!(debug_rendering("version None").is_some());
    assert!(debug_rendering("the value of env key `A` must be a string").is_none());
    assert!(debug_rendering("Env version 7 does not exist (or was pruned).").is_none());
}

both_backends!(every_invalid_input_gets_a_plain_message);
