//! Custom domains: checking a domain's TXT record (at verify, and daily for routed ones) and
//! handing the runtime's router the routed set.

use crate::dns::Dns;
use stackyard_core::domain::{self, CheckResult, Domain, RECHECK_EVERY_MS, VERIFY_PREFIX};
use stackyard_core::ids::random_hex;
use stackyard_core::runtime::Runtime;
use stackyard_core::store::{DomainStore, StoreError};
use stackyard_core::time::Millis;

/// A new domain's TXT value: published in DNS, so not a secret, but unguessable.
pub fn new_token() -> String {
    format!("{VERIFY_PREFIX}{}", random_hex(16))
}

/// Looks the domain's TXT record up and stores what that changes (`domain::after_check`).
pub async fn check<S: DomainStore>(
    store: &S,
    dns: &Dns,
    d: Domain,
    now: Millis,
) -> Result<Domain, StoreError> {
    let name = format!("{}{}", domain::TXT_PREFIX, d.hostname);
    let result = match dns.txt(&name).await {
        Ok(values) if values.iter().any(|v| v.trim() == d.token) => CheckResult::Found,
        Ok(values) => CheckResult::Missing(format!(
            "TXT {name} holds {} value(s), none of them this domain's `{}`",
            values.len(),
            d.token
        )),
        Err(why) => CheckResult::Missing(why),
    };
    let routable = store.domain_route_target(&d).await?.is_some();
    let d = domain::after_check(d, result, routable, now);
    store.save_domain_check(&d).await?;
    Ok(d)
}

/// Hands the runtime every routed domain (errors are logged; the next pass tries again).
pub async fn sync_routes<S: DomainStore>(store: &S, runtime: &dyn Runtime) {
    match store.domain_routes().await {
        Ok(routes) => runtime.set_domain_routes(
            routes
                .into_iter()
                .map(|r| (r.hostname, r.service_url))
                .collect(),
        ),
        Err(e) => tracing::warn!(error = %e, "could not read the custom domains' routes"),
    }
}

/// The daily re-check: every verified domain last checked a day or more before `now` is
/// checked again; one whose record has been gone for three days loses its route. Returns how
/// many were checked.
pub async fn recheck_due<S: DomainStore>(store: &S, dns: &Dns, now: Millis) -> usize {
    let due = match store
        .domains_to_recheck(now.saturating_add_ms(-RECHECK_EVERY_MS), 100)
        .await
    {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the domains to check again");
            return 0;
        }
    };
    let n = due.len();
    for d in due {
        let host = d.hostname.clone();
        match check(store, dns, d, now).await {
            Ok(d) if !d.status.is_verified() => {
                tracing::info!(domain = %host, "a custom domain's record is gone: its route is removed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(domain = %host, error = %e, "could not check a custom domain"),
        }
    }
    n
}
