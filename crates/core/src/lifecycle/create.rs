//! A new stack: what `StackStore::create_stack` writes.

use super::{
    AuditRecord, JobWrite, Plan, Planned, ReleaseWrite, ServiceWrite, StackWrite, audit_kind,
};
use crate::model::{JobKind, NewEvent, Service, ServiceStatus, Stack, StackId, StackStatus};
use crate::store::{CreateStackError, NewStack};

/// A capped team's limit and its current stack count (deleting stacks excluded), read under
/// the team's lock so that concurrent creates cannot both pass the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeamCap {
    pub max: i64,
    pub count: i64,
}

/// The stack (`building`, release 1, generation 1, env version 0), its services (`building`),
/// release v1, env version 0, the deploy job, artifact rows, audit `stack.created`, events
/// `stack.status` and `release.created`, and the idempotency record; or `LimitReached` when
/// the team is at its cap. The outcome's `id` is 0: the database assigns it on insert.
pub fn plan(new: NewStack, cap: Option<TeamCap>) -> Result<Planned<Stack>, CreateStackError> {
    if let Some(cap) = cap
        && cap.count >= cap.max
    {
        return Err(CreateStackError::LimitReached { max: cap.max });
    }
    let now = new.ctx.now;
    let stack = Stack {
        id: StackId(0),
        slug: new.slug,
        name: new.name,
        environment: new.environment,
        team_id: new.team_id,
        tier: new.tier,
        status: StackStatus::Building,
        error: None,
        env_version: 0,
        release: 1,
        op_generation: 1,
        created_at: now,
        updated_at: now,
        expires_at: new.expires_at,
    };
    let services = new
        .services
        .iter()
        .enumerate()
        .map(|(position, s)| ServiceWrite::Put {
            position: i64::try_from(position).unwrap_or(i64::MAX),
            service: Service {
                name: s.name.clone(),
                status: ServiceStatus::Building,
                expose: s.expose,
                port: s.port,
                url: None,
                error: None,
                restarts: 0,
                last_exit: None,
            },
        })
        .collect();
    let names: Vec<&str> = new.services.iter().map(|s| s.name.as_str()).collect();
    let audit = AuditRecord {
        at: now,
        team_id: stack.team_id,
        actor: new.ctx.actor.0.clone(),
        kind: audit_kind::STACK_CREATED,
        stack_slug: Some(stack.slug.clone()),
        request_id: new.ctx.request_id.clone(),
        metadata: serde_json::json!({
            "name": stack.name,
            "env": stack.environment,
            "tier": stack.tier,
            "services": names,
            "release": 1,
        }),
    };
    let plan = Plan {
        services,
        releases: vec![ReleaseWrite::Insert {
            version: 1,
            services: new.services.clone(),
        }],
        env_version_zero: Some(new.ctx.actor.0.clone()),
        jobs: vec![JobWrite::Queue {
            kind: JobKind::Deploy,
            generation: 1,
            release: 1,
            service: None,
        }],
        artifacts: new.artifacts,
        audit: Some(audit),
        events: vec![
            NewEvent::stack_status(StackStatus::Building, None),
            NewEvent::release_created(1, 0),
        ],
        idempotency: new.idempotency.map(|i| i.record(&stack)),
        stack: Some(StackWrite::Insert {
            stack: stack.clone(),
            fingerprint: new.fingerprint,
            manifest: new.manifest,
        }),
        ..Plan::nothing(now)
    };
    Ok(Planned {
        plan,
        outcome: stack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StackSlug;
    use crate::lifecycle::fixtures::{ctx, kinds, release_service};
    use crate::model::TeamId;
    use crate::store::Idempotent;

    fn new_stack() -> NewStack {
        NewStack {
            slug: StackSlug::parse("stk-0123456789abcdef01234567").unwrap(),
            name: "demo".into(),
            environment: "development".into(),
            team_id: Some(TeamId(2)),
            fingerprint: None,
            tier: "team".into(),
            expires_at: None,
            manifest: "services: {}".into(),
            services: vec![release_service("api"), release_service("web")],
            artifacts: vec![("sha-api".into(), 10)],
            ctx: ctx(),
            idempotency: Some(Idempotent::new(
                "team:2".into(),
                "k".into(),
                202,
                |s: &Stack| format!("created {}", s.slug),
            )),
        }
    }

    #[test]
    fn a_team_at_its_cap_gets_limit_reached_and_nothing_is_planned() {
        let err = plan(new_stack(), Some(TeamCap { max: 2, count: 2 })).unwrap_err();
        assert_eq!(err, CreateStackError::LimitReached { max: 2 });
        assert!(plan(new_stack(), Some(TeamCap { max: 3, count: 2 })).is_ok());
        assert!(plan(new_stack(), None).is_ok());
    }

    #[test]
    fn create_writes_building_services_release_one_a_deploy_job_and_its_events() {
        let p = plan(new_stack(), None).unwrap();
        assert_eq!(p.outcome.status, StackStatus::Building);
        assert_eq!((p.outcome.release, p.outcome.op_generation), (1, 1));
        assert_eq!(p.plan.services.len(), 2);
        assert!(
            matches!(&p.plan.services[1], ServiceWrite::Put { position: 1, service } if service.name.as_str() == "web" && service.status == ServiceStatus::Building)
        );
        assert_eq!(
            p.plan.jobs,
            [JobWrite::Queue {
                kind: JobKind::Deploy,
                generation: 1,
                release: 1,
                service: None
            }]
        );
        assert_eq!(kinds(&p.plan.events), ["stack.status", "release.created"]);
        let audit = p.plan.audit.unwrap();
        assert_eq!(audit.kind, "stack.created");
        assert_eq!(
            audit.metadata["services"],
            serde_json::json!(["api", "web"])
        );
        let idem = p.plan.idempotency.unwrap();
        assert_eq!(
            (idem.status, idem.body.as_str()),
            (202, "created stk-0123456789abcdef01234567")
        );
    }
}
