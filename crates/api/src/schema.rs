//! Schema-only types: the OpenAPI shapes of fields whose Rust type is a domain type from
//! `stackyard-core` (which knows nothing of OpenAPI). Fields name them with
//! `#[schema(value_type = …)]`; nothing is ever built from them.

use stackyard_core::Millis;
use utoipa::ToSchema;

/// A stack's status: `building → deploying → healthy | failed`; `healthy ⇄ degraded` while a
/// service of the live release is down and being restarted; any of those → `deleting`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum StackStatus {
    Building,
    Deploying,
    Healthy,
    Degraded,
    Failed,
    Deleting,
}

/// A service's status: `building → deploying → healthy | failed`; once healthy,
/// `crashed → restarting → healthy` under the supervisor (`failed` after a crash loop);
/// `stopped` after teardown.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ServiceStatus {
    Building,
    Deploying,
    Healthy,
    Crashed,
    Restarting,
    Failed,
    Stopped,
}

/// A release's status.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ReleaseStatus {
    Pending,
    Live,
    Failed,
    Superseded,
}

/// An instant as the API writes it: RFC 3339, UTC, milliseconds (`2026-11-29T06:57:47.123Z`).
pub fn time(t: Millis) -> String {
    t.to_rfc3339()
}

/// Which server a resource lives in.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ResourceKind {
    Postgres,
    Redis,
}

/// A resource's status: `provisioning → ready → deleting`, then gone.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ResourceStatus {
    Provisioning,
    Ready,
    Deleting,
}
