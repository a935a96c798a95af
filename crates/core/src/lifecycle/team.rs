//! Teams and tokens: the audit records their changes write.

use super::{AuditRecord, audit_kind};
use crate::model::{Actor, AuditCtx, TeamId, TokenInfo};
use crate::time::Millis;

fn record(
    team: TeamId,
    ctx: &AuditCtx,
    kind: &'static str,
    metadata: serde_json::Value,
) -> AuditRecord {
    AuditRecord {
        at: ctx.now,
        team_id: Some(team),
        actor: ctx.actor.0.clone(),
        kind,
        stack_slug: None,
        request_id: ctx.request_id.clone(),
        metadata,
    }
}

/// Audit `team.created` `{team, max_stacks}`.
pub fn created(team: TeamId, name: &str, max_stacks: Option<i64>, ctx: &AuditCtx) -> AuditRecord {
    record(
        team,
        ctx,
        audit_kind::TEAM_CREATED,
        serde_json::json!({ "team": name, "max_stacks": max_stacks }),
    )
}

/// The `team.created` record of the `default` team made at first start, by the system.
pub fn bootstrapped(team: TeamId, now: Millis) -> AuditRecord {
    let ctx = AuditCtx {
        actor: Actor::system(),
        request_id: None,
        now,
    };
    created(team, "default", None, &ctx)
}

/// Audit `token.created` `{token_id, name}` (never the token).
pub fn token_created(token: &TokenInfo, ctx: &AuditCtx) -> AuditRecord {
    record(
        token.team_id,
        ctx,
        audit_kind::TOKEN_CREATED,
        serde_json::json!({ "token_id": token.id, "name": token.name }),
    )
}

/// Audit `token.revoked` `{token_id}`.
pub fn token_revoked(team: TeamId, token_id: i64, ctx: &AuditCtx) -> AuditRecord {
    record(
        team,
        ctx,
        audit_kind::TOKEN_REVOKED,
        serde_json::json!({ "token_id": token_id }),
    )
}
