//! Encryption at rest of what the SQL stores keep: env documents (a stack's current map, its
//! history's changes and snapshots, each release's copy) and resource connection URLs.
//!
//! A sealed env document has the shape of a plain one (`{"KEY": "…"}`, `null` for a deleted
//! key in a change), each value replaced by the base64 of `DataKey::seal` with associated data
//! = the stack, the key name and the env version the document belongs to. So the SQL that
//! copies a map (a release records `stacks.env` as it is) needs no change, a ciphertext moved
//! to another stack, key or version does not open, and the stack's `data_key` column says
//! which form a stack's documents are in: `NULL` until the stack is sealed (a stack created
//! empty, or one from before encryption at rest, sealed by `Ops::seal_stack`).

use crate::error::{Error, Result, corrupt, from_json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use stackyard_core::crypto::{DataKey, KeyOwner, Keyring, ValueAd};
use stackyard_core::env::EnvMap;
use stackyard_core::envlog::ChangeValues;
use stackyard_core::model::StackId;
use std::collections::BTreeMap;

/// How one stack's env documents are stored: plain (not sealed yet) or sealed by its data key.
#[derive(Debug)]
pub enum EnvCodec {
    Plain,
    Sealed { owner: KeyOwner, key: DataKey },
}

fn undecryptable() -> Error {
    corrupt("a stored secret did not decrypt (wrong master key, or the row was tampered with)")
}

impl EnvCodec {
    /// The codec of a stack whose `data_key` column holds `wrapped`.
    pub fn of_stack(keyring: &Keyring, stack: StackId, wrapped: Option<&[u8]>) -> Result<Self> {
        let Some(wrapped) = wrapped else {
            return Ok(EnvCodec::Plain);
        };
        let owner = KeyOwner::stack(stack);
        let key = keyring
            .unwrap(owner, wrapped)
            .map_err(|_| undecryptable())?;
        Ok(EnvCodec::Sealed { owner, key })
    }

    fn seal(&self, name: &str, version: i64, value: &str) -> String {
        match self {
            EnvCodec::Plain => value.to_owned(),
            EnvCodec::Sealed { owner, key } => {
                let ad = ValueAd {
                    owner: *owner,
                    name,
                    version,
                };
                B64.encode(key.seal(ad, value.as_bytes()))
            }
        }
    }

    fn open(&self, name: &str, version: i64, stored: String) -> Result<String> {
        match self {
            EnvCodec::Plain => Ok(stored),
            EnvCodec::Sealed { owner, key } => {
                let ad = ValueAd {
                    owner: *owner,
                    name,
                    version,
                };
                let sealed = B64.decode(stored).map_err(|_| undecryptable())?;
                let plain = key.open(ad, &sealed).map_err(|_| undecryptable())?;
                String::from_utf8(plain).map_err(|_| undecryptable())
            }
        }
    }

    /// A map as stored for env version `version`, as JSON text.
    pub fn seal_map(&self, map: &EnvMap, version: i64) -> String {
        match self {
            EnvCodec::Plain => map.to_json(),
            EnvCodec::Sealed { .. } => {
                let sealed: BTreeMap<&str, String> = map
                    .iter()
                    .map(|(k, v)| (k, self.seal(k, version, v)))
                    .collect();
                serde_json::to_string(&sealed).unwrap_or_else(|_| "{}".to_owned())
            }
        }
    }

    /// A stored map of env version `version` (JSON text), opened.
    pub fn open_map(&self, text: &str, version: i64) -> Result<EnvMap> {
        let stored: BTreeMap<String, String> = from_json(text, "env map")?;
        let mut out = BTreeMap::new();
        for (k, v) in stored {
            let v = self.open(&k, version, v)?;
            out.insert(k, v);
        }
        Ok(EnvMap::from_map(out))
    }

    /// A version's change as stored (JSON text).
    pub fn seal_changes(&self, changes: &ChangeValues, version: i64) -> String {
        let sealed: BTreeMap<&str, Option<String>> = changes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref().map(|v| self.seal(k, version, v))))
            .collect();
        serde_json::to_string(&sealed).unwrap_or_else(|_| "{}".to_owned())
    }

    /// A stored change of version `version`, opened.
    pub fn open_changes(&self, text: &str, version: i64) -> Result<ChangeValues> {
        let stored: ChangeValues = from_json(text, "env change")?;
        stored
            .into_iter()
            .map(|(k, v)| {
                let v = v.map(|v| self.open(&k, version, v)).transpose()?;
                Ok((k, v))
            })
            .collect()
    }
}

/// A resource's connection URL is sealed by the resource's own data key (wrapped in its row's
/// `data_key`), bound to the resource's id.
const URL_NAME: &str = "connection_url";

/// `(sealed URL as base64, wrapped data key)` for a new resource row.
pub fn seal_resource_url(keyring: &Keyring, id: &str, url: &str) -> (String, Vec<u8>) {
    let name = format!("{URL_NAME}/{id}");
    let (sealed, wrapped) = seal_owned(keyring, KeyOwner::resource(id), &name, url.as_bytes());
    (B64.encode(sealed), wrapped)
}

/// A stored connection URL opened (`wrapped` `None`: a row from before encryption at rest).
pub fn open_resource_url(
    keyring: &Keyring,
    id: &str,
    stored: String,
    wrapped: Option<&[u8]>,
) -> Result<String> {
    let Some(wrapped) = wrapped else {
        return Ok(stored);
    };
    let sealed = B64.decode(stored).map_err(|_| undecryptable())?;
    let name = format!("{URL_NAME}/{id}");
    let plain = open_owned(keyring, KeyOwner::resource(id), &name, &sealed, wrapped)?;
    String::from_utf8(plain).map_err(|_| undecryptable())
}

/// `(sealed value, wrapped data key)`: one secret of a row that owns its data key (a
/// resource's URL, a certificate's key, an ACME account), bound to `owner` and `name`.
pub fn seal_owned(
    keyring: &Keyring,
    owner: KeyOwner,
    name: &str,
    plaintext: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let (key, wrapped) = keyring.new_data_key(owner);
    let ad = ValueAd {
        owner,
        name,
        version: 0,
    };
    (key.seal(ad, plaintext), wrapped)
}

/// A value `seal_owned` sealed, opened; any mismatch is `Corrupt`, never the plaintext.
pub fn open_owned(
    keyring: &Keyring,
    owner: KeyOwner,
    name: &str,
    sealed: &[u8],
    wrapped: &[u8],
) -> Result<Vec<u8>> {
    let key = keyring
        .unwrap(owner, wrapped)
        .map_err(|_| undecryptable())?;
    let ad = ValueAd {
        owner,
        name,
        version: 0,
    };
    key.open(ad, sealed).map_err(|_| undecryptable())
}

/// The keyring a store seals with, installed once after start-up has proved the master key
/// (`KeyStore::install_keyring`); shared by the store's clones.
#[derive(Clone, Default)]
pub struct KeySlot(std::sync::Arc<std::sync::OnceLock<std::sync::Arc<Keyring>>>);

impl KeySlot {
    /// Installs `keyring`; a second install is ignored (the first stays: data is sealed by it).
    pub fn install(&self, keyring: std::sync::Arc<Keyring>) {
        let _ = self.0.set(keyring);
    }

    pub fn get(&self) -> std::result::Result<&Keyring, stackyard_core::store::StoreError> {
        self.0.get().map(|k| &**k).ok_or_else(|| {
            stackyard_core::store::StoreError::Unavailable(
                "no master key is installed in this store (start-up did not unlock it)".into(),
            )
        })
    }
}
