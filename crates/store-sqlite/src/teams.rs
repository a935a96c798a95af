//! Teams and their API tokens (stored only as SHA-256 digests).

use crate::SqliteStore;
use crate::audit::{self, AuditRow};
use crate::error::{col, db_err, is_unique_violation};
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteRow;
use stackyard_core::ids::{TeamName, TokenDigest};
use stackyard_core::model::{Actor, AuditCtx, Principal, Team, TeamId, TokenInfo};
use stackyard_core::store::{NewToken, StoreError};
use stackyard_core::time::Millis;

fn team_from_row(row: &SqliteRow) -> Result<Team, StoreError> {
    Ok(Team {
        id: TeamId(col(row, "id")?),
        name: col(row, "name")?,
        tier: col(row, "tier")?,
        max_stacks: col(row, "max_stacks")?,
        created_at: Millis(col(row, "created_at")?),
    })
}

/// Inserts a live token of `team`; a digest that exists already is `Conflict("token")`.
async fn insert_token(
    conn: &mut SqliteConnection,
    team: TeamId,
    token: &NewToken,
    now: Millis,
) -> Result<TokenInfo, StoreError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO tokens (team_id, name, digest, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(team.0)
    .bind(&token.name)
    .bind(&token.digest.0)
    .bind(now.0)
    .fetch_one(conn)
    .await
    .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict("token") } else { db_err(e) })?;
    Ok(TokenInfo {
        id,
        team_id: team,
        name: token.name.clone(),
        created_at: now,
    })
}

impl SqliteStore {
    pub(crate) async fn bootstrap_default_team_impl(
        &self,
        admin: NewToken,
        now: Millis,
    ) -> Result<bool, StoreError> {
        // Write lock up front: "no team exists" must still hold when we insert.
        let mut tx = self.write_tx().await?;
        let any: Option<i64> = sqlx::query_scalar("SELECT id FROM teams LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if any.is_some() {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        let team: Option<i64> = sqlx::query_scalar(
            "INSERT INTO teams (name, tier, max_stacks, created_at) VALUES ('default', 'team', NULL, $1) \
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(now.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(team) = team.map(TeamId) else {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        };
        insert_token(&mut tx, team, &admin, now).await?;
        audit::insert(
            &mut tx,
            AuditRow {
                at: now,
                team_id: Some(team),
                actor: &Actor::system().0,
                kind: "team.created",
                stack_slug: None,
                request_id: None,
                metadata: serde_json::json!({ "team": "default", "max_stacks": null }),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    pub(crate) async fn create_team_impl(
        &self,
        name: &TeamName,
        max_stacks: Option<i64>,
        token: NewToken,
        ctx: AuditCtx,
    ) -> Result<(Team, TokenInfo), StoreError> {
        // Write lock: team, first token and audit row commit together or not at all.
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "INSERT INTO teams (name, tier, max_stacks, created_at) VALUES ($1, 'team', $2, $3) \
             ON CONFLICT (name) DO NOTHING RETURNING id, name, tier, max_stacks, created_at",
        )
        .bind(name.as_str())
        .bind(max_stacks)
        .bind(ctx.now.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            tx.rollback().await.map_err(db_err)?;
            return Err(StoreError::Conflict("team"));
        };
        let team = team_from_row(&row)?;
        let info = insert_token(&mut tx, team.id, &token, ctx.now).await?;
        audit::insert(
            &mut tx,
            AuditRow {
                at: ctx.now,
                team_id: Some(team.id),
                actor: &ctx.actor.0,
                kind: "team.created",
                stack_slug: None,
                request_id: ctx.request_id.as_deref(),
                metadata: serde_json::json!({ "team": team.name, "max_stacks": max_stacks }),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok((team, info))
    }

    pub(crate) async fn authenticate_impl(
        &self,
        digest: &TokenDigest,
    ) -> Result<Option<Principal>, StoreError> {
        let row = sqlx::query(
            "SELECT t.id, t.name, t.tier, t.max_stacks, t.created_at, \
                    k.id AS token_id, k.name AS token_name, k.created_at AS token_created_at \
             FROM tokens k JOIN teams t ON t.id = k.team_id \
             WHERE k.digest = $1 AND k.revoked_at IS NULL",
        )
        .bind(&digest.0)
        .fetch_optional(&self.reader)
        .await
        .map_err(db_err)?;
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
    ) -> Result<TokenInfo, StoreError> {
        // Write lock: the token and its audit row commit together.
        let mut tx = self.write_tx().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM teams WHERE id = $1")
            .bind(team.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if exists.is_none() {
            tx.rollback().await.map_err(db_err)?;
            return Err(StoreError::Corrupt(
                "the token's team does not exist".into(),
            ));
        }
        let info = insert_token(&mut tx, team, &token, ctx.now).await?;
        audit::insert(
            &mut tx,
            AuditRow {
                at: ctx.now,
                team_id: Some(team),
                actor: &ctx.actor.0,
                kind: "token.created",
                stack_slug: None,
                request_id: ctx.request_id.as_deref(),
                metadata: serde_json::json!({ "token_id": info.id, "name": info.name }),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(info)
    }

    pub(crate) async fn list_tokens_impl(
        &self,
        team: TeamId,
    ) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at FROM tokens WHERE team_id = $1 AND revoked_at IS NULL ORDER BY id",
        )
        .bind(team.0)
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
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
    ) -> Result<bool, StoreError> {
        // Write lock: the revocation and its audit row commit together.
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_at = $3 WHERE id = $1 AND team_id = $2 AND revoked_at IS NULL",
        )
        .bind(token_id)
        .bind(team.0)
        .bind(ctx.now.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        if done == 0 {
            tx.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        audit::insert(
            &mut tx,
            AuditRow {
                at: ctx.now,
                team_id: Some(team),
                actor: &ctx.actor.0,
                kind: "token.revoked",
                stack_slug: None,
                request_id: ctx.request_id.as_deref(),
                metadata: serde_json::json!({ "token_id": token_id }),
            },
        )
        .await?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }
}
