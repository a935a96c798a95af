//! `DomainStore` on PostgreSQL (statements in `store_sql::Ops`); reads retry on a fresh connection.

use crate::PgStore as Store_;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
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
        OPS.add_domain(self.begin().await?, team, slug, new).await
    }

    async fn list_domains(
        &self,
        team: TeamId,
        slug: &StackSlug,
    ) -> Result<Option<Vec<Domain>>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.list_domains(&mut c, team, slug).await
        };
        Ok(self.read(read).await?)
    }

    async fn save_domain_check(&self, domain: &Domain) -> Result<bool, StoreError> {
        Ok(OPS.save_domain_check(self.begin().await?, domain).await?)
    }

    async fn remove_domain(
        &self,
        team: TeamId,
        slug: &StackSlug,
        id: &str,
        ctx: AuditCtx,
    ) -> Result<bool, StoreError> {
        Ok(OPS
            .remove_domain(self.begin().await?, team, slug, id, ctx)
            .await?)
    }

    async fn domains_to_recheck(
        &self,
        before: Millis,
        limit: i64,
    ) -> Result<Vec<Domain>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.domains_to_recheck(&mut c, before, limit).await
        };
        Ok(self.read(read).await?)
    }

    async fn domain_route_target(&self, domain: &Domain) -> Result<Option<String>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.domain_route_target(&mut c, domain).await
        };
        Ok(self.read(read).await?)
    }

    async fn domain_routes(&self) -> Result<Vec<DomainRoute>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move { OPS.domain_routes(&mut c).await };
        Ok(self.read(read).await?)
    }

    async fn certificates_due(&self, now: Millis, limit: i64) -> Result<Vec<Domain>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.certificates_due(&mut c, now, limit).await
        };
        Ok(self.read(read).await?)
    }

    async fn claim_certificate_order(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        Ok(OPS
            .claim_certificate_order(self.begin().await?, id, now)
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
            .save_certificate(self.begin().await?, keyring, id, cert, now)
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
            .save_certificate_failure(self.begin().await?, id, error, refused, now)
            .await?)
    }

    async fn certificates(&self) -> Result<Vec<DomainCertificate>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.certificates(&mut c, keyring).await
        };
        Ok(self.read(read).await?)
    }

    async fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let keyring = self.keys.get()?;
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.acme_account(&mut c, keyring, directory).await
        };
        Ok(self.read(read).await?)
    }

    async fn save_acme_account(
        &self,
        directory: &str,
        credentials: &str,
        now: Millis,
    ) -> Result<String, StoreError> {
        let keyring = self.keys.get()?;
        Ok(OPS
            .save_acme_account(self.begin().await?, keyring, directory, credentials, now)
            .await?)
    }
}
