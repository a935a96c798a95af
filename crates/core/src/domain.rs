//! Custom domains (environments.md): the hostname rules, the DNS records a team creates to
//! prove ownership, and how a check's result moves a domain's state.

use crate::ids::StackSlug;
use crate::model::{StackId, TeamId};
use crate::time::Millis;

/// The TXT record's name is `_stackyard.<host>`; its value this prefix and 128 random bits.
pub const TXT_PREFIX: &str = "_stackyard.";
pub const VERIFY_PREFIX: &str = "stackyard-verify-";
/// A routed domain's record is looked up again this often.
pub const RECHECK_EVERY_MS: i64 = 24 * 3600 * 1000;
/// A routed domain whose record has been gone this long loses its route.
pub const MISSING_GRACE_MS: i64 = 3 * 24 * 3600 * 1000;
/// A certificate order claimed this long ago is the claimer's: another server leaves it
/// alone, and a failed one is tried again after it.
pub const CERT_ORDER_LEASE_MS: i64 = 10 * 60 * 1000;

/// When a certificate valid from `not_before` to `not_after` is renewed: a third of its
/// lifetime before it expires (Let's Encrypt's 90 days: 30 days before).
pub fn renew_at(not_before: Millis, not_after: Millis) -> Millis {
    Millis(not_after.0 - (not_after.0 - not_before.0).max(0) / 3)
}

/// A custom hostname, validated: lower-case ASCII (IDNA), at least two labels, no scheme,
/// path, port, wildcard or space, not an IP address, not `localhost` nor under the base domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl Hostname {
    pub fn parse(raw: &str, base_domain: &str) -> Result<Hostname, String> {
        let raw = raw.trim_end_matches('.');
        if raw.is_empty() || raw.len() > 253 {
            return Err("A hostname is 1 to 253 characters.".into());
        }
        if raw.contains("://") || raw.contains(['/', ':', ' ', '*', '@', '?', '#']) {
            return Err(
                "Give the bare hostname: no scheme, path, port, wildcard or spaces.".into(),
            );
        }
        if raw.parse::<std::net::IpAddr>().is_ok() {
            return Err("An IP address is not a hostname.".into());
        }
        let host = idna::domain_to_ascii(raw)
            .map_err(|_| "The hostname is not a valid internationalised domain name.".to_owned())?;
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() < 2 {
            return Err("A hostname has at least one dot (`app.example.com`).".into());
        }
        for label in &labels {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(format!("`{label}` is not a valid label of a hostname."));
            }
        }
        if labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit())) {
            return Err("An IP address is not a hostname.".into());
        }
        let base = base_domain.trim_end_matches('.').to_ascii_lowercase();
        for reserved in ["localhost", base.as_str()] {
            if !reserved.is_empty() && (host == reserved || host.ends_with(&format!(".{reserved}")))
            {
                return Err(format!(
                    "Hostnames under `{reserved}` are this server's own."
                ));
            }
        }
        Ok(Hostname(host))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the ownership record goes.
    pub fn txt_name(&self) -> String {
        format!("{TXT_PREFIX}{}", self.0)
    }
}

impl std::fmt::Display for Hostname {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainStatus {
    PendingVerification,
    Verified,
    /// Verified, and the router sends it to the stack's first exposed service.
    Routed,
    CertificateReady,
    Failed,
}

impl DomainStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainStatus::PendingVerification => "pending_verification",
            DomainStatus::Verified => "verified",
            DomainStatus::Routed => "routed",
            DomainStatus::CertificateReady => "certificate_ready",
            DomainStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DomainStatus> {
        [
            DomainStatus::PendingVerification,
            DomainStatus::Verified,
            DomainStatus::Routed,
            DomainStatus::CertificateReady,
            DomainStatus::Failed,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }

    /// Verified and routed; `Failed` (the CA refused its certificate) still routes plain
    /// HTTP: the ownership proof stands.
    pub fn is_verified(self) -> bool {
        matches!(
            self,
            DomainStatus::Verified
                | DomainStatus::Routed
                | DomainStatus::CertificateReady
                | DomainStatus::Failed
        )
    }
}

/// A stack's custom domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// `dom_<hex>`.
    pub id: String,
    pub team: TeamId,
    pub stack: StackId,
    pub stack_slug: StackSlug,
    pub hostname: String,
    /// The TXT record's value (`stackyard-verify-…`); not a secret: it is published in DNS.
    pub token: String,
    pub status: DomainStatus,
    pub created_at: Millis,
    pub verified_at: Option<Millis>,
    pub last_check_at: Option<Millis>,
    pub last_check_err: Option<String>,
    /// Since when a verified domain's record has been missing.
    pub missing_since: Option<Millis>,
    /// Why the last certificate order failed.
    pub cert_error: Option<String>,
    /// When the domain's certificate expires, once it has one.
    pub cert_not_after: Option<Millis>,
}

/// What one look-up of the TXT record found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Found,
    /// The record is absent, or holds other values; the text says which.
    Missing(String),
}

/// The domain after a check at `now`: found → verified (`Routed` when the stack has an
/// exposed service to route to); missing while pending → an error to show; missing while
/// verified → kept until it has been missing for `MISSING_GRACE_MS`, then pending again
/// (its route goes).
pub fn after_check(mut d: Domain, result: CheckResult, routable: bool, now: Millis) -> Domain {
    d.last_check_at = Some(now);
    match result {
        CheckResult::Found => {
            d.last_check_err = None;
            d.missing_since = None;
            if !d.status.is_verified() {
                d.verified_at = Some(now);
            }
            // A certified domain stays so; a refused one (`Failed`) is routed again, which
            // lets the next certificate pass order anew.
            d.status = if d.status == DomainStatus::CertificateReady {
                DomainStatus::CertificateReady
            } else if routable {
                DomainStatus::Routed
            } else {
                DomainStatus::Verified
            };
        }
        CheckResult::Missing(why) => {
            d.last_check_err = Some(why);
            if d.status.is_verified() {
                let since = *d.missing_since.get_or_insert(now);
                if now.0 - since.0 >= MISSING_GRACE_MS {
                    d.status = DomainStatus::PendingVerification;
                    d.missing_since = None;
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Result<String, String> {
        Hostname::parse(s, "apps.example.net").map(|h| h.0)
    }

    #[test]
    fn hostnames_are_lowercased_idna_and_need_a_dot() {
        assert_eq!(host("App.Example.COM").unwrap(), "app.example.com");
        assert_eq!(host("app.example.com.").unwrap(), "app.example.com");
        assert_eq!(host("bücher.example").unwrap(), "xn--bcher-kva.example");
        assert!(host("example").is_err());
    }

    #[test]
    fn schemes_ports_paths_wildcards_ips_and_our_own_names_are_refused() {
        for bad in [
            "https://app.example.com",
            "app.example.com:443",
            "app.example.com/x",
            "*.example.com",
            "app example.com",
            "10.0.0.1",
            "::1",
            "localhost",
            "x.localhost",
            "web-stk.apps.example.net",
            "-bad.example.com",
            "",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
    }

    fn domain(status: DomainStatus) -> Domain {
        Domain {
            id: "dom_1".into(),
            team: TeamId(1),
            stack: StackId(1),
            stack_slug: StackSlug::parse("stk-0123456789abcdef01234567").unwrap(),
            hostname: "app.example.com".into(),
            token: "stackyard-verify-00".into(),
            status,
            created_at: Millis(0),
            verified_at: None,
            last_check_at: None,
            last_check_err: None,
            missing_since: None,
            cert_error: None,
            cert_not_after: None,
        }
    }

    #[test]
    fn a_certificate_is_renewed_with_a_third_of_its_lifetime_left() {
        let day = 24 * 3600 * 1000;
        assert_eq!(renew_at(Millis(0), Millis(90 * day)), Millis(60 * day));
        assert_eq!(renew_at(Millis(5), Millis(5)), Millis(5));
    }

    #[test]
    fn a_certified_domain_stays_certified_and_a_refused_one_is_routed_again() {
        let d = after_check(
            domain(DomainStatus::CertificateReady),
            CheckResult::Found,
            true,
            Millis(1),
        );
        assert_eq!(d.status, DomainStatus::CertificateReady);
        let d = after_check(
            domain(DomainStatus::Failed),
            CheckResult::Found,
            true,
            Millis(1),
        );
        assert_eq!(d.status, DomainStatus::Routed);
    }

    #[test]
    fn a_found_record_verifies_and_routes_when_there_is_a_service() {
        let d = after_check(
            domain(DomainStatus::PendingVerification),
            CheckResult::Found,
            true,
            Millis(5),
        );
        assert_eq!(
            (d.status, d.verified_at),
            (DomainStatus::Routed, Some(Millis(5)))
        );
        let d = after_check(
            domain(DomainStatus::PendingVerification),
            CheckResult::Found,
            false,
            Millis(5),
        );
        assert_eq!(d.status, DomainStatus::Verified);
    }

    #[test]
    fn a_verified_domain_keeps_its_route_for_three_days_without_its_record() {
        let day = 24 * 3600 * 1000;
        let mut d = domain(DomainStatus::Routed);
        for n in 0..3 {
            d = after_check(
                d,
                CheckResult::Missing("gone".into()),
                true,
                Millis(n * day),
            );
            assert_eq!(d.status, DomainStatus::Routed, "day {n}");
        }
        d = after_check(
            d,
            CheckResult::Missing("gone".into()),
            true,
            Millis(3 * day),
        );
        assert_eq!(d.status, DomainStatus::PendingVerification);
        // A record back in time resets the count.
        let mut d = domain(DomainStatus::Routed);
        d = after_check(d, CheckResult::Missing("gone".into()), true, Millis(0));
        d = after_check(d, CheckResult::Found, true, Millis(2 * day));
        d = after_check(
            d,
            CheckResult::Missing("gone".into()),
            true,
            Millis(4 * day),
        );
        assert_eq!(
            (d.status, d.missing_since),
            (DomainStatus::Routed, Some(Millis(4 * day)))
        );
    }
}
