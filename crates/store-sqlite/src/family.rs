//! `FamilyStore` on SQLite (statements in `store_sql::Ops`): a promote runs under
//! `BEGIN IMMEDIATE` on the one writer.

use crate::SqliteStore;
use crate::sql::OPS;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::AuditCtx;
use stackyard_core::model::TeamId;
use stackyard_core::store::{
    Approval, ApprovalError, ApprovalStatus, FamilyMember, FamilyStore, PromoteError, Promoted,
    Promotion, StoreError,
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

    async fn request_promotion(
        &self,
        team: TeamId,
        source: &StackSlug,
        promotion: &Promotion,
        approval: Approval,
    ) -> Result<Approval, PromoteError> {
        let tx = self.write_tx().await?;
        OPS.request_promotion(tx, team, source, promotion, approval)
            .await
    }

    async fn decide_promotion(
        &self,
        team: TeamId,
        id: &str,
        approve: bool,
        by: i64,
        ctx: AuditCtx,
    ) -> Result<Approval, ApprovalError> {
        let tx = self.write_tx().await?;
        OPS.decide_promotion(tx, team, id, approve, by, ctx).await
    }

    async fn execute_promotion(
        &self,
        team: TeamId,
        source: &StackSlug,
        approval: &str,
        promotion: Promotion,
    ) -> Result<Promoted, ApprovalError> {
        let keyring = self.keys.get()?;
        let tx = self.write_tx().await?;
        OPS.execute_promotion(tx, team, source, approval, promotion, keyring)
            .await
    }

    async fn list_promotions(
        &self,
        team: TeamId,
        status: Option<ApprovalStatus>,
    ) -> Result<Vec<Approval>, StoreError> {
        Ok(OPS
            .list_promotions(&mut *self.reader().await?, team, status)
            .await?)
    }
}
