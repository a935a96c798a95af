//! `needs:` on the server: the checks of each entry against the store when a stack is created
//! or redeployed (`grant`), and, in the deploy job, the URLs of what a release was granted
//! (`resolve`), read through the store and never written into the release.

use crate::error::{ApiError, ApiResult};
use crate::resources::{Provisioner, ResourceError, generate_password};
use crate::routes::upload::Code;
use axum::http::StatusCode;
use stackyard_core::model::{AuditCtx, ReleaseService, Stack, StackId, TeamId};
use stackyard_core::needs::{self, Grant, GrantSource, Need};
use stackyard_core::resource::{NewResource, Resource, ResourceStatus, StackOwner, generate_id};
use stackyard_core::runtime::GrantedResource;
use stackyard_core::store::{CreateResourceError, ResourceStore, StoreError};
use stackyard_core::{ResourceName, ResourceToken};

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
                    // A stack-owned resource is its stack's alone: its teardown drops it.
                    if r.team_id != owner || r.stack.is_some() {
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
    /// A resource server failed: worth retrying. The message is safe to show.
    #[error("{0}")]
    Transient(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The URLs of the resources `stack`'s `services` were granted, each read through the store
/// (audited there); a stack-owned resource not there yet is provisioned first. A token
/// resource deleted since the release was made fails the deploy.
pub async fn resolve<S: ResourceStore>(
    store: &S,
    provisioner: &Provisioner,
    stack: &Stack,
    services: &[ReleaseService],
    ctx: &AuditCtx,
) -> Result<Vec<GrantedResource>, ResolveError> {
    let owner = stack.team_id;
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
                GrantSource::Stack => stack_owned(store, provisioner, stack, g, ctx).await?,
            };
            out.push(granted(svc, &g.env, &r));
        }
    }
    Ok(out)
}

/// The stack's own resource for `g`, made if it is not there: row `provisioning` → DDL →
/// `ready`, as `POST /db/new` does. A row a crash left half done (or of another kind, after a
/// manifest change) is dropped first; the reconciler drops such rows too. Only this stack's
/// jobs write these rows, and one job per stack runs at a time.
async fn stack_owned<S: ResourceStore>(
    store: &S,
    provisioner: &Provisioner,
    stack: &Stack,
    g: &Grant,
    ctx: &AuditCtx,
) -> Result<Resource, ResolveError> {
    if let Some(r) = store.stack_resource(stack.id, &g.env).await? {
        if r.status == ResourceStatus::Ready
            && r.kind == g.kind
            && let Some(r) = store
                .reveal_granted_resource(stack.team_id, &r.token, ctx.clone())
                .await?
        {
            return Ok(r);
        }
        crate::resources::delete(store, provisioner, None, &r.token, ctx.clone())
            .await
            .map_err(server_failed)?;
    }
    provisioner.check_configured(g.kind).map_err(|_| {
        ResolveError::Failed(format!(
            "`needs: {}` asks for a stack-owned {} resource, but this server provisions none (the operator's --resource-{}-url)",
            g.kind.as_str(),
            g.kind.as_str(),
            g.kind.as_str()
        ))
    })?;
    let id = generate_id();
    let connection_url = provisioner
        .connection_url(g.kind, &id, &generate_password())
        .map_err(server_failed)?;
    // `<slug> <ENV>`: both parts are valid in a resource name; cut to its 64 characters.
    let name: String = format!("{} {}", stack.slug, g.env)
        .chars()
        .take(64)
        .collect();
    let name = ResourceName::parse(name.trim_end())
        .map_err(|e| ResolveError::Failed(format!("stack resource name: {}", e.0)))?;
    let r = Resource {
        id,
        token: ResourceToken::generate(),
        kind: g.kind,
        name,
        team_id: stack.team_id,
        tier: stack.tier.clone(),
        status: ResourceStatus::Provisioning,
        connection_url,
        created_at: ctx.now,
        expires_at: None,
        stack: Some(StackOwner {
            stack_id: stack.id,
            env: g.env.clone(),
            slug: None,
        }),
    };
    let new = NewResource {
        resource: r.clone(),
        fingerprint: None,
        max_per_team: None,
    };
    store.insert_resource(new).await.map_err(|e| match e {
        CreateResourceError::Store(e) => ResolveError::Store(e),
        CreateResourceError::LimitReached { .. } => {
            ResolveError::Transient("the stack's resource could not be recorded".into())
        }
    })?;
    #[cfg(debug_assertions)]
    test_crash_point();
    if let Err(e) = provisioner.create(&r).await {
        let _ = crate::resources::delete(store, provisioner, None, &r.token, ctx.clone()).await;
        return Err(server_failed(e));
    }
    if !store.mark_resource_ready(&r, ctx.clone(), None).await? {
        return Err(ResolveError::Transient(
            "the stack's resource was reclaimed before it was ready".into(),
        ));
    }
    tracing::info!(stack = %stack.slug, resource = %r.token, kind = r.kind.as_str(), "stack-owned resource created");
    Ok(r)
}

/// Test hook: with `STACKYARD_TEST_CRASH_AFTER_STACK_RESOURCE_ROW` set, the process exits right
/// after a stack-owned resource's row is written, before its DDL (the crash the reconciler
/// must finish).
#[cfg(debug_assertions)]
fn test_crash_point() {
    if std::env::var_os("STACKYARD_TEST_CRASH_AFTER_STACK_RESOURCE_ROW").is_some() {
        std::process::exit(137);
    }
}

/// A resource server's failure, as a retryable deploy error. Its own message is logged, never
/// shown (it may name roles).
fn server_failed(e: ResourceError) -> ResolveError {
    match e {
        ResourceError::Store(e) => ResolveError::Store(e),
        e => {
            tracing::warn!(error = %e, "could not provision a stack-owned resource");
            ResolveError::Transient(
                "the resource server failed while preparing the stack's own resource; retrying"
                    .into(),
            )
        }
    }
}

/// Drops every resource `stack` owns (its teardown). Token resources it merely used stay.
pub async fn drop_stack_resources<S: ResourceStore>(
    store: &S,
    provisioner: &Provisioner,
    stack: StackId,
    ctx: &AuditCtx,
) -> Result<usize, ResourceError> {
    let owned = store.stack_resources(stack).await?;
    for r in &owned {
        crate::resources::delete(store, provisioner, None, &r.token, ctx.clone()).await?;
    }
    Ok(owned.len())
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
