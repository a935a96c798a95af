//! `/stacks/*` and `/api/v1/stacks*`: stacks, their services and releases.

use crate::schema::{self, time};
use serde::{Deserialize, Serialize};
use stackyard_core::model::{
    Release as ReleaseRecord, ReleaseInfo, ReleaseService, ReleaseStatus, Service as ServiceRecord,
    ServiceStatus, Stack, StackDetail as StackRecord, StackEvent, StackStatus,
};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// A service of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Service {
    #[schema(example = "web")]
    pub name: String,
    #[schema(value_type = schema::ServiceStatus)]
    pub status: ServiceStatus,
    /// Whether the router sends outside traffic to it.
    pub expose: bool,
    pub port: u16,
    /// Where it is reachable, once it is (exposed services only).
    #[schema(required = true)]
    pub url: Option<String>,
    /// Why it failed or crashed, when it did.
    #[schema(required = true)]
    pub error: Option<String>,
    /// Times the supervisor restarted it since its release went live.
    pub restarts: i64,
    /// How its process last ended on its own (exit status, signal, or "memory limit").
    #[schema(required = true, example = "exited with status 1")]
    pub last_exit: Option<String>,
}

impl From<&ServiceRecord> for Service {
    fn from(s: &ServiceRecord) -> Self {
        Self {
            name: s.name.to_string(),
            status: s.status,
            expose: s.expose,
            port: s.port,
            url: s.url.clone(),
            error: s.error.clone(),
            restarts: s.restarts,
            last_exit: s.last_exit.clone(),
        }
    }
}

/// A release: one version of the stack's code and env.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    pub version: i64,
    /// `v<version>`.
    #[schema(example = "v1")]
    pub name: String,
    #[schema(value_type = schema::ReleaseStatus)]
    pub status: ReleaseStatus,
    /// The env version the release runs with.
    pub env_version: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&ReleaseInfo> for Release {
    fn from(r: &ReleaseInfo) -> Self {
        Self {
            version: r.version,
            name: format!("v{}", r.version),
            status: r.status,
            env_version: r.env_version,
            created_at: time(r.created_at),
        }
    }
}

/// `GET /stacks/:slug` and `GET /api/v1/stacks/:slug`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StackDetail {
    pub ok: bool,
    #[schema(example = "stk-0123456789abcdef01234567")]
    pub stack_id: String,
    pub name: String,
    /// The deployment environment label (`development`, …).
    pub env: String,
    #[schema(value_type = schema::StackStatus)]
    pub status: StackStatus,
    /// `anonymous`, or the owning team's tier.
    pub tier: String,
    pub services: Vec<Service>,
    pub env_version: i64,
    /// The newest release; `null` before the first.
    #[schema(required = true)]
    pub release: Option<Release>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Present only when the stack (or its latest release) failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Present only for stacks that expire (anonymous ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

impl From<&StackRecord> for StackDetail {
    fn from(d: &StackRecord) -> Self {
        let s = &d.stack;
        Self {
            ok: true,
            stack_id: s.slug.to_string(),
            name: s.name.clone(),
            env: s.environment.clone(),
            status: s.status,
            tier: s.tier.clone(),
            services: d.services.iter().map(Service::from).collect(),
            env_version: s.env_version,
            release: d.release.as_ref().map(Release::from),
            created_at: time(s.created_at),
            updated_at: time(s.updated_at),
            error: s.error.clone(),
            expires_at: s.expires_at.map(time),
        }
    }
}

/// An item of `GET /api/v1/stacks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StackSummary {
    pub stack_id: String,
    pub name: String,
    #[schema(value_type = schema::StackStatus)]
    pub status: StackStatus,
    pub tier: String,
    pub env: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&Stack> for StackSummary {
    fn from(s: &Stack) -> Self {
        Self {
            stack_id: s.slug.to_string(),
            name: s.name.clone(),
            status: s.status,
            tier: s.tier.clone(),
            env: s.environment.clone(),
            created_at: time(s.created_at),
            updated_at: time(s.updated_at),
        }
    }
}

/// `GET /api/v1/stacks`: the team's stacks, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StackList {
    pub ok: bool,
    pub items: Vec<StackSummary>,
    /// All the team's stacks, not just this page.
    pub total: i64,
    /// Pass as `?cursor=` for the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A service as `POST /stacks/new` answers it: not started yet, so no `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedService {
    pub name: String,
    #[schema(value_type = schema::ServiceStatus)]
    pub status: ServiceStatus,
    pub expose: bool,
    pub port: u16,
    /// Always `null` here: a URL exists once the service is up.
    #[schema(required = true)]
    pub url: Option<String>,
}

impl From<&ReleaseService> for CreatedService {
    fn from(s: &ReleaseService) -> Self {
        Self {
            name: s.name.to_string(),
            status: ServiceStatus::Building,
            expose: s.expose,
            port: s.port,
            url: None,
        }
    }
}

/// The first release as `POST /stacks/new` answers it (its time is set when it is written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedRelease {
    pub version: i64,
    pub name: String,
    #[schema(value_type = schema::ReleaseStatus)]
    pub status: ReleaseStatus,
    pub env_version: i64,
}

impl CreatedRelease {
    /// A new stack's release: `v1`, pending, on env version 0.
    pub fn first() -> Self {
        Self {
            version: 1,
            name: "v1".to_owned(),
            status: ReleaseStatus::Pending,
            env_version: 0,
        }
    }
}

/// `POST /stacks/new` 202: the stack exists and its deploy job is queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedStack {
    pub ok: bool,
    pub stack_id: String,
    pub name: String,
    pub env: String,
    /// Always `building`.
    #[schema(value_type = schema::StackStatus)]
    pub status: StackStatus,
    pub tier: String,
    /// `6h` (the server's anonymous TTL) for anonymous stacks, `""` otherwise.
    pub expires_in: String,
    /// When an anonymous stack expires; `null` for team stacks.
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
    pub services: Vec<CreatedService>,
    pub release: CreatedRelease,
    /// Manifest warnings and, for anonymous stacks, when the stack expires and how to keep it.
    pub note: String,
}

/// `DELETE /stacks/:slug`: 200 once the teardown finished (the stack is gone, no `status`;
/// `message` is `Stack deleted`), 202 while it still runs (`status` `deleting`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeletedStack {
    pub ok: bool,
    pub stack_id: String,
    /// `deleting` while the teardown runs (202); absent once the stack is gone (200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::StackStatus>)]
    pub status: Option<StackStatus>,
    pub message: String,
}

/// `POST /stacks/:slug/redeploy` 202: a new release, its deploy job queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Redeployed {
    pub ok: bool,
    pub stack_id: String,
    /// Always `building`.
    #[schema(value_type = schema::StackStatus)]
    pub status: StackStatus,
    pub release: Release,
    /// Manifest warnings of new code; `""` otherwise.
    pub note: String,
}

/// The optional JSON body of `POST /stacks/:slug/restart`; no body restarts every service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestartRequest {
    /// The one service of the live release to restart; absent or `null`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "web")]
    pub service: Option<String>,
}

/// `POST /stacks/:slug/restart` 202: the restart job is queued; the services are `restarting`
/// until each is healthy again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Restarted {
    pub ok: bool,
    pub stack_id: String,
    /// The stack's status now: `degraded` while its services restart.
    #[schema(value_type = schema::StackStatus)]
    pub status: StackStatus,
    /// The live release being restarted (no new release is made).
    pub release: Release,
    /// The services being restarted, in manifest order.
    #[schema(example = json!(["web"]))]
    pub services: Vec<String>,
}

/// A service as a release fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseServiceItem {
    pub name: String,
    /// SHA-256 of the service's tarball, hex.
    pub artifact: String,
    /// The resolved start command.
    pub command: String,
}

/// An item of `GET /stacks/:slug/releases`: a release and its services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseItem {
    #[serde(flatten)]
    pub release: Release,
    pub services: Vec<ReleaseServiceItem>,
}

impl From<&ReleaseRecord> for ReleaseItem {
    fn from(r: &ReleaseRecord) -> Self {
        Self {
            release: Release::from(&r.info),
            services: r
                .services
                .iter()
                .map(|s| ReleaseServiceItem {
                    name: s.name.to_string(),
                    artifact: s.artifact.clone(),
                    command: s.command.clone(),
                })
                .collect(),
        }
    }
}

/// `GET /stacks/:slug/releases`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseList {
    pub ok: bool,
    pub stack_id: String,
    pub items: Vec<ReleaseItem>,
}

/// The JSON `data:` of one `GET /stacks/:slug/events` event (its SSE `event:` is `kind`, its
/// `id:` is `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StackEventData {
    pub id: i64,
    #[schema(format = DateTime)]
    pub at: String,
    /// `stack.status`, `service.status`, `release.created`, `release.status`, `env.version`,
    /// `build.step`, `restart.requested`, `stack.deleted`.
    pub kind: String,
    /// Statuses, versions and key names; never env values.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl From<&StackEvent> for StackEventData {
    fn from(e: &StackEvent) -> Self {
        Self {
            id: e.id,
            at: time(e.at),
            kind: e.kind.clone(),
            data: e.data.clone(),
        }
    }
}

/// One server-sent event of a `text/event-stream` answer, as the OpenAPI document describes the
/// stream's items (schema only: the server writes events with axum's `Sse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SseEvent {
    /// The event's id (events stream: the `StackEventData` id, for `Last-Event-ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The event's name (events stream: the `StackEventData` kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Logs: one log line (`[end]` closes a `follow=false` backlog). Events: a `StackEventData`
    /// as JSON.
    pub data: String,
}

/// The `multipart/form-data` body of `POST /stacks/new` (schema only: the server reads the
/// parts as they stream in). Besides the named fields, one file part per service, named after
/// the service: a gzipped tar of its build directory.
pub struct StackForm;

/// The `multipart/form-data` body of `POST /stacks/:slug/redeploy` with new code: as
/// `StackForm`, `name` and `env` ignored. No body at all redeploys the current code.
pub struct RedeployForm;

fn form_schema(create: bool) -> RefOr<Schema> {
    let text = |description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
    };
    let tarball = ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::Custom("binary".to_owned())))
        .description(Some(
            "A service's code: a gzipped tar of its build directory; the part's name is the service's name.",
        ));
    let form = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "manifest",
            text("The stack's YAML manifest (`services:` …); not blank.")
                .min_length(Some(1))
                .pattern(Some(r"\S")),
        )
        .required("manifest")
        .additional_properties(Some(tarball));
    let form = if create {
        form.property(
            "name",
            text("The stack's name.")
                .min_length(Some(1))
                .max_length(Some(64))
                .pattern(Some("^[A-Za-z0-9][A-Za-z0-9 _-]*$")),
        )
        .required("name")
        .property(
            "env",
            text("The deployment environment label; `development` when absent or empty.")
                .pattern(Some("^[A-Za-z0-9_-]{0,64}$")),
        )
    } else {
        form.property("name", text("Ignored on redeploy."))
            .property("env", text("Ignored on redeploy."))
    };
    RefOr::T(Schema::Object(form.build()))
}

impl PartialSchema for StackForm {
    fn schema() -> RefOr<Schema> {
        form_schema(true)
    }
}

impl ToSchema for StackForm {}

impl PartialSchema for RedeployForm {
    fn schema() -> RefOr<Schema> {
        form_schema(false)
    }
}

impl ToSchema for RedeployForm {}
