//! The end of a deploy: what `JobStore::finish_deploy` writes once the runtime reported, and
//! what `JobStore::retry_job` writes when a deploy is given up.
//!
//! Three outcomes, each with its own events:
//! - **live**: the release `live` (any other live one `superseded`), the stack `healthy`;
//!   audit `stack.deployed`; events `release.status` (each superseded release, then the new
//!   live one), `stack.status`.
//! - **failed while an older release is live** (a rolling redeploy: the runtime keeps the old
//!   one serving): the release `failed`, the service rows back to the live release's services,
//!   `healthy`; the stack `healthy` with error `release vN failed: <error>`; audit
//!   `stack.deploy_failed` `{release, error, still_serving}`; events `release.status`,
//!   `service.status` for every service, `stack.status`.
//! - **failed with nothing live**: the release, the stack and its unfinished services `failed`;
//!   audit `stack.deploy_failed` `{release, error}`; events `release.status`, `service.status`
//!   for each service changed, `stack.status`.

use super::{
    AuditRecord, Locked, Plan, ReleaseWrite, ServiceWrite, StackWrite, audit_kind, service_event,
    sync_services,
};
use crate::model::{
    Actor, Job, JobKind, NewEvent, ReleaseStatus, Service, ServiceStatus, Stack, StackStatus,
    failed_release_message,
};
use crate::store::DeployResult;
use crate::time::Millis;

/// What a finished deploy job writes besides closing itself. Nothing when the stack is gone or
/// a newer operation (a redeploy, the deletion) owns it: then only the job is closed.
pub fn finish(locked: Option<&Locked>, job: &Job, result: &DeployResult, now: Millis) -> Plan {
    let Some(locked) = locked.filter(|l| l.stack.op_generation == job.generation) else {
        return Plan::nothing(now);
    };
    if result.ok {
        return live(locked, job, now);
    }
    let error = result.error.as_deref();
    let still_serving = locked
        .with_status(ReleaseStatus::Live)
        .map(|r| r.info.version)
        .filter(|&v| v != job.release)
        .max();
    match still_serving {
        Some(live) => keep_serving(locked, job, live, error, now),
        None => fail(locked, job, error, now),
    }
}

/// A deploy given up after its retries ends like a failed `finish`; other jobs (teardowns are
/// retried forever) and stale generations write nothing beyond the job.
pub fn give_up(locked: Option<&Locked>, job: &Job, error: &str, now: Millis) -> Plan {
    if job.kind != JobKind::Deploy {
        return Plan::nothing(now);
    }
    let result = DeployResult {
        ok: false,
        error: Some(error.to_owned()),
    };
    finish(locked, job, &result, now)
}

fn audit(
    locked: &Locked,
    now: Millis,
    kind: &'static str,
    metadata: serde_json::Value,
) -> AuditRecord {
    AuditRecord {
        at: now,
        team_id: locked.stack.team_id,
        actor: Actor::system().0,
        kind,
        stack_slug: Some(locked.stack.slug.clone()),
        request_id: None,
        metadata,
    }
}

fn stack_update(
    locked: &Locked,
    status: StackStatus,
    error: Option<String>,
    now: Millis,
) -> StackWrite {
    StackWrite::Update {
        stack: Stack {
            status,
            error,
            updated_at: now,
            ..locked.stack.clone()
        },
        manifest: None,
    }
}

fn live(locked: &Locked, job: &Job, now: Millis) -> Plan {
    let superseded: Vec<i64> = locked
        .with_status(ReleaseStatus::Live)
        .map(|r| r.info.version)
        .filter(|&v| v != job.release)
        .collect();
    let mut releases: Vec<ReleaseWrite> = superseded
        .iter()
        .map(|&version| ReleaseWrite::SetStatus {
            version,
            status: ReleaseStatus::Superseded,
        })
        .collect();
    releases.push(ReleaseWrite::SetStatus {
        version: job.release,
        status: ReleaseStatus::Live,
    });
    let mut events: Vec<NewEvent> = superseded
        .iter()
        .map(|&v| NewEvent::release_status(v, ReleaseStatus::Superseded, None))
        .collect();
    events.push(NewEvent::release_status(
        job.release,
        ReleaseStatus::Live,
        None,
    ));
    events.push(NewEvent::stack_status(StackStatus::Healthy, None));
    Plan {
        stack: Some(stack_update(locked, StackStatus::Healthy, None, now)),
        releases,
        audit: Some(audit(
            locked,
            now,
            audit_kind::DEPLOYED,
            serde_json::json!({ "release": job.release }),
        )),
        events,
        ..Plan::nothing(now)
    }
}

fn failed_release(job: &Job) -> ReleaseWrite {
    ReleaseWrite::SetStatus {
        version: job.release,
        status: ReleaseStatus::Failed,
    }
}

fn keep_serving(locked: &Locked, job: &Job, live: i64, error: Option<&str>, now: Millis) -> Plan {
    let live_services = locked
        .release(live)
        .map(|r| r.services.as_slice())
        .unwrap_or_default();
    let (services, after) = sync_services(&locked.services, live_services, ServiceStatus::Healthy);
    let message = failed_release_message(job.release, error);
    let mut events = vec![NewEvent::release_status(
        job.release,
        ReleaseStatus::Failed,
        error,
    )];
    events.extend(after.iter().map(service_event));
    events.push(NewEvent::stack_status(StackStatus::Healthy, Some(&message)));
    Plan {
        stack: Some(stack_update(
            locked,
            StackStatus::Healthy,
            Some(message),
            now,
        )),
        services,
        releases: vec![failed_release(job)],
        audit: Some(audit(
            locked,
            now,
            audit_kind::DEPLOY_FAILED,
            serde_json::json!({ "release": job.release, "error": error, "still_serving": live }),
        )),
        events,
        ..Plan::nothing(now)
    }
}

fn fail(locked: &Locked, job: &Job, error: Option<&str>, now: Millis) -> Plan {
    // Only rows that change: unfinished services, and failed ones still without an error.
    let mut services = Vec::new();
    let mut events = vec![NewEvent::release_status(
        job.release,
        ReleaseStatus::Failed,
        error,
    )];
    for (position, s) in locked.services.iter().enumerate() {
        let unfinished = s.status != ServiceStatus::Healthy && s.status != ServiceStatus::Failed;
        let lacks_error = s.status == ServiceStatus::Failed && s.error.is_none() && error.is_some();
        if !(unfinished || lacks_error) {
            continue;
        }
        let failed = Service {
            status: ServiceStatus::Failed,
            error: s.error.clone().or_else(|| error.map(str::to_owned)),
            ..s.clone()
        };
        events.push(service_event(&failed));
        services.push(ServiceWrite::Put {
            position: i64::try_from(position).unwrap_or(i64::MAX),
            service: failed,
        });
    }
    events.push(NewEvent::stack_status(StackStatus::Failed, error));
    Plan {
        stack: Some(stack_update(
            locked,
            StackStatus::Failed,
            error.map(str::to_owned),
            now,
        )),
        services,
        releases: vec![failed_release(job)],
        audit: Some(audit(
            locked,
            now,
            audit_kind::DEPLOY_FAILED,
            serde_json::json!({ "release": job.release, "error": error }),
        )),
        events,
        ..Plan::nothing(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::fixtures::*;
    use crate::model::ReleaseStatus::*;

    fn ok() -> DeployResult {
        DeployResult {
            ok: true,
            error: None,
        }
    }

    fn failed(e: &str) -> DeployResult {
        DeployResult {
            ok: false,
            error: Some(e.into()),
        }
    }

    #[test]
    fn a_successful_deploy_goes_live_and_supersedes_the_old_live_release() {
        let l = locked(
            StackStatus::Deploying,
            2,
            vec![service("web", ServiceStatus::Healthy, Some("http://w"))],
            vec![release(1, Live, &["web"]), release(2, Pending, &["web"])],
        );
        let p = finish(Some(&l), &job(JobKind::Deploy, 3, 2), &ok(), NOW);
        assert_eq!(
            p.releases,
            [
                ReleaseWrite::SetStatus {
                    version: 1,
                    status: Superseded
                },
                ReleaseWrite::SetStatus {
                    version: 2,
                    status: Live
                }
            ]
        );
        assert_eq!(
            kinds(&p.events),
            ["release.status", "release.status", "stack.status"]
        );
        assert_eq!(p.audit.unwrap().kind, "stack.deployed");
    }

    #[test]
    fn a_failed_redeploy_with_a_live_release_keeps_serving_it() {
        let l = locked(
            StackStatus::Building,
            2,
            vec![
                service("api", ServiceStatus::Failed, None),
                service("web", ServiceStatus::Building, Some("http://w")),
            ],
            vec![
                release(1, Live, &["web"]),
                release(2, Pending, &["api", "web"]),
            ],
        );
        let p = finish(
            Some(&l),
            &job(JobKind::Deploy, 3, 2),
            &failed("crashed"),
            NOW,
        );
        let Some(StackWrite::Update { stack, .. }) = &p.stack else {
            panic!()
        };
        assert_eq!(stack.status, StackStatus::Healthy);
        assert_eq!(stack.error.as_deref(), Some("release v2 failed: crashed"));
        assert!(matches!(&p.services[0], ServiceWrite::Remove(n) if n.as_str() == "api"));
        assert_eq!(
            kinds(&p.events),
            ["release.status", "service.status", "stack.status"]
        );
        assert_eq!(p.events[1].data["url"], "http://w");
        assert_eq!(p.audit.unwrap().metadata["still_serving"], 1);
    }

    #[test]
    fn a_failed_first_deploy_fails_only_the_unfinished_services() {
        let l = locked(
            StackStatus::Deploying,
            1,
            vec![
                service("api", ServiceStatus::Healthy, None),
                service("web", ServiceStatus::Deploying, None),
            ],
            vec![release(1, Pending, &["api", "web"])],
        );
        let p = finish(
            Some(&l),
            &job(JobKind::Deploy, 3, 1),
            &failed("timeout"),
            NOW,
        );
        assert_eq!(p.services.len(), 1);
        assert_eq!(
            kinds(&p.events),
            ["release.status", "service.status", "stack.status"]
        );
        assert_eq!(p.events[1].data["error"], "timeout");
        assert_eq!(
            p.releases,
            [ReleaseWrite::SetStatus {
                version: 1,
                status: Failed
            }]
        );
    }

    #[test]
    fn a_deploy_of_a_superseded_generation_or_a_gone_stack_only_closes_its_job() {
        let l = locked(
            StackStatus::Building,
            2,
            vec![],
            vec![release(2, Pending, &["web"])],
        );
        assert!(finish(Some(&l), &job(JobKind::Deploy, 2, 1), &ok(), NOW).is_empty());
        assert!(finish(None, &job(JobKind::Deploy, 3, 2), &ok(), NOW).is_empty());
    }

    #[test]
    fn giving_up_fails_a_deploy_but_never_a_teardown() {
        let l = locked(
            StackStatus::Building,
            1,
            vec![],
            vec![release(1, Pending, &["web"])],
        );
        assert!(!give_up(Some(&l), &job(JobKind::Deploy, 3, 1), "down", NOW).is_empty());
        assert!(give_up(Some(&l), &job(JobKind::Teardown, 3, 1), "down", NOW).is_empty());
    }
}
