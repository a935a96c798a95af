//! `/stacks/:slug/env*`: the env map as the API shows it, its writes and its history.
//!
//! The write response is the hot path: each PATCH answers with the whole map after it (up to
//! 64 KiB), and the store renders the same body again for idempotent replays. So the map is
//! borrowed from the server's `EnvMap` and streamed entry by entry (`EnvVars::Masked`): no copy
//! of the map, no intermediate `BTreeMap` or `serde_json::Value`, and whether an entry is masked
//! was decided when its value was set. Clients deserialize the same field into `EnvVars::Plain`.

use crate::schema::time;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use stackyard_core::EnvMap;
use stackyard_core::model::{EnvOutcome, EnvVersionInfo};
use std::borrow::Cow;
use std::collections::BTreeMap;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::{PartialSchema, ToSchema};

/// An env map on the wire: a JSON object of strings, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvVars<'a> {
    /// The server's map with secret-looking values shown as `***`.
    Masked(&'a EnvMap),
    /// The server's map in clear (`GET …/env?reveal=true`).
    Revealed(&'a EnvMap),
    /// A map as a client reads it (values masked or not, as the server sent them).
    Plain(BTreeMap<String, String>),
}

impl EnvVars<'_> {
    /// The entries in key order, as they are sent.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (&str, &str)> + '_> {
        match self {
            EnvVars::Masked(m) => Box::new(m.masked_iter()),
            EnvVars::Revealed(m) => Box::new(m.iter()),
            EnvVars::Plain(m) => Box::new(m.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        match self {
            EnvVars::Masked(m) | EnvVars::Revealed(m) => m.len(),
            EnvVars::Plain(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries as a plain map.
    pub fn into_map(self) -> BTreeMap<String, String> {
        match self {
            EnvVars::Plain(m) => m,
            other => other
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

impl Serialize for EnvVars<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        match self {
            EnvVars::Masked(m) => {
                for (k, v) in m.masked_iter() {
                    map.serialize_entry(k, v)?;
                }
            }
            EnvVars::Revealed(m) => {
                for (k, v) in m.iter() {
                    map.serialize_entry(k, v)?;
                }
            }
            EnvVars::Plain(m) => {
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for EnvVars<'_> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(EnvVars::Plain)
    }
}

impl PartialSchema for EnvVars<'_> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The env map: key → value, secret-looking values shown as `***` unless revealed.",
            ))
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
            .into()
    }
}

impl ToSchema for EnvVars<'_> {}

/// The keys a write really changed, both sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvChanged<'a> {
    /// Keys created or given a new value.
    #[schema(value_type = Vec<String>)]
    pub set: Cow<'a, [String]>,
    /// Keys that existed and were removed.
    #[schema(value_type = Vec<String>)]
    pub deleted: Cow<'a, [String]>,
}

/// `PATCH /stacks/:slug/env` and `POST /stacks/:slug/env/rollback` 200 (and their dry runs):
/// the whole map after the change, masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvWriteResponse<'a> {
    pub ok: bool,
    pub stack_id: String,
    pub env: EnvVars<'a>,
    /// The env version after the change (also the response's `ETag`).
    pub version: i64,
    pub changed: EnvChanged<'a>,
    pub message: String,
    /// Present (and `true`) only on `?dry_run=true`: nothing was written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl<'a> EnvWriteResponse<'a> {
    /// The answer to a write of `slug`'s env that came out as `o`.
    pub fn new(slug: &str, o: &'a EnvOutcome, dry_run: bool) -> Self {
        let message = if dry_run {
            "Dry run: nothing was written.".to_owned()
        } else {
            format!("Env vars persisted. Call POST /stacks/{slug}/redeploy to apply.")
        };
        Self {
            ok: true,
            stack_id: slug.to_owned(),
            env: EnvVars::Masked(&o.env),
            version: o.version,
            changed: EnvChanged {
                set: Cow::Borrowed(&o.changed.set),
                deleted: Cow::Borrowed(&o.changed.deleted),
            },
            message,
            dry_run,
        }
    }

    /// Rendered as the server sends and stores it; the buffer is sized from the map's encoded
    /// length, so a large map is written once without regrowing.
    pub fn to_json(&self) -> String {
        let hint = match &self.env {
            EnvVars::Masked(m) | EnvVars::Revealed(m) => m.encoded_len(),
            EnvVars::Plain(_) => 0,
        };
        crate::to_json_string(self, hint + 256)
    }
}

/// `GET /stacks/:slug/env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvRead<'a> {
    pub ok: bool,
    pub stack_id: String,
    pub env: EnvVars<'a>,
    /// Also the response's `ETag`.
    pub version: i64,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// One row of env history (key names only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvVersion {
    pub version: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub actor: String,
    pub set: Vec<String>,
    pub deleted: Vec<String>,
}

impl From<&EnvVersionInfo> for EnvVersion {
    fn from(v: &EnvVersionInfo) -> Self {
        Self {
            version: v.version,
            created_at: time(v.created_at),
            actor: v.actor.clone(),
            set: v.set.clone(),
            deleted: v.deleted.clone(),
        }
    }
}

/// `GET /stacks/:slug/env/versions`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvVersionPage {
    pub ok: bool,
    pub items: Vec<EnvVersion>,
    /// Versions kept, not just this page.
    pub total: i64,
    /// Pass as `?cursor=` for the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `PATCH /stacks/:slug/env` body: `{"env": {KEY: value | "" | null}}`; `""` and `null` delete.
/// Schema only on the server, which parses the raw body itself (`EnvPatch::parse`) to refuse a
/// key given twice; clients build and send it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvPatchRequest {
    #[schema(schema_with = env_patch_schema)]
    pub env: BTreeMap<String, Option<String>>,
}

fn env_patch_schema() -> Schema {
    let value = ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::String, Type::Null]))
        .pattern(Some("^[^\\u0000]*$"))
        .description(Some(
            "The new value; `\"\"` or `null` deletes the key. No NUL.",
        ));
    let key = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z_][A-Za-z0-9_]{0,255}$"));
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Keys to set or delete, at least one, each once; the map after the change is at most 64 KiB as JSON.",
            ))
            .min_properties(Some(1))
            .property_names(Some(key))
            .additional_properties(Some(value))
            .build(),
    )
}

/// `POST /stacks/:slug/env/rollback` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RollbackRequest {
    /// The env version whose map becomes current again, as a new version.
    #[serde(deserialize_with = "integral")]
    #[schema(minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    pub version: i64,
}

/// An integer as JSON numbers mean it: `3` and `3.0` are the same number (JSON Schema's
/// `integer` says so too), so both are accepted; `3.5` or a number past 2^53 is not.
fn integral<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < EXACT => Ok(f as i64),
        _ => Err(serde::de::Error::custom("expected an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use stackyard_core::Millis;
    use stackyard_core::env::EnvChange;

    fn outcome(map: BTreeMap<String, String>) -> EnvOutcome {
        EnvOutcome {
            version: 7,
            changed: EnvChange {
                set: vec!["A".into()],
                deleted: vec![],
            },
            env: EnvMap::from_map(map),
            updated_at: Millis(0),
        }
    }

    proptest! {
        /// The streamed map is exactly what serde writes for the masked copy, escapes included.
        #[test]
        fn streamed_masked_map_equals_serde_of_a_masked_copy(
            map in proptest::collection::btree_map("[A-Z_]{1,8}", "[ -~\u{0}-\u{1f}é\"\\\\]{0,12}", 0..8)
        ) {
            let m = EnvMap::from_map(map);
            let streamed = serde_json::to_string(&EnvVars::Masked(&m)).unwrap();
            prop_assert_eq!(streamed, serde_json::to_string(&m.masked()).unwrap());
        }
    }

    #[test]
    fn a_client_reads_the_write_response_the_server_sends() {
        let o = outcome(BTreeMap::from([
            ("API_KEY".to_owned(), "k".to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ]));
        let sent = EnvWriteResponse::new("stk-x", &o, true).to_json();
        let read: EnvWriteResponse<'static> = serde_json::from_str(&sent).unwrap();
        assert_eq!(read.env.get("API_KEY"), Some("***"));
        assert_eq!(read.env.get("A"), Some("1"));
        assert_eq!(read.version, 7);
        assert!(read.dry_run);
        assert_eq!(&*read.changed.set, ["A".to_owned()]);
        let live = EnvWriteResponse::new("stk-x", &o, false).to_json();
        assert!(!live.contains("dry_run"), "{live}");
    }

    #[test]
    fn rollback_versions_are_integers_however_written() {
        let v = |body: &str| serde_json::from_str::<RollbackRequest>(body).map(|r| r.version);
        assert_eq!(v(r#"{"version": 3}"#).unwrap(), 3);
        assert_eq!(v(r#"{"version": -6717.0}"#).unwrap(), -6717);
        assert!(v(r#"{"version": 3.5}"#).is_err());
        assert!(v(r#"{"version": 1e300}"#).is_err());
        assert!(v(r#"{"version": "3"}"#).is_err());
    }
}
