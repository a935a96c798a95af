//! Dockerfile builds on the real kernel, offline (`isolation.md`, "Builds"): `RUN` steps in the
//! service's sandbox create files and install dependencies shipped in the context (a wheel with
//! `pip install --no-index`, a `file:` package with `npm install`), `ENV`/`ARG`/`WORKDIR`/`COPY`
//! shape the image, the build is cached across env-only redeploys (visible as `cached`
//! `build.step` events), a failing step fails the release naming the step while the old release
//! keeps serving, and a Procfile's `release:` command runs once before the processes start. A
//! build step is as confined as the service it builds: it cannot read the admin token.

use crate::runtime::{
    create, delete_and_wait_gone, form_of, log_backlog, redeploy, wait_healthy, wait_release,
};
use crate::supervisor::events_until;
use crate::support::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// GET `path` of an exposed service through the router: (status, body).
async fn get(
    client: &reqwest::Client,
    server: &Server,
    service: &str,
    slug: &str,
    path: &str,
) -> (u16, String) {
    let router = server.router.as_deref().expect("local runtime");
    let res = client
        .get(format!("{router}{path}"))
        .header("host", format!("{service}-{slug}.localhost"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn get_json(client: &reqwest::Client, server: &Server, slug: &str) -> Value {
    let (code, body) = get(client, server, "web", slug, "/").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

/// `(kind, service, status)` events of the stack's `build.step`s with `status`.
fn steps_with(events: &[(String, String, String)], status: &str) -> usize {
    events
        .iter()
        .filter(|(k, s, st)| k == "build.step" && s == "web" && st == status)
        .count()
}

/// PATCHes the stack env, redeploys and waits for the new release to be live; the service's
/// answer then.
async fn apply_env(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    slug: &str,
    env: Value,
) -> Value {
    let res = client
        .patch(server.url(&format!("/stacks/{slug}/env")))
        .bearer_auth(token)
        .json(&json!({ "env": env }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let version = redeploy(client, server, token, slug, None).await;
    wait_release(client, server, token, slug, version, "live").await;
    get_json(client, server, slug).await
}

/// A wheel of package `hello_wheel` (`VALUE = "from the wheel"`), made with Python's zipfile.
fn write_wheel(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"
import sys, zipfile
files = {
    "hello_wheel/__init__.py": 'VALUE = "from the wheel"\n',
    "hello_wheel-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: hello-wheel\nVersion: 1.0\n",
    "hello_wheel-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = "".join(f"{name},,\n" for name in files) + "hello_wheel-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
    z.writestr("hello_wheel-1.0.dist-info/RECORD", record)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.join("hello_wheel-1.0-py3-none-any.whl"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

const PYTHON_DOCKERFILE: &str = "\
FROM python:3.11-slim AS app
ARG GREETING=hello
ENV APP_MODE=production
WORKDIR /srv/app
COPY conf ./conf
COPY vendor/ ./vendor/
RUN mkdir -p generated && echo \"$GREETING from $APP_MODE\" > generated/greeting.txt
ARG T_DATA_DIR
RUN cat \"$T_DATA_DIR/admin-token\" > generated/probe.txt 2>&1 || echo denied >> generated/probe.txt
RUN pip install --no-index ./vendor/*.whl
COPY . .
EXPOSE 8000
CMD [\"python3\", \"server.py\"]
";

const PYTHON_SERVER: &str = r#"
import json, os, http.server
import hello_wheel

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "greeting": open("generated/greeting.txt").read().strip(),
            "settings": open("conf/settings.txt").read().strip(),
            "mode": os.environ.get("APP_MODE"),
            "wheel": hello_wheel.VALUE,
            "cwd": os.getcwd(),
            "extra": os.environ.get("EXTRA"),
            "probe": open("generated/probe.txt").read(),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

#[tokio::test]
async fn a_dockerfile_is_built_in_the_sandbox_and_cached_across_env_only_redeploys() {
    let (_db, _data, server) = local_server(&[]).await;
    let client = stackyard_testkit::http_client();
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path();
    write_app(
        app,
        &format!(
            "services:\n  web:\n    build: ./web\n    expose: true\n    env:\n      T_DATA_DIR: {}\n",
            server.data_dir.display()
        ),
        &[
            ("web/Dockerfile", PYTHON_DOCKERFILE),
            ("web/server.py", PYTHON_SERVER),
            ("web/conf/settings.txt", "from the conf directory\n"),
        ],
    );
    write_wheel(&app.join("web/vendor"));
    let form = form_of(app, &[("web", &app.join("web"))], "built");
    let slug = create(&client, &server, Some(&token), form).await;
    wait_healthy(&client, &server, Some(&token), &slug).await;

    // RUN created files with the ARG default and the ENV; COPY put the subdirectory under
    // WORKDIR; pip installed the shipped wheel; the service runs in WORKDIR with the ENV.
    let body = get_json(&client, &server, &slug).await;
    assert_eq!(body["greeting"], "hello from production", "{body}");
    assert_eq!(body["settings"], "from the conf directory", "{body}");
    assert_eq!(body["mode"], "production", "{body}");
    assert_eq!(body["wheel"], "from the wheel", "{body}");
    assert!(
        body["cwd"].as_str().unwrap().ends_with("/srv/app"),
        "{body}"
    );
    // A build step is as confined as the service: the data directory is out of reach.
    let probe = body["probe"].as_str().unwrap();
    let denied = format!(
        "{}/admin-token: Permission denied",
        server.data_dir.display()
    );
    assert!(
        probe.contains(&denied) && probe.ends_with("denied\n"),
        "{probe}"
    );
    assert!(!probe.contains(&token), "{probe}");
    let events = events_until(&client, &server, &token, &slug, |e| {
        steps_with(e, "done") == 6
    })
    .await;
    assert_eq!(steps_with(&events, "running"), 6, "{events:?}");
    let logs = log_backlog(&client, &server, &token, &slug, "web").await;
    assert!(
        logs.contains("Step 5/6 : RUN pip install --no-index ./vendor/*.whl"),
        "{logs}"
    );

    // Only env changed (a key no ARG names): the build is reused, every step `cached`.
    let body = apply_env(
        &client,
        &server,
        &token,
        &slug,
        json!({"EXTRA": "set later"}),
    )
    .await;
    assert_eq!(
        (body["extra"].clone(), body["wheel"].clone()),
        (json!("set later"), json!("from the wheel")),
        "{body}"
    );
    let events = events_until(&client, &server, &token, &slug, |e| {
        steps_with(e, "cached") == 6
    })
    .await;
    assert_eq!(
        steps_with(&events, "running"),
        6,
        "no step ran again: {events:?}"
    );

    // A build arg is part of the key: setting GREETING rebuilds with its value.
    let body = apply_env(
        &client,
        &server,
        &token,
        &slug,
        json!({"GREETING": "howdy"}),
    )
    .await;
    assert_eq!(body["greeting"], "howdy from production", "{body}");
    let events = events_until(&client, &server, &token, &slug, |e| {
        steps_with(e, "done") == 12
    })
    .await;
    assert_eq!(steps_with(&events, "running"), 12, "{events:?}");

    // Deleting the stack takes its build cache, logs and run records with its unpacked files.
    let dirs = ["stacks", "builds", "run", "logs"].map(|d| server.data_dir.join(d).join(&slug));
    for d in &dirs {
        assert!(d.exists(), "{} before the deletion", d.display());
    }
    delete_and_wait_gone(&client, &server, &token, &slug, Duration::from_secs(60)).await;
    for d in &dirs {
        assert!(!d.exists(), "{} outlived its stack", d.display());
    }
}

const NODE_DOCKERFILE: &str = "\
FROM node:20-alpine
WORKDIR /app
COPY package.json ./
COPY greet ./greet
RUN npm install
COPY . .
CMD [\"node\", \"server.js\"]
";

const NODE_SERVER: &str = r#"
const http = require("http");
const greet = require("greet");
http.createServer((req, res) => {
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ greeting: greet("node") }));
}).listen(Number(process.env.PORT), "127.0.0.1");
"#;

/// The node app of the second test, with `dockerfile`.
fn node_app(dir: &Path, dockerfile: &str) {
    write_app(
        dir,
        "services:\n  web:\n    build: ./web\n    expose: true\n  worker:\n    build: ./worker\n    expose: true\n",
        &[
            ("web/Dockerfile", dockerfile),
            ("web/server.js", NODE_SERVER),
            (
                "web/package.json",
                r#"{"name": "app", "version": "1.0.0", "dependencies": {"greet": "file:./greet"}}"#,
            ),
            (
                "web/greet/package.json",
                r#"{"name": "greet", "version": "1.0.0", "main": "index.js"}"#,
            ),
            (
                "web/greet/index.js",
                "module.exports = (who) => `hello ${who} from a file: package`;\n",
            ),
            (
                "worker/Procfile",
                "release: echo migrated >> migrations.log\n\
                 web: exec python3 -m http.server \"$PORT\" --bind 127.0.0.1\n",
            ),
        ],
    );
}

#[tokio::test]
async fn npm_installs_a_file_package_a_failing_step_keeps_the_old_release_and_release_runs_once() {
    let (_db, _data, server) = local_server(&[]).await;
    let client = stackyard_testkit::http_client();
    let token = server.admin_token();
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("v1");
    node_app(&app, NODE_DOCKERFILE);
    let services = [("web", app.join("web")), ("worker", app.join("worker"))];
    let parts: Vec<(&str, &Path)> = services.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let slug = create(
        &client,
        &server,
        Some(&token),
        form_of(&app, &parts, "node"),
    )
    .await;
    wait_healthy(&client, &server, Some(&token), &slug).await;

    let body = get_json(&client, &server, &slug).await;
    assert_eq!(
        body["greeting"], "hello node from a file: package",
        "{body}"
    );
    // The worker's `release:` ran once, before it started, in its directory.
    let (code, log) = get(&client, &server, "worker", &slug, "/migrations.log").await;
    assert_eq!((code, log.as_str()), (200, "migrated\n"));

    // New code whose second RUN fails: the release fails naming the step, its exit code and
    // its output; release v1 keeps serving.
    let broken = apps.path().join("v2");
    node_app(
        &broken,
        &NODE_DOCKERFILE.replace(
            "COPY . .\n",
            "COPY . .\nRUN echo \"about to fail\" && exit 7\n",
        ),
    );
    let services = [
        ("web", broken.join("web")),
        ("worker", broken.join("worker")),
    ];
    let parts: Vec<(&str, &Path)> = services.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let v2 = redeploy(
        &client,
        &server,
        &token,
        &slug,
        Some(form_of(&broken, &parts, "node")),
    )
    .await;
    let stack = wait_release(&client, &server, &token, &slug, v2, "failed").await;
    let error = stack["error"].as_str().unwrap_or_default();
    assert!(
        error
            .contains("build step 5/5 `RUN echo \"about to fail\" && exit 7` exited with status 7")
            && error.contains("about to fail")
            && error.contains("v1 keeps serving"),
        "{stack}"
    );
    let body = get_json(&client, &server, &slug).await;
    assert_eq!(
        body["greeting"], "hello node from a file: package",
        "{body}"
    );
    let (_, log) = get(&client, &server, "worker", &slug, "/migrations.log").await;
    assert_eq!(
        log, "migrated\n",
        "the failed release ran no release command"
    );
    // The failed step is in the events too.
    events_until(&client, &server, &token, &slug, |e| {
        e.iter()
            .any(|(k, s, st)| k == "build.step" && s == "web" && st == "failed")
    })
    .await;
}
