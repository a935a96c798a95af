//! A restart of the live release's services in place, without a new release: the request
//! (`StackStore::request_restart`), the restart job's progress reports (what
//! `JobStore::record_service_status` writes for a `restart` job) and its end
//! (`JobStore::finish_restart`).
//!
//! A restart is not a new operation on the stack: it keeps the operation generation and
//! supersedes no job, so a redeploy or a deletion that comes after it bumps the generation and
//! turns the restart's remaining writes into no-ops. The stack keeps resting on its live
//! release throughout, with the supervisor's rule for its status: `degraded` while any service
//! is not healthy (here: `restarting`), `healthy` once all are; the error is the first failed
//! service's. Restarting a `failed` (crash-looped) service is how it is cleared without a
//! redeploy.

use super::status::{Report, put_service};
use super::{AuditRecord, JobWrite, Locked, Plan, Planned, ServiceWrite, StackWrite, audit_kind};
use crate::ids::ServiceName;
use crate::model::{
    AuditCtx, Job, JobKind, NewEvent, Release, ReleaseStatus, Service, ServiceStatus, Stack,
    StackStatus,
};
use crate::store::{DeployResult, RestartError, RestartQueued};
use crate::time::Millis;

/// The status of a stack resting on its live release: `healthy` when every service is.
fn resting(services: &[Service]) -> StackStatus {
    if services.iter().all(|s| s.status == ServiceStatus::Healthy) {
        StackStatus::Healthy
    } else {
        StackStatus::Degraded
    }
}

/// The live release the stack rests on: `None` while an operation runs (`building`,
/// `deploying`), after a failed first deploy, or while it is being deleted.
fn live_release(locked: &Locked) -> Option<&Release> {
    if !matches!(
        locked.stack.status,
        StackStatus::Healthy | StackStatus::Degraded
    ) {
        return None;
    }
    locked
        .with_status(ReleaseStatus::Live)
        .max_by_key(|r| r.info.version)
}

/// The restart of `service` (or of every service) of the live release: those service rows
/// `restarting` without error, the stack's status and error by the resting rule, one `restart`
/// job at the stack's generation naming the live release (and the service); audit
/// `stack.restart_requested` `{release, services}`; events `restart.requested` (carrying the
/// request id, so a follower finds where its restart starts), then `service.status` for each
/// service that changed and `stack.status` when the stack's status or error did.
pub fn request(
    locked: &Locked,
    service: Option<&ServiceName>,
    ctx: AuditCtx,
) -> Result<Planned<RestartQueued>, RestartError> {
    let old = &locked.stack;
    if old.status == StackStatus::Deleting {
        return Err(RestartError::Deleting);
    }
    let Some(live) = live_release(locked) else {
        return Err(RestartError::NotRunning { status: old.status });
    };
    if let Some(name) = service
        && !live.services.iter().any(|s| &s.name == name)
    {
        return Err(RestartError::UnknownService(name.clone()));
    }
    let names: Vec<ServiceName> = live
        .services
        .iter()
        .map(|s| s.name.clone())
        .filter(|n| service.is_none_or(|wanted| wanted == n))
        .collect();
    let version = live.info.version;

    let mut events = vec![NewEvent::restart_requested(
        version,
        &names,
        ctx.request_id.as_deref(),
    )];
    let mut writes = Vec::new();
    let mut after = locked.services.clone();
    for (position, s) in after.iter_mut().enumerate() {
        if !names.contains(&s.name) {
            continue;
        }
        let restarting = Service {
            status: ServiceStatus::Restarting,
            error: None,
            ..s.clone()
        };
        if restarting != *s {
            events.push(super::service_event(&restarting));
        }
        *s = restarting.clone();
        writes.push(ServiceWrite::Put {
            position: i64::try_from(position).unwrap_or(i64::MAX),
            service: restarting,
        });
    }
    let status = resting(&after);
    let error = after
        .iter()
        .filter(|s| s.status == ServiceStatus::Failed)
        .find_map(|s| s.error.clone());
    if old.status != status || old.error != error {
        events.push(NewEvent::stack_status(status, error.as_deref()));
    }
    let stack = Stack {
        status,
        error,
        updated_at: ctx.now,
        ..old.clone()
    };
    let plan = Plan {
        stack: Some(StackWrite::Update {
            stack: stack.clone(),
            manifest: None,
        }),
        services: writes,
        jobs: vec![JobWrite::Queue {
            kind: JobKind::Restart,
            generation: old.op_generation,
            release: version,
            service: service.cloned(),
        }],
        audit: Some(AuditRecord {
            at: ctx.now,
            team_id: old.team_id,
            actor: ctx.actor.0,
            kind: audit_kind::RESTART_REQUESTED,
            stack_slug: Some(old.slug.clone()),
            request_id: ctx.request_id,
            metadata: serde_json::json!({ "release": version, "services": names }),
        }),
        events,
        ..Plan::nothing(ctx.now)
    };
    Ok(Planned {
        plan,
        outcome: RestartQueued {
            stack,
            release: live.info.clone(),
            services: names,
        },
    })
}

/// Whether `job` still owns what it restarts: the stack's generation is the job's and the
/// stack rests on the job's release as its live one.
fn owns(locked: &Locked, job: &Job) -> bool {
    locked.stack.op_generation == job.generation
        && live_release(locked).is_some_and(|r| r.info.version == job.release)
}

/// A restart job's report about one service: the row set to it (a restart never moves a
/// service, so a report without a URL keeps the one it has), the stack by the resting rule.
/// `None` — nothing to write — when the job no longer owns the stack or it has no such
/// service.
pub fn record(locked: &Locked, job: &Job, report: Report<'_>, now: Millis) -> Option<Plan> {
    if !owns(locked, job) {
        return None;
    }
    let after = |before: &Service| Service {
        status: report.status,
        url: report.url.map(str::to_owned).or_else(|| before.url.clone()),
        error: report.error.map(str::to_owned),
        ..before.clone()
    };
    put_service(locked, report.service, after, now, resting)
}

/// The restart job's end: the job's services still `restarting` (the runtime reported
/// nothing more about them) become `healthy` when the restart succeeded, `failed` with its
/// error when it did not; the stack by the resting rule; events as they change. Nothing when
/// the stack is gone or the job no longer owns it (redeployed or being deleted meanwhile).
pub fn finish(locked: Option<&Locked>, job: &Job, result: &DeployResult, now: Millis) -> Plan {
    let Some(locked) = locked.filter(|l| owns(l, job)) else {
        return Plan::nothing(now);
    };
    let mut current = locked.clone();
    let mut plan = Plan::nothing(now);
    let (status, error) = if result.ok {
        (ServiceStatus::Healthy, None)
    } else {
        (
            ServiceStatus::Failed,
            Some(result.error.as_deref().unwrap_or("the restart failed")),
        )
    };
    let pending: Vec<ServiceName> = current
        .services
        .iter()
        .filter(|s| s.status == ServiceStatus::Restarting)
        .filter(|s| job.service.as_ref().is_none_or(|only| only == &s.name))
        .map(|s| s.name.clone())
        .collect();
    for name in &pending {
        let report = Report {
            service: name,
            status,
            url: None,
            error,
        };
        let Some(step) = record(&current, job, report, now) else {
            continue;
        };
        // Each step is planned on the rows as the previous one left them.
        for w in &step.services {
            if let ServiceWrite::Put { service, .. } = w
                && let Some(row) = current.services.iter_mut().find(|s| s.name == service.name)
            {
                *row = service.clone();
            }
        }
        if let Some(StackWrite::Update { stack, .. }) = &step.stack {
            current.stack = stack.clone();
        }
        plan.services.extend(step.services);
        plan.events.extend(step.events);
        plan.stack = step.stack;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::fixtures::*;
    use crate::model::ReleaseStatus::*;

    fn name(s: &str) -> ServiceName {
        ServiceName::parse(s).unwrap()
    }

    fn running(status: StackStatus, web: ServiceStatus) -> Locked {
        let mut l = locked(
            status,
            1,
            vec![
                service("api", ServiceStatus::Healthy, None),
                service("web", web, Some("http://web")),
            ],
            vec![release(1, Live, &["api", "web"])],
        );
        if web == ServiceStatus::Failed {
            l.services[1].error = Some("crash loop".into());
            l.stack.error = Some("crash loop".into());
        }
        l
    }

    fn restart_job(service: Option<&str>) -> Job {
        Job {
            service: service.map(name),
            ..job(JobKind::Restart, 3, 1)
        }
    }

    fn put(plan: &Plan, i: usize) -> &Service {
        match &plan.services[i] {
            ServiceWrite::Put { service, .. } => service,
            ServiceWrite::Remove(_) => panic!("a put"),
        }
    }

    #[test]
    fn a_whole_stack_restart_queues_one_job_and_marks_every_service_restarting() {
        let l = running(StackStatus::Healthy, ServiceStatus::Healthy);
        let p = request(&l, None, ctx()).unwrap();
        assert_eq!(p.outcome.services, [name("api"), name("web")]);
        assert_eq!(p.outcome.stack.status, StackStatus::Degraded);
        assert_eq!(
            p.outcome.stack.op_generation, 3,
            "a restart is not a new operation"
        );
        assert_eq!(
            p.plan.jobs,
            [JobWrite::Queue {
                kind: JobKind::Restart,
                generation: 3,
                release: 1,
                service: None
            }]
        );
        assert_eq!(
            kinds(&p.plan.events),
            [
                "restart.requested",
                "service.status",
                "service.status",
                "stack.status"
            ]
        );
        assert_eq!(p.plan.events[0].data["request_id"], "req-1");
        assert_eq!(
            put(&p.plan, 1).url.as_deref(),
            Some("http://web"),
            "the route stays"
        );
        let audit = p.plan.audit.unwrap();
        assert_eq!(audit.kind, "stack.restart_requested");
        assert_eq!(
            audit.metadata,
            serde_json::json!({"release": 1, "services": ["api", "web"]})
        );
    }

    #[test]
    fn a_service_restart_names_it_and_leaves_the_others_alone() {
        let l = running(StackStatus::Degraded, ServiceStatus::Failed);
        let p = request(&l, Some(&name("web")), ctx()).unwrap();
        assert_eq!(p.outcome.services, [name("web")]);
        assert_eq!(p.plan.services.len(), 1);
        assert_eq!(put(&p.plan, 0).error, None, "the crash loop is cleared");
        let Some(StackWrite::Update { stack, .. }) = &p.plan.stack else {
            panic!("a stack update")
        };
        assert_eq!(stack.error, None);
        assert!(
            matches!(&p.plan.jobs[0], JobWrite::Queue { service: Some(s), .. } if s.as_str() == "web")
        );
    }

    #[test]
    fn a_restart_is_refused_when_deleting_not_running_or_for_an_unknown_service() {
        let mut l = running(StackStatus::Deleting, ServiceStatus::Healthy);
        assert_eq!(
            request(&l, None, ctx()).unwrap_err(),
            RestartError::Deleting
        );
        for status in [
            StackStatus::Building,
            StackStatus::Deploying,
            StackStatus::Failed,
        ] {
            l.stack.status = status;
            assert_eq!(
                request(&l, None, ctx()).unwrap_err(),
                RestartError::NotRunning { status }
            );
        }
        l.stack.status = StackStatus::Healthy;
        l.releases[0].info.status = Failed;
        assert!(matches!(
            request(&l, None, ctx()),
            Err(RestartError::NotRunning { .. })
        ));
        l.releases[0].info.status = Live;
        assert_eq!(
            request(&l, Some(&name("db")), ctx()).unwrap_err(),
            RestartError::UnknownService(name("db"))
        );
    }

    #[test]
    fn restart_reports_keep_the_url_and_the_stack_heals_when_all_are_healthy() {
        let mut l = running(StackStatus::Degraded, ServiceStatus::Restarting);
        let web = name("web");
        let job = restart_job(Some("web"));
        let healthy = Report {
            service: &web,
            status: ServiceStatus::Healthy,
            url: None,
            error: None,
        };
        let p = record(&l, &job, healthy, NOW).unwrap();
        assert_eq!(put(&p, 0).url.as_deref(), Some("http://web"));
        assert_eq!(kinds(&p.events), ["service.status", "stack.status"]);
        assert_eq!(p.events[1].data["status"], "healthy");

        l.stack.op_generation = 4;
        assert!(record(&l, &job, healthy, NOW).is_none(), "redeployed since");
        l.stack.op_generation = 3;
        l.stack.status = StackStatus::Deleting;
        assert!(record(&l, &job, healthy, NOW).is_none(), "being deleted");
    }

    #[test]
    fn the_end_of_a_restart_settles_the_services_the_runtime_left_restarting() {
        let l = running(StackStatus::Degraded, ServiceStatus::Restarting);
        let ok = DeployResult {
            ok: true,
            error: None,
        };
        let p = finish(Some(&l), &restart_job(None), &ok, NOW);
        assert_eq!(p.services.len(), 1);
        assert_eq!(put(&p, 0).status, ServiceStatus::Healthy);
        assert_eq!(kinds(&p.events), ["service.status", "stack.status"]);

        let failed = DeployResult {
            ok: false,
            error: Some("not running here".into()),
        };
        let p = finish(Some(&l), &restart_job(None), &failed, NOW);
        assert_eq!(put(&p, 0).error.as_deref(), Some("not running here"));
        let Some(StackWrite::Update { stack, .. }) = &p.stack else {
            panic!("a stack update")
        };
        assert_eq!(stack.status, StackStatus::Degraded);

        assert!(finish(None, &restart_job(None), &ok, NOW).is_empty());
        let mut redeployed = l.clone();
        redeployed.stack.status = StackStatus::Building;
        assert!(finish(Some(&redeployed), &restart_job(None), &ok, NOW).is_empty());
        let healthy = running(StackStatus::Healthy, ServiceStatus::Healthy);
        assert!(finish(Some(&healthy), &restart_job(None), &ok, NOW).is_empty());
    }
}
