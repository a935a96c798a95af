//! `GET /internal/artifacts/:digest`: the signed URL is the only credential; the signature is
//! checked before the digest is looked up; a replica whose data directory lacks the tarball
//! serves it from the blob another replica stored.

use crate::support::*;
use clap::Parser;
use reqwest::multipart::{Form, Part};
use stackyard_core::Millis;
use stackyard_core::artifact_url::ArtifactSigner;
use stackyard_core::crypto::MasterKey;
use stackyard_core::ids::sha256_hex;
use stackyard_core::runtime::{Runtime, artifact_path};
use stackyard_core::store::Store;
use stackyard_server::artifacts::{Artifacts, URL_TTL, url_signer};
use stackyard_server::config::KeyArgs;
use stackyard_server::noop::NoopRuntime;
use stackyard_server::ratelimit::RateLimiter;
use stackyard_server::resources::Provisioner;
use stackyard_server::serve::{WithStore, with_store};
use stackyard_server::{AppState, ServeArgs, StoreArgs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// The master key the server created in its data directory.
fn master_key(data_dir: &Path) -> MasterKey {
    stackyard_server::masterkey::load(&KeyArgs::default(), data_dir, false)
        .expect("the server wrote its master key")
        .0
}

/// A signer holding `app`'s master key, as every replica of its database does.
fn signer(app: &TestApp) -> ArtifactSigner {
    ArtifactSigner::from_master(&master_key(app.data_dir.path()), URL_TTL)
}

/// A one-service form whose tarball's content is `code`; returns the form and the tarball.
fn form_with_code(code: &str) -> (Form, Vec<u8>) {
    let bytes = tarball(&[("Procfile", "web: ./run\n"), ("code.txt", code)]);
    let form = Form::new()
        .text("manifest", "services:\n  app: {}\n")
        .text("name", "app")
        .part("app", Part::bytes(bytes.clone()).file_name("app.tar.gz"));
    (form, bytes)
}

/// Creates a stack through `base` (a server of `app`'s database) and returns its slug and
/// the digest of its tarball and the tarball.
async fn create_at(app: &TestApp, base: &str, code: &str) -> (String, String, Vec<u8>) {
    let (form, bytes) = form_with_code(code);
    let req = app
        .client
        .post(format!("{base}/stacks/new"))
        .bearer_auth(&app.admin_token)
        .multipart(form);
    let (status, body) = call(req).await;
    assert_eq!(status, 202, "{body}");
    let slug = body["stack_id"].as_str().unwrap().to_owned();
    (slug, sha256_hex(&bytes), bytes)
}

/// GETs `url` with no token: the status, content type and length, and the body.
async fn fetch(app: &TestApp, url: &str) -> (u16, Option<String>, Option<u64>, Vec<u8>) {
    let res = app.client.get(url).send().await.expect("request sent");
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let length = res.content_length();
    (
        status,
        content_type,
        length,
        res.bytes().await.unwrap().to_vec(),
    )
}

/// An error answer's status and code.
async fn refused(app: &TestApp, url: &str) -> (u16, String) {
    let (status, body) = call(app.client.get(url)).await;
    (status, assert_envelope(status, &body))
}

fn now() -> Millis {
    stackyard_server::now()
}

async fn a_signed_url_serves_the_exact_tarball_and_every_bad_url_is_refused(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    // Several times the route's read chunk, even gzipped.
    let code: String = (0..6000)
        .map(|i: u32| sha256_hex(&i.to_be_bytes()))
        .collect();
    let (_, digest, bytes) = create_at(&app, &app.base, &code).await;
    assert!(bytes.len() > 3 * 64 * 1024, "{}", bytes.len());
    let (_, other_digest, _) = create_at(&app, &app.base, "another").await;
    let s = signer(&app);

    let url = s.url(&app.base, &digest, now());
    let (status, content_type, length, body) = fetch(&app, &url).await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("application/gzip"));
    assert_eq!(length, Some(bytes.len() as u64));
    assert_eq!(body, bytes, "the exact bytes uploaded");

    // Signed eleven minutes ago: authentic, but past its ten minutes.
    let stale = s.url(&app.base, &digest, Millis(now().0 - 11 * 60 * 1000));
    assert_eq!(
        refused(&app, &stale).await,
        (403, "artifact_url_expired".into())
    );

    // One hex digit of the signature changed.
    let (head, sig) = url.rsplit_once("&sig=").unwrap();
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, c)| match (i, c) {
            (0, '0') => '1',
            (0, _) => '0',
            (_, c) => c,
        })
        .collect();
    assert_eq!(
        refused(&app, &format!("{head}&sig={flipped}")).await,
        (403, "artifact_url_invalid".into())
    );

    // A valid signature for one artifact does not open another, existing one.
    let moved = url.replace(&digest, &other_digest);
    assert_eq!(
        refused(&app, &moved).await,
        (403, "artifact_url_invalid".into())
    );

    // A key that is not this database's signs nothing it serves.
    let foreign = ArtifactSigner::from_master(&MasterKey::generate(), URL_TTL);
    assert_eq!(
        refused(&app, &foreign.url(&app.base, &digest, now())).await,
        (403, "artifact_url_invalid".into())
    );

    // Unknown only once the signature checked out.
    let unknown = "0".repeat(64);
    assert_eq!(
        refused(&app, &s.url(&app.base, &unknown, now())).await,
        (404, "not_found".into())
    );
    assert_eq!(
        refused(&app, &foreign.url(&app.base, &unknown, now())).await,
        (403, "artifact_url_invalid".into())
    );

    // Malformed digests and queries.
    let (_, query) = url.split_once('?').unwrap();
    let base = format!("{}/internal/artifacts", app.base);
    for (what, bad) in [
        (
            "uppercase digest",
            format!("{base}/{}?{query}", digest.to_uppercase()),
        ),
        ("short digest", format!("{base}/{}?{query}", &digest[..63])),
        ("no query", format!("{base}/{digest}")),
        ("no sig", format!("{base}/{digest}?expires=1")),
        ("no expires", format!("{base}/{digest}?sig={sig}")),
        (
            "expires not a number",
            format!("{base}/{digest}?expires=soon&sig={sig}"),
        ),
    ] {
        let (status, code) = refused(&app, &bad).await;
        assert_eq!(status, 400, "{what}: {code}");
    }
}

/// A second API replica on `app`'s database, as `stackyard serve` builds one but with
/// artifacts in shared mode: its own empty data directory, `app`'s master key, no job workers
/// (`app`'s run the jobs). Stopped when dropped.
struct Replica {
    base: String,
    data_dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    serve: ServeArgs,
}

struct StartReplica {
    args: ServeArgs,
    stop: watch::Receiver<bool>,
}

impl WithStore for StartReplica {
    type Output = std::net::SocketAddr;

    async fn run<S: Store>(self, store: S) -> anyhow::Result<std::net::SocketAddr> {
        let args = self.args;
        let data_dir = args.store.data_dir.clone();
        let master = stackyard_server::masterkey::unlock(&store, &args.keys, &data_dir).await?;
        let signer = Arc::new(url_signer(&master, &args.keys, &data_dir));
        stackyard_server::masterkey::install(&store, master, &args.keys, &data_dir).await?;
        let runtime: Arc<dyn Runtime> = Arc::new(NoopRuntime {
            step: Duration::from_millis(5),
        });
        let state = AppState::new(
            store,
            args.clone(),
            Arc::new(Notify::new()),
            runtime,
            RateLimiter::new(args.anonymous_daily_limit, None, &args.redis_prefix)?,
            Arc::new(Provisioner::new(None, None)?),
            Arc::new(Artifacts::new(&data_dir, args.artifact_grace, true)),
            None,
            Some(signer),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(stackyard_server::http::serve(
            listener,
            None,
            stackyard_server::router(state),
            self.stop,
            Duration::from_secs(1),
        ));
        Ok(addr)
    }
}

impl Replica {
    async fn start(app: &TestApp, grace: &str) -> Replica {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let key_file = app.data_dir.path().join("master.key");
        let argv = [
            "stackyard",
            "--data-dir",
            &data_dir.path().display().to_string(),
            "--database-url",
            &app.db_url,
            "--master-key-file",
            &key_file.display().to_string(),
            "--artifact-grace",
            grace,
        ]
        .map(str::to_owned);
        let args = Wrapper::parse_from(argv).serve;
        let (stop, stop_rx) = watch::channel(false);
        let store = StoreArgs {
            data_dir: data_dir.path().to_owned(),
            database_url: Some(app.db_url.clone()),
        };
        let addr = with_store(
            &store,
            stackyard_server::serve::store_options(&args),
            StartReplica {
                args,
                stop: stop_rx,
            },
        )
        .await
        .expect("the replica starts");
        Replica {
            base: format!("http://{addr}"),
            data_dir,
            stop,
        }
    }
}

async fn a_tarball_uploaded_to_one_replica_is_served_by_another_and_by_itself_without_its_file(
    backend: Backend,
) {
    let Some(app) = TestApp::spawn_with(backend, &["--artifact-grace", "1s"]).await else {
        return;
    };
    let replica = Replica::start(&app, "1s").await;
    let (slug, digest, bytes) = create_at(&app, &replica.base, "uploaded to the replica").await;
    assert_eq!(app.count("artifact_blobs", "").await, 1, "stored as a blob");
    let s = signer(&app);

    // `app` never received it: its data directory has no file, the blob answers.
    assert!(!artifact_path(app.data_dir.path(), &digest).exists());
    let (status, _, length, body) = fetch(&app, &s.url(&app.base, &digest, now())).await;
    assert_eq!((status, length), (200, Some(bytes.len() as u64)));
    assert_eq!(body, bytes);
    assert!(
        artifact_path(app.data_dir.path(), &digest).exists(),
        "kept as a file for the next fetch"
    );

    // The replica loses its file: served from the blob all the same, and kept again.
    let file = artifact_path(replica.data_dir.path(), &digest);
    std::fs::remove_file(&file).unwrap();
    let (status, _, length, body) = fetch(&app, &s.url(&replica.base, &digest, now())).await;
    assert_eq!((status, length), (200, Some(bytes.len() as u64)));
    assert_eq!(body, bytes);
    assert_eq!(std::fs::read(&file).unwrap(), bytes);

    // Past the grace period, the teardown of the last stack using it takes the blob too.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = call(app.delete(&format!("/stacks/{slug}"), Some(&app.admin_token))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.count("artifact_blobs", "").await, 0);
    assert!(!artifact_path(app.data_dir.path(), &digest).exists());
    assert_eq!(
        refused(&app, &s.url(&app.base, &digest, now())).await,
        (404, "not_found".into())
    );
}

both_backends!(
    a_signed_url_serves_the_exact_tarball_and_every_bad_url_is_refused,
    a_tarball_uploaded_to_one_replica_is_served_by_another_and_by_itself_without_its_file,
);
