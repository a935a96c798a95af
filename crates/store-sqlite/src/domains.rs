//! `DomainStore` on SQLite (statements in `store_sql::Ops`); writes on the one writer.

use crate::SqliteStore as Store_;
use crate::sql::OPS;
use stackyard_core::domain::Domain;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::{AuditCtx, TeamId};
use stackyard_core::store::{
    DomainCertificate, DomainError, DomainRoute, DomainStore, NewCertificate, NewDomain, StoreError,
};
use stackyard_core::time::Millis;

impl DomainStore for Store_ {
    async fn add_domain(
        &self,
        team: TeamId,
        slug: &StackSlug,
        new: NewDomain,
    ) -> Result<Domain, DomainError> {
        OPS.add_domain(self.write_tx().await?, team, slug, new)
            .await
    }

    async fn list_domains(
        &self,
        team: TeamId,
        slug: &StackSlug,
    ) -> Result<Option<Vec<Domain>>, StoreError> {
        Ok(OPS
            .list_domains(&mut *self.reader().await?, team, slug)
            .await?)
    }

    async fn save_domain_check(&self, domain: &Domain) -> Result<bool, StoreError> {
        Ok(OPS
            .save_domain_check(self.write_tx().await?, domain)
            .await?)
    }

    async fn remove_domain(
        &self,
        team: TeamId,
        slug: &StackSlug,
        id: &str,
        ctx: AuditCtx,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .remove_domain(self.write_tx().await?, team, slug, id, ctx)
            .await?)
    }

    async fn domains_to_recheck(
        &self,
        before: Millis,
        limit: i64,
    ) -> Result<Vec<Domain>, StoreError> {
        Ok(OPS
            .domains_to_recheck(&mut *self.reader().await?, before, limit)
            .await?)
    }

    async fn domain_route_target(&self, domain: &Domain) -> Result<Option<String>, StoreError> {
        Ok(OPS
            .domain_route_target(&mut *self.reader().await?, domain)
            .await?)
    }

    async fn domain_routes(&self) -> Result<Vec<DomainRoute>, StoreError> {
        Ok(OPS.domain_routes(&mut *self.reader().await?).await?)
    }

    async fn certificates_due(&self, now: Millis, limit: i64) -> Result<Vec<Domain>, StoreError> {
        Ok(OPS
            .certificates_due(&mut *self.reader().await?, now, limit)
            .await?)
    }

    async fn claim_certificate_order(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        Ok(OPS
            .claim_certificate_order(self.write_tx().await?, id, now)
            .await?)
    }

    async fn save_certificate(
        &self,
        id: &str,
        cert: NewCertificate,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .save_certificate(self.write_tx().await?, keyring, id, cert, now)
            .await?)
    }

    async fn save_certificate_failure(
        &self,
        id: &str,
        error: &str,
        refused: bool,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .save_certificate_failure(self.write_tx().await?, id, error, refused, now)
            .await?)
    }

    async fn certificates(&self) -> Result<Vec<DomainCertificate>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .certificates(&mut *self.reader().await?, keyring)
            .await?)
    }

    async fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .acme_account(&mut *self.reader().await?, keyring, directory)
            .await?)
    }

    async fn save_acme_account(
        &self,
        directory: &str,
        credentials: &str,
        now: Millis,
    ) -> Result<String, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .save_acme_account(self.write_tx().await?, keyring, directory, credentials, now)
            .await?)
    }
}
