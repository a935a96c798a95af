//! The dashboard at `/ui/` (dashboard.md) over real HTTP on both backends: the session cookie
//! and its server-side end, every page's security headers and markup (no inline script or
//! style), the hashed static files, secret env values kept off every page but an audited
//! reveal, the cross-origin refusal of forms, and a stale env edit answered with the conflict.
//!
//! The client follows no redirect and keeps no cookie jar: the session cookie is carried by
//! hand, so its attributes and its server-side end can be asserted.

use crate::support::*;
use reqwest::header::{self, HeaderMap};
use serde_json::{Value, json};

/// A client that follows no redirect (a 303 is asserted, not followed).
fn client() -> reqwest::Client {
    stackyard_testkit::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// What a dashboard request answered.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    async fn of(res: reqwest::Response) -> Answer {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.text().await.expect("body");
        Answer {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("an ASCII header"))
            .unwrap_or("")
    }

    #[track_caller]
    fn assert_redirect(&self, to: &str, whence: &str) {
        assert_eq!(
            (self.status, self.header("location")),
            (303, to),
            "{whence}: {}",
            self.body
        );
    }
}

/// `application/x-www-form-urlencoded` (reqwest is built without its `form` feature).
fn form_body(fields: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// How a form post presents its origin.
#[derive(Clone, Copy)]
enum Sent<'a> {
    /// `Origin: <the app's base URL>`, as a browser posting one of our pages without
    /// `Sec-Fetch-Site` would.
    OurOrigin,
    /// Neither `Origin` nor `Sec-Fetch-Site`.
    Nowhere,
    Origin(&'a str),
    SecFetchSite(&'a str),
}

/// A dashboard client of one app, with (or without) a session cookie carried by hand.
struct Dash<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    /// `stackyard_session=<id>`, as the `Cookie` header sends it.
    cookie: Option<String>,
}

impl<'a> Dash<'a> {
    fn new(app: &'a TestApp) -> Self {
        Dash {
            app,
            http: client(),
            cookie: None,
        }
    }

    /// Signed in with `token` (asserted to work).
    async fn signed_in(app: &'a TestApp, token: &str) -> Self {
        let mut d = Dash::new(app);
        let a = d.sign_in(token, Sent::OurOrigin).await;
        a.assert_redirect("/ui/stacks", "sign-in");
        d.cookie = Some(session_cookie(&a).0);
        d
    }

    async fn get(&self, path: &str) -> Answer {
        let mut rb = self.http.get(self.app.url(path));
        if let Some(c) = &self.cookie {
            rb = rb.header(header::COOKIE, c);
        }
        Answer::of(rb.send().await.expect("request sent")).await
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)], from: Sent<'_>) -> Answer {
        let mut rb = self
            .http
            .post(self.app.url(path))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(fields));
        if let Some(c) = &self.cookie {
            rb = rb.header(header::COOKIE, c);
        }
        rb = match from {
            Sent::OurOrigin => rb.header(header::ORIGIN, &self.app.base),
            Sent::Nowhere => rb,
            Sent::Origin(o) => rb.header(header::ORIGIN, o),
            Sent::SecFetchSite(s) => rb.header("sec-fetch-site", s),
        };
        Answer::of(rb.send().await.expect("request sent")).await
    }

    async fn sign_in(&self, token: &str, from: Sent<'_>) -> Answer {
        self.post("/ui/sign-in", &[("token", token)], from).await
    }
}

/// The session cookie a sign-in set: `(name=value, attributes)`.
#[track_caller]
fn session_cookie(a: &Answer) -> (String, Vec<String>) {
    let all: Vec<&str> = a
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("an ASCII cookie"))
        .collect();
    assert_eq!(all.len(), 1, "one Set-Cookie: {all:?}");
    let mut parts = all[0].split(';').map(str::trim);
    let pair = parts.next().expect("name=value").to_owned();
    let (name, value) = pair.split_once('=').expect("name=value");
    assert_eq!(name, "stackyard_session");
    assert!(value.len() >= 32, "a long random session id: {value:?}");
    (pair.clone(), parts.map(str::to_owned).collect())
}

fn has_attr(attrs: &[String], want: &str) -> bool {
    attrs.iter().any(|a| a.eq_ignore_ascii_case(want))
}

/// A stack of the admin's team from `two_service_form`, healthy (noop runtime).
async fn healthy_stack(app: &TestApp, name: &str) -> String {
    let t = Some(app.admin_token.as_str());
    let (code, body) = app.create_stack(t, two_service_form(name)).await;
    assert_eq!(code, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    app.wait_for(&slug, t, |_, b| b["status"] == "healthy")
        .await;
    slug
}

/// `PATCH /stacks/{slug}/env` with the admin token; every value registered as a secret no
/// server may log. Returns the new version.
async fn api_patch_env(app: &TestApp, slug: &str, env: Value) -> i64 {
    stackyard_testkit::leaks::register_json(&env);
    let (code, body) = call(
        app.patch(&format!("/stacks/{slug}/env"), Some(&app.admin_token))
            .json(&json!({ "env": env })),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    body["version"].as_i64().unwrap()
}

/// The env as the API shows it (masked).
async fn api_env(app: &TestApp, slug: &str) -> Value {
    let (code, body) = call(app.get(&format!("/stacks/{slug}/env"), Some(&app.admin_token))).await;
    assert_eq!(code, 200, "{body}");
    body
}

async fn api_env_version(app: &TestApp, slug: &str) -> i64 {
    api_env(app, slug).await["version"].as_i64().unwrap()
}

/// The team's audit rows of `kind`, newest first.
async fn api_audit(app: &TestApp, kind: &str) -> Vec<Value> {
    let (code, body) = call(app.get(
        &format!("/api/v1/audit?kind={kind}&limit=100"),
        Some(&app.admin_token),
    ))
    .await;
    assert_eq!(code, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// The text of the element with `id` (up to its first child tag), trimmed.
fn element_text<'b>(body: &'b str, id: &str) -> Option<&'b str> {
    let at = body.find(&format!("id=\"{id}\""))?;
    let rest = &body[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')?;
    Some(rest[start..start + end].trim())
}

/// The env version a page shows in `#env-version`.
#[track_caller]
fn shown_version(body: &str) -> i64 {
    element_text(body, "env-version")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no #env-version in {body}"))
}

/// Every page of a team with stack `slug`, as a signed-in user sees them.
fn every_page(slug: &str) -> Vec<String> {
    vec![
        "/ui/sign-in".into(),
        "/ui/stacks".into(),
        "/ui/stacks?status=healthy".into(),
        "/ui/stacks/new".into(),
        format!("/ui/stacks/{slug}"),
        format!("/ui/stacks/{slug}/env"),
        format!("/ui/stacks/{slug}/logs?service=web"),
        format!("/ui/stacks/{slug}/logs?service=api"),
        "/ui/audit".into(),
        format!("/ui/audit?stack={slug}"),
        "/ui/audit?kind=stack.env.updated".into(),
        "/ui/tokens".into(),
    ]
}

/// The headers and markup every dashboard page must have: HTML, a strict CSP, no framing, and
/// nothing inline the CSP would have to allow.
#[track_caller]
fn assert_safe_page(path: &str, a: &Answer) {
    assert!(
        a.header("content-type").starts_with("text/html"),
        "{path}: content-type {:?}",
        a.header("content-type")
    );
    let csp = a.header("content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{path}: CSP {csp:?}");
    assert!(!csp.contains("unsafe-inline"), "{path}: CSP {csp:?}");
    assert!(!csp.contains("unsafe-eval"), "{path}: CSP {csp:?}");
    assert_eq!(a.header("x-frame-options"), "DENY", "{path}");
    let lower = a.body.to_ascii_lowercase();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find("<script") {
        let tag = &rest[i..i + rest[i..].find('>').expect("a closed tag")];
        assert!(tag.contains(" src="), "{path}: an inline script: {tag}");
        rest = &rest[i + tag.len()..];
    }
    assert!(!lower.contains("<style"), "{path}: a <style> element");
    assert!(!lower.contains(" style="), "{path}: a style= attribute");
    assert!(!lower.contains("hx-on"), "{path}: an hx-on attribute");
    assert!(!lower.contains("javascript:"), "{path}: a javascript: URL");
}

/// The `/ui/static/…` URLs a page links to (stylesheet and scripts).
fn static_links(body: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attr in ["href=\"", "src=\""] {
        let mut rest = body;
        while let Some(i) = rest.find(attr) {
            let after = &rest[i + attr.len()..];
            let end = after.find('"').expect("a closed attribute");
            if after[..end].starts_with("/ui/static/") {
                found.push(after[..end].to_owned());
            }
            rest = &after[end..];
        }
    }
    found.sort();
    found.dedup();
    found
}

async fn dashboard_sign_in_sets_a_strict_http_only_session_cookie_and_sign_out_ends_it_server_side(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let anon = Dash::new(&app);
    anon.get("/ui/stacks")
        .await
        .assert_redirect("/ui/sign-in", "no cookie");
    let mut forged = Dash::new(&app);
    forged.cookie = Some(format!("stackyard_session={}", "ab".repeat(32)));
    forged
        .get("/ui/stacks")
        .await
        .assert_redirect("/ui/sign-in", "an unknown session id");
    let page = anon.get("/ui/sign-in").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("name=\"token\""), "{}", page.body);

    // A wrong token: the page again, 401, and no cookie.
    let wrong = stackyard_testkit::leaks::register("sy_not-a-real-token-at-all").to_owned();
    for token in [wrong.as_str(), ""] {
        let a = anon.sign_in(token, Sent::OurOrigin).await;
        assert_eq!(a.status, 401, "{token:?}: {}", a.body);
        assert!(
            a.headers.get(header::SET_COOKIE).is_none(),
            "{token:?}: {:?}",
            a.headers
        );
        assert!(a.header("content-type").starts_with("text/html"));
        assert!(a.body.contains("role=\"alert\""), "{}", a.body);
        assert!(!a.body.contains(&wrong), "the token is not echoed");
    }

    // The admin token: 303 to the stacks and a strict cookie (no `Secure` over plain HTTP).
    let a = anon.sign_in(&app.admin_token, Sent::OurOrigin).await;
    a.assert_redirect("/ui/stacks", "sign-in");
    let (cookie, attrs) = session_cookie(&a);
    for want in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(has_attr(&attrs, want), "{want} missing from {attrs:?}");
    }
    assert!(
        !attrs
            .iter()
            .any(|x| x.eq_ignore_ascii_case("secure")
                || x.to_ascii_lowercase().starts_with("domain")),
        "{attrs:?}"
    );
    assert!(
        !cookie.contains(&app.admin_token),
        "the cookie is not the token"
    );
    let mut dash = Dash::new(&app);
    dash.cookie = Some(cookie.clone());
    let stacks = dash.get("/ui/stacks").await;
    assert_eq!(stacks.status, 200, "{}", stacks.body);
    assert!(stacks.body.contains("default"), "the team's name is shown");
    // Signing in again opens a second, independent session.
    let other = Dash::signed_in(&app, &app.admin_token).await;
    assert_ne!(other.cookie.as_deref(), Some(cookie.as_str()));

    // Sign-out ends the session server-side: the same cookie, sent again, is refused.
    let out = dash.post("/ui/sign-out", &[], Sent::OurOrigin).await;
    out.assert_redirect("/ui/sign-in", "sign-out");
    let cleared = out
        .headers
        .get(header::SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        cleared.starts_with("stackyard_session=;") && cleared.contains("Max-Age=0"),
        "sign-out clears the cookie: {cleared:?}"
    );
    dash.get("/ui/stacks")
        .await
        .assert_redirect("/ui/sign-in", "a signed-out session");
    dash.get("/ui/tokens")
        .await
        .assert_redirect("/ui/sign-in", "a signed-out session");
    let other_stacks = other.get("/ui/stacks").await;
    assert_eq!(
        other_stacks.status, 200,
        "the other session lives on: {}",
        other_stacks.body
    );

    // A session opened with a token that is then revoked stops working at once.
    let (code, created) = call(
        app.post("/api/v1/tokens", Some(&app.admin_token))
            .json(&json!({"name": "dash"})),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let secret = stackyard_testkit::leaks::register(created["token"].as_str().unwrap()).to_owned();
    let id = created["id"].as_i64().unwrap();
    let theirs = Dash::signed_in(&app, &secret).await;
    assert_eq!(theirs.get("/ui/stacks").await.status, 200);
    assert_eq!(theirs.get("/ui/tokens").await.status, 200);
    let (code, body) =
        call(app.delete(&format!("/api/v1/tokens/{id}"), Some(&app.admin_token))).await;
    assert_eq!(code, 200, "{body}");
    theirs
        .get("/ui/stacks")
        .await
        .assert_redirect("/ui/sign-in", "a session of a revoked token");
    theirs
        .get("/ui/tokens")
        .await
        .assert_redirect("/ui/sign-in", "a session of a revoked token");
    let again = anon.sign_in(&secret, Sent::OurOrigin).await;
    assert_eq!(again.status, 401, "a revoked token opens no session");
    assert!(again.headers.get(header::SET_COOKIE).is_none());
    // The admin's session is not affected.
    assert_eq!(other.get("/ui/stacks").await.status, 200);
}

async fn every_dashboard_page_renders_for_a_seeded_team_with_csp_and_frame_headers(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let slug = healthy_stack(&app, "shop").await;
    api_patch_env(&app, &slug, json!({"GREETING": "hello there"})).await;
    let (code, created) = call(
        app.post("/api/v1/tokens", Some(&app.admin_token))
            .json(&json!({"name": "ci-robot"})),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    stackyard_testkit::leaks::register(created["token"].as_str().unwrap());

    let dash = Dash::signed_in(&app, &app.admin_token).await;
    let mut links = Vec::new();
    for path in every_page(&slug) {
        let a = dash.get(&path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert_safe_page(&path, &a);
        assert!(
            a.header("cache-control").contains("no-store"),
            "{path}: {:?}",
            a.header("cache-control")
        );
        links.extend(static_links(&a.body));
    }
    // What the seed wrote is on its pages.
    for (path, want) in [
        ("/ui/stacks".to_owned(), slug.as_str()),
        ("/ui/stacks?status=healthy".to_owned(), slug.as_str()),
        (format!("/ui/stacks/{slug}"), "web"),
        (format!("/ui/stacks/{slug}/env"), "GREETING"),
        (format!("/ui/stacks/{slug}/logs?service=web"), "web"),
        ("/ui/audit".to_owned(), "stack.env.updated"),
        ("/ui/tokens".to_owned(), "ci-robot"),
    ] {
        let a = dash.get(&path).await;
        assert!(a.body.contains(want), "{path} lacks {want:?}: {}", a.body);
    }
    let none = dash.get("/ui/stacks?status=failed").await;
    assert_eq!(none.status, 200, "{}", none.body);
    assert!(
        !none.body.contains(&slug),
        "a healthy stack is filtered out of ?status=failed"
    );
    // An unknown stack is a 404 page, with the same headers.
    for path in ["/ui/stacks/stk-nope", "/ui/stacks/stk-nope/env", "/ui/nope"] {
        let a = dash.get(path).await;
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        assert_safe_page(path, &a);
    }

    // The static files the pages link to: a stylesheet and two scripts, hashed, cached for
    // good; a name with another hash does not exist.
    links.sort();
    links.dedup();
    assert_eq!(links.len(), 3, "one stylesheet, htmx, app.js: {links:?}");
    assert!(
        links.iter().any(|l| l.ends_with(".css")) && links.iter().any(|l| l.contains("htmx")),
        "{links:?}"
    );
    let anon = Dash::new(&app);
    for link in &links {
        let a = anon.get(link).await;
        assert_eq!(a.status, 200, "{link}");
        assert!(
            a.header("cache-control").contains("immutable"),
            "{link}: {:?}",
            a.header("cache-control")
        );
        let want = if link.ends_with(".css") {
            "text/css"
        } else {
            "javascript"
        };
        assert!(a.header("content-type").contains(want), "{link}");
        assert!(!a.body.is_empty(), "{link}");
        // `/ui/static/<stem>.<hash>.<ext>`
        let name = link.rsplit('/').next().unwrap();
        let parts: Vec<&str> = name.split('.').collect();
        assert!(parts.len() >= 3, "{name} carries a hash");
        let hash = parts[parts.len() - 2];
        assert!(
            hash.len() >= 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        let other = if hash.starts_with('0') { "f" } else { "0" }.repeat(hash.len());
        let wrong = link.replace(&format!(".{hash}."), &format!(".{other}."));
        assert_ne!(&wrong, link);
        let a = anon.get(&wrong).await;
        assert_eq!(a.status, 404, "{wrong}");
        assert!(!a.header("cache-control").contains("immutable"), "{wrong}");
        let unhashed = format!(
            "/ui/static/{}.{}",
            parts[..parts.len() - 2].join("."),
            parts[parts.len() - 1]
        );
        assert_eq!(anon.get(&unhashed).await.status, 404, "{unhashed}");
    }
}

async fn no_env_value_appears_in_any_dashboard_page_unless_revealed(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let slug = healthy_stack(&app, "vault").await;
    let plain = format!("plain-note-{}", std::process::id());
    let secret = format!("Hunter2-{}-{}", std::process::id(), slug);
    assert!(!stackyard_core::env::is_secret("PLAIN_NOTE", &plain));
    assert!(stackyard_core::env::is_secret("DB_PASSWORD", &secret));
    api_patch_env(
        &app,
        &slug,
        json!({"PLAIN_NOTE": plain, "DB_PASSWORD": secret}),
    )
    .await;
    // A second version, so the history has a diff naming the secret key again.
    let version = api_patch_env(&app, &slug, json!({"DB_PASSWORD": format!("{secret}-2")})).await;
    // The API masks the secret-looking key only.
    let masked = api_env(&app, &slug).await;
    assert_eq!(masked["env"]["DB_PASSWORD"], "***", "{masked}");
    assert_eq!(masked["env"]["PLAIN_NOTE"], plain.as_str(), "{masked}");

    let dash = Dash::signed_in(&app, &app.admin_token).await;
    let mut pages = every_page(&slug);
    pages.push(format!("/ui/stacks/{slug}/env?notice=env_saved"));
    pages.push(format!("/ui/audit?kind=stack.env.updated&stack={slug}"));
    for path in &pages {
        let a = dash.get(path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert!(!a.body.contains(&secret), "{path} shows the secret value");
    }
    let env = dash.get(&format!("/ui/stacks/{slug}/env")).await;
    assert!(
        env.body.contains(&plain),
        "a value the API shows is shown: {}",
        env.body
    );
    assert!(env.body.contains("DB_PASSWORD") && env.body.contains("***"));
    assert_eq!(shown_version(&env.body), version);
    assert!(
        element_text(&env.body, "revealed-value").is_none(),
        "nothing revealed yet"
    );
    // Nothing was revealed by showing the pages.
    assert!(api_audit(&app, "stack.env.revealed").await.is_empty());

    // A reveal: that value, once, in its box; audited as the dashboard's.
    let path = format!("/ui/stacks/{slug}/env/reveal");
    let current = format!("{secret}-2");
    let a = dash
        .post(&path, &[("key", "DB_PASSWORD")], Sent::OurOrigin)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_safe_page(&path, &a);
    assert!(a.header("cache-control").contains("no-store"));
    assert_eq!(
        a.body.matches(&current).count(),
        1,
        "the revealed value is shown exactly once"
    );
    assert_eq!(
        element_text(&a.body, "revealed-value"),
        Some(current.as_str()),
        "inside #revealed-value"
    );
    let revealed = api_audit(&app, "stack.env.revealed").await;
    assert_eq!(revealed.len(), 1, "{revealed:?}");
    assert_eq!(revealed[0]["actor"], "dashboard", "{}", revealed[0]);
    assert_eq!(revealed[0]["stack_id"], slug.as_str(), "{}", revealed[0]);
    assert!(!revealed[0]["metadata"].to_string().contains(&secret));
    let (_, audit) = call(app.get("/api/v1/audit?limit=100", Some(&app.admin_token))).await;
    assert!(!audit.to_string().contains(&secret), "{audit}");

    // The reveal showed it once: every page is masked again, the audit page included.
    for path in &pages {
        let a = dash.get(path).await;
        assert!(!a.body.contains(&secret), "{path} shows the secret value");
    }
    // A reveal of an absent key reveals nothing, so it is not audited as one.
    let a = dash
        .post(&path, &[("key", "NOT_THERE")], Sent::OurOrigin)
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(!a.body.contains(&secret));
    let reveals = api_audit(&app, "stack.env.revealed").await.len();
    assert_eq!(reveals, 1, "only the one real reveal is audited");
    // A reveal from another origin is refused before anything is read.
    let a = dash
        .post(
            &path,
            &[("key", "DB_PASSWORD")],
            Sent::Origin("http://evil.example"),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(!a.body.contains(&secret));
    assert_eq!(api_audit(&app, "stack.env.revealed").await.len(), reveals);
}

async fn dashboard_forms_from_another_origin_are_refused_and_change_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let slug = healthy_stack(&app, "csrf").await;
    let dash = Dash::signed_in(&app, &app.admin_token).await;
    let before = api_env_version(&app, &slug).await;
    let page = dash.get(&format!("/ui/stacks/{slug}/env")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(shown_version(&page.body), before);
    let v = before.to_string();
    let path = format!("/ui/stacks/{slug}/env");
    let fields = [
        ("key", "X"),
        ("value", "y"),
        ("action", "save"),
        ("version", v.as_str()),
    ];
    let host = app.base.trim_start_matches("http://").to_owned();
    let other_port = format!("http://{}:1", host.rsplit_once(':').unwrap().0);
    for (why, from) in [
        ("no Origin, no Sec-Fetch-Site", Sent::Nowhere),
        ("another origin", Sent::Origin("http://evil.example")),
        ("another port of this host", Sent::Origin(&other_port)),
        ("the null origin", Sent::Origin("null")),
        (
            "Sec-Fetch-Site: cross-site",
            Sent::SecFetchSite("cross-site"),
        ),
        ("Sec-Fetch-Site: same-site", Sent::SecFetchSite("same-site")),
        ("Sec-Fetch-Site: none", Sent::SecFetchSite("none")),
    ] {
        let a = dash.post(&path, &fields, from).await;
        assert_eq!(a.status, 403, "{why}: {}", a.body);
        assert!(a.header("content-type").starts_with("text/html"), "{why}");
        assert_eq!(a.header("x-frame-options"), "DENY", "{why}");
        assert_eq!(
            api_env_version(&app, &slug).await,
            before,
            "{why}: the env is unchanged"
        );
    }
    assert!(api_env(&app, &slug).await["env"].get("X").is_none());
    assert!(api_audit(&app, "stack.env.updated").await.is_empty());

    // From our own page: written, as the dashboard.
    let a = dash
        .post(&path, &fields, Sent::SecFetchSite("same-origin"))
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert!(
        a.header("location")
            .starts_with(&format!("/ui/stacks/{slug}/env")),
        "{:?}",
        a.header("location")
    );
    let env = api_env(&app, &slug).await;
    assert_eq!(env["version"].as_i64().unwrap(), before + 1, "{env}");
    assert_eq!(env["env"]["X"], "y", "{env}");
    let updated = api_audit(&app, "stack.env.updated").await;
    assert_eq!(updated.len(), 1, "{updated:?}");
    assert_eq!(updated[0]["actor"], "dashboard", "{}", updated[0]);
    assert_eq!(updated[0]["stack_id"], slug.as_str());
    // `Origin` naming this server also passes (a browser without `Sec-Fetch-Site`).
    let v1 = (before + 1).to_string();
    let a = dash
        .post(
            &path,
            &[
                ("key", "Z"),
                ("value", "z"),
                ("action", "save"),
                ("version", v1.as_str()),
            ],
            Sent::OurOrigin,
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(api_env_version(&app, &slug).await, before + 2);

    // Other forms are guarded alike: signing in, signing out, revoking a token.
    let anon = Dash::new(&app);
    for from in [
        Sent::SecFetchSite("cross-site"),
        Sent::Origin("http://evil.example"),
        Sent::Nowhere,
    ] {
        let a = anon.sign_in(&app.admin_token, from).await;
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(a.headers.get(header::SET_COOKIE).is_none());
        let a = dash.post("/ui/sign-out", &[], from).await;
        assert_eq!(a.status, 403, "{}", a.body);
        assert!(a.headers.get(header::SET_COOKIE).is_none());
    }
    assert_eq!(
        dash.get("/ui/stacks").await.status,
        200,
        "a refused sign-out ends nothing"
    );
    let (_, who) = call(app.get("/api/v1/whoami", Some(&app.admin_token))).await;
    let admin_id = who["token"]["id"].as_i64().unwrap();
    let a = dash
        .post(
            &format!("/ui/tokens/{admin_id}/revoke"),
            &[],
            Sent::Origin("http://evil.example"),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let (code, _) = call(app.get("/api/v1/whoami", Some(&app.admin_token))).await;
    assert_eq!(code, 200, "the token was not revoked");
    // Without a session, a same-origin form goes to the sign-in page and writes nothing.
    let a = anon
        .post(&path, &fields, Sent::SecFetchSite("same-origin"))
        .await;
    a.assert_redirect("/ui/sign-in", "a form without a session");
    assert_eq!(api_env_version(&app, &slug).await, before + 2);
}

async fn a_stale_env_edit_shows_the_conflict_and_the_current_map(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let slug = healthy_stack(&app, "stale").await;
    api_patch_env(&app, &slug, json!({"FIRST": "one"})).await;
    let dash = Dash::signed_in(&app, &app.admin_token).await;
    let path = format!("/ui/stacks/{slug}/env");
    let page = dash.get(&path).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let v = shown_version(&page.body);
    assert_eq!(v, api_env_version(&app, &slug).await);
    assert!(
        !page.body.contains("id=\"env-conflict\""),
        "no conflict yet"
    );

    // Someone else writes meanwhile.
    let moved = api_patch_env(&app, &slug, json!({"SECOND": "two-by-the-api"})).await;
    assert_eq!(moved, v + 1);

    // The page's form, sent as version V: refused with the conflict and the current map.
    let typed = format!("typed-on-a-stale-page-{}", std::process::id());
    stackyard_testkit::leaks::register(&typed);
    let stale = v.to_string();
    let a = dash
        .post(
            &path,
            &[
                ("key", "THIRD"),
                ("value", typed.as_str()),
                ("action", "save"),
                ("version", stale.as_str()),
            ],
            Sent::OurOrigin,
        )
        .await;
    assert_eq!(a.status, 412, "{}", a.body);
    assert_safe_page(&path, &a);
    assert!(a.body.contains("id=\"env-conflict\""), "{}", a.body);
    assert_eq!(
        shown_version(&a.body),
        v + 1,
        "the current version is shown"
    );
    assert!(
        a.body.contains("SECOND") && a.body.contains("two-by-the-api"),
        "the current map is shown: {}",
        a.body
    );
    let env = api_env(&app, &slug).await;
    assert_eq!(
        env["version"].as_i64().unwrap(),
        v + 1,
        "nothing was written"
    );
    assert!(env["env"].get("THIRD").is_none(), "{env}");

    // The same change, sent again from the refreshed page, goes through.
    let fresh = (v + 1).to_string();
    let a = dash
        .post(
            &path,
            &[
                ("key", "THIRD"),
                ("value", typed.as_str()),
                ("action", "save"),
                ("version", fresh.as_str()),
            ],
            Sent::OurOrigin,
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    let env = api_env(&app, &slug).await;
    assert_eq!(env["version"].as_i64().unwrap(), v + 2);
    assert_eq!(env["env"]["THIRD"], typed.as_str());
    let page = dash.get(&path).await;
    assert_eq!(shown_version(&page.body), v + 2);
    assert!(!page.body.contains("id=\"env-conflict\""));
}

both_backends!(
    dashboard_sign_in_sets_a_strict_http_only_session_cookie_and_sign_out_ends_it_server_side,
    every_dashboard_page_renders_for_a_seeded_team_with_csp_and_frame_headers,
    no_env_value_appears_in_any_dashboard_page_unless_revealed,
    dashboard_forms_from_another_origin_are_refused_and_change_nothing,
    a_stale_env_edit_shows_the_conflict_and_the_current_map,
);
