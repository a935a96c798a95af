//! A running deploy's progress report (what `JobStore::record_service_status` writes), and the
//! supervisor's reports about the live release between operations (`supervise`).

use super::{Locked, Plan, ServiceWrite, StackWrite, service_event};
use crate::ids::ServiceName;
use crate::model::{Job, NewEvent, ReleaseStatus, Service, ServiceStatus, Stack, StackStatus};
use crate::time::Millis;

/// What a runtime reports about one service.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    pub service: &'a ServiceName,
    pub status: ServiceStatus,
    pub url: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// The service row set to the report, and the stack's status moved along
/// (`StackStatus::from_services`, with the first failed service's error as the stack's);
/// events `service.status` when the service changed and `stack.status` when the stack's status
/// or error changed. `None` — nothing to write — when a newer operation owns the stack (the
/// job's generation is not the stack's, or the stack is being deleted) or it has no such
/// service.
pub fn record(locked: &Locked, job: &Job, report: Report<'_>, now: Millis) -> Option<Plan> {
    let old = &locked.stack;
    if old.op_generation != job.generation || old.status == StackStatus::Deleting {
        return None;
    }
    let after = |before: &Service| Service {
        status: report.status,
        url: report.url.map(str::to_owned),
        error: report.error.map(str::to_owned),
        ..before.clone()
    };
    put_service(locked, report.service, after, now, |services| {
        StackStatus::from_services(services.iter().map(|s| &s.status))
    })
}

/// A progress event of a running job (`build.step`): written when the job's generation is
/// still the stack's and the stack is not being deleted, like [`record`]; `None` otherwise.
pub fn progress(locked: &Locked, job: &Job, event: NewEvent, now: Millis) -> Option<Plan> {
    let old = &locked.stack;
    if old.op_generation != job.generation || old.status == StackStatus::Deleting {
        return None;
    }
    Some(Plan {
        events: vec![event],
        ..Plan::nothing(now)
    })
}

/// The plan that replaces service `name` with `edit` of it: the stack's status as `status_of`
/// the services decides, its error the first failed service's; events `service.status` when
/// the service's status, URL or error changed and `stack.status` when the stack's status or
/// error did. `None` when the stack has no such service.
pub(super) fn put_service(
    locked: &Locked,
    name: &ServiceName,
    edit: impl FnOnce(&Service) -> Service,
    now: Millis,
    status_of: impl FnOnce(&[Service]) -> StackStatus,
) -> Option<Plan> {
    let position = locked.services.iter().position(|s| &s.name == name)?;
    let (old, before) = (&locked.stack, &locked.services[position]);
    let after = edit(before);
    let changed =
        before.status != after.status || before.url != after.url || before.error != after.error;
    let mut services = locked.services.clone();
    services[position] = after.clone();
    let status = status_of(&services);
    let error = services
        .iter()
        .filter(|s| s.status == ServiceStatus::Failed)
        .find_map(|s| s.error.clone());
    let mut events = Vec::new();
    if changed {
        events.push(service_event(&after));
    }
    if old.status != status || old.error != error {
        events.push(NewEvent::stack_status(status, error.as_deref()));
    }
    Some(Plan {
        stack: Some(StackWrite::Update {
            stack: Stack {
                status,
                error,
                updated_at: now,
                ..old.clone()
            },
            manifest: None,
        }),
        services: vec![ServiceWrite::Put {
            position: i64::try_from(position).unwrap_or(i64::MAX),
            service: after,
        }],
        events,
        ..Plan::nothing(now)
    })
}

/// What the supervisor reports about one service of the live release.
#[derive(Debug, Clone, Copy)]
pub struct Supervised<'a> {
    pub release: i64,
    pub service: &'a ServiceName,
    /// `Crashed`, `Restarting`, `Healthy` (back up) or `Failed` (crash loop).
    pub status: ServiceStatus,
    pub error: Option<&'a str>,
    pub restarts: i64,
    pub last_exit: Option<&'a str>,
}

/// The service row set to the supervisor's report, the stack `degraded` while any service is
/// not healthy and `healthy` again once all are; events `service.status` and `stack.status` as
/// they change. `None` when the report is stale: the stack is not resting on a live release
/// (an operation runs, or it is being deleted), `release` is not the live one, or it has no
/// such service. A crashed service's URL stays: the route still points at its port.
pub fn supervise(locked: &Locked, report: Supervised<'_>, now: Millis) -> Option<Plan> {
    let old = &locked.stack;
    let resting = matches!(old.status, StackStatus::Healthy | StackStatus::Degraded);
    let live = locked
        .with_status(ReleaseStatus::Live)
        .any(|r| r.info.version == report.release);
    if !resting || !live {
        return None;
    }
    let after = |before: &Service| Service {
        status: report.status,
        error: report.error.map(str::to_owned),
        restarts: report.restarts,
        last_exit: report.last_exit.map(str::to_owned),
        ..before.clone()
    };
    put_service(locked, report.service, after, now, |services| {
        if services.iter().all(|s| s.status == ServiceStatus::Healthy) {
            StackStatus::Healthy
        } else {
            StackStatus::Degraded
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::fixtures::*;
    use crate::model::JobKind;

    fn two_services() -> Locked {
        locked(
            StackStatus::Building,
            1,
            vec![
                service("api", ServiceStatus::Building, None),
                service("web", ServiceStatus::Building, None),
            ],
            vec![release(1, ReleaseStatus::Pending, &["api", "web"])],
        )
    }

    fn report<'a>(
        name: &'a ServiceName,
        status: ServiceStatus,
        error: Option<&'static str>,
    ) -> Report<'a> {
        Report {
            service: name,
            status,
            url: None,
            error,
        }
    }

    #[test]
    fn the_stack_follows_its_slowest_service_and_events_only_say_what_changed() {
        let l = two_services();
        let api = ServiceName::parse("api").unwrap();
        let job = job(JobKind::Deploy, 3, 1);
        let p = record(&l, &job, report(&api, ServiceStatus::Deploying, None), NOW).unwrap();
        assert_eq!(kinds(&p.events), ["service.status"]);
        let p = record(&l, &job, report(&api, ServiceStatus::Building, None), NOW).unwrap();
        assert!(p.events.is_empty(), "nothing changed, nothing to tell");
        let p = record(
            &l,
            &job,
            report(&api, ServiceStatus::Failed, Some("boom")),
            NOW,
        )
        .unwrap();
        assert_eq!(kinds(&p.events), ["service.status", "stack.status"]);
        assert_eq!(
            p.events[1].data,
            serde_json::json!({"status": "failed", "error": "boom"})
        );
    }

    #[test]
    fn a_progress_event_is_written_alone_and_only_by_the_owning_job() {
        let l = two_services();
        let generation = l.stack.op_generation;
        let step = || NewEvent::build_step("api", 1, 3, "RUN make", "running", None);
        let p = progress(&l, &job(JobKind::Deploy, generation, 1), step(), NOW).unwrap();
        assert_eq!(kinds(&p.events), ["build.step"]);
        assert!(p.stack.is_none() && p.services.is_empty());
        assert!(progress(&l, &job(JobKind::Deploy, generation - 1, 1), step(), NOW).is_none());
    }

    fn live_two_services() -> Locked {
        locked(
            StackStatus::Healthy,
            1,
            vec![
                service("api", ServiceStatus::Healthy, None),
                service("web", ServiceStatus::Healthy, Some("http://web")),
            ],
            vec![release(1, ReleaseStatus::Live, &["api", "web"])],
        )
    }

    fn supervised(name: &ServiceName, status: ServiceStatus, restarts: i64) -> Supervised<'_> {
        Supervised {
            release: 1,
            service: name,
            status,
            error: (status == ServiceStatus::Failed).then_some("crash loop"),
            restarts,
            last_exit: Some("exited with status 1"),
        }
    }

    #[test]
    fn a_crash_degrades_the_stack_until_the_service_is_healthy_again() {
        let mut l = live_two_services();
        let web = ServiceName::parse("web").unwrap();
        let p = supervise(&l, supervised(&web, ServiceStatus::Crashed, 0), NOW).unwrap();
        assert_eq!(kinds(&p.events), ["service.status", "stack.status"]);
        assert_eq!(p.events[1].data["status"], "degraded");
        let ServiceWrite::Put { service, .. } = &p.services[0] else {
            panic!("a put")
        };
        assert_eq!(service.last_exit.as_deref(), Some("exited with status 1"));
        assert_eq!(
            service.url.as_deref(),
            Some("http://web"),
            "the route stays"
        );

        l.stack.status = StackStatus::Degraded;
        l.services[1].status = ServiceStatus::Restarting;
        let p = supervise(&l, supervised(&web, ServiceStatus::Healthy, 1), NOW).unwrap();
        assert_eq!(kinds(&p.events), ["service.status", "stack.status"]);
        assert_eq!(p.events[1].data["status"], "healthy");
        let ServiceWrite::Put { service, .. } = &p.services[0] else {
            panic!("a put")
        };
        assert_eq!(service.restarts, 1);

        let p = supervise(&l, supervised(&web, ServiceStatus::Failed, 6), NOW).unwrap();
        let Some(StackWrite::Update { stack, .. }) = &p.stack else {
            panic!("a stack update")
        };
        assert_eq!(
            stack.status,
            StackStatus::Degraded,
            "the other service still serves"
        );
        assert_eq!(stack.error.as_deref(), Some("crash loop"));
    }

    #[test]
    fn supervisor_reports_about_an_older_release_or_during_an_operation_write_nothing() {
        let mut l = live_two_services();
        let web = ServiceName::parse("web").unwrap();
        let r = supervised(&web, ServiceStatus::Crashed, 0);
        l.releases[0].info.status = ReleaseStatus::Superseded;
        assert!(supervise(&l, r, NOW).is_none(), "release 1 is not live");
        l.releases[0].info.status = ReleaseStatus::Live;
        assert!(supervise(&l, r, NOW).is_some());
        for busy in [
            StackStatus::Deploying,
            StackStatus::Building,
            StackStatus::Deleting,
        ] {
            l.stack.status = busy;
            assert!(supervise(&l, r, NOW).is_none(), "{busy:?}");
        }
    }

    #[test]
    fn a_stale_generation_a_deleting_stack_or_an_unknown_service_writes_nothing() {
        let l = two_services();
        let api = ServiceName::parse("api").unwrap();
        let other = ServiceName::parse("db").unwrap();
        let r = report(&api, ServiceStatus::Healthy, None);
        assert!(record(&l, &job(JobKind::Deploy, 2, 1), r, NOW).is_none());
        assert!(
            record(
                &l,
                &job(JobKind::Deploy, 3, 1),
                report(&other, ServiceStatus::Healthy, None),
                NOW
            )
            .is_none()
        );
        let mut deleting = l.clone();
        deleting.stack.status = StackStatus::Deleting;
        assert!(record(&deleting, &job(JobKind::Deploy, 3, 1), r, NOW).is_none());
    }
}
