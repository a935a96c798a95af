//! Who is calling: `Caller` for routes where a token is optional, `TeamCaller` where it is
//! required. A token that is present but unknown, revoked or malformed is always 401, never a
//! silent downgrade to anonymous.

use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use stackyard_core::ApiToken;
use stackyard_core::model::{Access, Actor, AuditCtx, Principal};
use stackyard_core::store::Store;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone)]
pub enum Caller {
    /// No token. `fingerprint` is the client network (IPv4 /24 or IPv6 /64).
    Anonymous {
        fingerprint: String,
    },
    Team(Principal),
}

impl Caller {
    pub fn access(&self) -> Access {
        match self {
            Caller::Anonymous { .. } => Access::Anonymous,
            Caller::Team(p) => Access::Team(p.team.id),
        }
    }

    pub fn actor(&self) -> Actor {
        match self {
            Caller::Anonymous { .. } => Actor::anonymous(),
            Caller::Team(p) => Actor::token(p.token.id),
        }
    }

    /// The namespace of this caller's idempotency keys.
    pub fn idempotency_scope(&self) -> String {
        match self {
            Caller::Anonymous { fingerprint } => format!("anon:{fingerprint}"),
            Caller::Team(p) => format!("team:{}", p.team.id.0),
        }
    }
}

/// A caller that presented a valid token.
#[derive(Debug, Clone)]
pub struct TeamCaller(pub Principal);

/// The client's network, the unit of anonymous rate limits: IPv4 /24, IPv6 /64.
pub fn fingerprint(addr: Option<SocketAddr>) -> String {
    match addr.map(|a| a.ip()) {
        Some(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => fingerprint(Some(SocketAddr::new(IpAddr::V4(v4), 0))),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        None => "unknown".to_owned(),
    }
}

/// The bearer token in the request, if any; `Err` when the header is present but malformed.
fn bearer(parts: &Parts) -> Result<Option<ApiToken>, ApiError> {
    let Some(v) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || ApiError::unauthorized("The Authorization header must be `Bearer <token>`.");
    let s = v.to_str().map_err(|_| malformed())?;
    let (scheme, token) = s.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > 512 {
        return Err(malformed());
    }
    Ok(Some(ApiToken::from_presented(token)))
}

/// The 503 code of the route when the store cannot say who the caller is: what the route
/// itself would answer for a storage failure (spec), so clients see one code per route.
fn unavailable_code(parts: &Parts) -> &'static str {
    use axum::http::Method;
    if parts.uri.path() == "/stacks/new" {
        "provision_failed"
    } else if parts.method == Method::GET || parts.method == Method::HEAD {
        "fetch_failed"
    } else if parts.method == Method::DELETE && parts.uri.path().starts_with("/stacks/") {
        "delete_failed"
    } else {
        "persist_failed"
    }
}

async fn principal<S: Store>(
    state: &AppState<S>,
    parts: &Parts,
    token: &ApiToken,
) -> Result<Principal, ApiError> {
    let digest = token.digest();
    if let Some(p) = state.auth_cache.get(&digest) {
        return Ok(p);
    }
    let p = state
        .store
        .authenticate(&digest)
        .await
        .map_err(|e| ApiError::store(unavailable_code(parts), &e))?
        .ok_or_else(|| ApiError::unauthorized("The API token is invalid or has been revoked."))?;
    state.auth_cache.put(digest, p.clone());
    Ok(p)
}

impl<S: Store> FromRequestParts<AppState<S>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<S>) -> Result<Self, ApiError> {
        match bearer(parts)? {
            Some(token) => Ok(Caller::Team(principal(state, parts, &token).await?)),
            None => {
                let peer = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0);
                Ok(Caller::Anonymous {
                    fingerprint: fingerprint(peer),
                })
            }
        }
    }
}

impl<S: Store> FromRequestParts<AppState<S>> for TeamCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<S>) -> Result<Self, ApiError> {
        match bearer(parts)? {
            Some(token) => Ok(TeamCaller(principal(state, parts, &token).await?)),
            None => Err(ApiError::unauthorized("This route requires an API token.")),
        }
    }
}

/// Who and when, for the audit row of a change made by this request.
pub fn audit_ctx(caller: &Caller, request_id: &RequestId) -> AuditCtx {
    AuditCtx {
        actor: caller.actor(),
        request_id: Some(request_id.0.clone()),
        now: crate::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_group_networks() {
        let a: SocketAddr = "203.0.113.7:5000".parse().unwrap();
        let b: SocketAddr = "203.0.113.200:1".parse().unwrap();
        assert_eq!(fingerprint(Some(a)), "203.0.113.0/24");
        assert_eq!(fingerprint(Some(a)), fingerprint(Some(b)));
        let v6: SocketAddr = "[2001:db8:1:2:3:4:5:6]:80".parse().unwrap();
        assert_eq!(fingerprint(Some(v6)), "2001:db8:1:2::/64");
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(fingerprint(Some(mapped)), "10.1.2.0/24");
    }
}
