//! Resource rows: written `provisioning` before the server runs any DDL, `ready` once it ran,
//! `deleting` before the drop, removed after it; each step one transaction.

use super::{Idempotent, StoreError};
use crate::ids::ResourceToken;
use crate::model::{AuditCtx, Page, StackId, TeamId};
use crate::resource::{NewResource, Resource};
use crate::time::Millis;
use std::future::Future;

/// Why a resource row was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateResourceError {
    /// The team holds `max` resources already (`deleting` ones excluded).
    #[error("the team has its maximum of {max} resources")]
    LimitReached { max: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub trait ResourceStore: Clone + Send + Sync + 'static {
    /// Inserts the row `provisioning`. For a team with a cap: under the team's lock (team
    /// creates queue), the cap is checked against its resources not `deleting`.
    fn insert_resource(
        &self,
        new: NewResource,
    ) -> impl Future<Output = Result<(), CreateResourceError>> + Send;

    /// `provisioning` → `ready`, with audit `resource.created` and the idempotency record, in
    /// one transaction. False if the row is no longer `provisioning` (a reconciler dropped it).
    fn mark_resource_ready(
        &self,
        resource: &Resource,
        ctx: AuditCtx,
        idempotency: Option<Idempotent<Resource>>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The team's resource, any status, without auditing (no URL is handed out from this).
    fn get_resource(
        &self,
        team: TeamId,
        token: &ResourceToken,
    ) -> impl Future<Output = Result<Option<Resource>, StoreError>> + Send;

    /// The team's `ready` resource with its connection URL, and audit `resource.url_read` in
    /// the same transaction: the URL is handed out only if the audit row commits.
    fn reveal_resource(
        &self,
        team: TeamId,
        token: &ResourceToken,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<Option<Resource>, StoreError>> + Send;

    /// Any resource by its token, any status, without auditing: the owner and kind checks of
    /// `needs:` at create and redeploy (no URL is handed out from this).
    fn find_resource(
        &self,
        token: &ResourceToken,
    ) -> impl Future<Output = Result<Option<Resource>, StoreError>> + Send;

    /// The `ready` resource `token` with its connection URL if its owner is `owner` (a team;
    /// `None`: anonymous, matching only anonymous resources), and audit `resource.url_read` in
    /// the same transaction: how a deploy reads the URLs its release was granted.
    fn reveal_granted_resource(
        &self,
        owner: Option<TeamId>,
        token: &ResourceToken,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<Option<Resource>, StoreError>> + Send;

    /// The stack-owned resource of `stack` injected as `env`, any status, without auditing.
    fn stack_resource(
        &self,
        stack: StackId,
        env: &str,
    ) -> impl Future<Output = Result<Option<Resource>, StoreError>> + Send;

    /// Every resource `stack` owns, any status (its teardown drops them).
    fn stack_resources(
        &self,
        stack: StackId,
    ) -> impl Future<Output = Result<Vec<Resource>, StoreError>> + Send;

    /// The team's resources, newest first, `limit` per page, with the total.
    fn list_resources(
        &self,
        team: TeamId,
        limit: i64,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page<Resource>, StoreError>> + Send;

    /// Marks the resource `deleting` (audit `resource.deleted` when it was not already) and
    /// returns it. `team` `None`: any resource (expiry, the reconciler).
    fn mark_resource_deleting(
        &self,
        team: Option<TeamId>,
        token: &ResourceToken,
        ctx: AuditCtx,
    ) -> impl Future<Output = Result<Option<Resource>, StoreError>> + Send;

    /// Removes the row, once its database or user is dropped.
    fn remove_resource(
        &self,
        token: &ResourceToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Rows a reconciler must act on: every `deleting` row, `provisioning` rows created before
    /// `provisioning_before`, and (when `with_ready`) every `ready` row, oldest first.
    fn resources_to_reconcile(
        &self,
        provisioning_before: Millis,
        with_ready: bool,
    ) -> impl Future<Output = Result<Vec<Resource>, StoreError>> + Send;

    /// Up to `limit` `ready` resources whose `expires_at` has passed.
    fn expired_resources(
        &self,
        now: Millis,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Resource>, StoreError>> + Send;
}
