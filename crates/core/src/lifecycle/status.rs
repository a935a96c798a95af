//! A running deploy's progress report: what `JobStore::record_service_status` writes.

use super::{Locked, Plan, ServiceWrite, StackWrite, service_event};
use crate::ids::ServiceName;
use crate::model::{Job, NewEvent, Service, ServiceStatus, Stack, StackStatus};
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
    let position = locked
        .services
        .iter()
        .position(|s| &s.name == report.service)?;
    let before = &locked.services[position];
    let after = Service {
        status: report.status,
        url: report.url.map(str::to_owned),
        error: report.error.map(str::to_owned),
        ..before.clone()
    };
    let changed =
        before.status != after.status || before.url != after.url || before.error != after.error;
    let mut services = locked.services.clone();
    services[position] = after.clone();
    let status = StackStatus::from_services(services.iter().map(|s| &s.status));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::fixtures::*;
    use crate::model::{JobKind, ReleaseStatus};

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
