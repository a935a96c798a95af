//! `StackStore` on PostgreSQL: stacks and releases. Lifecycle writes lock the stack row (and a
//! capped team's row, for the cap); `get_stack`, the most polled read, is one statement.

use crate::PgStore;
use crate::sql::{OPS, stack_cols};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::*;
use stackyard_core::store::{
    CreateStackError, NewRelease, NewStack, ReleaseError, StackStore, StoreError,
};
use stackyard_core::time::Millis;
use stackyard_store_sql::error::{Result, corrupt, parsed};
use stackyard_store_sql::rows::StackRow;

/// A stack with its newest release and its services aggregated into parallel arrays in
/// position order.
#[derive(sqlx::FromRow)]
struct DetailRow {
    #[sqlx(flatten)]
    stack: StackRow,
    r_version: Option<i64>,
    r_status: Option<String>,
    r_env_version: Option<i64>,
    r_created_at: Option<i64>,
    svc_names: Option<Vec<String>>,
    svc_statuses: Option<Vec<String>>,
    svc_exposes: Option<Vec<bool>>,
    svc_ports: Option<Vec<i32>>,
    svc_urls: Option<Vec<Option<String>>>,
    svc_errors: Option<Vec<Option<String>>>,
}

impl TryFrom<DetailRow> for StackDetail {
    type Error = stackyard_store_sql::Error;
    fn try_from(r: DetailRow) -> Result<StackDetail> {
        let release = match (r.r_version, r.r_status, r.r_env_version, r.r_created_at) {
            (Some(version), Some(status), Some(env_version), Some(created_at)) => {
                Some(ReleaseInfo {
                    version,
                    status: parsed(ReleaseStatus::parse(&status), "release status")?,
                    env_version,
                    created_at: Millis(created_at),
                })
            }
            _ => None,
        };
        let names = r.svc_names.unwrap_or_default();
        let n = names.len();
        let (statuses, exposes, ports) = (
            r.svc_statuses.unwrap_or_default(),
            r.svc_exposes.unwrap_or_default(),
            r.svc_ports.unwrap_or_default(),
        );
        let (urls, errors) = (
            r.svc_urls.unwrap_or_default(),
            r.svc_errors.unwrap_or_default(),
        );
        if [
            statuses.len(),
            exposes.len(),
            ports.len(),
            urls.len(),
            errors.len(),
        ]
        .iter()
        .any(|&l| l != n)
        {
            return Err(corrupt("the service columns disagree in length"));
        }
        let mut services = Vec::with_capacity(n);
        for (i, name) in names.into_iter().enumerate() {
            services.push(Service {
                name: parsed(ServiceName::parse(&name).ok(), "service name")?,
                status: parsed(ServiceStatus::parse(&statuses[i]), "service status")?,
                expose: exposes[i],
                port: parsed(u16::try_from(ports[i]).ok(), "service port")?,
                url: urls[i].clone(),
                error: errors[i].clone(),
            });
        }
        Ok(StackDetail {
            stack: r.stack.try_into()?,
            services,
            release,
        })
    }
}

const GET_STACK: &str = concat!(
    "SELECT ",
    stack_cols!(),
    ", r.version AS r_version, r.status AS r_status, r.env_version AS r_env_version, \
       r.created_at AS r_created_at, \
       v.names AS svc_names, v.statuses AS svc_statuses, v.exposes AS svc_exposes, \
       v.ports AS svc_ports, v.urls AS svc_urls, v.errors AS svc_errors \
     FROM stacks s \
     LEFT JOIN releases r ON r.stack_id = s.id AND r.version = s.release \
     LEFT JOIN LATERAL ( \
       SELECT array_agg(name ORDER BY position) AS names, \
              array_agg(status ORDER BY position) AS statuses, \
              array_agg(expose ORDER BY position) AS exposes, \
              array_agg(port ORDER BY position) AS ports, \
              array_agg(url ORDER BY position) AS urls, \
              array_agg(error ORDER BY position) AS errors \
       FROM services WHERE stack_id = s.id) v ON true \
     WHERE s.slug = $1 AND s.team_id IS NOT DISTINCT FROM $2"
);

impl StackStore for PgStore {
    async fn create_stack(&self, new: NewStack) -> std::result::Result<Stack, CreateStackError> {
        OPS.create_stack(self.begin().await?, new).await
    }

    async fn get_stack(
        &self,
        access: Access,
        slug: &StackSlug,
    ) -> std::result::Result<Option<StackDetail>, StoreError> {
        let team = match access {
            Access::Anonymous => None,
            Access::Team(t) => Some(t.0),
        };
        // One statement, one snapshot: the stack, its services and its newest release.
        let row: Option<DetailRow> = self
            .read(|mut c: PoolConnection<Postgres>| async move {
                Ok(sqlx::query_as(GET_STACK)
                    .bind(slug.as_str())
                    .bind(team)
                    .fetch_optional(&mut *c)
                    .await?)
            })
            .await?;
        Ok(row.map(StackDetail::try_from).transpose()?)
    }

    async fn list_stacks(
        &self,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
    ) -> std::result::Result<Page<Stack>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.list_stacks(&mut c, team, limit, cursor).await
        };
        Ok(self.read(read).await?)
    }

    async fn count_stacks(&self, team: TeamId) -> std::result::Result<i64, StoreError> {
        let read =
            |mut c: PoolConnection<Postgres>| async move { OPS.count_stacks(&mut c, team).await };
        Ok(self.read(read).await?)
    }

    async fn request_deletion(
        &self,
        access: Access,
        slug: &StackSlug,
        ctx: AuditCtx,
    ) -> std::result::Result<Option<Stack>, StoreError> {
        Ok(OPS
            .request_deletion(self.begin().await?, access, slug, ctx)
            .await?)
    }

    async fn create_release(
        &self,
        access: Access,
        slug: &StackSlug,
        release: NewRelease,
    ) -> std::result::Result<(Stack, ReleaseInfo), ReleaseError> {
        OPS.create_release(self.begin().await?, access, slug, release)
            .await
    }

    async fn list_releases(&self, stack: StackId) -> std::result::Result<Vec<Release>, StoreError> {
        let read =
            |mut c: PoolConnection<Postgres>| async move { OPS.list_releases(&mut c, stack).await };
        Ok(self.read(read).await?)
    }

    async fn expired_stacks(
        &self,
        now: Millis,
        limit: i64,
    ) -> std::result::Result<Vec<StackSlug>, StoreError> {
        let read = |mut c: PoolConnection<Postgres>| async move {
            OPS.expired_stacks(&mut c, now, limit).await
        };
        Ok(self.read(read).await?)
    }

    async fn running_stacks(
        &self,
    ) -> std::result::Result<Vec<(Stack, Release, EnvMap)>, StoreError> {
        let read =
            |mut c: PoolConnection<Postgres>| async move { OPS.running_stacks(&mut c).await };
        Ok(self.read(read).await?)
    }
}
