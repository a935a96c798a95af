//! Validated identifiers. Each type can only be built by `parse`, so code that holds one never
//! re-checks it (parse, don't validate).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Why a value was rejected. The message names the rule, never the offending value when the
/// value could be a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype!(
    /// A stack's public id and, for anonymous stacks, its only secret: `stk-` followed by at
    /// least 20 lowercase hex/base32 characters (we mint 24 hex characters, 96 bits).
    StackSlug
);
string_newtype!(
    /// A service name: a DNS label, `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`.
    ServiceName
);
string_newtype!(
    /// An environment-variable name: `^[A-Za-z_][A-Za-z0-9_]*$`, 1–256 bytes.
    EnvKey
);
string_newtype!(
    /// A stack's display name: 1–64 chars, `^[A-Za-z0-9][A-Za-z0-9 _-]*$`.
    StackName
);
string_newtype!(
    /// A resource's display name: the same rule as [`StackName`].
    ResourceName
);
string_newtype!(
    /// A resource's handle (`token` on the wire): a UUID, lowercase, hyphenated. Not a secret
    /// on its own (the connection URL is), but unguessable: we mint version-4 UUIDs.
    ResourceToken
);
string_newtype!(
    /// A stack's deployment environment label (`development`, `prod`, …): `^[A-Za-z0-9_-]{1,64}$`.
    EnvironmentName
);
string_newtype!(
    /// A team name: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`.
    TeamName
);
string_newtype!(
    /// A team vault key: `^[A-Za-z0-9_.-]{1,256}$`. Vault envs are `EnvironmentName`s.
    VaultKey
);

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl StackSlug {
    pub const PREFIX: &'static str = "stk-";

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let rest = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| ParseError("a stack id starts with `stk-`".into()))?;
        if rest.len() < 20 || rest.len() > 60 || !rest.bytes().all(is_lower_alnum) {
            return Err(ParseError(
                "a stack id is `stk-` followed by 20 to 60 lowercase letters or digits".into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// A new random slug with 96 bits of entropy from the OS.
    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, random_hex(12)))
    }
}

impl ServiceName {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && is_lower_alnum(b[0])
            && is_lower_alnum(b[b.len() - 1])
            && b.iter().all(|&c| is_lower_alnum(c) || c == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError(format!(
                "service name `{}` is not a DNS label (lowercase letters, digits and `-`, 1-63 characters, starting and ending with a letter or digit)",
                escape_for_message(s)
            )))
        }
    }
}

impl EnvKey {
    pub const MAX_LEN: usize = 256;

    /// For keys read back from our own store, which only ever holds validated keys.
    pub(crate) fn trusted(k: &str) -> Self {
        EnvKey(k.to_owned())
    }

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= Self::MAX_LEN
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError(format!(
                "env key `{}` must match ^[A-Za-z_][A-Za-z0-9_]*$ and be 1-256 bytes",
                escape_for_message(s)
            )))
        }
    }
}

/// The display-name rule stacks and resources share: `^[A-Za-z0-9][A-Za-z0-9 _-]*$`, 1–64.
fn parse_display_name(s: &str) -> Result<String, ParseError> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && s.chars().count() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b' ' || c == b'_' || c == b'-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(ParseError(
            "name must be 1-64 characters: letters, digits, spaces, `_` and `-`, starting with a letter or digit".into(),
        ))
    }
}

impl StackName {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        parse_display_name(s).map(Self)
    }
}

impl ResourceName {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        parse_display_name(s).map(Self)
    }
}

impl ResourceToken {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let b = s.as_bytes();
        let ok = b.len() == 36
            && b.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError(
                "a resource token is a lowercase hyphenated UUID".into(),
            ))
        }
    }

    /// A new random (version 4) UUID.
    pub fn generate() -> Self {
        let mut h = random_hex(16).into_bytes();
        h[12] = b'4';
        // The variant bits `10xx`: the high nibble of byte 8 is one of 8, 9, a, b.
        h[16] = b"89ab"[usize::from(h[16] % 4)];
        let h = String::from_utf8_lossy(&h);
        Self(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
    }
}

impl EnvironmentName {
    pub const DEFAULT: &'static str = "development";

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError(
                "env must be 1-64 characters of letters, digits, `_` and `-`".into(),
            ))
        }
    }

    pub fn default_env() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl VaultKey {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let ok = !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError(
                "a vault key must be 1-256 characters of letters, digits, `_`, `.` and `-`".into(),
            ))
        }
    }
}

impl TeamName {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError(
                "team name must be 1-64 characters of letters, digits, `_`, `-` and `.`, starting with a letter or digit".into(),
            ))
        }
    }
}

/// A bearer token in clear. Shown to its owner once, never stored, never logged: `Debug` is
/// redacted and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

impl ApiToken {
    pub const PREFIX: &'static str = "sy_";

    /// A new token with 256 bits of entropy from the OS.
    pub fn generate() -> Self {
        Self(format!("{}{}", Self::PREFIX, random_hex(32)))
    }

    /// Wraps whatever the client sent; validity is decided by looking up its digest.
    pub fn from_presented(s: &str) -> Self {
        Self(s.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> TokenDigest {
        TokenDigest(sha256_hex(self.0.as_bytes()))
    }
}

/// The SHA-256 of a token, hex-encoded: the only form in which tokens are stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub String);

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `n` random bytes from the OS, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The OS RNG failing is unrecoverable for a server that mints secrets; there is no safe
    // fallback, so this is the one place we accept a panic.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the operating system's random number generator failed");
    hex::encode(buf)
}

/// User input made safe to show in a one-line error message: control characters escaped, then
/// cut like [`truncate_for_message`] (never used for values that may be secrets).
pub fn escape_for_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    truncate_for_message(&out)
}

/// Cuts user input used in an error message to a readable length (never used for values that
/// may be secrets).
pub fn truncate_for_message(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_slugs_parse_and_differ() {
        let a = StackSlug::generate();
        let b = StackSlug::generate();
        assert_ne!(a, b);
        assert_eq!(StackSlug::parse(a.as_str()).unwrap(), a);
        assert_eq!(a.as_str().len(), 4 + 24);
    }

    #[test]
    fn slugs_reject_short_upper_and_foreign() {
        for bad in [
            "stk-abc",
            "STK-0123456789abcdef0123",
            "stk-0123456789ABCDEF0123",
            "x-0123456789abcdef01234",
            "stk-0123456789abcdef012/",
        ] {
            assert!(StackSlug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_names_are_dns_labels() {
        for ok in ["a", "api", "web-1", "0x", &"a".repeat(63)] {
            assert!(ServiceName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Api", "a_b", "a.b", &"a".repeat(64)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_keys_follow_the_posix_shape_and_length_cap() {
        for ok in ["A", "_", "DATABASE_URL", "a1", &"K".repeat(256)] {
            assert!(EnvKey::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É", &"K".repeat(257)] {
            assert!(EnvKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stack_names_and_environments() {
        assert!(StackName::parse("My app_2-x").is_ok());
        assert!(StackName::parse(" lead").is_err());
        assert!(StackName::parse("").is_err());
        assert!(StackName::parse(&"a".repeat(65)).is_err());
        assert!(StackName::parse("semi;colon").is_err());
        assert!(EnvironmentName::parse("prod-2_x").is_ok());
        assert!(EnvironmentName::parse("prod env").is_err());
        assert!(EnvironmentName::parse("").is_err());
        assert!(VaultKey::parse("DB.PASS_word-1").is_ok());
        assert!(VaultKey::parse(&"k".repeat(256)).is_ok());
        assert!(VaultKey::parse(&"k".repeat(257)).is_err());
        assert!(VaultKey::parse("").is_err());
        assert!(VaultKey::parse("a/b").is_err());
    }

    #[test]
    fn tokens_are_long_random_and_never_debug_printed() {
        let t = ApiToken::generate();
        assert!(t.expose().starts_with("sy_"));
        assert_eq!(t.expose().len(), 3 + 64);
        assert_eq!(format!("{t:?}"), "ApiToken(***)");
        assert_eq!(t.digest().0.len(), 64);
        assert_ne!(t.digest().0, t.expose());
    }
}
