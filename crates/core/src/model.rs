//! The records the store keeps and hands back. Plain data; invariants are stated per type.

use crate::env::{EnvChange, EnvMap};
use crate::ids::{ServiceName, StackSlug};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TeamId(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StackId(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Team {
    pub id: TeamId,
    pub name: String,
    pub tier: String,
    /// `None`: no cap.
    pub max_stacks: Option<i64>,
    pub created_at: Millis,
}

/// A token's metadata; the secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub team_id: TeamId,
    pub name: String,
    pub created_at: Millis,
}

/// An authenticated caller: the team and the token it presented, directly or through a
/// dashboard session opened with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub team: Team,
    pub token: TokenInfo,
    pub via: Via,
}

/// How a principal's token reached the server; decides the actor of what it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Via {
    /// `Authorization: Bearer …`: audited as `token:<id>`.
    #[default]
    Token,
    /// A dashboard session: audited as `dashboard` (dashboard.md), whichever token opened it.
    Dashboard,
}

impl Principal {
    /// Who this principal's changes are recorded as.
    pub fn actor(&self) -> Actor {
        match self.via {
            Via::Token => Actor::token(self.token.id),
            Via::Dashboard => Actor::dashboard(),
        }
    }
}

/// Which stacks a caller may see: a team sees its own, an anonymous caller sees only anonymous
/// stacks (the slug is the secret). Every store read and write of a stack filters by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Anonymous,
    Team(TeamId),
}

/// Who did something, as recorded in audit rows: `token:<id>`, `dashboard`, `anonymous`,
/// `system`, `admin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Actor(pub String);

impl Actor {
    pub fn token(id: i64) -> Self {
        Actor(format!("token:{id}"))
    }
    pub fn anonymous() -> Self {
        Actor("anonymous".into())
    }
    pub fn dashboard() -> Self {
        Actor("dashboard".into())
    }
    pub fn system() -> Self {
        Actor("system".into())
    }
    pub fn admin() -> Self {
        Actor("admin".into())
    }
}

/// Who and when, for the audit row written with a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCtx {
    pub actor: Actor,
    pub request_id: Option<String>,
    pub now: Millis,
}

macro_rules! str_enum {
    ($(#[$meta:meta])* $name:ident { $($var:ident = $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($var),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
            /// Parses the stored form; `None` for anything we never write.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$var),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(
    /// `building → deploying → healthy | failed`; `healthy ⇄ degraded` while the live release's
    /// services crash and restart; any of those → `deleting` → gone.
    StackStatus { Building = "building", Deploying = "deploying", Healthy = "healthy", Degraded = "degraded", Failed = "failed", Deleting = "deleting" }
);
str_enum!(
    /// `building → deploying → healthy | failed`; once healthy, `crashed → restarting → healthy`
    /// under the supervisor (`failed` after a crash loop); `stopped` after teardown.
    ServiceStatus { Building = "building", Deploying = "deploying", Healthy = "healthy", Crashed = "crashed", Restarting = "restarting", Failed = "failed", Stopped = "stopped" }
);
str_enum!(ReleaseStatus { Pending = "pending", Live = "live", Failed = "failed", Superseded = "superseded" });
str_enum!(
    /// What a durable job does. Only one job per stack runs at a time.
    JobKind { Deploy = "deploy", Teardown = "teardown", Restart = "restart" }
);
str_enum!(
    /// `queued → running → done | failed`; `superseded` when a teardown replaced it while queued.
    JobState { Queued = "queued", Running = "running", Done = "done", Failed = "failed", Superseded = "superseded" }
);

impl StackStatus {
    /// The stack status implied by its services' statuses during a deploy.
    pub fn from_services<'a>(services: impl IntoIterator<Item = &'a ServiceStatus>) -> StackStatus {
        let mut any = false;
        let (mut building, mut deploying, mut failed, mut down) = (false, false, false, false);
        for s in services {
            any = true;
            match s {
                ServiceStatus::Failed => failed = true,
                ServiceStatus::Building => building = true,
                ServiceStatus::Deploying => deploying = true,
                ServiceStatus::Crashed | ServiceStatus::Restarting => down = true,
                ServiceStatus::Healthy | ServiceStatus::Stopped => {}
            }
        }
        if failed {
            StackStatus::Failed
        } else if building || !any {
            StackStatus::Building
        } else if deploying {
            StackStatus::Deploying
        } else if down {
            StackStatus::Degraded
        } else {
            StackStatus::Healthy
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stack {
    pub id: StackId,
    pub slug: StackSlug,
    pub name: String,
    /// The deployment environment label (`development`, …), the API's `env` field.
    pub environment: String,
    pub team_id: Option<TeamId>,
    pub tier: String,
    pub status: StackStatus,
    pub error: Option<String>,
    pub env_version: i64,
    /// The newest release's number (`vN`); 0 before the first.
    pub release: i64,
    /// Bumped by every new operation (deploy, redeploy, teardown); a job may write statuses only
    /// while the stack's generation still equals its own.
    pub op_generation: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub expires_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: ServiceName,
    pub status: ServiceStatus,
    pub expose: bool,
    pub port: u16,
    pub url: Option<String>,
    pub error: Option<String>,
    /// Restarts by the supervisor since the live release started (a new release starts at 0).
    pub restarts: i64,
    /// How its process last ended on its own (`exited with status 1`, `was killed for going
    /// over its memory limit`), if it has since the release started.
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackDetail {
    pub stack: Stack,
    pub services: Vec<Service>,
    /// The newest release, if any.
    pub release: Option<ReleaseInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseInfo {
    pub version: i64,
    pub status: ReleaseStatus,
    pub env_version: i64,
    pub created_at: Millis,
}

/// One service as a release fixes it: which code, how to start it, its manifest settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseService {
    pub name: ServiceName,
    /// SHA-256 of the service's tarball, hex; empty for a service run from `image`.
    pub artifact: String,
    /// The prebuilt image the service runs instead of a tarball (manifest `image:`); only
    /// runtimes that run images accept it (`Runtime::needs_start_command` false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The resolved start command (manifest `command`, Procfile or Dockerfile); empty when the
    /// context has none and the runtime starts it with the image's own command
    /// (`Runtime::needs_start_command`).
    pub command: String,
    /// Working directory relative to the unpacked tarball root (`Dockerfile` `WORKDIR`), "" for the root.
    #[serde(default)]
    pub workdir: String,
    pub port: u16,
    pub expose: bool,
    pub health: Option<String>,
    /// The manifest's `env:` for this service, `service://x` still unresolved.
    pub env: BTreeMap<String, String>,
    /// The resources granted by `needs:` (token or stack-owned, kind, env name; never a URL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<crate::needs::Grant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub info: ReleaseInfo,
    pub services: Vec<ReleaseService>,
}

/// A claimed job. `claim` fences every write the worker makes: once the claim is lost (lease
/// expired and re-claimed elsewhere) those writes change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub stack_id: StackId,
    pub slug: StackSlug,
    pub kind: JobKind,
    /// The stack operation generation this job belongs to.
    pub generation: i64,
    /// For deploys, the release to roll out; for restarts, the live release to restart.
    pub release: i64,
    /// For restarts, the one service to restart; `None`: every service of the release.
    pub service: Option<ServiceName>,
    pub attempts: i64,
    pub claim: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Millis,
    pub actor: String,
    pub kind: String,
    pub stack_id: Option<String>,
    pub request_id: Option<String>,
    pub metadata: serde_json::Value,
}

/// A page of results and the opaque cursor of the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
    pub total: i64,
}

impl<T> Page<T> {
    /// A page from rows fetched with `LIMIT limit + 1`: the extra row, dropped here, only
    /// says that a next page exists, whose cursor `cursor_of` derives from the last item kept.
    pub fn from_overfetch(
        mut items: Vec<T>,
        limit: i64,
        total: i64,
        cursor_of: impl Fn(&T) -> String,
    ) -> Page<T> {
        let keep = usize::try_from(limit.max(1)).unwrap_or(usize::MAX);
        let more = items.len() > keep;
        items.truncate(keep);
        let next_cursor = if more {
            items.last().map(cursor_of)
        } else {
            None
        };
        Page {
            items,
            next_cursor,
            total,
        }
    }
}

/// The result of one env write as committed (or, for a dry run, as it would be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOutcome {
    pub version: i64,
    pub changed: EnvChange,
    /// The map after the write. A write's outcome may hold secret-looking values closed
    /// (`EnvMap::is_open` false; they read as `***`): the write path compares and measures
    /// them without opening them, and answers show them masked anyway. Reads return it open.
    pub env: EnvMap,
    pub updated_at: Millis,
}

/// A change a client following `GET /stacks/:slug/events` sees. `id` increases with commit
/// order per stack and is the SSE event id (`Last-Event-ID` resumes after it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackEvent {
    pub id: i64,
    pub at: Millis,
    /// `stack.status`, `service.status`, `release.created`, `release.status`, `env.version`,
    /// `build.step`, `restart.requested`, `stack.deleted`.
    pub kind: String,
    pub data: serde_json::Value,
}

/// An event to write with the change it reports (see `StackEvent`). `data` holds statuses,
/// versions and key names, never env values. The stores write these; their shapes live here so
/// both backends emit the same events.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: &'static str,
    pub data: serde_json::Value,
}

impl NewEvent {
    pub fn stack_status(status: StackStatus, error: Option<&str>) -> NewEvent {
        NewEvent {
            kind: "stack.status",
            data: serde_json::json!({ "status": status.as_str(), "error": error }),
        }
    }

    pub fn release_status(release: i64, status: ReleaseStatus, error: Option<&str>) -> NewEvent {
        NewEvent {
            kind: "release.status",
            data: serde_json::json!({ "release": release, "status": status.as_str(), "error": error }),
        }
    }

    pub fn release_created(release: i64, env_version: i64) -> NewEvent {
        NewEvent {
            kind: "release.created",
            data: serde_json::json!({ "release": release, "env_version": env_version }),
        }
    }

    pub fn service_status(
        service: &str,
        status: &str,
        url: Option<&str>,
        error: Option<&str>,
    ) -> NewEvent {
        NewEvent {
            kind: "service.status",
            data: serde_json::json!({ "service": service, "status": status, "url": url, "error": error }),
        }
    }

    /// `env.version` `{version, set, deleted}`: key names only, never values.
    pub fn env_version(version: i64, change: &EnvChange) -> NewEvent {
        NewEvent {
            kind: "env.version",
            data: serde_json::json!({ "version": version, "set": change.set, "deleted": change.deleted }),
        }
    }

    /// `build.step` `{service, step, steps, instruction, status, exit}`: one step of a
    /// service's build (`running`, `done`, `cached` or `failed`). `instruction` is the
    /// Dockerfile line as written, never with build arg values substituted.
    pub fn build_step(
        service: &str,
        step: usize,
        steps: usize,
        instruction: &str,
        status: &str,
        exit: Option<&str>,
    ) -> NewEvent {
        NewEvent {
            kind: "build.step",
            data: serde_json::json!({
                "service": service,
                "step": step,
                "steps": steps,
                "instruction": instruction,
                "status": status,
                "exit": exit,
            }),
        }
    }

    /// `restart.requested` `{release, services, request_id}`: a restart of these services of
    /// the live release was queued by the request with that id (a client following the stream
    /// finds its own restart by it).
    pub fn restart_requested(
        release: i64,
        services: &[ServiceName],
        request_id: Option<&str>,
    ) -> NewEvent {
        NewEvent {
            kind: "restart.requested",
            data: serde_json::json!({ "release": release, "services": services, "request_id": request_id }),
        }
    }

    pub fn stack_deleted() -> NewEvent {
        NewEvent {
            kind: "stack.deleted",
            data: serde_json::json!({}),
        }
    }
}

/// The stack's `error` after a failed redeploy that left the live release serving.
pub fn failed_release_message(release: i64, error: Option<&str>) -> String {
    let prefix = format!("release v{release} failed");
    match error {
        // Runtimes word their own (`runtime::failure_report`): not said twice.
        Some(e) if e.starts_with(&prefix) => e.to_owned(),
        Some(e) => format!("{prefix}: {e}"),
        None => format!("release v{release} failed"),
    }
}

/// One row of env history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvVersionInfo {
    pub version: i64,
    pub created_at: Millis,
    pub actor: String,
    pub set: Vec<String>,
    pub deleted: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_status_follows_the_slowest_service() {
        use ServiceStatus::*;
        assert_eq!(
            StackStatus::from_services(&[Healthy, Building]),
            StackStatus::Building
        );
        assert_eq!(
            StackStatus::from_services(&[Healthy, Deploying]),
            StackStatus::Deploying
        );
        assert_eq!(
            StackStatus::from_services(&[Healthy, Healthy]),
            StackStatus::Healthy
        );
        assert_eq!(
            StackStatus::from_services(&[Healthy, Failed, Building]),
            StackStatus::Failed
        );
        assert_eq!(StackStatus::from_services(&[]), StackStatus::Building);
    }

    #[test]
    fn enums_round_trip_their_stored_form() {
        for s in [StackStatus::Building, StackStatus::Deleting] {
            assert_eq!(StackStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobKind::parse("teardown"), Some(JobKind::Teardown));
        assert_eq!(JobState::parse("nope"), None);
    }
}
