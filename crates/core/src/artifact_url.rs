//! Signed artifact URLs: how a pod's init container, which holds no API token, fetches its
//! service's tarball from any API replica (`kubernetes.md`, "Code without an image registry").
//!
//! A URL is `<base>/internal/artifacts/<digest>?expires=<unix seconds>&sig=<hex>`, where `sig`
//! is HMAC-SHA256 over `"<digest>\n<expires>"` under a key derived from the master key. The
//! signature is the whole credential: it names one artifact until one instant, and every
//! replica holding the same master key checks every other's URLs without sharing any state.

use crate::crypto::MasterKey;
use crate::time::Millis;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::time::Duration;

/// Domain separation: the URL key is no other key of the hierarchy (`crypto`), and a
/// signature made for anything else never verifies as a URL's.
const URL_KEY_LABEL: &[u8] = b"stackyard/artifact-url/v1";

type UrlMac = Hmac<Sha256>;

/// Why a URL is refused. The two cases answer differently (an expired URL is worth fetching
/// anew; a bad signature is not), so the caller is told which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("the artifact URL has expired")]
    Expired,
    #[error("the artifact URL's signature is not valid for this artifact")]
    BadSignature,
}

/// Signs and checks artifact URLs. Cheap to clone; `Debug` never shows a key.
///
/// Invariant: `keys[0]` signs; every key in `keys` verifies. The others are URL keys of older
/// master keys still in the key source (a rotation in progress), so a URL another replica
/// signed before it restarted with the new key keeps working until it expires.
#[derive(Clone)]
pub struct ArtifactSigner {
    keys: Vec<[u8; 32]>,
    ttl: Duration,
}

impl fmt::Debug for ArtifactSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactSigner")
            .field("keys", &"***")
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The URL key of `master`: HMAC-SHA256(master key bytes, label).
fn url_key(master: &MasterKey) -> [u8; 32] {
    let mut mac =
        <UrlMac as Mac>::new_from_slice(master.expose_bytes()).expect("HMAC takes any key length");
    mac.update(URL_KEY_LABEL);
    mac.finalize().into_bytes().into()
}

fn mac_of(key: &[u8; 32], digest: &str, expires: i64) -> UrlMac {
    let mut mac = <UrlMac as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    // The digest is fixed-length hex and the newline cannot occur in it: no two
    // (digest, expires) pairs encode alike.
    mac.update(digest.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac
}

impl ArtifactSigner {
    /// Key = HMAC-SHA256(master key bytes, `b"stackyard/artifact-url/v1"`): every replica
    /// sharing the master key verifies every other's URLs. URLs it signs live `ttl`.
    pub fn from_master(master: &MasterKey, ttl: Duration) -> Self {
        Self {
            keys: vec![url_key(master)],
            ttl,
        }
    }

    /// Also accepts URLs signed under `master` (an older key still in the key source during a
    /// rotation); this signer keeps signing with the key it was made from. A key already
    /// known is not added twice.
    pub fn accepting<'k>(mut self, masters: impl IntoIterator<Item = &'k MasterKey>) -> Self {
        for master in masters {
            let key = url_key(master);
            if !self.keys.contains(&key) {
                self.keys.push(key);
            }
        }
        self
    }

    /// How long the URLs it signs stay valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `<base>/internal/artifacts/<digest>?expires=<now + ttl, unix seconds>&sig=<hex>`. One
    /// trailing slash of `base` is dropped.
    pub fn url(&self, base: &str, digest: &str, now: Millis) -> String {
        let base = base.strip_suffix('/').unwrap_or(base);
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let expires = now.0.div_euclid(1000).saturating_add(ttl);
        let sig = hex::encode(
            mac_of(&self.keys[0], digest, expires)
                .finalize()
                .into_bytes(),
        );
        format!("{base}/internal/artifacts/{digest}?expires={expires}&sig={sig}")
    }

    /// Whether `sig_hex` signs `digest` until `expires` (unix seconds) and that instant is
    /// still ahead of `now`. The signature is checked first, in constant time
    /// (`verify_slice`): a forged URL is `BadSignature` whatever its `expires`.
    pub fn verify(
        &self,
        digest: &str,
        expires: i64,
        sig_hex: &str,
        now: Millis,
    ) -> Result<(), UrlRefused> {
        let sig = hex::decode(sig_hex).map_err(|_| UrlRefused::BadSignature)?;
        let authentic = self
            .keys
            .iter()
            .any(|key| mac_of(key, digest, expires).verify_slice(&sig).is_ok());
        if !authentic {
            return Err(UrlRefused::BadSignature);
        }
        if now.0 >= expires.saturating_mul(1000) {
            return Err(UrlRefused::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const E: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const NOW: Millis = Millis(1_800_000_000_500);

    fn signer(byte: u8) -> ArtifactSigner {
        ArtifactSigner::from_master(
            &MasterKey::from_slice(&[byte; 32]).unwrap(),
            Duration::from_secs(600),
        )
    }

    /// `(expires, sig)` of a URL.
    fn parts(url: &str) -> (i64, String) {
        let (_, query) = url.split_once('?').unwrap();
        let mut expires = None;
        let mut sig = None;
        for pair in query.split('&') {
            match pair.split_once('=').unwrap() {
                ("expires", v) => expires = Some(v.parse().unwrap()),
                ("sig", v) => sig = Some(v.to_owned()),
                other => panic!("unexpected parameter {other:?}"),
            }
        }
        (expires.unwrap(), sig.unwrap())
    }

    #[test]
    fn a_url_names_the_digest_expires_ttl_after_now_and_verifies() {
        let s = signer(1);
        let url = s.url("https://api.example/", D, NOW);
        assert!(
            url.starts_with(&format!(
                "https://api.example/internal/artifacts/{D}?expires="
            )),
            "{url}"
        );
        let (expires, sig) = parts(&url);
        assert_eq!(expires, 1_800_000_000 + 600);
        assert_eq!(sig.len(), 64);
        assert!(
            sig.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(s.verify(D, expires, &sig, NOW), Ok(()));
        // Without a trailing slash, the same URL.
        assert_eq!(s.url("https://api.example", D, NOW), url);
    }

    #[test]
    fn a_url_expires_at_its_expires_second() {
        let s = signer(1);
        let (expires, sig) = parts(&s.url("http://x", D, NOW));
        let last_valid = Millis(expires * 1000 - 1);
        assert_eq!(s.verify(D, expires, &sig, last_valid), Ok(()));
        assert_eq!(
            s.verify(D, expires, &sig, Millis(expires * 1000)),
            Err(UrlRefused::Expired)
        );
    }

    #[test]
    fn a_signature_binds_its_digest_and_expiry_and_tampering_is_refused() {
        let s = signer(1);
        let (expires, sig) = parts(&s.url("http://x", D, NOW));
        assert_eq!(
            s.verify(E, expires, &sig, NOW),
            Err(UrlRefused::BadSignature),
            "another digest"
        );
        assert_eq!(
            s.verify(D, expires + 3600, &sig, NOW),
            Err(UrlRefused::BadSignature),
            "a later expiry"
        );
        for i in 0..sig.len() {
            let mut t = sig.clone().into_bytes();
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            let t = String::from_utf8(t).unwrap();
            assert_eq!(
                s.verify(D, expires, &t, NOW),
                Err(UrlRefused::BadSignature),
                "char {i}"
            );
        }
        for bad in ["", "zz", &sig[..62], &format!("{sig}00")] {
            assert_eq!(
                s.verify(D, expires, bad, NOW),
                Err(UrlRefused::BadSignature)
            );
        }
    }

    #[test]
    fn a_forged_url_is_a_bad_signature_even_when_expired() {
        let s = signer(1);
        let (expires, sig) = parts(&signer(2).url("http://x", D, NOW));
        let later = Millis((expires + 1) * 1000);
        assert_eq!(
            s.verify(D, expires, &sig, later),
            Err(UrlRefused::BadSignature)
        );
    }

    #[test]
    fn replicas_sharing_a_master_key_verify_each_others_urls_and_others_do_not() {
        let (a, b, other) = (signer(7), signer(7), signer(8));
        let (expires, sig) = parts(&a.url("http://a", D, NOW));
        assert_eq!(b.verify(D, expires, &sig, NOW), Ok(()));
        assert_eq!(
            other.verify(D, expires, &sig, NOW),
            Err(UrlRefused::BadSignature)
        );
    }

    #[test]
    fn during_a_rotation_an_older_key_is_accepted_but_never_signs() {
        let (old, new) = (
            MasterKey::from_slice(&[1; 32]).unwrap(),
            MasterKey::from_slice(&[2; 32]).unwrap(),
        );
        let ttl = Duration::from_secs(600);
        let rotated = ArtifactSigner::from_master(&new, ttl).accepting([&old, &new]);
        let (expires, sig) = parts(&ArtifactSigner::from_master(&old, ttl).url("http://x", D, NOW));
        assert_eq!(rotated.verify(D, expires, &sig, NOW), Ok(()));
        let (expires, sig) = parts(&rotated.url("http://x", D, NOW));
        assert_eq!(
            ArtifactSigner::from_master(&new, ttl).verify(D, expires, &sig, NOW),
            Ok(()),
            "signed with the key it was made from"
        );
        assert_eq!(rotated.keys.len(), 2, "the new key is not added twice");
    }

    #[test]
    fn the_url_key_differs_from_the_master_key_and_never_shows_in_debug_output() {
        let master = MasterKey::from_slice(&[0x41; 32]).unwrap();
        let s = ArtifactSigner::from_master(&master, Duration::from_secs(600));
        assert_ne!(&s.keys[0], master.expose_bytes());
        assert_eq!(
            format!("{s:?}"),
            r#"ArtifactSigner { keys: "***", ttl: 600s }"#
        );
    }
}
