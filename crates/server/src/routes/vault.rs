//! `/api/v1/vault/*`: the team vault. Every route needs a team token (anonymous callers get
//! 403 `vault_requires_auth`); values are sealed by the store and never logged or audited.

use crate::auth::{Caller, audit_ctx};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, QueryParams};
use crate::middleware::RequestId;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use stackyard_api::{
    VaultCopied, VaultCopyItem, VaultCopyRequest, VaultKeys, VaultPutRequest, VaultValue,
    VaultWritten,
};
use stackyard_core::model::Principal;
use stackyard_core::store::Store;
use stackyard_core::vault::{MAX_VALUE_BYTES, VaultCopy, VaultWrite};
use stackyard_core::{EnvironmentName, VaultKey};

/// The caller's team, or 403: an anonymous caller has no vault.
fn team(caller: &Caller) -> ApiResult<&Principal> {
    match caller {
        Caller::Team(p) => Ok(p),
        Caller::Anonymous { .. } => Err(ApiError::vault_requires_auth()),
    }
}

fn parse_env(raw: &str) -> ApiResult<EnvironmentName> {
    EnvironmentName::parse(raw).map_err(|e| ApiError::bad_request("invalid_env", e.0))
}

fn parse_key(raw: &str) -> ApiResult<VaultKey> {
    VaultKey::parse(raw).map_err(|e| ApiError::bad_request("invalid_key", e.0))
}

fn key_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "No value with that key (and version) exists in this vault env.",
    )
    .with_action("List the env's keys with GET /api/v1/vault/<env>.")
}

#[derive(Debug, Deserialize)]
pub struct VersionQuery {
    pub version: Option<i64>,
}

async fn write<S: Store>(
    state: &AppState<S>,
    caller: &Caller,
    rid: &RequestId,
    (env, key): (String, String),
    value: &str,
    kind: VaultWrite,
) -> ApiResult<(StatusCode, Json<VaultWritten>)> {
    let p = team(caller)?;
    let (env, key) = (parse_env(&env)?, parse_key(&key)?);
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_value",
            format!(
                "A vault value is at most {MAX_VALUE_BYTES} bytes; this one has {}.",
                value.len()
            ),
        ));
    }
    let version = state
        .store
        .put_vault_value(p.team.id, &env, &key, value, kind, audit_ctx(caller, rid))
        .await
        .map_err(|e| ApiError::store("vault_write_failed", &e))?;
    Ok((
        StatusCode::CREATED,
        Json(VaultWritten {
            ok: true,
            key: key.into_string(),
            env: env.into_string(),
            version,
        }),
    ))
}

#[utoipa::path(put, path = "/api/v1/vault/{env}/{key}", tag = "vault",
    description = "Writes a value as the key's next version (sealed at rest; audited by key name). Auth required.",
    security((), ("bearer" = [])),
    params(("env" = String, Path, description = "Vault env: 1-64 of `A-Za-z0-9_-`", pattern = "^[A-Za-z0-9_-]{1,64}$"),
        ("key" = String, Path, description = "Key: 1-256 of `A-Za-z0-9_.-`", pattern = "^[A-Za-z0-9_.-]{1,256}$")),
    request_body(content = VaultPutRequest, content_type = "application/json"),
    responses((status = 201, description = "Written", body = VaultWritten),
        (status = 400, description = "`invalid_env`, `invalid_key`"),
        (status = 403, description = "`vault_requires_auth`: no team token"),
        (status = 413, description = "`invalid_value`: the value is over 1 MiB"),
        (status = 503, description = "`vault_write_failed`: the store is unavailable")))]
pub async fn put<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    Path(path): Path<(String, String)>,
    JsonBody(body): JsonBody<VaultPutRequest>,
) -> ApiResult<(StatusCode, Json<VaultWritten>)> {
    write(&state, &caller, &rid, path, &body.value, VaultWrite::Set).await
}

#[utoipa::path(post, path = "/api/v1/vault/{env}/{key}/rotate", tag = "vault",
    description = "As PUT: the new value as the key's next version, audited as a rotation. Auth required.",
    security((), ("bearer" = [])),
    params(("env" = String, Path, description = "Vault env", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("key" = String, Path, description = "Key", pattern = "^[A-Za-z0-9_.-]{1,256}$")),
    request_body(content = VaultPutRequest, content_type = "application/json"),
    responses((status = 201, description = "Written", body = VaultWritten),
        (status = 400, description = "`invalid_env`, `invalid_key`"),
        (status = 403, description = "`vault_requires_auth`: no team token"),
        (status = 413, description = "`invalid_value`: the value is over 1 MiB"),
        (status = 503, description = "`vault_write_failed`: the store is unavailable")))]
pub async fn rotate<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    Path(path): Path<(String, String)>,
    JsonBody(body): JsonBody<VaultPutRequest>,
) -> ApiResult<(StatusCode, Json<VaultWritten>)> {
    write(&state, &caller, &rid, path, &body.value, VaultWrite::Rotate).await
}

#[utoipa::path(get, path = "/api/v1/vault/{env}/{key}", tag = "vault",
    description = "The newest value of the key, or `?version=N`. Every call writes an audit row `vault.read` (key, env, version; never the value). Auth required.",
    security((), ("bearer" = [])),
    params(("env" = String, Path, description = "Vault env", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("key" = String, Path, description = "Key", pattern = "^[A-Za-z0-9_.-]{1,256}$"),
        ("version" = Option<i64>, Query, description = "A version; default the newest")),
    responses((status = 200, description = "The value", body = VaultValue),
        (status = 400, description = "`invalid_env`, `invalid_key`"),
        (status = 403, description = "`vault_requires_auth`: no team token"),
        (status = 404, description = "`not_found`: no such key or version"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn get<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    Path((env, key)): Path<(String, String)>,
    QueryParams(q): QueryParams<VersionQuery>,
) -> ApiResult<Json<VaultValue>> {
    let p = team(&caller)?;
    let (env, key) = (parse_env(&env)?, parse_key(&key)?);
    let v = state
        .store
        .read_vault_value(p.team.id, &env, &key, q.version, audit_ctx(&caller, &rid))
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?
        .ok_or_else(key_not_found)?;
    Ok(Json(VaultValue {
        ok: true,
        key: key.into_string(),
        env: env.into_string(),
        value: v.value,
        version: v.version,
    }))
}

#[utoipa::path(get, path = "/api/v1/vault/{env}", tag = "vault",
    description = "The env's keys that hold a value, in key order (no values). Auth required.",
    security((), ("bearer" = [])),
    params(("env" = String, Path, description = "Vault env", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    responses((status = 200, description = "The keys", body = VaultKeys),
        (status = 400, description = "`invalid_env`"),
        (status = 403, description = "`vault_requires_auth`: no team token"),
        (status = 503, description = "`fetch_failed`: the store is unavailable")))]
pub async fn list<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    Path(env): Path<String>,
) -> ApiResult<Json<VaultKeys>> {
    let p = team(&caller)?;
    let env = parse_env(&env)?;
    let keys = state
        .store
        .list_vault_keys(p.team.id, &env)
        .await
        .map_err(|e| ApiError::store("fetch_failed", &e))?;
    Ok(Json(VaultKeys {
        ok: true,
        env: env.into_string(),
        keys: keys.into_iter().map(VaultKey::into_string).collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/vault/{env}/{key}", tag = "vault",
    description = "Removes every version of the key (audited). Releases that recorded one of them fail to deploy again. Auth required.",
    security((), ("bearer" = [])),
    params(("env" = String, Path, description = "Vault env", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("key" = String, Path, description = "Key", pattern = "^[A-Za-z0-9_.-]{1,256}$")),
    responses((status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_env`, `invalid_key`"),
        (status = 403, description = "`vault_requires_auth`: no team token"),
        (status = 404, description = "`not_found`: the key has no value"),
        (status = 503, description = "`vault_write_failed`: the store is unavailable")))]
pub async fn delete<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    Path((env, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let p = team(&caller)?;
    let (env, key) = (parse_env(&env)?, parse_key(&key)?);
    let deleted = state
        .store
        .delete_vault_key(p.team.id, &env, &key, audit_ctx(&caller, &rid))
        .await
        .map_err(|e| ApiError::store("vault_write_failed", &e))?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(key_not_found())
    }
}

#[utoipa::path(post, path = "/api/v1/vault/copy", tag = "vault",
    description = "Copies the newest value of keys from one vault env to another (each a new version there), in one transaction; `dry_run` only plans. Actions: `copy`, `overwrite`, `skip` (exists, no `overwrite`), `missing` (not in `from`). Auth required.",
    security((), ("bearer" = [])),
    request_body(content = VaultCopyRequest, content_type = "application/json"),
    responses((status = 200, description = "The plan and what was done", body = VaultCopied),
        (status = 400, description = "`invalid_env`, `invalid_key`"),
        (status = 403, description = "`vault_requires_auth`: no team token"),
        (status = 503, description = "`vault_write_failed`: the store is unavailable")))]
pub async fn copy<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    rid: RequestId,
    JsonBody(body): JsonBody<VaultCopyRequest>,
) -> ApiResult<Json<VaultCopied>> {
    let p = team(&caller)?;
    let copy = VaultCopy {
        from: parse_env(&body.from)?,
        to: parse_env(&body.to)?,
        keys: body
            .keys
            .as_deref()
            .map(|k| {
                k.iter()
                    .map(|k| parse_key(k))
                    .collect::<ApiResult<Vec<_>>>()
            })
            .transpose()?,
        dry_run: body.dry_run,
        overwrite: body.overwrite,
    };
    let out = state
        .store
        .copy_vault(p.team.id, &copy, audit_ctx(&caller, &rid))
        .await
        .map_err(|e| ApiError::store("vault_write_failed", &e))?;
    Ok(Json(VaultCopied {
        ok: true,
        dry_run: copy.dry_run,
        total_keys: out.plan.len(),
        plan: out
            .plan
            .iter()
            .map(|(k, a)| VaultCopyItem {
                key: k.as_str().to_owned(),
                action: a.as_str().to_owned(),
            })
            .collect(),
        from: copy.from.into_string(),
        to: copy.to.into_string(),
        copied: out.copied,
        skipped: out.skipped,
        missing: out.missing,
    }))
}
