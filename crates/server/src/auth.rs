//! Who is calling: `Caller` for routes where a token is optional, `TeamCaller` where it is
//! required. A token that is present but unknown, revoked or malformed is always 401, never a
//! silent downgrade to anonymous.

use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use ipnet::IpNet;
use stackyard_core::model::TeamId;
use stackyard_core::model::{Access, Actor, AuditCtx, Principal};
use stackyard_core::resource::ANONYMOUS_TIER;
use stackyard_core::store::Store;
use stackyard_core::{ApiToken, Millis};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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
            Caller::Team(p) => p.actor(),
        }
    }

    /// Who owns what this caller creates at `now`: its team, or (anonymous) its network, the
    /// `anonymous` tier and an expiry `ttl` from now. Stacks and resources alike.
    pub fn ownership(&self, now: Millis, ttl: Duration) -> Ownership {
        match self {
            Caller::Team(p) => Ownership {
                team_id: Some(p.team.id),
                tier: p.team.tier.clone(),
                fingerprint: None,
                expires_at: None,
            },
            Caller::Anonymous { fingerprint } => Ownership {
                team_id: None,
                tier: ANONYMOUS_TIER.to_owned(),
                fingerprint: Some(fingerprint.clone()),
                expires_at: Some(
                    now.saturating_add_ms(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
                ),
            },
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

/// What `Caller::ownership` decides for a new stack or resource.
#[derive(Debug, Clone)]
pub struct Ownership {
    pub team_id: Option<TeamId>,
    pub tier: String,
    pub fingerprint: Option<String>,
    pub expires_at: Option<Millis>,
}

/// A caller that presented a valid token.
#[derive(Debug, Clone)]
pub struct TeamCaller(pub Principal);

/// The principal of a dashboard session, put on the requests the dashboard hands to the API
/// router in-process (`ui::api`). Only extensions carry it, and no client can set those, so it
/// needs no further check; it takes the place of the bearer token.
#[derive(Debug, Clone)]
pub struct SessionPrincipal(pub Principal);

fn session(parts: &Parts) -> Option<Principal> {
    parts
        .extensions
        .get::<SessionPrincipal>()
        .map(|s| s.0.clone())
}

/// The client's network, the unit of anonymous rate limits: IPv4 /24, IPv6 /64.
pub fn fingerprint(addr: Option<IpAddr>) -> String {
    match addr.map(|a| a.to_canonical()) {
        Some(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".to_owned(),
    }
}

/// The client's address: the peer's, unless the peer is one of `trusted_proxies`; then the
/// right-most `X-Forwarded-For` address that is not itself a trusted proxy. Walking from the
/// right matters: each proxy appends the address it received from, so only the entries our
/// own proxies added are true, and anything to the left of the first untrusted one is
/// whatever that client chose to send. A header we cannot read past is not guessed at: the
/// request then counts as the proxy's own (one shared limit, today's behaviour).
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: &[&str],
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let trusted = |ip: IpAddr| {
        let ip = ip.to_canonical();
        trusted_proxies.iter().any(|net| net.contains(&ip))
    };
    let peer_ip = peer?;
    if !trusted(peer_ip) {
        return Some(peer_ip);
    }
    // Several headers count as one list, in order (RFC 9110 field combination).
    let hops = forwarded_for
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .rev();
    let mut leftmost = peer_ip;
    for hop in hops {
        let Some(ip) = parse_hop(hop) else {
            return Some(peer_ip);
        };
        if !trusted(ip) {
            return Some(ip);
        }
        leftmost = ip;
    }
    // Every hop is one of our proxies: the first of them is the client.
    Some(leftmost)
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
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
        if let Some(p) = session(parts) {
            return Ok(Caller::Team(p));
        }
        match bearer(parts)? {
            Some(token) => Ok(Caller::Team(principal(state, parts, &token).await?)),
            None => {
                let peer = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip());
                let forwarded: Vec<&str> = parts
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                let client = client_ip(peer, &forwarded, &state.config.trusted_proxies);
                Ok(Caller::Anonymous {
                    fingerprint: fingerprint(client),
                })
            }
        }
    }
}

impl<S: Store> FromRequestParts<AppState<S>> for TeamCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<S>) -> Result<Self, ApiError> {
        if let Some(p) = session(parts) {
            return Ok(TeamCaller(p));
        }
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn fingerprints_group_networks() {
        assert_eq!(fingerprint(Some(ip("203.0.113.7"))), "203.0.113.0/24");
        assert_eq!(
            fingerprint(Some(ip("203.0.113.7"))),
            fingerprint(Some(ip("203.0.113.200")))
        );
        assert_eq!(
            fingerprint(Some(ip("2001:db8:1:2:3:4:5:6"))),
            "2001:db8:1:2::/64"
        );
        assert_eq!(fingerprint(Some(ip("::ffff:10.1.2.3"))), "10.1.2.0/24");
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies_right_to_left() {
        let proxies: Vec<IpNet> = ["127.0.0.1/32", "10.0.0.0/8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let client = |peer: &str, xff: &[&str], trusted: &[IpNet]| {
            client_ip(Some(ip(peer)), xff, trusted).unwrap()
        };
        // No trusted proxies, or an untrusted peer: the header is ignored.
        assert_eq!(client("127.0.0.1", &["198.51.100.7"], &[]), ip("127.0.0.1"));
        assert_eq!(
            client("192.0.2.9", &["198.51.100.7"], &proxies),
            ip("192.0.2.9")
        );
        // From a trusted proxy: the right-most untrusted entry, our own hops skipped.
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7"], &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            client(
                "127.0.0.1",
                &["203.0.113.1, 198.51.100.7", "10.1.1.1"],
                &proxies
            ),
            ip("198.51.100.7"),
            "a forged left part is ignored; several headers are one list"
        );
        assert_eq!(
            client("::ffff:127.0.0.1", &["[2001:db8::1]:443"], &proxies),
            ip("2001:db8::1")
        );
        // Nothing to go on, or an entry we cannot read: the proxy itself.
        assert_eq!(client("127.0.0.1", &[], &proxies), ip("127.0.0.1"));
        assert_eq!(
            client("127.0.0.1", &["198.51.100.7, junk"], &proxies),
            ip("127.0.0.1")
        );
        // Only our own hops: the first of them.
        assert_eq!(
            client("127.0.0.1", &["10.2.2.2, 10.1.1.1"], &proxies),
            ip("10.2.2.2")
        );
    }
}
