//! Every decision of a stack's lifecycle, made once: given what a store read under the stack's
//! lock ([`Locked`]), each step returns a [`Plan`] — the rows to write, the one audit record,
//! the events in order, the idempotency record — and the value the store method returns. The
//! stores only read the inputs and write the plan in their SQL dialect, so SQLite and
//! PostgreSQL cannot drift apart, and the decisions are unit-tested here without a database.
//! (The env batch, the one hot path, is planned the same way in `crate::envlog`.)
//!
//! One file per step: [`create`] (a new stack), [`release`] (a redeploy), [`status`] (a
//! service's progress report), [`deploy`] (a deploy's end: live, failed while an older release
//! keeps serving, or failed; also a deploy given up after retries), [`delete`] (the deletion
//! request and the teardown's end), [`restart`] (a restart of the live release's services in
//! place: the request, the job's reports and its end), [`team`] (teams and tokens).

pub mod create;
pub mod delete;
pub mod deploy;
pub mod promote;
pub mod release;
pub mod restart;
pub mod status;
pub mod team;

use crate::ids::{ServiceName, StackSlug};
use crate::model::{
    JobKind, NewEvent, Release, ReleaseService, ReleaseStatus, Service, Stack, TeamId,
};
use crate::store::IdempotencyRecord;
use crate::time::Millis;

/// Audit kinds of lifecycle changes (the env ones are in `crate::envlog`).
pub mod audit_kind {
    pub const TEAM_CREATED: &str = "team.created";
    pub const TOKEN_CREATED: &str = "token.created";
    pub const TOKEN_REVOKED: &str = "token.revoked";
    pub const STACK_CREATED: &str = "stack.created";
    pub const REDEPLOY_REQUESTED: &str = "stack.redeploy_requested";
    pub const DEPLOYED: &str = "stack.deployed";
    pub const DEPLOY_FAILED: &str = "stack.deploy_failed";
    pub const DELETION_REQUESTED: &str = "stack.deletion_requested";
    pub const RESTART_REQUESTED: &str = "stack.restart_requested";
    pub const DELETED: &str = "stack.deleted";
    pub const PROMOTED: &str = "stack.promoted";
    pub const PROMOTION_REQUESTED: &str = "promotion.requested";
    pub const PROMOTION_APPROVED: &str = "promotion.approved";
    pub const PROMOTION_REJECTED: &str = "promotion.rejected";
    pub const DOMAIN_ADDED: &str = "domain.added";
    pub const DOMAIN_REMOVED: &str = "domain.removed";
    pub const DOMAIN_CERTIFICATE_ISSUED: &str = "domain.certificate_issued";
    pub const DOMAIN_CERTIFICATE_REFUSED: &str = "domain.certificate_refused";
}

/// What a store reads under the stack's lock before a lifecycle step: everything any step
/// decides from.
#[derive(Debug, Clone, PartialEq)]
pub struct Locked {
    pub stack: Stack,
    /// The stack's service rows, in position (manifest) order.
    pub services: Vec<Service>,
    /// The stack's newest release (`Stack::release`) and every release that is `pending` or
    /// `live`, each once, oldest first.
    pub releases: Vec<Release>,
}

impl Locked {
    fn release(&self, version: i64) -> Option<&Release> {
        self.releases.iter().find(|r| r.info.version == version)
    }

    fn with_status(&self, status: ReleaseStatus) -> impl Iterator<Item = &Release> {
        self.releases
            .iter()
            .filter(move |r| r.info.status == status)
    }
}

/// A plan and the value the store method returns once the plan is committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned<T> {
    pub plan: Plan,
    pub outcome: T,
}

/// Every row a lifecycle step writes. The stores write the parts in the order of the fields
/// (the stack row first, since the release insert copies its env map; jobs after superseding;
/// events last but for the idempotency record), all inside the transaction that read
/// [`Locked`]. The stack's id and slug come from that read (or from the insert).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The time every row written is stamped with.
    pub at: Millis,
    pub stack: Option<StackWrite>,
    pub services: Vec<ServiceWrite>,
    pub releases: Vec<ReleaseWrite>,
    /// Env version 0 (the empty map, a snapshot), written by this actor: only a new stack.
    pub env_version_zero: Option<String>,
    pub jobs: Vec<JobWrite>,
    /// `(digest, size)` artifact rows; digests already known are kept.
    pub artifacts: Vec<(String, i64)>,
    pub audit: Option<AuditRecord>,
    pub events: Vec<NewEvent>,
    pub idempotency: Option<IdempotencyRecord>,
}

impl Plan {
    /// A plan that writes nothing, stamped `at`.
    pub fn nothing(at: Millis) -> Plan {
        Plan {
            at,
            stack: None,
            services: Vec::new(),
            releases: Vec::new(),
            env_version_zero: None,
            jobs: Vec::new(),
            artifacts: Vec::new(),
            audit: None,
            events: Vec::new(),
            idempotency: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Plan::nothing(self.at)
    }
}

/// The stack row.
#[derive(Debug, Clone, PartialEq)]
pub enum StackWrite {
    /// A new row with `stack`'s values (its `id` is assigned by the database), the client
    /// fingerprint of an anonymous creator, the manifest, and an empty env map.
    Insert {
        stack: Stack,
        fingerprint: Option<String>,
        manifest: String,
    },
    /// The lifecycle columns (`status`, `error`, `release`, `op_generation`, `updated_at`) set
    /// to `stack`'s values, and the manifest replaced when one is given. The env columns are
    /// the env path's and are left alone.
    Update {
        stack: Stack,
        manifest: Option<String>,
    },
    /// The row and everything hanging off it (services, releases, env versions); audit, job
    /// and event rows stay.
    Delete,
}

/// One service row.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceWrite {
    /// Insert or update the row named `service.name`, at `position`, with exactly these values.
    Put {
        position: i64,
        service: Service,
    },
    Remove(ServiceName),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReleaseWrite {
    /// A new `pending` release of these services recording the stack's env map and env version
    /// as they are in the locked row (the database copies the map; it is never decoded here).
    Insert {
        version: i64,
        services: Vec<ReleaseService>,
    },
    SetStatus {
        version: i64,
        status: ReleaseStatus,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobWrite {
    /// The stack's queued jobs become `superseded`: they can no longer run.
    SupersedeQueued,
    /// A new queued job of the stack (`service`: the one service a restart names).
    Queue {
        kind: JobKind,
        generation: i64,
        release: i64,
        service: Option<ServiceName>,
    },
}

/// How a worker's claimed job ends; the stores write it fenced by the claim (`WHERE id = … AND
/// claim = … AND state = 'running'`), and a fence that matches nothing means the claim was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Done,
    /// Back to the queue, to run again at `run_after`.
    Retry {
        run_after: Millis,
        error: String,
    },
    /// Failed for good.
    GiveUp {
        error: String,
    },
}

/// The audit row a change writes. `metadata` holds key names, counts and statuses, never env
/// values or tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub at: Millis,
    pub team_id: Option<TeamId>,
    pub actor: String,
    pub kind: &'static str,
    pub stack_slug: Option<StackSlug>,
    pub request_id: Option<String>,
    pub metadata: serde_json::Value,
}

/// The `service.status` event of a service as it is now.
fn service_event(s: &Service) -> NewEvent {
    NewEvent::service_status(
        s.name.as_str(),
        s.status.as_str(),
        s.url.as_deref(),
        s.error.as_deref(),
    )
}

/// The rows that make the stack's services match `target` (a release's list, in its order),
/// each with `status` and no error: rows of services not in it are removed, the others put in
/// its order. A kept row keeps its URL: the release that serves it now keeps serving until the
/// runtime reports the new one. Returns the writes and the rows as they will be.
fn sync_services(
    current: &[Service],
    target: &[ReleaseService],
    status: crate::model::ServiceStatus,
) -> (Vec<ServiceWrite>, Vec<Service>) {
    let mut writes: Vec<ServiceWrite> = current
        .iter()
        .filter(|s| !target.iter().any(|t| t.name == s.name))
        .map(|s| ServiceWrite::Remove(s.name.clone()))
        .collect();
    let mut after = Vec::with_capacity(target.len());
    for (position, t) in target.iter().enumerate() {
        let url = current
            .iter()
            .find(|s| s.name == t.name)
            .and_then(|s| s.url.clone());
        let service = Service {
            name: t.name.clone(),
            status,
            expose: t.expose,
            port: t.port,
            url,
            error: None,
            restarts: 0,
            last_exit: None,
        };
        writes.push(ServiceWrite::Put {
            position: i64::try_from(position).unwrap_or(i64::MAX),
            service: service.clone(),
        });
        after.push(service);
    }
    (writes, after)
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! A stack, its services and releases as a store would read them, for the step tests.

    use super::Locked;
    use crate::ids::{ServiceName, StackSlug};
    use crate::model::*;
    use crate::time::Millis;
    use std::collections::BTreeMap;

    pub const NOW: Millis = Millis(1_000);

    pub fn ctx() -> AuditCtx {
        AuditCtx {
            actor: Actor::token(7),
            request_id: Some("req-1".into()),
            now: NOW,
        }
    }

    pub fn release_service(name: &str) -> ReleaseService {
        ReleaseService {
            name: ServiceName::parse(name).unwrap(),
            artifact: format!("sha-{name}"),
            image: None,
            command: "run".into(),
            workdir: String::new(),
            port: 8000,
            expose: name == "web",
            health: None,
            env: BTreeMap::new(),
            needs: Vec::new(),
        }
    }

    pub fn service(name: &str, status: ServiceStatus, url: Option<&str>) -> Service {
        Service {
            name: ServiceName::parse(name).unwrap(),
            status,
            expose: name == "web",
            port: 8000,
            url: url.map(str::to_owned),
            error: None,
            restarts: 0,
            last_exit: None,
        }
    }

    pub fn release(version: i64, status: ReleaseStatus, names: &[&str]) -> Release {
        Release {
            info: ReleaseInfo {
                version,
                status,
                env_version: 0,
                created_at: Millis(0),
            },
            services: names.iter().map(|n| release_service(n)).collect(),
        }
    }

    /// Stack at release `release`, generation 3, with `services` and `releases`.
    pub fn locked(
        status: StackStatus,
        release: i64,
        services: Vec<Service>,
        releases: Vec<Release>,
    ) -> Locked {
        Locked {
            stack: Stack {
                id: StackId(9),
                slug: StackSlug::parse("stk-0123456789abcdef01234567").unwrap(),
                name: "demo".into(),
                environment: "development".into(),
                team_id: Some(TeamId(2)),
                tier: "team".into(),
                status,
                error: None,
                env_version: 4,
                release,
                op_generation: 3,
                created_at: Millis(0),
                updated_at: Millis(0),
                expires_at: None,
            },
            services,
            releases,
        }
    }

    pub fn job(kind: JobKind, generation: i64, release: i64) -> Job {
        Job {
            id: 1,
            stack_id: StackId(9),
            slug: StackSlug::parse("stk-0123456789abcdef01234567").unwrap(),
            kind,
            generation,
            release,
            service: None,
            attempts: 1,
            claim: "c".into(),
        }
    }

    pub fn kinds(events: &[NewEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind).collect()
    }
}
