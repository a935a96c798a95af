//! `needs:` in the manifest: which resources a service is granted, and under which env names.
//! An entry names an existing resource by its token, or asks for a stack-owned one by kind
//! (the Stackyard extension). Env names follow InstaNode's: postgres → `DATABASE_URL`, redis →
//! `REDIS_URL`, the second of a kind `_2`, and so on, unless the entry says `as:`.
//!
//! What a release records of a need is a [`Grant`]: the token (or, for a stack-owned resource,
//! the stack-level key it is found by), the kind and the env name, never a URL.

use crate::ids::{EnvKey, ResourceToken};
use crate::resource::ResourceKind;
use serde::{Deserialize, Serialize};

/// One `needs:` entry as the manifest wrote it, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// An existing resource, by its token: its owner and kind are checked against the store
    /// when the stack is created or redeployed.
    Token(ResourceToken),
    /// A resource the stack owns: provisioned by the deploy job before the first release that
    /// needs it, kept by redeploys, dropped by the teardown.
    Owned {
        kind: ResourceKind,
        env: Option<EnvKey>,
    },
}

impl Need {
    /// A text entry: a token (a lowercase UUID), `postgres` or `redis`. `None` for anything
    /// else (400 `invalid_token`).
    pub fn parse_text(s: &str) -> Option<Need> {
        if let Ok(t) = ResourceToken::parse(s) {
            return Some(Need::Token(t));
        }
        ResourceKind::parse(s).map(|kind| Need::Owned { kind, env: None })
    }
}

/// The env name a kind's URL is injected as by default.
pub fn base_env_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Postgres => "DATABASE_URL",
        ResourceKind::Redis => "REDIS_URL",
    }
}

/// Where a granted resource comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "source")]
pub enum GrantSource {
    /// A resource the caller created (`POST /db/new`), named by its token.
    Token { token: ResourceToken },
    /// The stack's own resource, found by the stack and the env name it is injected as (so
    /// two services that both say `postgres` first share one database, and a redeploy with the
    /// same manifest finds the same one).
    Stack,
}

/// A resource a release grants one service: recorded in the release (never its URL), resolved
/// to a URL through the store at deploy time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(flatten)]
    pub source: GrantSource,
    pub kind: ResourceKind,
    /// The env variable the URL is injected as.
    pub env: String,
}

/// Why a service's needs cannot be granted as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("two `needs` entries of service `{service}` would both set `{env}`")]
    DuplicateEnv { service: String, env: String },
}

/// The grants of one service's needs, in the manifest's order, given each token's kind
/// (`kinds[i]` for `needs[i]`; ignored for stack-owned entries). Entries without `as:` are
/// numbered per kind in order: the first `DATABASE_URL`, the second `DATABASE_URL_2`.
pub fn grants(
    service: &str,
    needs: &[Need],
    kinds: &[Option<ResourceKind>],
) -> Result<Vec<Grant>, GrantError> {
    let mut counts = [0usize; 2];
    let mut out: Vec<Grant> = Vec::with_capacity(needs.len());
    for (i, need) in needs.iter().enumerate() {
        let (source, kind, named) = match need {
            Need::Token(token) => {
                let kind = kinds
                    .get(i)
                    .copied()
                    .flatten()
                    .unwrap_or(ResourceKind::Postgres);
                (
                    GrantSource::Token {
                        token: token.clone(),
                    },
                    kind,
                    None,
                )
            }
            Need::Owned { kind, env } => (GrantSource::Stack, *kind, env.clone()),
        };
        let env = match named {
            Some(name) => name.into_string(),
            None => {
                let n = &mut counts[kind as usize];
                *n += 1;
                match *n {
                    1 => base_env_name(kind).to_owned(),
                    n => format!("{}_{n}", base_env_name(kind)),
                }
            }
        };
        if out.iter().any(|g| g.env == env) {
            return Err(GrantError::DuplicateEnv {
                service: service.to_owned(),
                env,
            });
        }
        out.push(Grant { source, kind, env });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(n: u8) -> ResourceToken {
        ResourceToken::parse(&format!("0000000{n}-0000-4000-8000-000000000000")).unwrap()
    }

    #[test]
    fn text_entries_are_tokens_or_kinds() {
        assert_eq!(Need::parse_text(tok(1).as_str()), Some(Need::Token(tok(1))));
        assert_eq!(
            Need::parse_text("redis"),
            Some(Need::Owned {
                kind: ResourceKind::Redis,
                env: None
            })
        );
        for bad in [
            "",
            "Postgres",
            "mysql",
            "0000000-0000",
            "6F9619FF-8B86-D011-B42D-00C04FC964FF",
        ] {
            assert_eq!(Need::parse_text(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn env_names_are_numbered_per_kind_in_manifest_order() {
        let needs = [
            Need::Token(tok(1)),
            Need::Owned {
                kind: ResourceKind::Postgres,
                env: None,
            },
            Need::Owned {
                kind: ResourceKind::Redis,
                env: None,
            },
            Need::Owned {
                kind: ResourceKind::Postgres,
                env: Some(EnvKey::parse("ANALYTICS_DB_URL").unwrap()),
            },
            Need::Token(tok(2)),
        ];
        let kinds = [
            Some(ResourceKind::Postgres),
            None,
            None,
            None,
            Some(ResourceKind::Postgres),
        ];
        let got: Vec<_> = grants("web", &needs, &kinds)
            .unwrap()
            .into_iter()
            .map(|g| g.env)
            .collect();
        assert_eq!(
            got,
            [
                "DATABASE_URL",
                "DATABASE_URL_2",
                "REDIS_URL",
                "ANALYTICS_DB_URL",
                "DATABASE_URL_3"
            ]
        );
    }

    #[test]
    fn an_as_name_that_collides_is_refused() {
        let needs = [
            Need::Owned {
                kind: ResourceKind::Redis,
                env: Some(EnvKey::parse("REDIS_URL").unwrap()),
            },
            Need::Owned {
                kind: ResourceKind::Redis,
                env: None,
            },
        ];
        assert!(matches!(
            grants("web", &needs, &[None, None]),
            Err(GrantError::DuplicateEnv { .. })
        ));
    }

    #[test]
    fn a_grant_serializes_without_any_url() {
        let g = Grant {
            source: GrantSource::Token { token: tok(1) },
            kind: ResourceKind::Postgres,
            env: "DATABASE_URL".into(),
        };
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(
            json,
            r#"{"source":"token","token":"00000001-0000-4000-8000-000000000000","kind":"postgres","env":"DATABASE_URL"}"#
        );
        assert_eq!(serde_json::from_str::<Grant>(&json).unwrap(), g);
        let owned = Grant {
            source: GrantSource::Stack,
            kind: ResourceKind::Redis,
            env: "REDIS_URL".into(),
        };
        let json = serde_json::to_string(&owned).unwrap();
        assert_eq!(serde_json::from_str::<Grant>(&json).unwrap(), owned);
    }
}
