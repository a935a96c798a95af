//! `FamilyStore` on PostgreSQL (statements in `store_sql::Ops`): a promote takes the team's
//! row (when capped), the source's and the target's; reads retry on a fresh connection.

use crate::PgStore;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::TeamId;
use stackyard_core::store::{
    FamilyMember, FamilyStore, PromoteError, Promoted, Promotion, StoreError,
};

impl FamilyStore for PgStore {
    async fn family(
        &self,
        team: TeamId,
        slug: &StackSlug,
    ) -> Result<Option<Vec<FamilyMember>>, StoreError> {
        let read =
            |mut c: PoolConnection<Postgres>| async move { OPS.family(&mut c, team, slug).await };
        Ok(self.read(read).await?)
    }

    async fn promote(
        &self,
        team: TeamId,
        source: &StackSlug,
        promotion: Promotion,
    ) -> Result<Promoted, PromoteError> {
        let keyring = self.keys.get()?;
        let tx = self.begin().await?;
        OPS.promote(tx, team, source, promotion, keyring).await
    }
}
