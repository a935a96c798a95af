//! The certificates the TLS router serves: every verified custom domain's, picked by SNI.
//!
//! The set is replaced whole from the store ([`SniCerts::replace`]) after an issue, a renewal
//! or a removal and on every maintenance pass (another server sharing the store may have
//! renewed one). A handshake resolves its certificate once, so swapping the set changes what
//! new connections get while open ones keep theirs: a renewal drops nothing.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use stackyard_core::store::DomainCertificate;
use stackyard_core::time::Millis;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// The *ring* provider every TLS endpoint of the server uses. rustls deprecates it for
/// lacking post-quantum key exchange; it is still the one that builds without cmake or a C
/// toolchain for aws-lc (docs/decisions.md).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// hostname → (its chain as stored, the parsed key pair).
type Served = HashMap<String, (String, Arc<CertifiedKey>)>;

/// The served set. The lock is held only to clone an `Arc` (a handshake) or to swap the map
/// (a reload), never across an `.await`.
#[derive(Debug, Default)]
pub struct SniCerts {
    map: RwLock<Arc<Served>>,
}

impl SniCerts {
    /// Serves exactly `certs` from now on; returns how many could be parsed (a bad one is
    /// logged and left out, the others still served). Unchanged chains are not parsed again.
    pub fn replace(&self, certs: Vec<DomainCertificate>) -> usize {
        let old = self.snapshot();
        let mut fresh = HashMap::with_capacity(certs.len());
        for c in certs {
            if let Some((chain, key)) = old.get(&c.hostname)
                && *chain == c.chain_pem
            {
                fresh.insert(c.hostname, (c.chain_pem, key.clone()));
                continue;
            }
            match certified_key(&c.chain_pem, &c.key_pem) {
                Ok(key) => {
                    fresh.insert(c.hostname, (c.chain_pem, Arc::new(key)));
                }
                Err(e) => {
                    tracing::warn!(domain = %c.hostname, error = %e, "a stored certificate does not load; not serving it")
                }
            }
        }
        let n = fresh.len();
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        n
    }

    fn snapshot(&self) -> Arc<Served> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A TLS configuration resolving through this set (HTTP/1.1: the router's protocol).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.snapshot().get(&name).map(|(_, key)| key.clone())
    }
}

/// A chain and key (PEM) as rustls serves them; the key must match the leaf.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate chain holds no certificate".into());
    }
    // The parse error never quotes the key.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| "the private key is not a PEM private key".to_owned())?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("the key does not fit the certificate: {e}"))
}

/// The validity of the first (leaf) certificate of a PEM chain.
pub fn validity(chain_pem: &str) -> Result<(Millis, Millis), String> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or("the chain holds no certificate")?
        .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let v = cert.validity();
    Ok((
        Millis(v.not_before.timestamp().saturating_mul(1000)),
        Millis(v.not_after.timestamp().saturating_mul(1000)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_chain_and_its_key_load_and_the_validity_is_the_leafs() {
        let (chain, key) = self_signed("app.example.com");
        assert!(certified_key(&chain, &key).is_ok());
        let (from, to) = validity(&chain).unwrap();
        assert_eq!((from.0, to.0), (1_767_225_600_000, 1_775_001_600_000));
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_without_quoting_it() {
        let (chain, _) = self_signed("app.example.com");
        let (_, other) = self_signed("app.example.com");
        let err = certified_key(&chain, &other).unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        let err = certified_key(&chain, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap_err();
        assert!(!err.contains("AAAA"), "{err}");
    }

    #[test]
    fn a_replaced_set_serves_only_what_it_holds() {
        let certs = SniCerts::default();
        let (chain, key) = self_signed("a.example.com");
        let one = |host: &str| DomainCertificate {
            hostname: host.into(),
            chain_pem: chain.clone(),
            key_pem: key.clone(),
            not_after: Millis(0),
        };
        assert_eq!(
            certs.replace(vec![one("a.example.com"), one("b.example.com")]),
            2
        );
        let before = certs.snapshot()["a.example.com"].1.clone();
        assert_eq!(certs.replace(vec![one("a.example.com")]), 1);
        // Unchanged: the parsed key is reused, not parsed again.
        assert!(Arc::ptr_eq(&before, &certs.snapshot()["a.example.com"].1));
        assert!(!certs.snapshot().contains_key("b.example.com"));
    }
}
