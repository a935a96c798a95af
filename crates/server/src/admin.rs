//! `stackyard admin …`: operations run directly against the store, for the server's operator.

use crate::serve::WithStore;
use anyhow::Context;
use stackyard_core::model::{Actor, AuditCtx};
use stackyard_core::store::{NewToken, Store, StoreError};
use stackyard_core::{ApiToken, TeamName};

/// Creates a team and returns its first token (to be printed once).
pub struct CreateTeam {
    pub name: TeamName,
    pub max_stacks: Option<i64>,
}

impl WithStore for CreateTeam {
    type Output = ApiToken;

    async fn run<S: Store>(self, store: S) -> anyhow::Result<ApiToken> {
        let token = ApiToken::generate();
        let ctx = AuditCtx {
            actor: Actor::admin(),
            request_id: None,
            now: crate::now(),
        };
        match store
            .create_team(
                &self.name,
                self.max_stacks,
                NewToken {
                    name: "initial".into(),
                    digest: token.digest(),
                },
                ctx,
            )
            .await
        {
            Ok(_) => Ok(token),
            Err(StoreError::Conflict(_)) => {
                anyhow::bail!("a team named {} already exists", self.name)
            }
            Err(e) => Err(e).context("creating the team"),
        }
    }
}
