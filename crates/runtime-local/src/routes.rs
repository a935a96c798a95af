//! The route table: which upstream address answers for which public host. The runtime writes
//! it when a release becomes healthy or a stack goes away; the router reads it on every
//! request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

/// One routed upstream. Every request in flight to it holds a clone of its `Arc` (until its
/// response body, or its upgraded connection, is done), so after unrouting it the runtime can
/// wait for `Arc::strong_count` to drop to one before stopping the process behind it.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
}

/// Host → upstream, shared between the runtime and the router (cheap to clone).
///
/// Invariant: keys are normalised hosts (lowercase, no port, no trailing dot). A reader takes
/// the read lock only for one lookup and one `Arc` clone, a writer the write lock only for a
/// few map edits, and neither is ever held across an `.await`; so a plain `std` `RwLock` costs
/// the hot path one uncontended atomic pair, and a writer never waits long. A stack's routes
/// are replaced under one write lock, so a request sees either the old release or the new
/// one, never a mix. A poisoned lock is recovered: every edit leaves the map consistent.
#[derive(Clone, Default)]
pub struct RouteTable {
    inner: Arc<RwLock<HashMap<String, Arc<Upstream>>>>,
    /// Custom domains: a hostname → the routed host it stands for (resolved at each lookup,
    /// so a redeploy that moves the service moves the domain with it).
    aliases: Arc<RwLock<HashMap<String, String>>>,
    /// ACME HTTP-01 challenges in flight: token → key authorization, answered by the plain
    /// router at `/.well-known/acme-challenge/<token>` for any host.
    challenges: Arc<RwLock<HashMap<String, String>>>,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.len())
            .finish()
    }
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The upstream for `host` (a `Host` header value: any case, with or without a port).
    pub fn lookup(&self, host: &str) -> Option<SocketAddr> {
        let host = normalize_host(host)?;
        self.upstream(&host).map(|u| u.addr)
    }

    /// Routes `host` to `addr`, replacing any previous route for it.
    pub fn insert(&self, host: &str, addr: SocketAddr) {
        self.replace(&[], vec![(host.to_owned(), addr)]);
    }

    /// Removes the route for `host`, if any.
    pub fn remove(&self, host: &str) {
        self.replace(&[host.to_owned()], Vec::new());
    }

    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The upstream for an already normalised host, directly or through a custom domain.
    pub(crate) fn upstream(&self, host: &str) -> Option<Arc<Upstream>> {
        let map = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(u) = map.get(host) {
            return Some(u.clone());
        }
        let aliases = self.aliases.read().unwrap_or_else(PoisonError::into_inner);
        aliases
            .get(host)
            .and_then(|target| map.get(target))
            .cloned()
    }

    /// Replaces every custom domain: `(hostname, routed host)` pairs.
    pub fn set_aliases(&self, aliases: Vec<(String, String)>) {
        let fresh: HashMap<String, String> = aliases
            .into_iter()
            .filter_map(|(from, to)| {
                Some((
                    normalize_host(&from)?.into_owned(),
                    normalize_host(&to)?.into_owned(),
                ))
            })
            .collect();
        *self.aliases.write().unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// Answers `/.well-known/acme-challenge/<token>` with `key_authorization` until removed.
    pub fn set_challenge(&self, token: &str, key_authorization: &str) {
        self.challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    pub fn remove_challenge(&self, token: &str) {
        self.challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    pub(crate) fn challenge(&self, token: &str) -> Option<String> {
        self.challenges
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    /// Removes `remove` and inserts `add` under one write lock; returns every upstream that is
    /// no longer routed (removed or replaced by a different address), for draining.
    pub(crate) fn replace(
        &self,
        remove: &[String],
        add: Vec<(String, SocketAddr)>,
    ) -> Vec<Arc<Upstream>> {
        let fresh: Vec<(String, Arc<Upstream>)> = add
            .into_iter()
            .filter_map(|(host, addr)| {
                let host = normalize_host(&host)?.into_owned();
                Some((host, Arc::new(Upstream { addr })))
            })
            .collect();
        let mut displaced = Vec::new();
        let mut map = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        for host in remove {
            if let Some(host) = normalize_host(host)
                && let Some(old) = map.remove(host.as_ref())
            {
                displaced.push(old);
            }
        }
        for (host, upstream) in fresh {
            if let Some(old) = map.insert(host, upstream) {
                displaced.push(old);
            }
        }
        drop(map);
        displaced
    }
}

/// A `Host` value as a route key: port stripped, trailing dot dropped, ASCII lowercase
/// (borrowed when it already is). `None` for an empty host.
pub(crate) fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        // An IPv6 literal: `[::1]:8080`.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        let n = |s| normalize_host(s).map(|c| c.into_owned());
        assert_eq!(
            n("Web-STK.localhost:8080").as_deref(),
            Some("web-stk.localhost")
        );
        assert_eq!(n("web.localhost.").as_deref(), Some("web.localhost"));
        assert_eq!(n("web.localhost.:80").as_deref(), Some("web.localhost"));
        assert_eq!(n("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(n(" a "), Some("a".into()));
        assert_eq!(n(""), None);
        assert_eq!(n(":80"), None);
        assert!(matches!(normalize_host("lower"), Some(Cow::Borrowed(_))));
    }

    #[test]
    fn a_custom_domain_follows_the_host_it_stands_for() {
        let t = RouteTable::new();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        t.insert("web-stk.localhost", a);
        t.set_aliases(vec![("App.Example.com".into(), "web-stk.localhost".into())]);
        assert_eq!(t.lookup("app.example.com:443"), Some(a));
        t.insert("web-stk.localhost", b);
        assert_eq!(
            t.lookup("app.example.com"),
            Some(b),
            "a redeploy moves it along"
        );
        t.set_aliases(Vec::new());
        assert_eq!(t.lookup("app.example.com"), None);
    }

    #[test]
    fn replace_returns_what_is_no_longer_routed() {
        let t = RouteTable::new();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        assert!(t.replace(&[], vec![("A.x".into(), a)]).is_empty());
        assert_eq!(t.lookup("a.X:99"), Some(a));
        let gone = t.replace(&["a.x".into()], vec![("a.x".into(), b)]);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].addr, a);
        assert_eq!(t.lookup("a.x"), Some(b));
        t.remove("A.X");
        assert_eq!(t.lookup("a.x"), None);
        assert!(t.is_empty());
    }
}
