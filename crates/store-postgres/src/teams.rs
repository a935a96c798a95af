//! Teams and their API tokens (stored only as SHA-256 digests).
//!
//! Each write here is one statement whose data-modifying CTEs insert the row, its token and its
//! audit row together, so the transaction around it costs one extra round trip at most.

use crate::PgStore;
use crate::error::{Result, col, is_unique_violation};
use sqlx::postgres::PgRow;
use stackyard_core::ids::{TeamName, TokenDigest};
use stackyard_core::model::{Actor, AuditCtx, Principal, Team, TeamId, TokenInfo};
use stackyard_core::store::{NewToken, StoreError};
use stackyard_core::time::Millis;

fn team_from_row(row: &PgRow) -> Result<Team> {
    Ok(Team {
        id: TeamId(col(row, "id")?),
        name: col(row, "name")?,
        tier: col(row, "tier")?,
        max_stacks: col(row, "max_stacks")?,
        created_at: Millis(col(row, "created_at")?),
    })
}

/// A token digest that exists already (astronomically unlikely for random tokens).
fn token_conflict(e: crate::error::Error) -> crate::error::Error {
    if is_unique_violation(&e, "tokens_digest_key") {
        StoreError::Conflict("token").into()
    } else {
        e
    }
}

impl PgStore {
    pub(crate) async fn bootstrap_default_team_impl(
        &self,
        admin: NewToken,
        now: Millis,
    ) -> Result<bool> {
        // No lock: "no team exists" is checked in the INSERT itself, and two servers starting
        // at once on an empty database collide on the unique team name, where the loser's
        // ON CONFLICT DO NOTHING waits for the winner and then inserts nothing (and so neither
        // a token nor an audit row).
        let mut tx = self.begin().await?;
        let team: Option<i64> = sqlx::query_scalar(
            "WITH t AS ( \
               INSERT INTO teams (name, tier, max_stacks, created_at) \
               SELECT 'default', 'team', NULL, $1 WHERE NOT EXISTS (SELECT 1 FROM teams) \
               ON CONFLICT (name) DO NOTHING RETURNING id), \
             k AS ( \
               INSERT INTO tokens (team_id, name, digest, created_at) SELECT id, $2, $3, $1 FROM t), \
             a AS ( \
               INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
               SELECT $1, id, $4, 'team.created', NULL, NULL, $5 FROM t) \
             SELECT id FROM t",
        )
        .bind(now.0)
        .bind(&admin.name)
        .bind(&admin.digest.0)
        .bind(&Actor::system().0)
        .bind(serde_json::json!({ "team": "default", "max_stacks": null }))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| token_conflict(e.into()))?;
        tx.commit().await?;
        Ok(team.is_some())
    }

    pub(crate) async fn create_team_impl(
        &self,
        name: &TeamName,
        max_stacks: Option<i64>,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<(Team, TokenInfo)> {
        // No row lock: the team, its first token and the audit row are one statement; a taken
        // name makes the INSERT return nothing (after waiting for a concurrent creator).
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "WITH t AS ( \
               INSERT INTO teams (name, tier, max_stacks, created_at) VALUES ($1, 'team', $2, $3) \
               ON CONFLICT (name) DO NOTHING RETURNING id, name, tier, max_stacks, created_at), \
             k AS ( \
               INSERT INTO tokens (team_id, name, digest, created_at) SELECT id, $4, $5, $3 FROM t \
               RETURNING id), \
             a AS ( \
               INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
               SELECT $3, id, $6, 'team.created', NULL, $7, $8 FROM t) \
             SELECT t.id, t.name, t.tier, t.max_stacks, t.created_at, k.id AS token_id FROM t, k",
        )
        .bind(name.as_str())
        .bind(max_stacks)
        .bind(ctx.now.0)
        .bind(&token.name)
        .bind(&token.digest.0)
        .bind(&ctx.actor.0)
        .bind(ctx.request_id.as_deref())
        .bind(serde_json::json!({ "team": name.as_str(), "max_stacks": max_stacks }))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| token_conflict(e.into()))?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(StoreError::Conflict("team").into());
        };
        let team = team_from_row(&row)?;
        let info = TokenInfo {
            id: col(&row, "token_id")?,
            team_id: team.id,
            name: token.name,
            created_at: ctx.now,
        };
        tx.commit().await?;
        Ok((team, info))
    }

    pub(crate) async fn authenticate_impl(
        &self,
        digest: &TokenDigest,
    ) -> Result<Option<Principal>> {
        let digest = digest.0.as_str();
        let row = self
            .read(|mut c| async move {
                Ok(sqlx::query(
                    "SELECT t.id, t.name, t.tier, t.max_stacks, t.created_at, \
                            k.id AS token_id, k.name AS token_name, k.created_at AS token_created_at \
                     FROM tokens k JOIN teams t ON t.id = k.team_id \
                     WHERE k.digest = $1 AND k.revoked_at IS NULL",
                )
                .bind(digest)
                .fetch_optional(&mut *c)
                .await?)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let team = team_from_row(&row)?;
        let token = TokenInfo {
            id: col(&row, "token_id")?,
            team_id: team.id,
            name: col(&row, "token_name")?,
            created_at: Millis(col(&row, "token_created_at")?),
        };
        Ok(Some(Principal { team, token }))
    }

    pub(crate) async fn create_token_impl(
        &self,
        team: TeamId,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<TokenInfo> {
        // No row lock: the token and its audit row are one statement (the foreign key keeps
        // the team from disappearing underneath it).
        let mut tx = self.begin().await?;
        let id: Option<i64> = sqlx::query_scalar(
            "WITH k AS ( \
               INSERT INTO tokens (team_id, name, digest, created_at) \
               SELECT id, $2, $3, $4 FROM teams WHERE id = $1 RETURNING id, name), \
             a AS ( \
               INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
               SELECT $4, $1, $5, 'token.created', NULL, $6, \
                      jsonb_build_object('token_id', id, 'name', name) FROM k) \
             SELECT id FROM k",
        )
        .bind(team.0)
        .bind(&token.name)
        .bind(&token.digest.0)
        .bind(ctx.now.0)
        .bind(&ctx.actor.0)
        .bind(ctx.request_id.as_deref())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| token_conflict(e.into()))?;
        let Some(id) = id else {
            tx.rollback().await?;
            return Err(StoreError::Corrupt("the token's team does not exist".into()).into());
        };
        tx.commit().await?;
        Ok(TokenInfo {
            id,
            team_id: team,
            name: token.name,
            created_at: ctx.now,
        })
    }

    pub(crate) async fn list_tokens_impl(&self, team: TeamId) -> Result<Vec<TokenInfo>> {
        let rows = self
            .read(|mut c| async move {
                Ok(sqlx::query(
                    "SELECT id, name, created_at FROM tokens \
                     WHERE team_id = $1 AND revoked_at IS NULL ORDER BY id",
                )
                .bind(team.0)
                .fetch_all(&mut *c)
                .await?)
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(TokenInfo {
                    id: col(row, "id")?,
                    team_id: team,
                    name: col(row, "name")?,
                    created_at: Millis(col(row, "created_at")?),
                })
            })
            .collect()
    }

    pub(crate) async fn revoke_token_impl(
        &self,
        team: TeamId,
        token_id: i64,
        ctx: AuditCtx,
    ) -> Result<bool> {
        // Lock: the token row only (taken by the UPDATE); the audit row is written only if the
        // UPDATE matched a live token, in the same statement.
        let mut tx = self.begin().await?;
        let revoked: Option<i64> = sqlx::query_scalar(
            "WITH r AS ( \
               UPDATE tokens SET revoked_at = $3 \
               WHERE id = $1 AND team_id = $2 AND revoked_at IS NULL RETURNING id), \
             a AS ( \
               INSERT INTO audit_log (at, team_id, actor, kind, stack_slug, request_id, metadata) \
               SELECT $3, $2, $4, 'token.revoked', NULL, $5, jsonb_build_object('token_id', id) \
               FROM r) \
             SELECT id FROM r",
        )
        .bind(token_id)
        .bind(team.0)
        .bind(ctx.now.0)
        .bind(&ctx.actor.0)
        .bind(ctx.request_id.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revoked.is_some())
    }
}
