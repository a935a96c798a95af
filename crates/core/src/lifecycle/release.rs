//! A redeploy: what `StackStore::create_release` writes.

use super::{
    AuditRecord, JobWrite, Locked, Plan, Planned, ReleaseWrite, StackWrite, audit_kind,
    sync_services,
};
use crate::model::{
    JobKind, NewEvent, ReleaseInfo, ReleaseStatus, ServiceStatus, Stack, StackStatus,
};
use crate::store::{NewRelease, ReleaseError, StoreError};

/// Release N+1 of the locked stack, `pending`, from the given services or the newest release's,
/// recording the stack's env map of this moment; older pending releases superseded (they can
/// never go live now); the generation bumped; the stack `building` without error; the service
/// rows synced to the new release (each `building`, kept ones keeping their URL); queued jobs
/// superseded and one deploy queued; artifact rows; audit `stack.redeploy_requested`
/// `{release, from_release}`; events `release.status` (each superseded release),
/// `release.created`, `stack.status`; the idempotency record. `Deleting` for a stack being
/// deleted.
pub fn plan(
    locked: &Locked,
    new: NewRelease,
) -> Result<Planned<(Stack, ReleaseInfo)>, ReleaseError> {
    let old = &locked.stack;
    if old.status == StackStatus::Deleting {
        return Err(ReleaseError::Deleting);
    }
    let now = new.ctx.now;
    let services = match new.services {
        Some(services) => services,
        None => locked
            .release(old.release)
            .map(|r| r.services.clone())
            .ok_or_else(|| {
                StoreError::Corrupt("the stack's newest release does not exist".into())
            })?,
    };
    let version = old.release + 1;
    let stack = Stack {
        status: StackStatus::Building,
        error: None,
        release: version,
        op_generation: old.op_generation + 1,
        updated_at: now,
        ..old.clone()
    };
    let info = ReleaseInfo {
        version,
        status: ReleaseStatus::Pending,
        env_version: old.env_version,
        created_at: now,
    };
    let superseded: Vec<i64> = locked
        .with_status(ReleaseStatus::Pending)
        .map(|r| r.info.version)
        .collect();
    let mut releases: Vec<ReleaseWrite> = superseded
        .iter()
        .map(|&v| ReleaseWrite::SetStatus {
            version: v,
            status: ReleaseStatus::Superseded,
        })
        .collect();
    let (service_writes, _) = sync_services(&locked.services, &services, ServiceStatus::Building);
    releases.push(ReleaseWrite::Insert { version, services });
    let mut events: Vec<NewEvent> = superseded
        .iter()
        .map(|&v| NewEvent::release_status(v, ReleaseStatus::Superseded, None))
        .collect();
    events.push(NewEvent::release_created(version, old.env_version));
    events.push(NewEvent::stack_status(StackStatus::Building, None));
    let outcome = (stack.clone(), info);
    let plan = Plan {
        stack: Some(StackWrite::Update {
            stack,
            manifest: new.manifest,
        }),
        services: service_writes,
        releases,
        jobs: vec![
            JobWrite::SupersedeQueued,
            JobWrite::Queue {
                kind: JobKind::Deploy,
                generation: old.op_generation + 1,
                release: version,
                service: None,
            },
        ],
        artifacts: new.artifacts,
        audit: Some(AuditRecord {
            at: now,
            team_id: old.team_id,
            actor: new.ctx.actor.0,
            kind: audit_kind::REDEPLOY_REQUESTED,
            stack_slug: Some(old.slug.clone()),
            request_id: new.ctx.request_id,
            metadata: serde_json::json!({ "release": version, "from_release": old.release }),
        }),
        events,
        idempotency: new.idempotency.map(|i| i.record(&outcome)),
        ..Plan::nothing(now)
    };
    Ok(Planned { plan, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::ServiceWrite;
    use crate::lifecycle::fixtures::*;
    use crate::model::ReleaseStatus::*;

    fn redeploy(services: Option<&[&str]>) -> NewRelease {
        NewRelease {
            services: services.map(|s| s.iter().map(|n| release_service(n)).collect()),
            artifacts: Vec::new(),
            manifest: None,
            ctx: ctx(),
            idempotency: None,
        }
    }

    #[test]
    fn a_deleting_stack_takes_no_release() {
        let l = locked(
            StackStatus::Deleting,
            1,
            vec![],
            vec![release(1, Live, &["web"])],
        );
        assert_eq!(
            plan(&l, redeploy(None)).unwrap_err(),
            ReleaseError::Deleting
        );
    }

    #[test]
    fn redeploy_supersedes_pending_releases_and_queued_jobs_and_bumps_the_generation() {
        let l = locked(
            StackStatus::Healthy,
            3,
            vec![service("web", ServiceStatus::Healthy, Some("http://w"))],
            vec![
                release(1, Live, &["web"]),
                release(2, Pending, &["web"]),
                release(3, Pending, &["web"]),
            ],
        );
        let p = plan(&l, redeploy(None)).unwrap();
        let (stack, info) = &p.outcome;
        assert_eq!(
            (stack.release, stack.op_generation, stack.status),
            (4, 4, StackStatus::Building)
        );
        assert_eq!(
            (info.version, info.env_version, info.status),
            (4, 4, Pending)
        );
        assert_eq!(
            kinds(&p.plan.events),
            [
                "release.status",
                "release.status",
                "release.created",
                "stack.status"
            ]
        );
        assert_eq!(p.plan.events[0].data["release"], 2);
        assert_eq!(
            p.plan.jobs,
            [
                JobWrite::SupersedeQueued,
                JobWrite::Queue {
                    kind: JobKind::Deploy,
                    generation: 4,
                    release: 4,
                    service: None
                }
            ]
        );
        assert!(
            matches!(&p.plan.releases[2], ReleaseWrite::Insert { version: 4, services } if services.len() == 1)
        );
        assert_eq!(
            p.plan.audit.unwrap().metadata,
            serde_json::json!({"release": 4, "from_release": 3})
        );
    }

    #[test]
    fn new_services_replace_the_rows_and_a_kept_service_keeps_its_url() {
        let l = locked(
            StackStatus::Healthy,
            1,
            vec![
                service("web", ServiceStatus::Healthy, Some("http://w")),
                service("old", ServiceStatus::Healthy, None),
            ],
            vec![release(1, Live, &["web", "old"])],
        );
        let p = plan(&l, redeploy(Some(&["api", "web"]))).unwrap();
        assert_eq!(p.plan.services.len(), 3);
        assert!(matches!(&p.plan.services[0], ServiceWrite::Remove(n) if n.as_str() == "old"));
        let ServiceWrite::Put { position, service } = &p.plan.services[2] else {
            panic!()
        };
        assert_eq!(
            (*position, service.name.as_str(), service.url.as_deref()),
            (1, "web", Some("http://w"))
        );
        assert_eq!(service.status, ServiceStatus::Building);
    }

    #[test]
    fn a_missing_newest_release_is_corrupt_data() {
        let l = locked(
            StackStatus::Healthy,
            2,
            vec![],
            vec![release(1, Live, &["web"])],
        );
        assert!(matches!(
            plan(&l, redeploy(None)),
            Err(ReleaseError::Store(StoreError::Corrupt(_)))
        ));
    }
}
