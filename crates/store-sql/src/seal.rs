//! Encryption at rest of what the SQL stores keep: env documents (a stack's current map, its
//! history's changes and snapshots, each release's copy) and resource connection URLs.
//!
//! A sealed env document has the shape of a plain one (`{"KEY": …}`, `null` for a deleted key
//! in a change), each value replaced by a `crypto::SealedValue` object: the ciphertext of
//! `DataKey::seal` with associated data = the stack, the key name and the version the value
//! was sealed at, its keyed digest and its lengths. So the SQL that copies a map (a release
//! records `stacks.env` as it is) needs no change, a ciphertext moved to another stack or key
//! does not open, and a write compares and measures values without opening them: an
//! unchanged value is written back as it was read. The stack's `data_key` column says which
//! form a stack's documents are in: `NULL` until the stack is sealed (a stack created empty,
//! or one from before encryption at rest, sealed by `Ops::seal_stack`). Documents sealed before
//! digests were stored hold the base64 ciphertext as a plain string, bound to the document's
//! version; they still open, and each is rewritten in the new form by the stack's next write.

use crate::error::{Error, Result, corrupt, from_json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use serde::Deserialize;
use stackyard_core::crypto::{DataKey, KeyOwner, Keyring, SealedValue, ValueAd};
use stackyard_core::env::{EnvMap, Sealed, json_escape_extra, key_looks_secret};
use stackyard_core::envlog::ChangeValues;
use stackyard_core::model::StackId;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How one stack's env documents are stored: plain (not sealed yet) or sealed by its data key.
#[derive(Debug)]
pub enum EnvCodec {
    Plain,
    Sealed { owner: KeyOwner, key: Arc<DataKey> },
}

/// Which values of a stored map a read opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Every value (reads that hand values out, rollbacks, re-sealing).
    All,
    /// Only values whose key does not look secret: the env write path, whose answers show
    /// the others masked and which compares and measures them through digest and length.
    Shown,
}

/// One value of a stored document: a `SealedValue`, or a string (a plain document's value, or
/// the ciphertext of a document sealed before digests were stored).
enum StoredValue {
    Text(String),
    Sealed(SealedValue),
}

/// Decided by the JSON type at hand: `#[serde(untagged)]` would buffer every value first, and
/// this runs for each value of the map a write reads under the stack's lock.
impl<'de> Deserialize<'de> for StoredValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StoredValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a sealed value")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                v: &str,
            ) -> std::result::Result<StoredValue, E> {
                Ok(StoredValue::Text(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(
                self,
                v: String,
            ) -> std::result::Result<StoredValue, E> {
                Ok(StoredValue::Text(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<StoredValue, A::Error> {
                let de = serde::de::value::MapAccessDeserializer::new(map);
                SealedValue::deserialize(de).map(StoredValue::Sealed)
            }
        }
        d.deserialize_any(V)
    }
}

fn undecryptable() -> Error {
    corrupt("a stored secret did not decrypt (wrong master key, or the row was tampered with)")
}

/// One value of a document being written: a plain document's string, or a sealed value (one
/// read from storage is borrowed and written back unchanged).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum StoredOut<'a> {
    Text(&'a str),
    Sealed(Cow<'a, SealedValue>),
}

/// The sealed form a value read through `key` keeps while unchanged.
fn kept(key: &Arc<DataKey>, at_rest: SealedValue) -> Sealed {
    Sealed {
        at_rest: Arc::new(at_rest),
        key: key.clone(),
    }
}

/// A map serialised as stored, entry by entry in the map's (key) order: no intermediate map
/// on the write path.
struct SealedDoc<'a> {
    codec: &'a EnvCodec,
    map: &'a EnvMap,
    version: i64,
}

impl serde::Serialize for SealedDoc<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeMap};
        let mut out = s.serialize_map(None)?;
        for (k, value, sealed) in self.map.stored_iter() {
            match (self.codec, sealed, value) {
                (EnvCodec::Sealed { key, .. }, Some(s), _) if Arc::ptr_eq(key, &s.key) => {
                    out.serialize_entry(k, &StoredOut::Sealed(Cow::Borrowed(&*s.at_rest)))?;
                }
                (_, _, Some(v)) => out.serialize_entry(k, &self.codec.seal(k, self.version, v))?,
                // Closed values only come from this codec's own reads.
                (_, _, None) => return Err(S::Error::custom("a closed value under another key")),
            }
        }
        out.end()
    }
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
        Ok(EnvCodec::Sealed {
            owner,
            key: Arc::new(key),
        })
    }

    fn seal<'a>(&self, name: &str, version: i64, value: &'a str) -> StoredOut<'a> {
        match self {
            EnvCodec::Plain => StoredOut::Text(value),
            EnvCodec::Sealed { owner, key } => {
                let ad = ValueAd {
                    owner: *owner,
                    name,
                    version,
                };
                StoredOut::Sealed(Cow::Owned(SealedValue {
                    c: B64.encode(key.seal(ad, value.as_bytes())),
                    d: key.digest(name, value.as_bytes()).to_hex(),
                    n: value.len(),
                    j: json_escape_extra(value),
                    v: version,
                }))
            }
        }
    }

    /// Opens ciphertext `sealed` of key `name` bound to `version`.
    fn open_bytes(&self, name: &str, version: i64, sealed: &str) -> Result<String> {
        let EnvCodec::Sealed { owner, key } = self else {
            return Err(undecryptable());
        };
        let ad = ValueAd {
            owner: *owner,
            name,
            version,
        };
        let sealed = B64.decode(sealed).map_err(|_| undecryptable())?;
        let plain = key.open(ad, &sealed).map_err(|_| undecryptable())?;
        String::from_utf8(plain).map_err(|_| undecryptable())
    }

    /// A stored value of key `name` in a document of version `version`, opened, with the
    /// sealed form it keeps while unchanged.
    fn open(
        &self,
        name: &str,
        version: i64,
        stored: StoredValue,
    ) -> Result<(String, Option<Sealed>)> {
        match (self, stored) {
            (EnvCodec::Plain, StoredValue::Text(v)) => Ok((v, None)),
            // A legacy value: sealed with the document's version, rewritten by the next write.
            (EnvCodec::Sealed { .. }, StoredValue::Text(legacy)) => {
                Ok((self.open_bytes(name, version, &legacy)?, None))
            }
            (EnvCodec::Sealed { key, .. }, StoredValue::Sealed(at_rest)) => {
                let plain = self.open_bytes(name, at_rest.v, &at_rest.c)?;
                Ok((plain, Some(kept(key, at_rest))))
            }
            (EnvCodec::Plain, StoredValue::Sealed(_)) => Err(undecryptable()),
        }
    }

    /// A map as stored for env version `version`, as JSON text. Values read from this stack's
    /// storage by this codec are written back as they were; the others are sealed now.
    pub fn seal_map(&self, map: &EnvMap, version: i64) -> Result<String> {
        serde_json::to_string(&SealedDoc {
            codec: self,
            map,
            version,
        })
        .map_err(|e| corrupt(format!("an env map did not encode: {e}")))
    }

    /// A stored map of env version `version` (JSON text), opened as `opening` says.
    pub fn open_map(&self, text: &str, version: i64, opening: Opening) -> Result<EnvMap> {
        let stored: BTreeMap<String, StoredValue> = from_json(text, "env map")?;
        let mut out = EnvMap::new();
        for (k, v) in stored {
            match (self, v) {
                (EnvCodec::Sealed { key, .. }, StoredValue::Sealed(at_rest))
                    if opening == Opening::Shown && key_looks_secret(k.as_bytes()) =>
                {
                    out.insert_closed(k, kept(key, at_rest));
                }
                (_, v) => {
                    let (v, sealed) = self.open(&k, version, v)?;
                    out.insert_opened(k, v, sealed);
                }
            }
        }
        Ok(out)
    }

    /// A version's change as stored (JSON text).
    pub fn seal_changes(&self, changes: &ChangeValues, version: i64) -> Result<String> {
        let sealed: BTreeMap<&str, Option<StoredOut<'_>>> = changes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref().map(|v| self.seal(k, version, v))))
            .collect();
        serde_json::to_string(&sealed).map_err(|_| corrupt("an env change did not encode"))
    }

    /// A stored change of version `version`, opened.
    pub fn open_changes(&self, text: &str, version: i64) -> Result<ChangeValues> {
        let stored: BTreeMap<String, Option<StoredValue>> = from_json(text, "env change")?;
        stored
            .into_iter()
            .map(|(k, v)| {
                let v = v.map(|v| self.open(&k, version, v)).transpose()?;
                Ok((k, v.map(|(v, _)| v)))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use stackyard_core::crypto::MasterKey;

    fn codec(keyring: &Keyring, stack: i64) -> EnvCodec {
        let (_, wrapped) = keyring.new_data_key(KeyOwner::stack(StackId(stack)));
        EnvCodec::of_stack(keyring, StackId(stack), Some(&wrapped)).unwrap()
    }

    fn entries(text: &str) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_str(text).unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> EnvMap {
        EnvMap::from_map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn an_unchanged_value_is_written_back_as_read_and_secret_keys_stay_closed() {
        let keyring = Keyring::new(MasterKey::generate());
        let codec = codec(&keyring, 7);
        let stored = codec
            .seal_map(&map(&[("API_SECRET", "s3"), ("A", "1")]), 4)
            .unwrap();
        let first = entries(&stored);
        assert_eq!(first["API_SECRET"]["v"], 4);
        assert_eq!(first["API_SECRET"]["n"], 2);
        assert!(!stored.contains("s3"));

        let read = codec.open_map(&stored, 4, Opening::Shown).unwrap();
        assert!(!read.is_open(), "the secret-looking key is not opened");
        assert_eq!(read.get("A"), Some("1"));
        // Written back at a later version: the same ciphertexts, bound to version 4.
        let again = codec.seal_map(&read, 9).unwrap();
        assert_eq!(entries(&again), first);
        let all = codec.open_map(&again, 9, Opening::All).unwrap();
        assert_eq!(all, map(&[("API_SECRET", "s3"), ("A", "1")]));
    }

    #[test]
    fn another_data_key_seals_again_and_a_closed_value_cannot_move() {
        let keyring = Keyring::new(MasterKey::generate());
        let (a, b) = (codec(&keyring, 7), codec(&keyring, 7));
        let stored = a.seal_map(&map(&[("API_SECRET", "s3")]), 1).unwrap();
        let opened = a.open_map(&stored, 1, Opening::All).unwrap();
        let moved = b.seal_map(&opened, 2).unwrap();
        assert_ne!(
            entries(&moved)["API_SECRET"]["c"],
            entries(&stored)["API_SECRET"]["c"]
        );
        assert_eq!(b.open_map(&moved, 2, Opening::All).unwrap(), opened);
        assert!(a.open_map(&moved, 2, Opening::All).is_err());
        let closed = a.open_map(&stored, 1, Opening::Shown).unwrap();
        assert!(b.seal_map(&closed, 2).is_err());
    }

    #[test]
    fn a_document_sealed_before_digests_opens_and_is_rewritten_in_the_new_form() {
        let keyring = Keyring::new(MasterKey::generate());
        let codec = codec(&keyring, 3);
        let EnvCodec::Sealed { owner, key } = &codec else {
            unreachable!()
        };
        // The earlier form: the base64 ciphertext as a string, bound to the document's version.
        let ad = ValueAd {
            owner: *owner,
            name: "API_SECRET",
            version: 5,
        };
        let legacy = serde_json::json!({ "API_SECRET": B64.encode(key.seal(ad, b"old")) });
        let legacy = legacy.to_string();
        let read = codec.open_map(&legacy, 5, Opening::Shown).unwrap();
        assert!(read.is_open(), "a legacy value has no digest: it is opened");
        assert_eq!(read.get("API_SECRET"), Some("old"));
        assert!(
            codec.open_map(&legacy, 6, Opening::All).is_err(),
            "bound to its version"
        );
        let rewritten = entries(&codec.seal_map(&read, 6).unwrap());
        assert_eq!(rewritten["API_SECRET"]["v"], 6);
        // A change document of the earlier form has the same shape.
        let changes = codec.open_changes(&legacy, 5).unwrap();
        assert_eq!(changes["API_SECRET"].as_deref(), Some("old"));
    }
}
