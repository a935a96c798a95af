//! TLS for the client's HTTPS: the process's rustls crypto provider, the extra CA certificates
//! of `--cacert`, and telling a server certificate we do not trust apart from other connection
//! failures (it is a setting to fix, not a fault to retry).

use crate::error::{CliError, Result};
use std::error::Error;
use std::path::Path;

/// Installs rustls on *ring* as the process's default crypto provider, unless one is already
/// installed (idempotent, so every place that builds an HTTP client calls it first). reqwest is
/// built with `rustls-no-provider` (no aws-lc) and panics when a client is built without one.
pub fn install_provider() {
    #[allow(deprecated)] // *ring*, the workspace's one provider (docs/decisions.md)
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The PEM certificates of a `--cacert` file, trusted in addition to the system's roots. A
/// file that cannot be read or holds no certificate is an error naming the file.
pub fn read_cacert(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| CliError::other(format!("cannot read the --cacert file {shown}: {e}")))?;
    let bad = || {
        CliError::other(format!(
            "the --cacert file {shown} holds no PEM certificate"
        ))
        .with_hint("pass the CA certificate(s) as PEM (-----BEGIN CERTIFICATE-----)")
    };
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| bad())?;
    if certs.is_empty() {
        return Err(bad());
    }
    Ok(certs)
}

/// What TLS refused about the connection behind `e`, if it did: rustls' own error anywhere in
/// the chain (also inside an `io::Error`, whose `source()` skips the error it wraps).
pub fn tls_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    chain(e).find_map(|err| {
        err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })
    })
}

/// Why the server's certificate was not accepted (`invalid peer certificate: UnknownIssuer`),
/// when that is why the connection behind `e` failed. Without rustls' error in the chain, the
/// innermost message that speaks of a certificate.
pub fn untrusted_certificate(e: &(dyn Error + 'static)) -> Option<String> {
    if let Some(t) = tls_error(e) {
        return matches!(
            t,
            rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_)
        )
        .then(|| t.to_string());
    }
    chain(e)
        .map(|err| err.to_string())
        .filter(|text| text.contains("certificate"))
        .last()
}

fn chain<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |&err| err.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_rustls_certificate_error_inside_an_io_error_is_found() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let e = Wrapper(io);
        assert_eq!(
            untrusted_certificate(&e).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
    }

    #[test]
    fn other_failures_are_not_certificate_errors() {
        let refused = Wrapper(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(untrusted_certificate(&refused).is_none());
        let protocol = Wrapper(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::General("nope".into()),
        ));
        assert!(tls_error(&protocol).is_some());
        assert!(untrusted_certificate(&protocol).is_none());
    }

    #[test]
    fn a_cacert_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = read_cacert(&path).unwrap_err();
        assert!(e.message.contains("ca.pem"), "{e}");
        let e = read_cacert(&dir.path().join("missing.pem")).unwrap_err();
        assert!(e.message.contains("missing.pem"), "{e}");
    }
}
