//! TLS for custom domains end to end, offline. The CA is Debian's `pebble` (a real ACME
//! server, package `pebble`, installed by `.ci/run`), whose own HTTPS listener gets a
//! certificate generated here; `pebble-challtestsrv` is the DNS that both pebble (A records:
//! every name is 127.0.0.1) and Stackyard (the TXT ownership record) ask. Pebble validates
//! HTTP-01 against the router's plain listener (its `httpPort` is the router's port).
//!
//! A verified domain gets a certificate without being asked; `https://<host>` through
//! `--router-tls-listen` answers with a chain that verifies against pebble's root; the key is
//! sealed in the database; a renewal (made due by moving the stored renewal time, the
//! stand-in for two months passing) swaps the certificate for new connections while a
//! connection opened before keeps working; a removed domain's certificate is no longer
//! served.

use crate::domains::Challtestsrv;
use crate::runtime::{create, two_service_form, wait_healthy};
use crate::support::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const HOST: &str = "secure.example.com";

/// A private pebble, stopped by its pid.
struct Pebble {
    _process: Helper,
    mgmt: String,
}

impl Pebble {
    /// Starts pebble on `port` with its listener certificate signed by the CA in
    /// `dir/ca.pem`, validating HTTP-01 on `http_port` and resolving names at `dns`.
    fn start(dir: &Path, port: u16, http_port: u16, dns: &str) -> Option<Pebble> {
        let mgmt = stackyard_testkit::free_port().unwrap();
        let config = json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": stackyard_testkit::free_port().unwrap(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", dns])
            // No random validation delays, no rejected nonces: the test's time is the CA's.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        Some(Pebble {
            _process: start_helper(cmd, port)?,
            mgmt: format!("https://127.0.0.1:{mgmt}"),
        })
    }
}

/// A TLS connection to the router's HTTPS port for `HOST` (SNI), trusting only `root`.
async fn connect(
    tls_port: u16,
    root: &CertificateDer<'static>,
) -> TlsStream<tokio::net::TcpStream> {
    try_connect(tls_port, root)
        .await
        .expect("the chain verifies against pebble's root")
}

async fn try_connect(
    tls_port: u16,
    root: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    // *ring* is the one provider compiled in (docs/decisions.md).
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
}

/// The leaf certificate a connection was served.
fn leaf(stream: &TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One HTTP/1.1 GET on an open connection (kept open); the status and body.
async fn get(stream: &mut TlsStream<tokio::net::TcpStream>) -> (u16, String) {
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("the router answers with a Content-Length");
            if buf.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "the connection was closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verified_domain_gets_an_acme_certificate_served_by_sni_and_renewed_without_dropping_a_connection()
 {
    let Some(dns) = Challtestsrv::start() else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    stackyard_testkit::write_test_certs(certs.path());
    // Pebble needs the router's port and Stackyard pebble's address: the directory's port is
    // chosen first, pebble started once the router listens.
    let pebble_port = stackyard_testkit::free_port().unwrap();
    let tls_port = stackyard_testkit::free_port().unwrap();
    let resolver = dns.dns.to_string();
    let (db, _data, server) = local_server(&[
        "--dns-resolver",
        &resolver,
        "--router-tls-listen",
        &format!("127.0.0.1:{tls_port}"),
        "--acme-directory",
        &format!("https://127.0.0.1:{pebble_port}/dir"),
        "--acme-ca-file",
        certs.path().join("ca.pem").to_str().unwrap(),
        "--acme-email",
        "ops@example.com",
        "--acme-every",
        "500ms",
    ])
    .await;
    let router_port: u16 = server
        .router
        .as_deref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let Some(pebble) = Pebble::start(certs.path(), pebble_port, router_port, &resolver) else {
        return;
    };

    let token = server.admin_token();
    let client = stackyard_testkit::http_client();
    let slug = create(&client, &server, Some(&token), two_service_form("tls")).await;
    wait_healthy(&client, &server, Some(&token), &slug).await;
    let domains = server.url(&format!("/api/v1/stacks/{slug}/domains"));
    let (code, added) = json_of(
        client
            .post(&domains)
            .bearer_auth(&token)
            .json(&json!({ "hostname": HOST }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{added}");
    let id = added["domain"]["id"].as_str().unwrap().to_owned();
    let value = added["domain"]["verification"]["txt"]["record_value"]
        .as_str()
        .unwrap()
        .to_owned();
    dns.txt_for(&client, "set-txt", HOST, Some(&value)).await;
    let (code, b) = json_of(
        client
            .post(format!("{domains}/{id}/verify"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, &b["domain"]["status"]),
        (200, &json!("routed")),
        "{b}"
    );

    // Issued without another request: the verify started the order.
    let deadline = Instant::now() + Duration::from_secs(90);
    let domain = loop {
        let (_, list) = json_of(
            client
                .get(&domains)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let d = list["items"][0].clone();
        if d["certificate_ready"] == json!(true) {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate after 90 s: {d}\n{}",
            server.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(domain["status"], "certificate_ready", "{domain}");
    assert!(domain["certificate_expires_at"].is_string(), "{domain}");
    assert!(domain["certificate_error"].is_null(), "{domain}");

    // The chain verifies against pebble's root (fetched from its management API, which is
    // served with the certificate made here).
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.path().join("ca.pem")).unwrap())
        .unwrap();
    let mgmt = stackyard_testkit::http_client_builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let root_pem = mgmt
        .get(format!("{}/roots/0", pebble.mgmt))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let root = CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap();
    let https = stackyard_testkit::http_client_builder()
        .tls_certs_only([reqwest::Certificate::from_der(&root).unwrap()])
        .resolve(HOST, format!("127.0.0.1:{tls_port}").parse().unwrap())
        .build()
        .unwrap();
    let res = https
        .get(format!("https://{HOST}:{tls_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Sealed at rest: the stored key is not PEM text.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT key_sealed FROM certificates")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"),
        "the certificate key is stored in clear"
    );

    // A connection opened now, then a renewal made due: new connections get the new
    // certificate, the open one keeps answering.
    let mut open = connect(tls_port, &root).await;
    let first = leaf(&open);
    assert_eq!(get(&mut open).await.0, 200);
    sqlx::query("UPDATE certificates SET renew_at = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let fresh = connect(tls_port, &root).await;
        if leaf(&fresh) != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not renewed after 90 s\n{}",
            server.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        get(&mut open).await.0,
        200,
        "the connection opened before the renewal still answers"
    );
    assert_eq!(leaf(&open), first);
    let issued: Vec<String> = sqlx::query_scalar(
        "SELECT metadata FROM audit_log WHERE kind = 'domain.certificate_issued' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert!(issued[1].contains("\"renewal\":true"), "{issued:?}");

    // Removed: its certificate is no longer served.
    let (code, b) = json_of(
        client
            .delete(format!("{domains}/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{b}");
    assert!(
        try_connect(tls_port, &root).await.is_err(),
        "a removed domain's certificate is still served"
    );
    drop(open);
}
