//! The HTTP accept loop. We drive hyper ourselves (rather than `axum::serve`) to set the
//! connection limits: a header buffer large enough that oversized headers reach the envelope
//! middleware and get a JSON 431 instead of a bare connection-level error, and the client's
//! address as `ConnectInfo` for anonymous fingerprints.
//!
//! With `--tls-cert`/`--tls-key` the same loop serves HTTPS ([`load_server_config`]): the
//! handshake runs in the connection's own task, bounded by [`TLS_HANDSHAKE_TIMEOUT`], so a
//! client that stalls it holds only its own connection, never the accept loop.

use anyhow::{Context, anyhow, bail};
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// hyper's read buffer bound; must exceed the largest head we want to answer with an envelope.
const MAX_BUF_BYTES: usize = 4 * 1024 * 1024;

/// Longest a TLS handshake may take before its connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The API's TLS settings from `--tls-cert` (a PEM chain, leaf first) and `--tls-key` (its PEM
/// private key): rustls on *ring*, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1` (the connection
/// builder serves both). A file that cannot be read or parsed, or a key that is not the
/// certificate's, is an error naming the file; no error ever quotes the key file's content.
pub fn load_server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow!(
                "cannot load the --tls-cert file {}: {}",
                cert.display(),
                pem_problem(&e, "certificate")
            )
        })?;
    if chain.is_empty() {
        bail!(
            "cannot load the --tls-cert file {}: it holds no PEM certificate",
            cert.display()
        );
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow!(
            "cannot load the --tls-key file {}: {}",
            key.display(),
            pem_problem(&e, "private key")
        )
    })?;
    let mut config = ServerConfig::builder_with_provider(crate::certs::provider())
        .with_safe_default_protocol_versions()
        .context("setting up TLS for the API")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            anyhow!(
                "the --tls-key file {} does not go with the --tls-cert file {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why a PEM file was refused, in words that never repeat the file's content (a malformed
/// line of a key file may be key material).
fn pem_problem(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::Io(io) => io.to_string(),
        pem::Error::NoItemsFound => format!("it holds no PEM {what}"),
        _ => format!("it is not a valid PEM {what}"),
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets open connections finish
/// for up to `grace`. With `tls`, every connection is HTTPS.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let tls = tls.map(TlsAcceptor::from);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_BUF_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually EMFILE under load; back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        // Taken here, not in the task: a shutdown now waits for this connection too.
        let watcher = graceful.watcher();
        let (app, builder, tls) = (app.clone(), builder.clone(), tls.clone());
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_conn(stream, peer, app, &builder, watcher).await;
            };
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_conn(stream, peer, app, &builder, watcher).await,
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
}

/// Serves one connection, plain or TLS, until it closes or the shutdown `watcher` fires.
async fn serve_conn<IO>(
    io: IO,
    peer: SocketAddr,
    app: Router,
    builder: &Builder<TokioExecutor>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use stackyard_testkit::write_test_certs as write_certs;

    fn error_of(cert: &Path, key: &Path) -> String {
        format!("{:#}", load_server_config(cert, key).unwrap_err())
    }

    #[test]
    fn a_certificate_and_its_key_load_with_h2_and_http1_offered() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path());
        let config =
            load_server_config(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn a_missing_or_unreadable_file_stops_start_up_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path());
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let missing = dir.path().join("no-such-key.pem");
        let e = error_of(&cert, &missing);
        assert!(
            e.contains("--tls-key") && e.contains("no-such-key.pem"),
            "{e}"
        );
        let e = error_of(&dir.path().join("no-such-cert.pem"), &key);
        assert!(
            e.contains("--tls-cert") && e.contains("no-such-cert.pem"),
            "{e}"
        );
        // The files swapped: no certificate in the key file, no key in the certificate file.
        let e = error_of(&key, &key);
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = error_of(&cert, &cert);
        assert!(
            e.contains("no PEM private key") && e.contains("cert.pem"),
            "{e}"
        );
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path());
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let wrong = dir.path().join("other-key.pem");
        std::fs::write(&wrong, &other).unwrap();
        let e = error_of(&dir.path().join("cert.pem"), &wrong);
        assert!(
            e.contains("other-key.pem") && e.contains("does not go with"),
            "{e}"
        );
        let body: String = other.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!e.contains(&body[..16]), "{e}");
    }

    #[tokio::test]
    async fn a_stalled_tls_handshake_does_not_hold_up_other_connections() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path());
        let config =
            load_server_config(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            Some(config),
            app,
            stopped,
            Duration::from_secs(1),
        ));
        // Connected, and silent: its handshake never starts.
        let stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let client = stackyard_testkit::http_client_builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .timeout(TLS_HANDSHAKE_TIMEOUT / 2)
            .build()
            .unwrap();
        let res = client
            .get(format!("https://127.0.0.1:{}/", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "ok");
        // Plain HTTP to the HTTPS port is a failed handshake, not an answer.
        let plain = stackyard_testkit::http_client_builder()
            .timeout(TLS_HANDSHAKE_TIMEOUT / 2)
            .build()
            .unwrap();
        assert!(
            plain
                .get(format!("http://127.0.0.1:{}/", addr.port()))
                .send()
                .await
                .is_err()
        );
        drop(stalled);
        stop.send(true).unwrap();
        server.await.unwrap();
    }
}
