//! `FamilyStore` on SQLite (statements in `store_sql::Ops`): a promote runs under
//! `BEGIN IMMEDIATE` on the one writer.

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::TeamId;
use stackyard_core::store::{
    FamilyMember, FamilyStore, PromoteError, Promoted, Promotion, StoreError,
};

impl FamilyStore for SqliteStore {
    async fn family(
        &self,
        team: TeamId,
        slug: &StackSlug,
    ) -> Result<Option<Vec<FamilyMember>>, StoreError> {
        Ok(OPS.family(&mut *self.reader().await?, team, slug).await?)
    }

    async fn promote(
        &self,
        team: TeamId,
        source: &StackSlug,
        promotion: Promotion,
    ) -> Result<Promoted, PromoteError> {
        let keyring = self.keys.get()?;
        let tx = self.write_tx().await?;
        OPS.promote(tx, team, source, promotion, keyring).await
    }
}
