//! The end of a stack: the deletion request (`StackStore::request_deletion`) and the teardown's
//! end (`JobStore::finish_teardown`).

use super::{AuditRecord, JobWrite, Locked, Plan, Planned, StackWrite, audit_kind};
use crate::model::{Actor, AuditCtx, JobKind, NewEvent, Stack, StackStatus};
use crate::time::Millis;

/// The stack `deleting` with its generation bumped (every older job's writes become no-ops),
/// its queued jobs superseded and a teardown queued for its newest release; audit
/// `stack.deletion_requested` `{previous_status}`; event `stack.status`. A stack already being
/// deleted is left as it is: the plan is empty and the outcome the stack unchanged.
pub fn request(locked: &Locked, ctx: AuditCtx) -> Planned<Stack> {
    let old = &locked.stack;
    if old.status == StackStatus::Deleting {
        return Planned {
            plan: Plan::nothing(ctx.now),
            outcome: old.clone(),
        };
    }
    let stack = Stack {
        status: StackStatus::Deleting,
        op_generation: old.op_generation + 1,
        updated_at: ctx.now,
        ..old.clone()
    };
    let plan = Plan {
        jobs: vec![
            JobWrite::SupersedeQueued,
            // The teardown carries the release it tears down, so deploy_context works for it.
            JobWrite::Queue {
                kind: JobKind::Teardown,
                generation: stack.op_generation,
                release: stack.release,
                service: None,
            },
        ],
        audit: Some(AuditRecord {
            at: ctx.now,
            team_id: old.team_id,
            actor: ctx.actor.0,
            kind: audit_kind::DELETION_REQUESTED,
            stack_slug: Some(old.slug.clone()),
            request_id: ctx.request_id,
            metadata: serde_json::json!({ "previous_status": old.status.as_str() }),
        }),
        events: vec![NewEvent::stack_status(
            StackStatus::Deleting,
            stack.error.as_deref(),
        )],
        stack: Some(StackWrite::Update {
            stack: stack.clone(),
            manifest: None,
        }),
        ..Plan::nothing(ctx.now)
    };
    Planned {
        plan,
        outcome: stack,
    }
}

/// The teardown finished: the stack row goes (its services, releases and env versions with
/// it; audit, job and event rows stay), with audit `stack.deleted` by the system and event
/// `stack.deleted`, the last one of the stack's stream. Nothing when the stack is already gone.
pub fn finish(stack: Option<&Stack>, now: Millis) -> Plan {
    let Some(stack) = stack else {
        return Plan::nothing(now);
    };
    Plan {
        stack: Some(StackWrite::Delete),
        audit: Some(AuditRecord {
            at: now,
            team_id: stack.team_id,
            actor: Actor::system().0,
            kind: audit_kind::DELETED,
            stack_slug: Some(stack.slug.clone()),
            request_id: None,
            metadata: serde_json::json!({}),
        }),
        events: vec![NewEvent::stack_deleted()],
        ..Plan::nothing(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::fixtures::*;
    use crate::model::ReleaseStatus;

    #[test]
    fn deletion_bumps_the_generation_and_queues_one_teardown_of_the_newest_release() {
        let l = locked(
            StackStatus::Healthy,
            2,
            vec![],
            vec![release(2, ReleaseStatus::Live, &["web"])],
        );
        let p = request(&l, ctx());
        assert_eq!(
            (p.outcome.status, p.outcome.op_generation),
            (StackStatus::Deleting, 4)
        );
        assert_eq!(
            p.plan.jobs,
            [
                JobWrite::SupersedeQueued,
                JobWrite::Queue {
                    kind: JobKind::Teardown,
                    generation: 4,
                    release: 2,
                    service: None
                }
            ]
        );
        assert_eq!(p.plan.audit.unwrap().metadata["previous_status"], "healthy");
        assert_eq!(kinds(&p.plan.events), ["stack.status"]);
    }

    #[test]
    fn a_second_deletion_request_changes_nothing() {
        let l = locked(StackStatus::Deleting, 2, vec![], vec![]);
        let p = request(&l, ctx());
        assert!(p.plan.is_empty());
        assert_eq!(p.outcome, l.stack);
    }

    #[test]
    fn the_teardown_deletes_the_stack_and_ends_its_event_stream() {
        let l = locked(StackStatus::Deleting, 2, vec![], vec![]);
        let p = finish(Some(&l.stack), NOW);
        assert_eq!(p.stack, Some(StackWrite::Delete));
        assert_eq!(kinds(&p.events), ["stack.deleted"]);
        assert_eq!(p.audit.unwrap().actor, "system");
        assert!(finish(None, NOW).is_empty());
    }
}
