//! Test harness shared by every crate's integration tests: a fresh, real database per test and
//! the `Store` suite that both backends run.
//!
//! - `sqlite`: a new SQLite file in a temporary directory per test.
//! - `pg`: a new PostgreSQL database per test, on `STACKYARD_TEST_DATABASE_URL`, else the local
//!   server at 127.0.0.1:5432, else a private `postgres` started from the machine's binaries.
//!   Only when none of that works do PostgreSQL tests skip, printing why; under `CI=true` a skip
//!   is a failure.
//! - `redis`: a Redis server (the same fallbacks as PostgreSQL) and a key prefix per test.
//! - `db`: a fresh database of either [`Backend`] ([`TestDb`]) and `both_backends!`, for tests
//!   that start a whole server.
//! - `process`: a `stackyard serve` child process, stopped cleanly on drop.
//! - `leaks`: no secret in any test server's output, checked when each server stops.
//! - `suite`: the store test suite, instantiated per backend with `store_suite!`.
//! - `fakekube`: a stateful fake Kubernetes API server for the Kubernetes runtime, reached
//!   through a real `kube::Client`.
//! - [`free_port`]: a port nothing listens on, for a server to bind or a test to find closed.
//! - [`http_client`], [`http_client_builder`]: reqwest for tests, with rustls' provider installed.

pub mod db;
pub mod fakekube;
pub mod leaks;
pub mod pg;
pub mod process;
pub mod redis;
pub mod sqlite;
pub mod suite;

pub use db::{Backend, TestDb};

/// Whether this is a CI run (`CI=true`), where a test that would skip for want of a server
/// fails instead: a skipped suite in CI is a silent failure.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A port on 127.0.0.1 that was free a moment ago: bound, then closed at once, for a server to
/// bind or for a test that needs a port nothing listens on. Another process may take it in
/// between; a server then fails to start and its caller reports it.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A private CA and a server certificate it signed for 127.0.0.1 and localhost, as PEM files
/// in `dir`: `ca.pem` (what a client trusts), `cert.pem` and `key.pem` (what a server serves).
pub fn write_test_certs(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "stackyard test CA");
    let ca_key = KeyPair::generate().expect("a CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("a server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .and_then(|p| p.signed_by(&key, &issuer))
        .expect("the server certificate");
    for (name, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("cert.pem", cert.pem()),
        ("key.pem", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).expect("writing a test certificate");
    }
}

/// A reqwest client for tests. Every test builds its clients here: reqwest is compiled with
/// `rustls-no-provider` and panics when built before a process default provider exists.
pub fn http_client() -> reqwest::Client {
    stackyard_cli::tls::install_provider();
    reqwest::Client::new()
}

/// [`http_client`]'s builder, for tests that set timeouts, redirects or proxies.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    stackyard_cli::tls::install_provider();
    reqwest::Client::builder()
}

/// The admin token a server wrote into `data_dir` on its first start.
pub fn admin_token(data_dir: &std::path::Path) -> String {
    let token = std::fs::read_to_string(data_dir.join("admin-token"))
        .expect("the server wrote its admin token")
        .trim()
        .to_owned();
    leaks::register(&token);
    token
}

/// Unlocks a store a test opened directly, as start-up does once the master key is proved:
/// a keyring of a fixed test key installed (the same key every time, so a test may reopen a
/// database). No canary is written: the suite tests the canary itself.
pub fn unlock<S: stackyard_core::store::KeyStore>(store: &S) {
    use stackyard_core::crypto::{Keyring, MasterKey};
    let key = MasterKey::from_slice(&[0x5a; 32]).expect("a 32-byte key");
    store.install_keyring(std::sync::Arc::new(Keyring::new(key)));
}
