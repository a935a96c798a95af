//! Stack environment variables: parsing a PATCH body, the merge, the size rule and masking
//! (`shared/spec/env.md`).

use crate::crypto::{DataKey, SealedValue};
use crate::ids::EnvKey;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// Largest allowed map, measured as its compact JSON encoding.
pub const MAX_ENV_BYTES: usize = 65_536;

/// Why a PATCH body or its effect was rejected. Messages name keys, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{0}")]
    InvalidBody(String),
    #[error("the env object is empty; send at least one key (use \"\" or null to delete one)")]
    MissingEnv,
    #[error("{0}")]
    InvalidKey(String),
    #[error("env key `{0}` appears more than once in the request body")]
    DuplicateKey(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error("the env map would be {size} bytes as JSON after this change; the limit is 65536")]
    TooLarge { size: usize },
}

impl EnvError {
    /// The API error code for this rejection.
    pub fn code(&self) -> &'static str {
        match self {
            EnvError::InvalidBody(_) => "invalid_body",
            EnvError::MissingEnv => "missing_env",
            EnvError::InvalidKey(_) => "invalid_env_key",
            EnvError::DuplicateKey(_) => "duplicate_env_key",
            EnvError::InvalidValue(_) => "invalid_env_value",
            EnvError::TooLarge { .. } => "env_too_large",
        }
    }
}

/// A validated env map plus the length of its compact JSON encoding, kept up to date on every
/// change so the 64 KiB rule costs O(changed keys), not O(map), per patch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvMap {
    /// Keys and values are shared strings: a batch keeps one map per write (each write's
    /// response shows the map after it), and cloning a 200-entry map must not mean 400 string
    /// allocations (it dominated the batch's time).
    vars: BTreeMap<Arc<str>, Entry>,
    encoded_len: usize,
}

/// A value and whether it is shown masked, decided once when it is set: every response renders
/// the whole map, and deciding per render cost more than writing the entry.
#[derive(Debug, Clone)]
struct Entry {
    /// The value in clear; [`MASK`] while `closed`.
    value: Arc<str>,
    secret: bool,
    /// Length of the value as a JSON string literal: what the 64 KiB rule counts.
    json_len: usize,
    /// The value as a sealed store holds it, when it was read from one: written back unchanged
    /// and compared through its digest, so an untouched value is neither opened nor re-sealed.
    sealed: Option<Sealed>,
    /// Not opened: only the digest and the length are known (a secret-looking key read by the
    /// env write path, whose answers show it masked anyway).
    closed: bool,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        fn digest(e: &Entry) -> Option<Option<&str>> {
            e.closed
                .then(|| e.sealed.as_ref().map(|s| s.at_rest.d.as_str()))
        }
        self.value == other.value && self.secret == other.secret && digest(self) == digest(other)
    }
}
impl Eq for Entry {}

impl Entry {
    fn clear(k: &str, value: Arc<str>, sealed: Option<Sealed>) -> Self {
        Entry {
            secret: is_secret(k, &value),
            json_len: json_str_len(&value),
            value,
            sealed,
            closed: false,
        }
    }

    /// Whether this entry (under key `k`) holds `v`: compared in clear, or through the keyed
    /// digest when the entry is closed.
    fn holds(&self, k: &str, v: &str) -> bool {
        match (&self.sealed, self.closed) {
            (Some(s), true) => s.at_rest.d == s.key.digest(k, v.as_bytes()).to_hex(),
            _ => *self.value == *v,
        }
    }
}

/// A value as a sealed store keeps it (`crypto::SealedValue`) and the data key it was sealed
/// by: the key computes the digest a new value is compared with, and tells the store whether
/// the stored form may be written back as it is (same key) or must be sealed again.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub at_rest: Arc<SealedValue>,
    pub key: Arc<DataKey>,
}

/// Length of `s` as a JSON string literal, quotes included.
fn json_str_len(s: &str) -> usize {
    let mut n = 2;
    for c in s.chars() {
        n += match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
    }
    n
}

fn entry_len(k: &str, e: &Entry) -> usize {
    json_str_len(k) + 1 + e.json_len
}

/// Bytes JSON string escaping adds to `s` (quotes not counted): what a sealed value records
/// beside its plaintext length so the size rule needs no decryption.
pub fn json_escape_extra(s: &str) -> usize {
    json_str_len(s) - 2 - s.len()
}

impl EnvMap {
    pub fn new() -> Self {
        Self {
            vars: BTreeMap::new(),
            encoded_len: 2,
        }
    }

    /// Builds a map from stored pairs. Stored maps were validated on the way in; this only
    /// recomputes the encoded length.
    pub fn from_map(vars: BTreeMap<String, String>) -> Self {
        let mut m = Self::new();
        for (k, v) in vars {
            m.insert(k.into(), v.into());
        }
        m
    }

    /// Parses a stored map (`{"K":"V",...}`).
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        Ok(Self::from_map(serde_json::from_str(s)?))
    }

    pub fn to_json(&self) -> String {
        // Serialising a map of strings cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, e)| (&**k, &*e.value))
    }

    /// A plain copy of the entries.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(|e| &*e.value)
    }

    /// Bytes of the compact JSON encoding (`{}` is 2).
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    fn insert(&mut self, k: Arc<str>, v: Arc<str>) {
        let e = Entry::clear(&k, v, None);
        self.put(k, e);
    }

    fn put(&mut self, k: Arc<str>, e: Entry) {
        let add = entry_len(&k, &e);
        let had = !self.vars.is_empty();
        match self.vars.insert(k.clone(), e) {
            Some(old) => {
                self.encoded_len = self.encoded_len - entry_len(&k, &old) + add;
            }
            None => {
                self.encoded_len += add + usize::from(had);
            }
        }
    }

    fn remove(&mut self, k: &str) -> bool {
        match self.vars.remove(k) {
            Some(old) => {
                self.encoded_len -= entry_len(k, &old) + usize::from(!self.vars.is_empty());
                true
            }
            None => false,
        }
    }

    /// Applies `patch` as a merge. On `TooLarge` the map is left exactly as it was. A value
    /// equal to the one stored is no change, found through the digest when the stored value is
    /// closed; the size comes from the recorded lengths: nothing is opened.
    pub fn apply(&mut self, patch: &EnvPatch) -> Result<EnvChange, EnvError> {
        let mut change = EnvChange::default();
        let mut undo: Vec<(Arc<str>, Option<Entry>)> = Vec::new();
        for (k, v) in &patch.entries {
            let key = k.as_str();
            match v {
                Some(v) => {
                    // One lookup; an overwritten key keeps sharing the map's string.
                    let (shared, old) = match self.vars.get_key_value(key) {
                        Some((_, e)) if e.holds(key, v) => continue,
                        Some((k, e)) => (k.clone(), Some(e.clone())),
                        None => (Arc::from(key), None),
                    };
                    undo.push((shared.clone(), old));
                    self.insert(shared, v.as_str().into());
                    change.set.push(key.to_owned());
                }
                None => {
                    if let Some((k, e)) = self.vars.get_key_value(key) {
                        undo.push((k.clone(), Some(e.clone())));
                        self.remove(key);
                        change.deleted.push(key.to_owned());
                    }
                }
            }
        }
        if self.encoded_len > MAX_ENV_BYTES {
            let size = self.encoded_len;
            for (k, old) in undo.into_iter().rev() {
                match old {
                    Some(e) => self.put(k, e),
                    None => {
                        self.remove(&k);
                    }
                }
            }
            return Err(EnvError::TooLarge { size });
        }
        change.set.sort();
        change.deleted.sort();
        Ok(change)
    }

    /// Adds a stored entry opened to `value` (it keeps its sealed form, written back as is
    /// while unchanged).
    pub fn insert_opened(&mut self, k: String, value: String, sealed: Option<Sealed>) {
        let e = Entry::clear(&k, value.into(), sealed);
        self.put(k.into(), e);
    }

    /// Adds a stored entry without opening it. Only for keys that look secret
    /// ([`key_looks_secret`]): the entry shows as [`MASK`] and compares by digest.
    pub fn insert_closed(&mut self, k: String, sealed: Sealed) {
        let a = &sealed.at_rest;
        let e = Entry {
            value: Arc::from(MASK),
            secret: true,
            json_len: a.n + 2 + a.j,
            sealed: Some(sealed),
            closed: true,
        };
        self.put(k.into(), e);
    }

    /// Whether every value is in clear. A map with closed values reads them as [`MASK`]: only
    /// the env write path holds one, and everything it hands out is masked.
    pub fn is_open(&self) -> bool {
        self.vars.values().all(|e| !e.closed)
    }

    /// Each entry with the sealed form it was read with, if any (the store writes those back
    /// unchanged when the key is the same) and its value (`None` when closed).
    pub fn stored_iter(&self) -> impl Iterator<Item = (&str, Option<&str>, Option<&Sealed>)> {
        self.vars.iter().map(|(k, e)| {
            let v = (!e.closed).then_some(&*e.value);
            (&**k, v, e.sealed.as_ref())
        })
    }

    /// The patch that turns `self` into `target` (used by rollback; `target` must be open).
    pub fn diff_to(&self, target: &EnvMap) -> EnvPatch {
        let mut entries = Vec::new();
        for (k, v) in target.iter() {
            if !self.vars.get(k).is_some_and(|e| e.holds(k, v)) {
                entries.push((EnvKey::trusted(k), Some(v.to_owned())));
            }
        }
        for k in self.vars.keys() {
            if !target.vars.contains_key(k) {
                entries.push((EnvKey::trusted(k), None));
            }
        }
        EnvPatch { entries }
    }

    /// The map with secret-looking values replaced by `***`.
    pub fn masked(&self) -> BTreeMap<String, String> {
        self.masked_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The entries in key order, secret-looking values replaced by `***` (decided when each
    /// value was set, so this allocates nothing): what responses show.
    pub fn masked_iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .map(|(k, e)| (&**k, if e.secret { MASK } else { &*e.value }))
    }
}

/// The map as a JSON object (values in clear: for storage and owners who asked to reveal).
impl Serialize for EnvMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// The replacement shown for a masked value.
pub const MASK: &str = "***";

/// Whether a value must be masked when read: the key looks secret or the value is a URL that
/// carries credentials.
pub fn is_secret(key: &str, value: &str) -> bool {
    key_looks_secret(key.as_bytes()) || url_has_credentials(value)
}

/// One pass over the key, case-insensitive, without allocating: this runs for every entry of
/// every map a response shows, so it matters (a naive `to_uppercase` + `contains` per pattern
/// cost more than serialising the entry).
pub fn key_looks_secret(k: &[u8]) -> bool {
    let at = |i: usize, needle: &[u8]| {
        k.len() - i >= needle.len() && k[i..i + needle.len()].eq_ignore_ascii_case(needle)
    };
    for (i, c) in k.iter().enumerate() {
        let hit = match c.to_ascii_uppercase() {
            b'S' => at(i, b"SECRET"),
            b'P' => at(i, b"PASSWORD") || at(i, b"PASSWD") || at(i, b"PWD") || at(i, b"PRIVATE"),
            b'T' => at(i, b"TOKEN"),
            b'A' => at(i, b"APIKEY"),
            b'_' => at(i, b"_KEY"),
            _ => false,
        };
        if hit {
            return true;
        }
    }
    [&b"URL"[..], b"URI", b"DSN"]
        .iter()
        .any(|p| k.len() >= p.len() && k[k.len() - p.len()..].eq_ignore_ascii_case(p))
}

fn url_has_credentials(v: &str) -> bool {
    let b = v.as_bytes();
    let Some(colon) = b.iter().position(|&c| c == b':') else {
        return false;
    };
    if !b[colon..].starts_with(b"://") {
        return false;
    }
    let scheme = &b[..colon];
    if scheme.is_empty()
        || !scheme
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c))
    {
        return false;
    }
    let rest = &b[colon + 3..];
    let end = rest
        .iter()
        .position(|c| matches!(c, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    rest[..end].contains(&b'@')
}

/// What a patch really changed: keys created or given a new value, and keys that existed and
/// were removed. Both sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvChange {
    pub set: Vec<String>,
    pub deleted: Vec<String>,
}

impl EnvChange {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.deleted.is_empty()
    }
}

/// A validated PATCH: each key at most once, `None` meaning delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPatch {
    entries: Vec<(EnvKey, Option<String>)>,
}

impl EnvPatch {
    /// Builds a patch from already-validated parts (tests, rollback); rejects duplicates and
    /// bad values like `parse` does.
    pub fn from_entries(entries: Vec<(EnvKey, Option<String>)>) -> Result<Self, EnvError> {
        let mut seen = HashSet::new();
        for (k, v) in &entries {
            if !seen.insert(k.as_str().to_owned()) {
                return Err(EnvError::DuplicateKey(crate::ids::escape_for_message(
                    k.as_str(),
                )));
            }
            if let Some(v) = v {
                check_value(k.as_str(), v)?;
            }
        }
        if entries.is_empty() {
            return Err(EnvError::MissingEnv);
        }
        Ok(Self { entries })
    }

    pub fn entries(&self) -> &[(EnvKey, Option<String>)] {
        &self.entries
    }

    /// Parses a PATCH body `{"env": {...}}`. Rejects, in this order: a body that is not a JSON
    /// object with an object `env` (`invalid_body`), a key given twice, a bad key, a value that
    /// is neither a string nor null or holds NUL, and an empty map. `""` and `null` both delete.
    pub fn parse(body: &[u8]) -> Result<Self, EnvError> {
        let raw: RawBody = serde_json::from_slice(body).map_err(|e| {
            EnvError::InvalidBody(if e.is_data() {
                "the body must be a JSON object whose `env` field is an object of strings".into()
            } else {
                format!("the body is not valid JSON ({})", describe_json_error(&e))
            })
        })?;
        let Some(RawEnv(pairs)) = raw.env else {
            return Err(EnvError::InvalidBody(
                "the body must be a JSON object with an `env` object".into(),
            ));
        };
        let mut seen = HashSet::with_capacity(pairs.len());
        for (k, _) in &pairs {
            if !seen.insert(k.as_str()) {
                return Err(EnvError::DuplicateKey(crate::ids::escape_for_message(k)));
            }
        }
        let mut entries = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let key = EnvKey::parse(&k).map_err(|e| EnvError::InvalidKey(e.0))?;
            let value = match v {
                RawValue::Null => None,
                RawValue::Str(s) if s.is_empty() => None,
                RawValue::Str(s) => {
                    check_value(key.as_str(), &s)?;
                    Some(s)
                }
                RawValue::Other => {
                    return Err(EnvError::InvalidValue(format!(
                        "the value of env key `{}` must be a string or null",
                        key.as_str()
                    )));
                }
            };
            entries.push((key, value));
        }
        if entries.is_empty() {
            return Err(EnvError::MissingEnv);
        }
        Ok(Self { entries })
    }
}

fn check_value(key: &str, v: &str) -> Result<(), EnvError> {
    if v.contains('\0') {
        return Err(EnvError::InvalidValue(format!(
            "the value of env key `{key}` contains a NUL byte, which no process can receive"
        )));
    }
    Ok(())
}

/// The position of a JSON syntax error, never the text around it (it may hold a secret).
fn describe_json_error(e: &serde_json::Error) -> String {
    format!("line {}, column {}", e.line(), e.column())
}

#[derive(Deserialize)]
struct RawBody {
    env: Option<RawEnv>,
}

/// The `env` object as its pairs in body order, duplicates kept so we can reject them.
struct RawEnv(Vec<(String, RawValue)>);

enum RawValue {
    Null,
    Str(String),
    Other,
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or null")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
                Ok(RawValue::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawValue, E> {
                Ok(RawValue::Str(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawValue, E> {
                Ok(RawValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<RawValue, E> {
                Ok(RawValue::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawValue, E> {
                Ok(RawValue::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawValue, E> {
                Ok(RawValue::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawValue, E> {
                Ok(RawValue::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawValue, E> {
                Ok(RawValue::Other)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<RawValue, A::Error> {
                while a.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(RawValue::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<RawValue, A::Error> {
                while a.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(RawValue::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEnv;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<RawEnv, A::Error> {
                let mut pairs = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, RawValue>()? {
                    pairs.push((k, v));
                }
                Ok(RawEnv(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn patch(body: &str) -> Result<EnvPatch, EnvError> {
        EnvPatch::parse(body.as_bytes())
    }

    #[test]
    fn parse_rejects_each_bad_body_with_its_code() {
        let cases = [
            ("not json", "invalid_body"),
            ("[]", "invalid_body"),
            (r#"{"env": 3}"#, "invalid_body"),
            (r#"{"env": ["A"]}"#, "invalid_body"),
            (r#"{"nope": {}}"#, "invalid_body"),
            (r#"{"env": {}}"#, "missing_env"),
            (r#"{"env": {"A": "1", "A": "2"}}"#, "duplicate_env_key"),
            (r#"{"env": {"A-B": "1"}}"#, "invalid_env_key"),
            (r#"{"env": {"1A": "1"}}"#, "invalid_env_key"),
            (r#"{"env": {"A": 1}}"#, "invalid_env_value"),
            (r#"{"env": {"A": "x\u0000y"}}"#, "invalid_env_value"),
        ];
        for (body, code) in cases {
            assert_eq!(patch(body).unwrap_err().code(), code, "{body}");
        }
        let long = format!(r#"{{"env": {{"{}": "1"}}}}"#, "K".repeat(257));
        assert_eq!(patch(&long).unwrap_err().code(), "invalid_env_key");
    }

    #[test]
    fn messages_never_echo_values() {
        let secret = "hunter2-very-secret";
        for body in [
            format!(r#"{{"env": {{"A": "{secret}\u0000"}}}}"#),
            format!(r#"{{"env": {{"A": "{secret}", "A": "x"}}}}"#),
            format!(r#"{{"env": {{"A": "{secret}" "#),
        ] {
            let e = patch(&body).unwrap_err();
            assert!(!e.to_string().contains(secret), "{e}");
        }
    }

    #[test]
    fn merge_sets_overwrites_and_deletes() {
        let mut m = EnvMap::new();
        let c = m
            .apply(&patch(r#"{"env": {"A": "1", "B": "2"}}"#).unwrap())
            .unwrap();
        assert_eq!(c.set, ["A", "B"]);
        let c = m
            .apply(&patch(r#"{"env": {"A": "1", "B": "3", "C": null, "D": ""}}"#).unwrap())
            .unwrap();
        assert_eq!(
            c,
            EnvChange {
                set: vec!["B".into()],
                deleted: vec![]
            }
        );
        let c = m
            .apply(&patch(r#"{"env": {"A": null, "B": ""}}"#).unwrap())
            .unwrap();
        assert_eq!(c.deleted, ["A", "B"]);
        assert!(m.is_empty());
        assert_eq!(m.encoded_len(), 2);
    }

    #[test]
    fn size_limit_is_inclusive_and_leaves_the_map_unchanged() {
        // {"K":"<v>"} is 8 bytes of framing plus the value.
        let mut m = EnvMap::new();
        let exact = EnvPatch::from_entries(vec![(
            EnvKey::parse("K").unwrap(),
            Some("v".repeat(MAX_ENV_BYTES - 8)),
        )])
        .unwrap();
        m.apply(&exact).unwrap();
        assert_eq!(m.encoded_len(), MAX_ENV_BYTES);
        assert_eq!(m.to_json().len(), MAX_ENV_BYTES);
        let before = m.clone();
        let over = EnvPatch::from_entries(vec![
            (EnvKey::parse("A").unwrap(), None),
            (
                EnvKey::parse("K").unwrap(),
                Some("v".repeat(MAX_ENV_BYTES - 7)),
            ),
        ])
        .unwrap();
        assert_eq!(
            m.apply(&over).unwrap_err(),
            EnvError::TooLarge {
                size: MAX_ENV_BYTES + 1
            }
        );
        assert_eq!(m, before);
    }

    /// A value read without opening it: its ciphertext is junk on purpose, so any attempt to
    /// use it would show; only the digest and the lengths are real.
    fn closed(key: &Arc<DataKey>, k: &str, v: &str) -> Sealed {
        Sealed {
            at_rest: Arc::new(SealedValue {
                c: "not a ciphertext".into(),
                d: key.digest(k, v.as_bytes()).to_hex(),
                n: v.len(),
                j: json_escape_extra(v),
                v: 1,
            }),
            key: key.clone(),
        }
    }

    #[test]
    fn closed_values_are_compared_by_digest_and_measured_by_length() {
        let key = Arc::new(DataKey::generate());
        let secret = "s\"cr\u{1}t\n€";
        let mut m = EnvMap::new();
        m.insert_closed("API_SECRET".into(), closed(&key, "API_SECRET", secret));
        m.insert_opened("A".into(), "1".into(), None);
        let clear = EnvMap::from_map(BTreeMap::from([
            ("API_SECRET".to_owned(), secret.to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ]));
        assert_eq!(m.encoded_len(), clear.to_json().len());
        assert!(!m.is_open());
        assert_eq!(m.masked(), clear.masked(), "a closed value shows masked");

        let same = EnvPatch::from_entries(vec![(
            EnvKey::parse("API_SECRET").unwrap(),
            Some(secret.to_owned()),
        )])
        .unwrap();
        assert!(
            m.apply(&same).unwrap().is_empty(),
            "the same value is no change"
        );
        assert!(!m.is_open(), "and it stays closed, its stored form kept");

        // Too large: the closed value is left exactly as it was.
        let room = MAX_ENV_BYTES - clear.encoded_len();
        let over = EnvPatch::from_entries(vec![
            (EnvKey::parse("API_SECRET").unwrap(), Some("x".into())),
            (EnvKey::parse("B").unwrap(), Some("v".repeat(room + 40))),
        ])
        .unwrap();
        let before = m.clone();
        assert!(matches!(m.apply(&over), Err(EnvError::TooLarge { .. })));
        assert_eq!(m, before);
        assert!(
            m.stored_iter()
                .any(|(k, v, s)| k == "API_SECRET" && v.is_none() && s.is_some())
        );

        let other = EnvPatch::from_entries(vec![(
            EnvKey::parse("API_SECRET").unwrap(),
            Some("other".to_owned()),
        )])
        .unwrap();
        assert_eq!(m.apply(&other).unwrap().set, ["API_SECRET"]);
        assert!(m.is_open());
        assert_eq!(m.get("API_SECRET"), Some("other"));
        assert_eq!(m.encoded_len(), m.to_json().len());
    }

    #[test]
    fn a_digest_under_another_key_name_or_data_key_is_a_change() {
        let key = Arc::new(DataKey::generate());
        let mut m = EnvMap::new();
        // Recorded under another name: equal plaintexts must not compare equal.
        m.insert_closed("API_SECRET".into(), closed(&key, "OTHER_SECRET", "v"));
        let same = EnvPatch::from_entries(vec![(
            EnvKey::parse("API_SECRET").unwrap(),
            Some("v".to_owned()),
        )])
        .unwrap();
        assert_eq!(m.apply(&same).unwrap().set, ["API_SECRET"]);
    }

    #[test]
    fn masking_hides_secret_keys_and_credentialed_urls() {
        let m = EnvMap::from_map(
            [
                ("DATABASE_URL", "postgres://u:p@h/db"),
                ("API_KEY", "k"),
                ("GITHUB_TOKEN", "t"),
                ("LOG_LEVEL", "info"),
                ("UPSTREAM", "https://user:pw@example.com/x"),
                ("HOMEPAGE", "https://example.com/@me"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        let masked = m.masked();
        assert_eq!(masked["DATABASE_URL"], MASK);
        assert_eq!(masked["API_KEY"], MASK);
        assert_eq!(masked["GITHUB_TOKEN"], MASK);
        assert_eq!(masked["UPSTREAM"], MASK);
        assert_eq!(masked["LOG_LEVEL"], "info");
        assert_eq!(masked["HOMEPAGE"], "https://example.com/@me");
    }

    fn arb_value() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            "[a-z\"\\\\\n\u{1}é]{0,12}".prop_map(Some),
        ]
    }

    /// The spec's rule, written the obvious way, to check the fast one against.
    fn is_secret_reference(key: &str, value: &str) -> bool {
        let k = key.to_ascii_uppercase();
        [
            "SECRET", "PASSWORD", "PASSWD", "PWD", "TOKEN", "PRIVATE", "APIKEY", "_KEY",
        ]
        .iter()
        .any(|p| k.contains(p))
            || ["URL", "URI", "DSN"].iter().any(|p| k.ends_with(p))
            || value.split_once("://").is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
                    && rest
                        .split(['/', '?', '#'])
                        .next()
                        .unwrap_or("")
                        .contains('@')
            })
    }

    proptest! {
        #[test]
        fn fast_secret_detection_matches_the_rule(
            key in "[A-Za-z_]{0,3}(SECRET|secret|Pwd|PASS|pass|WORD|TOKEN|APIKEY|_KEY|_key|URL|uri|DSN|x|_){0,3}[A-Za-z_]{0,3}",
            value in "([a-z+.]{0,4}(://)?[a-z:@/?#]{0,8}){0,2}",
        ) {
            prop_assert_eq!(is_secret(&key, &value), is_secret_reference(&key, &value), "{} {}", key, value);
        }

        #[test]
        fn encoded_len_always_matches_serde_json(
            ops in proptest::collection::vec(
                proptest::collection::btree_map("[A-D]", arb_value(), 1..4), 1..40)
        ) {
            let mut m = EnvMap::new();
            for op in ops {
                let entries = op.into_iter()
                    .map(|(k, v)| (EnvKey::parse(&k).unwrap(), v.filter(|s| !s.is_empty())))
                    .collect();
                let p = EnvPatch::from_entries(entries).unwrap();
                m.apply(&p).unwrap();
                prop_assert_eq!(m.encoded_len(), m.to_json().len());
            }
        }

        #[test]
        fn diff_to_reaches_the_target(
            a in proptest::collection::btree_map("[A-F]", "[a-c]{1,3}", 0..6),
            b in proptest::collection::btree_map("[A-F]", "[a-c]{1,3}", 0..6),
        ) {
            let mut from = EnvMap::from_map(a);
            let to = EnvMap::from_map(b);
            let p = from.diff_to(&to);
            if !p.entries().is_empty() {
                from.apply(&p).unwrap();
            }
            prop_assert_eq!(from, to);
        }
    }
}
