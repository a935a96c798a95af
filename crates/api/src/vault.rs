//! `/api/v1/vault/*`: the team vault, InstaNode-compatible. Values travel only in
//! `VaultPutRequest` and `VaultValue`; every other body names keys.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `PUT /api/v1/vault/:env/:key` and `POST …/rotate`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultPutRequest {
    /// At most 1 MiB (UTF-8 bytes).
    pub value: String,
}

impl std::fmt::Debug for VaultPutRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultPutRequest { value: *** }")
    }
}

/// `PUT /api/v1/vault/:env/:key` 201 and `POST …/rotate` 201: the version just written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultWritten {
    pub ok: bool,
    pub key: String,
    pub env: String,
    pub version: i64,
}

/// `GET /api/v1/vault/:env/:key`: one version's value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultValue {
    pub ok: bool,
    pub key: String,
    pub env: String,
    pub value: String,
    pub version: i64,
}

impl std::fmt::Debug for VaultValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultValue")
            .field("key", &self.key)
            .field("env", &self.env)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// `GET /api/v1/vault/:env`: the env's keys that hold a value, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultKeys {
    pub ok: bool,
    pub env: String,
    pub keys: Vec<String>,
}

/// `POST /api/v1/vault/copy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultCopyRequest {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub from: String,
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub to: String,
    /// Only these keys; absent: every key of `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<VaultKeyName>>)]
    pub keys: Option<Vec<String>>,
    /// Plan only, write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Copy keys that `to` already has (as a new version there); otherwise they are skipped.
    #[serde(default)]
    pub overwrite: bool,
}

/// One key of a copy and what happens to it: `copy`, `overwrite`, `skip` or `missing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultCopyItem {
    pub key: String,
    pub action: String,
}

/// `POST /api/v1/vault/copy` 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VaultCopied {
    pub ok: bool,
    pub dry_run: bool,
    pub from: String,
    pub to: String,
    pub plan: Vec<VaultCopyItem>,
    /// Keys written (0 on a dry run).
    pub copied: usize,
    pub skipped: usize,
    pub missing: usize,
    /// Keys in the plan.
    pub total_keys: usize,
}

/// A vault key: 1-256 of `A-Za-z0-9_.-` (the OpenAPI schema of a key in a body).
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9_.-]{1,256}$")]
pub struct VaultKeyName(pub String);
