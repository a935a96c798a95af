//! `DomainStore` on PostgreSQL (statements in `store_sql::Ops`); reads retry on a fresh connection.

use crate::PgStore as Store_;
use crate::sql::OPS;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::domain::Domain;
use stackyard_core::ids::StackSlug;
use stackyard_core::model::{AuditCtx, TeamId};
use stackyard_core::store::{DomainError, DomainRoute, DomainStore, NewDomain, StoreError};
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
}
