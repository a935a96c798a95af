//! Encryption at rest: the key hierarchy and the one AEAD every secret goes through.
//!
//! ```text
//! MasterKey (32 bytes, outside the database: a file or STACKYARD_MASTER_KEY)
//!   ├─ canary: a fixed plaintext sealed by the master key, in the database; a wrong key fails
//!   │          to open it at start-up instead of on the first read of a secret
//!   └─ wraps one DataKey per owner (a stack, later a team vault or a resource), stored wrapped
//!      with associated data = owner kind + owner id + key id, so a wrapped key moved onto
//!      another owner's row does not open
//!        ├─ seals values: XChaCha20-Poly1305, associated data = owner + key name + version
//!        └─ derives a digest key: HMAC-SHA256 of each value, for no-op detection without
//!           decrypting
//! ```
//!
//! Rotating the master key re-wraps the data keys only; values are never re-encrypted by it.
//! Every sealed blob is `nonce (24 bytes) || ciphertext || tag (16 bytes)`. The nonce is random:
//! XChaCha20's 192-bit nonce makes random nonces safe for any number of values under one key,
//! which a 96-bit nonce (AES-GCM, ChaCha20-Poly1305) is not.
//!
//! Key material never appears in `Debug` output or errors; errors say what failed to open, not
//! why (an AEAD cannot tell a wrong key from tampering).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Bytes in a master key or data key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Domain separation: every associated data starts with one of these, so a blob of one kind
/// (a wrapped key, a value, the canary) can never be opened as another.
const AD_CANARY: &[u8] = b"stackyard/canary/v1";
const AD_DATA_KEY: &[u8] = b"stackyard/data-key/v1";
const AD_VALUE: &[u8] = b"stackyard/value/v1";
const DIGEST_KEY_LABEL: &[u8] = b"stackyard/digest-key/v1";
const CANARY_PLAINTEXT: &[u8] = b"stackyard master key canary";

/// Why something did not open. Deliberately coarse: no key bytes, no plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "the master key does not open this database's canary: it is not the key this database was encrypted with"
    )]
    WrongMasterKey,
    #[error("a data key did not open (wrong master key, tampered, or moved from another owner)")]
    DataKey,
    #[error(
        "an encrypted value did not open (tampered, or moved from another owner, key or version)"
    )]
    Value,
    #[error("a master key must be exactly {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
}

/// The key at the top of the hierarchy. Never stored in the database.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

/// A key that seals one owner's values. Stored only wrapped by the master key.
#[derive(Clone)]
pub struct DataKey {
    key: [u8; KEY_LEN],
    digest_key: [u8; KEY_LEN],
}

macro_rules! redacted_debug {
    ($t:ty) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "(***)"))
            }
        }
    };
}
redacted_debug!(MasterKey);
redacted_debug!(DataKey);

fn random_key() -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    getrandom::fill(&mut k).expect("the operating system's random number generator failed");
    k
}

fn seal(key: &[u8; KEY_LEN], ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the operating system's random number generator failed");
    let ct = XChaCha20Poly1305::new(key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption cannot fail for inputs under 256 GiB");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open(key: &[u8; KEY_LEN], ad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: ad })
        .ok()
}

/// Associated data: the domain, then each part length-prefixed so no two part lists encode
/// alike (`("ab", "c")` vs `("a", "bc")`).
fn ad(domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(domain.len() + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    out.extend_from_slice(domain);
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

impl MasterKey {
    /// A new random key (first start without a key file).
    pub fn generate() -> Self {
        Self(random_key())
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::KeyLength(bytes.len()))?;
        Ok(Self(key))
    }

    /// The raw bytes, for writing the key file. The only way out of this type.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The canary to store beside data sealed under this key.
    pub fn seal_canary(&self) -> Vec<u8> {
        seal(&self.0, AD_CANARY, CANARY_PLAINTEXT)
    }

    /// Whether this is the key that sealed `canary`.
    pub fn check_canary(&self, canary: &[u8]) -> Result<(), CryptoError> {
        match open(&self.0, AD_CANARY, canary) {
            Some(p) if p == CANARY_PLAINTEXT => Ok(()),
            _ => Err(CryptoError::WrongMasterKey),
        }
    }

    /// Seals `key` for storage on `owner`'s row under `key_id`.
    pub fn wrap(&self, owner: KeyOwner, key_id: i64, key: &DataKey) -> Vec<u8> {
        seal(&self.0, &owner.wrap_ad(key_id), &key.key)
    }

    /// Opens a data key stored on `owner`'s row under `key_id`.
    pub fn unwrap(
        &self,
        owner: KeyOwner,
        key_id: i64,
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let raw = open(&self.0, &owner.wrap_ad(key_id), wrapped).ok_or(CryptoError::DataKey)?;
        let key: [u8; KEY_LEN] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::DataKey)?;
        Ok(DataKey::from_bytes(key))
    }
}

/// The id every owner's data key is wrapped under until per-owner data key rotation exists.
pub const DATA_KEY_ID: i64 = 1;

/// The master keys a running server knows: the one it wraps new data keys with, and older ones
/// it still opens with. After `admin rotate-master-key`, data keys are wrapped by a key this
/// server may not have loaded yet: `unwrap` then asks `reload` (the key file read again) once.
pub struct Keyring {
    keys: std::sync::RwLock<Vec<MasterKey>>,
    reload: Option<Box<dyn Fn() -> Vec<MasterKey> + Send + Sync>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keyring(***)")
    }
}

impl Keyring {
    pub fn new(master: MasterKey) -> Self {
        Self {
            keys: std::sync::RwLock::new(vec![master]),
            reload: None,
        }
    }

    /// `reload` reads the key source again (a rotated key file); see [`Keyring`].
    pub fn with_reload(
        mut self,
        reload: impl Fn() -> Vec<MasterKey> + Send + Sync + 'static,
    ) -> Self {
        self.reload = Some(Box::new(reload));
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<MasterKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The key new data keys are wrapped with.
    pub fn current(&self) -> MasterKey {
        self.read()[0].clone()
    }

    /// Adds the keys `reload` finds that are not known yet; whether it found any.
    fn reload(&self) -> bool {
        let fresh = self.reload.as_ref().map(|r| r()).unwrap_or_default();
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let before = keys.len();
        for k in fresh {
            if !keys.iter().any(|known| known.0 == k.0) {
                keys.push(k);
            }
        }
        keys.len() > before
    }

    /// Makes the key that opens `canary` current (loading it through `reload` if no known key
    /// does), so data keys created from now on are wrapped by the key the database names.
    pub fn follow_canary(&self, canary: &[u8]) -> Result<(), CryptoError> {
        if self.read()[0].check_canary(canary).is_ok() {
            return Ok(());
        }
        for attempt in 0..2 {
            let known = self
                .read()
                .iter()
                .position(|k| k.check_canary(canary).is_ok());
            if let Some(i) = known {
                let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
                let k = keys.remove(i);
                keys.insert(0, k);
                return Ok(());
            }
            if attempt == 0 && !self.reload() {
                break;
            }
        }
        Err(CryptoError::WrongMasterKey)
    }

    /// A new data key for `owner`, and its wrapping by the current master key.
    pub fn new_data_key(&self, owner: KeyOwner) -> (DataKey, Vec<u8>) {
        let key = DataKey::generate();
        let wrapped = self.read()[0].wrap(owner, DATA_KEY_ID, &key);
        (key, wrapped)
    }

    /// Opens `owner`'s wrapped data key with any known master key, reloading the key source
    /// once when none opens it.
    pub fn unwrap(&self, owner: KeyOwner, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let open = || {
            self.read()
                .iter()
                .find_map(|m| m.unwrap(owner, DATA_KEY_ID, wrapped).ok())
        };
        if let Some(k) = open() {
            return Ok(k);
        }
        if self.reload() {
            return open().ok_or(CryptoError::DataKey);
        }
        Err(CryptoError::DataKey)
    }
}

/// Who a data key belongs to: bound into its wrapping and into every value it seals. New kinds
/// (a team vault, a resource) take a new `kind` string so their ids cannot collide with a
/// stack's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyOwner {
    kind: &'static str,
    id: i64,
}

impl KeyOwner {
    pub fn stack(id: crate::model::StackId) -> Self {
        Self {
            kind: "stack",
            id: id.0,
        }
    }

    pub fn team_vault(id: crate::model::TeamId) -> Self {
        Self {
            kind: "team-vault",
            id: id.0,
        }
    }

    /// A resource row's own key (its connection URL). Resource ids are 128-bit hex strings;
    /// the owner id is the first 64 bits of their SHA-256, and the value's associated data
    /// names the resource too.
    pub fn resource(id: &str) -> Self {
        Self::named("resource", id)
    }

    /// A custom domain's certificate key (by the domain's id), same scheme as a resource.
    pub fn certificate(domain_id: &str) -> Self {
        Self::named("certificate", domain_id)
    }

    /// The ACME account key of a directory (by its URL).
    pub fn acme_account(directory: &str) -> Self {
        Self::named("acme-account", directory)
    }

    fn named(kind: &'static str, name: &str) -> Self {
        use sha2::Digest;
        let d = Sha256::digest(name.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        Self {
            kind,
            id: i64::from_be_bytes(b),
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    fn wrap_ad(&self, key_id: i64) -> Vec<u8> {
        ad(
            AD_DATA_KEY,
            &[
                self.kind.as_bytes(),
                &self.id.to_be_bytes(),
                &key_id.to_be_bytes(),
            ],
        )
    }
}

/// What a sealed value is bound to: moving its ciphertext to another owner, key name or
/// version makes it fail to open rather than decrypt to the wrong place.
#[derive(Debug, Clone, Copy)]
pub struct ValueAd<'a> {
    pub owner: KeyOwner,
    pub name: &'a str,
    pub version: i64,
}

impl ValueAd<'_> {
    fn bytes(&self) -> Vec<u8> {
        ad(
            AD_VALUE,
            &[
                self.owner.kind.as_bytes(),
                &self.owner.id.to_be_bytes(),
                self.name.as_bytes(),
                &self.version.to_be_bytes(),
            ],
        )
    }
}

/// One env value as a sealed store keeps it (`{"c": …, "d": …, "n": …, "v": …}` in the stored
/// JSON documents): the ciphertext, sealed with associated data = owner, key name and `v`; the
/// keyed digest and the lengths, which let a write find a no-op and apply the 64 KiB rule
/// without opening it. `v` is the env version the value was sealed at, so a value that stays
/// the same keeps its ciphertext from one version to the next.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedValue {
    /// `DataKey::seal` output, base64 (standard alphabet, no padding).
    pub c: String,
    /// `DataKey::digest(name, value)`, hex.
    pub d: String,
    /// The plaintext's length in bytes.
    pub n: usize,
    /// Bytes JSON escaping adds to the plaintext (the value counts `n + 2 + j` in the map's
    /// compact JSON); omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub j: usize,
    pub v: i64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// HMAC-SHA256 of a value under its owner's digest key: equal digests mean equal values (for
/// the same key name), so a write that changes nothing is found without decrypting.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ValueDigest(pub [u8; 32]);

impl ValueDigest {
    /// The form `SealedValue::d` stores.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ValueDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ValueDigest({})", hex::encode(&self.0[..4]))
    }
}

impl DataKey {
    /// A new random data key (a new owner, or a rotation).
    pub fn generate() -> Self {
        Self::from_bytes(random_key())
    }

    fn from_bytes(key: [u8; KEY_LEN]) -> Self {
        // The digest key is derived, not stored: one wrapped secret per owner, and a digest
        // never reveals anything the sealing key could be attacked with.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(DIGEST_KEY_LABEL);
        let digest_key = mac.finalize().into_bytes().into();
        Self { key, digest_key }
    }

    pub fn seal(&self, ad: ValueAd<'_>, plaintext: &[u8]) -> Vec<u8> {
        seal(&self.key, &ad.bytes(), plaintext)
    }

    pub fn open(&self, ad: ValueAd<'_>, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.key, &ad.bytes(), sealed).ok_or(CryptoError::Value)
    }

    /// The digest of `value` stored under key `name`. The name is included so equal values
    /// under different names do not show as equal digests in the database.
    pub fn digest(&self, name: &str, value: &[u8]) -> ValueDigest {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.digest_key)
            .expect("HMAC takes any key length");
        mac.update(&(name.len() as u32).to_be_bytes());
        mac.update(name.as_bytes());
        mac.update(value);
        ValueDigest(mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{StackId, TeamId};

    fn ad(stack: i64, name: &str, version: i64) -> ValueAd<'_> {
        ValueAd {
            owner: KeyOwner::stack(StackId(stack)),
            name,
            version,
        }
    }

    #[test]
    fn a_value_opens_only_with_its_own_owner_name_and_version() {
        let dk = DataKey::generate();
        let sealed = dk.seal(ad(1, "DB_PASSWORD", 3), b"hunter2");
        assert_eq!(
            dk.open(ad(1, "DB_PASSWORD", 3), &sealed).unwrap(),
            b"hunter2"
        );
        for wrong in [
            ad(2, "DB_PASSWORD", 3),
            ad(1, "OTHER", 3),
            ad(1, "DB_PASSWORD", 4),
        ] {
            assert_eq!(dk.open(wrong, &sealed), Err(CryptoError::Value));
        }
        let vault = ValueAd {
            owner: KeyOwner::team_vault(TeamId(1)),
            name: "DB_PASSWORD",
            version: 3,
        };
        assert_eq!(dk.open(vault, &sealed), Err(CryptoError::Value));
    }

    #[test]
    fn a_tampered_or_truncated_value_is_an_error() {
        let dk = DataKey::generate();
        let sealed = dk.seal(ad(1, "K", 1), b"value");
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(
                dk.open(ad(1, "K", 1), &t),
                Err(CryptoError::Value),
                "byte {i}"
            );
        }
        for n in 0..sealed.len() {
            assert_eq!(
                dk.open(ad(1, "K", 1), &sealed[..n]),
                Err(CryptoError::Value)
            );
        }
        assert!(DataKey::generate().open(ad(1, "K", 1), &sealed).is_err());
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let dk = DataKey::generate();
        assert_ne!(dk.seal(ad(1, "K", 1), b"v"), dk.seal(ad(1, "K", 1), b"v"));
    }

    #[test]
    fn data_keys_unwrap_only_for_their_owner_and_id_under_their_master_key() {
        let master = MasterKey::generate();
        let dk = DataKey::generate();
        let owner = KeyOwner::stack(StackId(7));
        let wrapped = master.wrap(owner, 1, &dk);
        let back = master.unwrap(owner, 1, &wrapped).unwrap();
        let sealed = dk.seal(ad(7, "K", 1), b"v");
        assert_eq!(back.open(ad(7, "K", 1), &sealed).unwrap(), b"v");
        assert_eq!(back.digest("K", b"v"), dk.digest("K", b"v"));
        assert!(
            master
                .unwrap(KeyOwner::stack(StackId(8)), 1, &wrapped)
                .is_err()
        );
        assert!(
            master
                .unwrap(KeyOwner::team_vault(TeamId(7)), 1, &wrapped)
                .is_err()
        );
        assert!(master.unwrap(owner, 2, &wrapped).is_err());
        assert!(MasterKey::generate().unwrap(owner, 1, &wrapped).is_err());
    }

    #[test]
    fn the_canary_tells_a_wrong_master_key() {
        let master = MasterKey::generate();
        let canary = master.seal_canary();
        assert_eq!(master.check_canary(&canary), Ok(()));
        assert_eq!(
            MasterKey::generate().check_canary(&canary),
            Err(CryptoError::WrongMasterKey)
        );
        // A wrapped data key is not a canary, even under the same master key.
        let wrapped = master.wrap(KeyOwner::stack(StackId(1)), 1, &DataKey::generate());
        assert!(master.check_canary(&wrapped).is_err());
    }

    #[test]
    fn digests_depend_on_key_name_value_and_data_key() {
        let dk = DataKey::generate();
        assert_eq!(dk.digest("K", b"v"), dk.digest("K", b"v"));
        assert_ne!(dk.digest("K", b"v"), dk.digest("K", b"w"));
        assert_ne!(dk.digest("K", b"v"), dk.digest("L", b"v"));
        assert_ne!(dk.digest("K", b"v"), DataKey::generate().digest("K", b"v"));
        assert_ne!(dk.digest("AB", b"C"), dk.digest("A", b"BC"));
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let master = MasterKey::from_slice(&[0x41; KEY_LEN]).unwrap();
        assert_eq!(format!("{master:?}"), "MasterKey(***)");
        assert_eq!(format!("{:?}", DataKey::generate()), "DataKey(***)");
        assert_eq!(
            MasterKey::from_slice(&[0; 31]).unwrap_err(),
            CryptoError::KeyLength(31)
        );
    }
}
