//! `needs:` on the server: the checks of each entry against the store when a stack is created
//! or redeployed (`grant`), and, in the deploy job, the URLs of what a release was granted
//! (`resolve`), read through the store and never written into the release.

use crate::error::{ApiError, ApiResult};
use crate::routes::upload::Code;
use axum::http::StatusCode;
use stackyard_core::model::{AuditCtx, ReleaseService, TeamId};
use stackyard_core::needs::{self, GrantSource, Need};
use stackyard_core::resource::{Resource, ResourceStatus};
use stackyard_core::runtime::GrantedResource;
use stackyard_core::store::{ResourceStore, StoreError};

/// Checks every token of `code`'s needs against the store for a stack owned by `owner` (a
/// team; `None`: anonymous) and fills each service's grants. Nothing is written: a refusal
/// leaves no row behind.
pub async fn grant<S: ResourceStore>(
    store: &S,
    owner: Option<TeamId>,
    code: &mut Code,
) -> ApiResult<()> {
    for (svc, entries) in code.services.iter_mut().zip(&code.needs) {
        let mut kinds = Vec::with_capacity(entries.len());
        for need in entries {
            kinds.push(match need {
                Need::Token(token) => {
                    let r = store
                        .find_resource(token)
                        .await
                        .map_err(|e| ApiError::store("provision_failed", &e))?
                        .filter(|r| r.status != ResourceStatus::Deleting)
                        .ok_or_else(|| not_found(svc.name.as_str()))?;
                    if r.team_id != owner {
                        return Err(forbidden(svc.name.as_str(), owner));
                    }
                    Some(r.kind)
                }
                Need::Owned { .. } => None,
            });
        }
        svc.needs = needs::grants(svc.name.as_str(), entries, &kinds)
            .map_err(|e| ApiError::bad_request("invalid_manifest", e.to_string()))?;
    }
    Ok(())
}

fn not_found(service: &str) -> ApiError {
    ApiError::bad_request(
        "resource_not_found",
        format!("A resource token in `needs` of service `{service}` names no resource (it was never created, or was deleted)."),
    )
    .with_action("List your resources with GET /api/v1/resources, or create one with POST /db/new or POST /cache/new.")
}

fn forbidden(service: &str, owner: Option<TeamId>) -> ApiError {
    let message = match owner {
        Some(_) => format!(
            "A resource token in `needs` of service `{service}` belongs to another owner; a stack can use only its own team's resources."
        ),
        None => format!(
            "A resource token in `needs` of service `{service}` belongs to a team; an anonymous stack can use only anonymous resources."
        ),
    };
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
        .with_action("Deploy with the API token of the team that owns the resource, or create a resource of your own.")
}

/// Why a release's grants could not be resolved for a deploy.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The release cannot run as it is: the message is safe to show the stack owner.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The URLs of the resources `services` were granted, for a stack of `owner`, each read
/// through the store (audited there). A token resource deleted since the release was made
/// fails the deploy.
pub async fn resolve<S: ResourceStore>(
    store: &S,
    owner: Option<TeamId>,
    services: &[ReleaseService],
    ctx: &AuditCtx,
) -> Result<Vec<GrantedResource>, ResolveError> {
    let mut out = Vec::new();
    for svc in services {
        for g in &svc.needs {
            let r = match &g.source {
                GrantSource::Token { token } => store
                    .reveal_granted_resource(owner, token, ctx.clone())
                    .await?
                    .ok_or_else(|| {
                        ResolveError::Failed(format!(
                            "service `{}` needs resource {token} ({}), which is gone or not ready",
                            svc.name, g.env
                        ))
                    })?,
                GrantSource::Stack => {
                    return Err(ResolveError::Failed(format!(
                        "service `{}` needs a stack-owned {} resource, which this server does not provision yet",
                        svc.name,
                        g.kind.as_str()
                    )));
                }
            };
            out.push(granted(svc, &g.env, &r));
        }
    }
    Ok(out)
}

fn granted(svc: &ReleaseService, env: &str, r: &Resource) -> GrantedResource {
    GrantedResource {
        service: svc.name.clone(),
        env: env.to_owned(),
        port: url_port(&r.connection_url),
        url: r.connection_url.clone(),
    }
}

/// The port of a `scheme://[user[:password]@]host[:port][/…]` URL, or the scheme's default.
/// Never logs or returns any other part of it.
fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = if host_port.ends_with(']') {
        None
    } else {
        host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
    };
    port.or(match scheme {
        "postgres" | "postgresql" => Some(5432),
        "redis" | "rediss" => Some(6379),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::url_port;

    #[test]
    fn ports_come_from_the_authority_not_the_password() {
        assert_eq!(
            url_port("postgres://u:p4ss:99@127.0.0.1:5433/db"),
            Some(5433)
        );
        assert_eq!(url_port("postgres://u:pw@localhost/db"), Some(5432));
        assert_eq!(url_port("redis://u:pw@127.0.0.1:6380"), Some(6380));
        assert_eq!(url_port("redis://u:pw@[::1]:6381/0"), Some(6381));
        assert_eq!(url_port("redis://u:pw@[::1]/0"), Some(6379));
        assert_eq!(url_port("nonsense"), None);
    }
}
