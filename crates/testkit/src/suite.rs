//! The `Store` test suite both backends run. Each `pub async fn` checks one behaviour through
//! the trait alone, on a fresh, empty database; `store_suite!` turns every one of them into a
//! `#[tokio::test]` for a backend, given its factory:
//!
//! ```text
//! async fn factory(opts: StoreOptions) -> Option<(Guard, MyStore)> { … }
//! stackyard_testkit::store_suite!(factory);
//! ```
//!
//! The factory returns `None` when its backend is unavailable (having printed why); the test
//! then passes without running. The guard lives until the test ends (a temp dir, a database to
//! drop). Concurrency tests start their tasks behind a `tokio::sync::Barrier` so they overlap.
//!
//! A backend's own tests reuse the suite's fixtures: [`at`], [`ctx`], [`new_stack`], [`LEASE`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};
use serde_json::{Value, json};
use stackyard_core::env::{EnvChange, EnvError, EnvMap, EnvPatch, MAX_ENV_BYTES};
use stackyard_core::ids::{
    ApiToken, ResourceName, ResourceToken, ServiceName, StackSlug, TeamName, TokenDigest,
    random_hex, sha256_hex,
};
use stackyard_core::lifecycle::status::Supervised;
use stackyard_core::model::*;
use stackyard_core::resource::{
    ANONYMOUS_TIER, NewResource, Resource, ResourceKind, ResourceStatus, generate_id,
};
pub use stackyard_core::store::StoreOptions;
use stackyard_core::store::*;
use stackyard_core::time::Millis;
use stackyard_core::vault::{CopyAction, VaultCopy, VaultRefError, VaultWrite};
use stackyard_core::{EnvironmentName, VaultKey};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;

/// Generates one `#[tokio::test]` per suite function for a backend. `$factory` is a path to
/// `async fn(StoreOptions) -> Option<(G, S)>`; tests that need other options name them here.
#[macro_export]
macro_rules! store_suite {
    ($factory:path) => {
        $crate::store_suite!(@each $factory;
            bootstrap_creates_default_team_once,
            bootstrap_is_skipped_when_a_team_exists,
            create_team_rejects_a_taken_name,
            authenticate_rejects_unknown_and_revoked_tokens,
            tokens_are_listed_per_team_only,
            dashboard_sessions_authenticate_until_expiry_sign_out_or_token_revocation,
            create_stack_writes_stack_services_release_job_and_audit_atomically,
            create_stack_enforces_max_stacks_under_concurrent_creates,
            stacks_are_visible_only_to_their_team_or_to_anonymous_callers,
            list_stacks_pages_newest_first_with_cursor_total_and_filters,
            request_deletion_supersedes_queued_jobs_and_queues_one_teardown,
            claim_job_runs_one_job_per_stack_at_a_time,
            claim_job_reclaims_an_expired_lease,
            claim_job_concurrent_claimers_never_share_a_job,
            fencing_a_lost_claim_cannot_finish_renew_or_retry,
            record_service_status_moves_the_stack_and_ignores_stale_generations,
            record_supervised_status_degrades_and_restores_the_live_release_only,
            finish_deploy_ok_marks_release_live_and_stack_healthy,
            finish_deploy_failure_fails_release_stack_and_unfinished_services,
            finish_deploy_for_a_superseded_generation_only_closes_the_job,
            finish_teardown_removes_the_stack_but_keeps_its_audit,
            finish_teardown_reports_an_artifact_unused_only_once_its_last_release_is_gone,
            artifact_blobs_are_stored_once_and_go_only_unused_and_untouched_since_the_cutoff,
            retry_job_requeues_until_run_after,
            retry_job_give_up_marks_a_current_deploy_failed,
            requeue_running_jobs_returns_claimed_jobs_to_the_queue,
            deploy_context_returns_the_release_and_the_env_it_recorded,
            idempotency_begin_reserves_then_reports_in_progress_mismatch_and_replay,
            idempotency_stale_reservation_is_taken_over,
            idempotency_expired_record_counts_as_absent,
            idempotency_abandon_frees_only_pending_records,
            idempotency_concurrent_begins_start_exactly_once,
            list_audit_filters_pages_and_scopes_by_team,
            resource_rows_move_provisioning_ready_deleting_gone_with_their_audit_rows,
            insert_resource_enforces_the_team_cap_under_concurrent_creates,
            resources_to_reconcile_skips_young_provisioning_rows_and_ready_ones_unless_asked,
            stack_owned_resources_are_found_by_stack_and_env_and_outside_the_team_cap,
            audit_metadata_never_contains_env_values,
            apply_env_writes_applies_in_order_with_one_version_per_change,
            apply_env_writes_if_match_refuses_only_the_stale_write,
            apply_env_writes_too_large_write_is_refused_alone,
            apply_env_writes_rollback_restores_an_older_map_as_a_new_version,
            apply_env_writes_refuses_deleting_and_missing_stacks,
            apply_env_writes_completes_idempotency_records_in_the_batch,
            apply_env_writes_concurrent_batches_lose_nothing,
            env_history_is_pruned_but_keeps_the_configured_window = $crate::suite::small_history_options,
            env_model_random_patches_match_a_btreemap,
            get_env_with_reveal_writes_an_audit_row,
            list_env_versions_pages_newest_first,
            preview_env_write_writes_nothing,
            create_release_records_the_env_of_that_moment_and_queues_one_deploy,
            create_release_with_new_services_replaces_the_service_rows,
            create_release_refuses_deleting_and_missing_stacks_and_writes_nothing,
            create_release_racing_request_deletion_never_releases_a_deleting_stack,
            record_service_status_of_a_job_superseded_by_a_redeploy_is_a_noop,
            record_job_event_writes_only_for_the_job_that_owns_the_stack,
            finish_deploy_failure_with_a_live_release_keeps_the_stack_healthy,
            retry_job_give_up_with_a_live_release_keeps_the_stack_healthy,
            expired_stacks_lists_only_anonymous_expired_stacks_not_being_deleted,
            count_anonymous_create_counts_per_fingerprint_per_utc_day,
            count_anonymous_create_is_exact_under_concurrent_calls,
            events_record_each_change_in_commit_order_and_outlive_the_stack,
            list_events_pages_by_after_and_is_per_stack,
            running_stacks_returns_live_releases_of_stacks_not_being_deleted,
            prune_removes_old_events_expired_records_and_past_counters_only,
            get_stack_after_a_write_returns_sees_it_while_readers_race,
            request_restart_queues_one_restart_job_with_its_audit_and_events,
            request_restart_refuses_missing_not_running_unknown_and_deleting_and_writes_nothing,
            restart_job_overtaken_by_a_redeploy_writes_nothing,
            master_canary_is_written_once_and_swapped_only_from_the_expected_one,
            rekey_stack_gives_a_new_data_key_and_loses_no_concurrent_write_or_old_version,
            an_env_rollback_takes_the_vault_versions_its_target_was_released_with,
            promote_creates_the_family_stack_then_updates_it_with_the_source_live_release,
            promote_refusals_write_nothing,
            domains_are_unique_across_teams_capped_per_team_checked_routed_and_removed,
            certificates_are_claimed_once_sealed_renewed_when_due_and_gone_with_their_domain,
            vault_writes_get_increasing_versions_and_each_version_reads_back_audited,
            vault_delete_removes_every_version_and_versions_are_never_reused,
            vault_copy_copies_skips_overwrites_and_reports_missing_and_a_dry_run_writes_nothing,
            vault_concurrent_writers_to_one_key_never_share_a_version,
            vault_refs_are_pinned_per_release_so_a_rotation_changes_only_later_releases,
            vault_refs_missing_or_anonymous_refuse_the_release_and_write_nothing,
        );
    };
    (@each $factory:path; $($name:ident $(= $opts:path)?),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let opts = $crate::store_suite!(@opts $($opts)?);
                let Some((_guard, store)) = $factory(opts).await else {
                    return;
                };
                $crate::suite::$name(store).await;
            }
        )*
    };
    (@opts) => {
        $crate::suite::StoreOptions::default()
    };
    (@opts $opts:path) => {
        $opts()
    };
}

/// Options for the pruning test: a history window small enough to prune within a test.
pub fn small_history_options() -> StoreOptions {
    StoreOptions {
        env_history: 150,
        ..StoreOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

/// A fixed epoch so that every time in the suite is deterministic.
const T0: i64 = 1_800_000_000_000;
/// The lease a worker takes on a claimed job.
pub const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// `ms` after the suite's fixed epoch.
pub fn at(ms: i64) -> Millis {
    Millis(T0 + ms)
}

/// Token 1 acting at [`at`]`(now)`, in request `req-<now>`.
pub fn ctx(now: i64) -> AuditCtx {
    AuditCtx {
        actor: Actor::token(1),
        request_id: Some(format!("req-{now}")),
        now: at(now),
    }
}

fn new_token(name: &str) -> (ApiToken, NewToken) {
    let t = ApiToken::generate();
    let digest = t.digest();
    (
        t,
        NewToken {
            name: name.into(),
            digest,
        },
    )
}

async fn team<S: Store>(store: &S, name: &str, max_stacks: Option<i64>) -> Team {
    let (_, token) = new_token("first");
    let (team, _) = store
        .create_team(&TeamName::parse(name).unwrap(), max_stacks, token, ctx(0))
        .await
        .expect("create_team");
    team
}

fn services() -> Vec<ReleaseService> {
    let svc = |name: &str, port: u16, expose: bool| ReleaseService {
        name: ServiceName::parse(name).unwrap(),
        artifact: format!("{:0>64}", name.len()),
        image: None,
        command: format!("./run-{name}"),
        workdir: String::new(),
        port,
        expose,
        health: expose.then(|| "/healthz".to_owned()),
        env: BTreeMap::from([("LOG_LEVEL".to_owned(), "info".to_owned())]),
        needs: Vec::new(),
    };
    vec![svc("api", 3000, true), svc("worker", 8080, false)]
}

/// A stack of two services, `api` (exposed, port 3000) and `worker` (port 8080), created at
/// `now`: a team stack, or with `None` an anonymous one that expires 6 hours later.
pub fn new_stack(team: Option<TeamId>, now: i64) -> NewStack {
    let services = services();
    let artifacts = services
        .iter()
        .map(|s| (s.artifact.clone(), 1234))
        .collect();
    NewStack {
        slug: StackSlug::generate(),
        name: "My app".into(),
        environment: "development".into(),
        team_id: team,
        fingerprint: team.is_none().then(|| "203.0.113.0/24".to_owned()),
        tier: if team.is_some() {
            "team".into()
        } else {
            "anonymous".into()
        },
        expires_at: team.is_none().then(|| at(now + 6 * 3_600_000)),
        manifest: "services:\n  api: {}\n  worker: {}\n".into(),
        services,
        artifacts,
        ctx: ctx(now),
        idempotency: None,
    }
}

async fn stack<S: Store>(store: &S, team: Option<TeamId>, now: i64) -> Stack {
    store
        .create_stack(new_stack(team, now))
        .await
        .expect("create_stack")
}

fn access(s: &Stack) -> Access {
    s.team_id.map_or(Access::Anonymous, Access::Team)
}

/// `request_deletion` of a stack `access` sees, at `now`: the stack, now deleting.
async fn delete<S: Store>(store: &S, access: Access, slug: &StackSlug, now: i64) -> Stack {
    store
        .request_deletion(access, slug, ctx(now))
        .await
        .expect("request_deletion")
        .expect("the stack exists")
}

/// Whether `access` sees the stack `slug`.
async fn visible<S: Store>(store: &S, access: Access, slug: &StackSlug) -> bool {
    store
        .get_stack(access, slug)
        .await
        .expect("get_stack")
        .is_some()
}

async fn detail<S: Store>(store: &S, s: &Stack) -> StackDetail {
    store
        .get_stack(access(s), &s.slug)
        .await
        .unwrap()
        .expect("stack exists")
}

/// An env merge from the `env` object of a PATCH body (`""` and `null` delete).
fn patch(env: Value, now: i64) -> EnvWrite {
    let body = json!({ "env": env }).to_string();
    EnvWrite {
        op: EnvOp::Patch(EnvPatch::parse(body.as_bytes()).expect("valid patch")),
        if_match: None,
        ctx: ctx(now),
        idempotency: None,
        deadline: None,
    }
}

fn rollback(to_version: i64, now: i64) -> EnvWrite {
    EnvWrite {
        op: EnvOp::Rollback { to_version },
        if_match: None,
        ctx: ctx(now),
        idempotency: None,
        deadline: None,
    }
}

fn if_match(mut w: EnvWrite, version: i64) -> EnvWrite {
    w.if_match = Some(version);
    w
}

fn with_key(mut w: EnvWrite, scope: &str, key: &str) -> EnvWrite {
    w.idempotency = Some(Idempotent::new(scope.into(), key.into(), 200, render));
    w
}

/// The response body idempotent env writes store: deterministic, so tests can predict it.
fn render(o: &EnvOutcome) -> String {
    json!({ "version": o.version, "set": o.changed.set, "deleted": o.changed.deleted }).to_string()
}

async fn apply<S: Store>(
    store: &S,
    s: &Stack,
    writes: Vec<EnvWrite>,
) -> Vec<Result<EnvOutcome, EnvWriteError>> {
    store
        .apply_env_writes(s.id, &writes)
        .await
        .expect("apply_env_writes")
}

async fn apply_one<S: Store>(
    store: &S,
    s: &Stack,
    w: EnvWrite,
) -> Result<EnvOutcome, EnvWriteError> {
    apply(store, s, vec![w]).await.remove(0)
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn keys(ks: &[&str]) -> Vec<String> {
    ks.iter().map(|k| k.to_string()).collect()
}

async fn current_env<S: Store>(store: &S, s: &Stack) -> EnvOutcome {
    store
        .get_env(s.id, None)
        .await
        .unwrap()
        .expect("stack exists")
}

/// `idempotency_begin` with a TTL of a day and a reservation that goes stale after 60 s.
async fn begin<S: Store>(
    store: &S,
    scope: &str,
    key: &str,
    hash: &str,
    now: i64,
) -> IdempotencyBegin {
    store
        .idempotency_begin(IdempotencyRequest {
            scope,
            key,
            request_hash: hash,
            now: at(now),
            ttl: DAY,
            stale_after: Duration::from_secs(60),
        })
        .await
        .expect("idempotency_begin")
}

/// Every audit entry of `team` matching the filters, newest first, following cursors.
async fn audit_all<S: Store>(
    store: &S,
    team: TeamId,
    stack: Option<&str>,
    kind: Option<&str>,
) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = store
            .list_audit(
                team,
                AuditFilter {
                    stack: stack.map(str::to_owned),
                    kind: kind.map(str::to_owned),
                    limit: 100,
                    cursor: cursor.clone(),
                },
            )
            .await
            .expect("list_audit");
        let done = page.items.is_empty() || page.next_cursor.is_none();
        out.extend(page.items);
        cursor = page.next_cursor;
        if done {
            return out;
        }
    }
    panic!("audit paging never ended");
}

fn deployed() -> DeployResult {
    DeployResult {
        ok: true,
        error: None,
    }
}

fn failed(error: &str) -> DeployResult {
    DeployResult {
        ok: false,
        error: Some(error.into()),
    }
}

async fn claim<S: Store>(store: &S, now: i64) -> Option<Job> {
    store
        .claim_job("worker-1", at(now), LEASE)
        .await
        .expect("claim_job")
}

fn new_release(services: Option<Vec<ReleaseService>>, now: i64) -> NewRelease {
    NewRelease {
        services,
        artifacts: Vec::new(),
        manifest: None,
        ctx: ctx(now),
        idempotency: None,
    }
}

/// The suite's stand-in for the server's redeploy response: enough to see the store renders
/// the release it created, under its lock.
fn render_release(slug: &StackSlug, info: &ReleaseInfo, note: &str) -> String {
    json!({ "stack_id": slug, "release": info.version, "env_version": info.env_version, "note": note }).to_string()
}

/// A service of the suite's shape with another name / port.
fn extra_service(name: &str, port: u16, expose: bool) -> ReleaseService {
    let mut svc = services().remove(0);
    svc.name = ServiceName::parse(name).unwrap();
    svc.artifact = format!("{:f>64}", name.len());
    svc.command = format!("./run-{name}");
    svc.port = port;
    svc.expose = expose;
    svc
}

/// Every event of the stack, oldest first, following `after` in small pages.
async fn events_of<S: Store>(store: &S, stack: StackId) -> Vec<StackEvent> {
    let mut out: Vec<StackEvent> = Vec::new();
    let mut after = 0;
    for _ in 0..10_000 {
        let page = store
            .list_events(stack, after, 7)
            .await
            .expect("list_events");
        assert!(page.len() <= 7);
        let Some(last) = page.last() else {
            return out;
        };
        after = last.id;
        out.extend(page);
    }
    panic!("event paging never ended");
}

fn kinds(events: &[StackEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

const API_URL: &str = "http://api-x.localhost:8080";

/// Claims the next job, which must be a deploy of `s`, reports every service of its release
/// healthy (`api` with `API_URL`) and finishes it ok.
async fn deploy_now<S: Store>(store: &S, s: &Stack, now: i64) -> Job {
    let job = claim(store, now).await.expect("a deploy is queued");
    assert_eq!((job.stack_id, job.kind), (s.id, JobKind::Deploy));
    let (_, release, _) = store.deploy_context(&job).await.unwrap().unwrap();
    for svc in &release.services {
        let url = (svc.name.as_str() == "api").then_some(API_URL);
        assert!(
            store
                .record_service_status(&job, &svc.name, ServiceStatus::Healthy, url, None, at(now))
                .await
                .unwrap()
        );
    }
    assert!(
        store
            .finish_deploy(&job, deployed(), at(now))
            .await
            .unwrap()
    );
    job
}

async fn release_status<S: Store>(store: &S, s: &Stack, version: i64) -> ReleaseStatus {
    let releases = store.list_releases(s.id).await.unwrap();
    releases
        .iter()
        .find(|r| r.info.version == version)
        .expect("release exists")
        .info
        .status
}

// ---------------------------------------------------------------------------------------------
// teams and tokens

pub async fn bootstrap_creates_default_team_once<S: Store>(store: S) {
    // Several servers starting at once: exactly one bootstraps.
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let (token, new) = new_token("admin");
            barrier.wait().await;
            let created = store
                .bootstrap_default_team(new, at(i))
                .await
                .expect("bootstrap");
            (created, token)
        }));
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for t in tasks {
        let (created, token) = t.await.unwrap();
        if created {
            winners.push(token)
        } else {
            losers.push(token)
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one bootstrap creates the default team"
    );
    let p = store
        .authenticate(&winners[0].digest())
        .await
        .unwrap()
        .expect("admin token works");
    assert_eq!(p.team.name, "default");
    assert_eq!(p.team.max_stacks, None);
    assert_eq!(p.team.tier, "team");
    assert_eq!(p.token.name, "admin");
    for t in &losers {
        assert!(
            store.authenticate(&t.digest()).await.unwrap().is_none(),
            "a losing bootstrap stored no token"
        );
    }
    let (again, token) = new_token("admin");
    assert!(!store.bootstrap_default_team(token, at(100)).await.unwrap());
    assert!(store.authenticate(&again.digest()).await.unwrap().is_none());
    let created = audit_all(&store, p.team.id, None, Some("team.created")).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].actor, "system");
    assert_eq!(created[0].metadata["team"], "default");
    assert_eq!(store.list_tokens(p.team.id).await.unwrap().len(), 1);
}

pub async fn bootstrap_is_skipped_when_a_team_exists<S: Store>(store: S) {
    let acme = team(&store, "acme", None).await;
    let (token, new) = new_token("admin");
    assert!(!store.bootstrap_default_team(new, at(1)).await.unwrap());
    assert!(store.authenticate(&token.digest()).await.unwrap().is_none());
    assert_eq!(store.list_tokens(acme.id).await.unwrap().len(), 1);
}

pub async fn create_team_rejects_a_taken_name<S: Store>(store: S) {
    let name = TeamName::parse("acme").unwrap();
    let (first, token) = new_token("first");
    let (t, info) = store
        .create_team(&name, Some(3), token, ctx(5))
        .await
        .unwrap();
    assert_eq!(t.name, "acme");
    assert_eq!(t.max_stacks, Some(3));
    assert_eq!(t.tier, "team");
    assert_eq!(t.created_at, at(5));
    assert_eq!(info.team_id, t.id);
    assert_eq!(info.name, "first");

    let (second, token) = new_token("second");
    let err = store
        .create_team(&name, None, token, ctx(6))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::Conflict("team"));
    // The refused team's token was not written, the first one still works.
    assert!(
        store
            .authenticate(&second.digest())
            .await
            .unwrap()
            .is_none()
    );
    let p = store.authenticate(&first.digest()).await.unwrap().unwrap();
    assert_eq!(p.team, t);
    assert_eq!(p.token, info);
    let created = audit_all(&store, t.id, None, Some("team.created")).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].metadata["team"], "acme");
    assert_eq!(created[0].metadata["max_stacks"], 3);
}

pub async fn authenticate_rejects_unknown_and_revoked_tokens<S: Store>(store: S) {
    let a = team(&store, "alpha", None).await;
    let b = team(&store, "beta", None).await;
    assert!(
        store
            .authenticate(&ApiToken::generate().digest())
            .await
            .unwrap()
            .is_none()
    );

    let (tok, new) = new_token("ci");
    let info = store.create_token(a.id, new, ctx(10)).await.unwrap();
    let p = store
        .authenticate(&tok.digest())
        .await
        .unwrap()
        .expect("new token works");
    assert_eq!(p.team.id, a.id);
    assert_eq!(p.token, info);

    // Another team cannot revoke it.
    assert!(!store.revoke_token(b.id, info.id, ctx(11)).await.unwrap());
    assert!(store.authenticate(&tok.digest()).await.unwrap().is_some());

    assert!(store.revoke_token(a.id, info.id, ctx(12)).await.unwrap());
    assert!(
        store.authenticate(&tok.digest()).await.unwrap().is_none(),
        "revoked tokens stop working at once"
    );
    assert!(
        !store.revoke_token(a.id, info.id, ctx(13)).await.unwrap(),
        "a revoked token is not live"
    );
    assert!(!store.revoke_token(a.id, 987_654, ctx(14)).await.unwrap());

    let revoked = audit_all(&store, a.id, None, Some("token.revoked")).await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].metadata["token_id"], info.id);
    assert!(
        audit_all(&store, b.id, None, Some("token.revoked"))
            .await
            .is_empty()
    );
}

pub async fn dashboard_sessions_authenticate_until_expiry_sign_out_or_token_revocation<S: Store>(
    store: S,
) {
    async fn live<S: Store>(store: &S, session: &TokenDigest, now: i64) -> bool {
        store
            .session_principal(session, at(now))
            .await
            .unwrap()
            .is_some()
    }
    // As the server mints them: the cookie holds a random id, the store only its digest.
    let session = || TokenDigest(sha256_hex(random_hex(32).as_bytes()));
    const LATER: i64 = 1_000_000;
    let a = team(&store, "alpha", None).await;
    let info = store
        .create_token(a.id, new_token("browser").1, ctx(10))
        .await
        .unwrap();

    let s1 = session();
    store
        .create_session(&s1, info.id, at(100), at(1_000))
        .await
        .unwrap();
    let p = store
        .session_principal(&s1, at(999))
        .await
        .unwrap()
        .expect("a live session authenticates");
    assert_eq!(p.team, a);
    assert_eq!(p.token, info);
    assert!(
        !live(&store, &s1, 1_000).await,
        "a session ends at its expires_at"
    );
    assert!(!live(&store, &session(), 100).await, "unknown session");

    let revoked = store
        .create_token(a.id, new_token("revoked").1, ctx(20))
        .await
        .unwrap();
    let s2 = session();
    store
        .create_session(&s2, revoked.id, at(200), at(LATER))
        .await
        .unwrap();
    assert!(live(&store, &s2, 200).await);
    assert!(
        store
            .revoke_token(a.id, revoked.id, ctx(300))
            .await
            .unwrap()
    );
    assert!(
        !live(&store, &s2, 301).await,
        "revoking the token ends its sessions at once"
    );

    let s3 = session();
    store
        .create_session(&s3, info.id, at(400), at(LATER))
        .await
        .unwrap();
    assert!(live(&store, &s3, 400).await);
    assert!(store.delete_session(&s3).await.unwrap());
    assert!(!store.delete_session(&s3).await.unwrap(), "already gone");
    assert!(!live(&store, &s3, 401).await, "sign-out ends the session");

    let s4 = session();
    store
        .create_session(&s4, info.id, at(500), at(LATER))
        .await
        .unwrap();
    // Only s1 has expired (s2 stays until it expires too); nothing else here is prunable.
    assert_eq!(store.prune(at(2_000), at(0)).await.unwrap(), 1);
    assert!(!live(&store, &s1, 999).await, "the expired row is gone");
    assert_eq!(
        store.session_principal(&s4, at(2_000)).await.unwrap(),
        Some(p),
        "a live session stays"
    );
}

pub async fn tokens_are_listed_per_team_only<S: Store>(store: S) {
    let a = team(&store, "alpha", None).await;
    let b = team(&store, "beta", None).await;
    let t2 = store
        .create_token(a.id, new_token("deploy").1, ctx(20))
        .await
        .unwrap();
    let t3 = store
        .create_token(a.id, new_token("laptop").1, ctx(30))
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_tokens(a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["first", "deploy", "laptop"], "oldest first");
    let b_tokens = store.list_tokens(b.id).await.unwrap();
    assert_eq!(b_tokens.len(), 1);
    assert!(b_tokens.iter().all(|t| t.team_id == b.id));

    assert!(store.revoke_token(a.id, t2.id, ctx(40)).await.unwrap());
    let ids: Vec<i64> = store
        .list_tokens(a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert!(!ids.contains(&t2.id), "revoked tokens are not listed");
    assert!(ids.contains(&t3.id));

    let created = audit_all(&store, a.id, None, Some("token.created")).await;
    assert_eq!(created.len(), 2);
    assert_eq!(
        created[0].metadata,
        json!({ "token_id": t3.id, "name": "laptop" })
    );
    assert_eq!(created[0].actor, "token:1");
    assert_eq!(created[0].request_id.as_deref(), Some("req-30"));
}

// ---------------------------------------------------------------------------------------------
// stacks

pub async fn create_stack_writes_stack_services_release_job_and_audit_atomically<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let scope = format!("team:{}", t.id.0);
    assert_eq!(
        begin(&store, &scope, "create-1", "h1", 10).await,
        IdempotencyBegin::Started
    );

    let mut new = new_stack(Some(t.id), 10);
    new.idempotency = Some(Idempotent::new(
        scope.clone(),
        "create-1".into(),
        202,
        |_: &Stack| r#"{"ok":true}"#.to_owned(),
    ));
    let s = store.create_stack(new.clone()).await.unwrap();
    assert_eq!(s.slug, new.slug);
    assert_eq!(s.name, "My app");
    assert_eq!(s.environment, "development");
    assert_eq!(s.team_id, Some(t.id));
    assert_eq!(s.tier, "team");
    assert_eq!(s.status, StackStatus::Building);
    assert_eq!(s.error, None);
    assert_eq!((s.env_version, s.release, s.op_generation), (0, 1, 1));
    assert_eq!(
        (s.created_at, s.updated_at, s.expires_at),
        (at(10), at(10), None)
    );

    let d = detail(&store, &s).await;
    assert_eq!(d.stack, s);
    let names: Vec<&str> = d.services.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["api", "worker"], "services in manifest order");
    assert!(
        d.services
            .iter()
            .all(|x| x.status == ServiceStatus::Building && x.url.is_none() && x.error.is_none())
    );
    assert_eq!((d.services[0].expose, d.services[0].port), (true, 3000));
    assert_eq!((d.services[1].expose, d.services[1].port), (false, 8080));
    assert_eq!(
        d.release,
        Some(ReleaseInfo {
            version: 1,
            status: ReleaseStatus::Pending,
            env_version: 0,
            created_at: at(10)
        })
    );
    let releases = store.list_releases(s.id).await.unwrap();
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0].services, new.services);

    let env = current_env(&store, &s).await;
    assert_eq!((env.version, env.env.is_empty()), (0, true));
    let versions = store.list_env_versions(s.id, 10, None).await.unwrap();
    assert_eq!(
        (versions.total, versions.items.len()),
        (0, 0),
        "version 0 is not listed"
    );

    let job = claim(&store, 10).await.expect("the deploy job is queued");
    assert_eq!(job.kind, JobKind::Deploy);
    assert_eq!((job.stack_id, &job.slug), (s.id, &s.slug));
    assert_eq!((job.generation, job.release, job.attempts), (1, 1, 1));
    assert_eq!(job.claim.len(), 32);
    assert!(claim(&store, 10).await.is_none(), "one job only");

    let created = audit_all(&store, t.id, Some(s.slug.as_str()), Some("stack.created")).await;
    assert_eq!(created.len(), 1);
    let e = &created[0];
    assert_eq!(e.stack_id.as_deref(), Some(s.slug.as_str()));
    assert_eq!(
        (e.actor.as_str(), e.request_id.as_deref(), e.at),
        ("token:1", Some("req-10"), at(10))
    );
    assert_eq!(
        e.metadata,
        json!({ "name": "My app", "env": "development", "tier": "team", "services": ["api", "worker"], "release": 1 })
    );

    assert_eq!(
        begin(&store, &scope, "create-1", "h1", 20).await,
        IdempotencyBegin::Replay {
            status: 202,
            body: r#"{"ok":true}"#.into()
        }
    );
    assert_eq!(store.count_stacks(t.id).await.unwrap(), 1);

    let anon = stack(&store, None, 20).await;
    assert_eq!(
        (anon.team_id, anon.tier.as_str(), anon.expires_at),
        (None, "anonymous", Some(at(20 + 6 * 3_600_000)))
    );
}

pub async fn create_stack_enforces_max_stacks_under_concurrent_creates<S: Store>(store: S) {
    let t = team(&store, "capped", Some(5)).await;
    let barrier = Arc::new(Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let new = new_stack(Some(t.id), i);
            barrier.wait().await;
            store.create_stack(new).await
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CreateStackError::LimitReached { max }) => {
                assert_eq!(max, 5);
                limited += 1;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!((ok, limited), (5, 15));
    assert_eq!(store.count_stacks(t.id).await.unwrap(), 5);
    assert_eq!(
        store
            .list_stacks(t.id, &StackFilter::default(), 50, None)
            .await
            .unwrap()
            .total,
        5,
        "refused creates wrote nothing"
    );
    assert_eq!(
        audit_all(&store, t.id, None, Some("stack.created"))
            .await
            .len(),
        5
    );

    // Stacks being deleted do not count against the cap.
    let victim = store
        .list_stacks(t.id, &StackFilter::default(), 1, None)
        .await
        .unwrap()
        .items
        .remove(0);
    delete(&store, Access::Team(t.id), &victim.slug, 100).await;
    assert_eq!(store.count_stacks(t.id).await.unwrap(), 4);
    store
        .create_stack(new_stack(Some(t.id), 101))
        .await
        .expect("a slot was freed");
    assert_eq!(
        store
            .create_stack(new_stack(Some(t.id), 102))
            .await
            .unwrap_err(),
        CreateStackError::LimitReached { max: 5 }
    );
}

pub async fn stacks_are_visible_only_to_their_team_or_to_anonymous_callers<S: Store>(store: S) {
    let a = team(&store, "alpha", None).await;
    let b = team(&store, "beta", None).await;
    let sa = stack(&store, Some(a.id), 1).await;
    let anon = stack(&store, None, 2).await;

    assert!(visible(&store, Access::Team(a.id), &sa.slug).await);
    assert!(!visible(&store, Access::Anonymous, &sa.slug).await);
    assert!(!visible(&store, Access::Team(b.id), &sa.slug).await);
    assert!(visible(&store, Access::Anonymous, &anon.slug).await);
    assert!(!visible(&store, Access::Team(a.id), &anon.slug).await);
    assert!(!visible(&store, Access::Anonymous, &StackSlug::generate()).await);

    assert!(
        store
            .request_deletion(Access::Team(b.id), &sa.slug, ctx(3))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .request_deletion(Access::Anonymous, &sa.slug, ctx(3))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .request_deletion(Access::Team(a.id), &anon.slug, ctx(3))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        detail(&store, &sa).await.stack.status,
        StackStatus::Building,
        "a refused deletion changed nothing"
    );
    assert_eq!(
        detail(&store, &anon).await.stack.status,
        StackStatus::Building
    );

    assert_eq!(
        store
            .list_stacks(b.id, &StackFilter::default(), 10, None)
            .await
            .unwrap()
            .total,
        0
    );
    assert_eq!(store.count_stacks(b.id).await.unwrap(), 0);
    let a_audit = audit_all(&store, a.id, None, None).await;
    assert!(
        a_audit
            .iter()
            .all(|e| e.stack_id.as_deref() != Some(anon.slug.as_str())),
        "anonymous audit is nobody's"
    );
    assert!(
        audit_all(&store, b.id, None, None)
            .await
            .iter()
            .all(|e| e.stack_id.is_none())
    );
}

pub async fn list_stacks_pages_newest_first_with_cursor_total_and_filters<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let other = team(&store, "other", None).await;
    let mut made = Vec::new();
    for created in [10, 20, 20, 30, 40, 40, 50] {
        made.push(stack(&store, Some(t.id), created).await);
        stack(&store, Some(other.id), created).await;
    }
    made.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
    let expected: Vec<StackId> = made.iter().map(|s| s.id).collect();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_stacks(t.id, &StackFilter::default(), 3, cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(page.total, 7);
        assert!(page.items.len() <= 3);
        assert!(page.items.iter().all(|s| s.team_id == Some(t.id)));
        seen.extend(page.items.iter().map(|s| s.id));
        pages += 1;
        assert!(pages <= 4, "paging must end");
        match page.next_cursor {
            Some(c) if !page.items.is_empty() => cursor = Some(c),
            _ => break,
        }
    }
    assert_eq!(
        seen, expected,
        "newest first by (created_at, id), each stack once"
    );

    let first = store
        .list_stacks(t.id, &StackFilter::default(), 3, None)
        .await
        .unwrap();
    let garbage = store
        .list_stacks(t.id, &StackFilter::default(), 3, Some("not-a-cursor"))
        .await
        .unwrap();
    assert_eq!(
        garbage.items, first.items,
        "an unreadable cursor starts from the top"
    );

    // Deleting stacks are still listed (with their status).
    delete(&store, Access::Team(t.id), &made[0].slug, 60).await;
    let page = store
        .list_stacks(t.id, &StackFilter::default(), 1, None)
        .await
        .unwrap();
    assert_eq!(page.total, 7);
    assert_eq!(page.items[0].status, StackStatus::Deleting);

    // Filters narrow the page and its total alike, and page with the same cursor.
    let only = |status: Option<StackStatus>, env: Option<&str>| StackFilter {
        status,
        env: env.map(str::to_owned),
    };
    let deleting = store
        .list_stacks(t.id, &only(Some(StackStatus::Deleting), None), 10, None)
        .await
        .unwrap();
    assert_eq!(deleting.total, 1);
    assert_eq!(deleting.items.len(), 1);
    assert_eq!(deleting.items[0].id, made[0].id);
    let env = made[1].environment.clone();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let filter = only(Some(made[1].status), Some(&env));
        let page = store
            .list_stacks(t.id, &filter, 2, cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(page.total, 6, "every stack but the deleting one");
        seen.extend(page.items.iter().map(|s| s.id));
        match page.next_cursor {
            Some(c) if !page.items.is_empty() => cursor = Some(c),
            _ => break,
        }
    }
    assert_eq!(seen, expected[1..].to_vec());
    let none = store
        .list_stacks(t.id, &only(None, Some("no-such-env")), 10, None)
        .await
        .unwrap();
    assert_eq!((none.total, none.items.len()), (0, 0));
}

pub async fn request_deletion_supersedes_queued_jobs_and_queues_one_teardown<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 10).await;
    let d = delete(&store, Access::Team(t.id), &s.slug, 20).await;
    assert_eq!(d.status, StackStatus::Deleting);
    assert_eq!(d.op_generation, 2);
    assert_eq!(d.updated_at, at(20));
    assert_eq!(detail(&store, &s).await.stack, d);
    assert_eq!(store.count_stacks(t.id).await.unwrap(), 0);

    let again = delete(&store, Access::Team(t.id), &s.slug, 30).await;
    assert_eq!(again, d, "repeating it changes nothing");

    let job = claim(&store, 40).await.expect("the teardown is queued");
    assert_eq!(job.kind, JobKind::Teardown);
    assert_eq!(job.generation, 2);
    assert_eq!(job.stack_id, s.id);
    assert!(
        claim(&store, 40).await.is_none(),
        "the deploy was superseded and only one teardown queued"
    );

    let requested = audit_all(
        &store,
        t.id,
        Some(s.slug.as_str()),
        Some("stack.deletion_requested"),
    )
    .await;
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0].metadata["previous_status"], "building");

    // An anonymous stack can be deleted by an anonymous caller.
    let anon = stack(&store, None, 50).await;
    let d = delete(&store, Access::Anonymous, &anon.slug, 60).await;
    assert_eq!(d.status, StackStatus::Deleting);
}

pub async fn claim_job_runs_one_job_per_stack_at_a_time<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let a = stack(&store, Some(t.id), 1).await;
    let b = stack(&store, Some(t.id), 2).await;
    let deploy_a = claim(&store, 10).await.unwrap();
    assert_eq!(deploy_a.stack_id, a.id, "oldest job first");
    delete(&store, Access::Team(t.id), &a.slug, 11).await;

    let deploy_b = claim(&store, 12).await.unwrap();
    assert_eq!(
        deploy_b.stack_id, b.id,
        "a's teardown waits for a's running deploy"
    );
    assert!(claim(&store, 13).await.is_none());

    // The deploy of the old generation ends: only its job is closed, the stack stays deleting.
    assert!(
        store
            .finish_deploy(&deploy_a, deployed(), at(14))
            .await
            .unwrap()
    );
    let d = detail(&store, &a).await;
    assert_eq!(d.stack.status, StackStatus::Deleting);
    assert_eq!(d.release.unwrap().status, ReleaseStatus::Pending);

    let teardown = claim(&store, 15).await.expect("a's teardown can run now");
    assert_eq!(
        (teardown.stack_id, teardown.kind),
        (a.id, JobKind::Teardown)
    );
    assert!(claim(&store, 16).await.is_none());
}

pub async fn claim_job_reclaims_an_expired_lease<S: Store>(store: S) {
    let s = stack(&store, None, 0).await;
    let first = store
        .claim_job("w1", at(0), Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.stack_id, first.attempts), (s.id, 1));
    assert!(
        store
            .claim_job("w2", at(500), LEASE)
            .await
            .unwrap()
            .is_none(),
        "lease still live"
    );
    let second = store
        .claim_job("w2", at(2_000), LEASE)
        .await
        .unwrap()
        .expect("expired lease is reclaimed");
    assert_eq!(second.id, first.id);
    assert_eq!(second.attempts, 2);
    assert_ne!(second.claim, first.claim);
}

pub async fn claim_job_concurrent_claimers_never_share_a_job<S: Store>(store: S) {
    let mut stacks = BTreeSet::new();
    for i in 0..12 {
        stacks.insert(stack(&store, None, i).await.id);
    }
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut got = Vec::new();
            while let Some(job) = store
                .claim_job(&format!("w{w}"), at(100), LEASE)
                .await
                .expect("claim_job")
            {
                got.push(job);
            }
            got
        }));
    }
    let mut jobs = Vec::new();
    for t in tasks {
        jobs.extend(t.await.unwrap());
    }
    // Claimers that gave up early (rows locked by others) leave work for a final sweep.
    while let Some(job) = claim(&store, 100).await {
        jobs.push(job);
    }
    let ids: BTreeSet<i64> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), jobs.len(), "no job was handed out twice");
    assert_eq!(jobs.len(), 12);
    let claimed_stacks: BTreeSet<StackId> = jobs.iter().map(|j| j.stack_id).collect();
    assert_eq!(claimed_stacks, stacks);
    assert!(jobs.iter().all(|j| j.attempts == 1));
}

pub async fn fencing_a_lost_claim_cannot_finish_renew_or_retry<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let old = store
        .claim_job("w1", at(0), Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let new = store
        .claim_job("w2", at(5_000), LEASE)
        .await
        .unwrap()
        .expect("reclaimed after the lease");
    assert_eq!(new.id, old.id);

    assert!(!store.renew_job_lease(&old, at(5_001), LEASE).await.unwrap());
    assert!(
        !store
            .finish_deploy(&old, failed("x"), at(5_002))
            .await
            .unwrap()
    );
    assert!(!store.retry_job(&old, "x", at(5_003), true).await.unwrap());
    assert!(!store.retry_job(&old, "x", at(5_003), false).await.unwrap());
    assert!(
        store
            .finish_teardown(&old, at(5_004))
            .await
            .unwrap()
            .is_none()
    );
    let d = detail(&store, &s).await;
    assert_eq!(
        d.stack.status,
        StackStatus::Building,
        "the lost claim changed nothing"
    );
    assert_eq!(d.release.unwrap().status, ReleaseStatus::Pending);
    assert!(
        audit_all(&store, t.id, None, Some("stack.deploy_failed"))
            .await
            .is_empty()
    );
    assert!(
        claim(&store, 5_005).await.is_none(),
        "the job is still held by the new claim"
    );

    assert!(store.renew_job_lease(&new, at(5_006), LEASE).await.unwrap());
    assert!(
        store
            .finish_deploy(&new, deployed(), at(5_007))
            .await
            .unwrap()
    );
    assert_eq!(detail(&store, &s).await.stack.status, StackStatus::Healthy);
    assert!(
        !store
            .finish_deploy(&old, deployed(), at(5_008))
            .await
            .unwrap()
    );
    assert!(
        !store.renew_job_lease(&new, at(5_009), LEASE).await.unwrap(),
        "a finished job has no lease"
    );
    assert_eq!(
        audit_all(&store, t.id, None, Some("stack.deployed"))
            .await
            .len(),
        1
    );
}

pub async fn record_supervised_status_degrades_and_restores_the_live_release_only<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    deploy_now(&store, &s, 1).await;
    let worker = ServiceName::parse("worker").unwrap();
    let report = |release, status, restarts| Supervised {
        release,
        service: &worker,
        status,
        error: (status == ServiceStatus::Crashed).then_some("exited with status 1"),
        restarts,
        last_exit: Some("exited with status 1"),
    };

    assert!(
        !store
            .record_supervised_status(s.id, report(2, ServiceStatus::Crashed, 0), at(2))
            .await
            .unwrap(),
        "release 2 is not live"
    );
    assert!(
        store
            .record_supervised_status(s.id, report(1, ServiceStatus::Crashed, 0), at(3))
            .await
            .unwrap()
    );
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Degraded);
    let w = &d.services[1];
    assert_eq!((w.status, w.restarts), (ServiceStatus::Crashed, 0));
    assert_eq!(w.last_exit.as_deref(), Some("exited with status 1"));
    assert_eq!(d.services[0].url.as_deref(), Some(API_URL), "api untouched");

    assert!(
        store
            .record_supervised_status(s.id, report(1, ServiceStatus::Healthy, 1), at(4))
            .await
            .unwrap()
    );
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Healthy);
    assert_eq!(
        (d.services[1].status, d.services[1].restarts),
        (ServiceStatus::Healthy, 1)
    );
    let events = events_of(&store, s.id).await;
    let tail: Vec<(String, String)> = events
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(|e| {
            (
                e.kind.clone(),
                e.data["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("service.status", "crashed"),
        ("stack.status", "degraded"),
        ("service.status", "healthy"),
        ("stack.status", "healthy"),
    ];
    assert_eq!(
        tail,
        expected.map(|(k, v)| (k.to_owned(), v.to_owned())),
        "{events:?}"
    );

    // A deletion in progress: the supervisor's word no longer counts.
    delete(&store, access(&s), &s.slug, 5).await;
    assert!(
        !store
            .record_supervised_status(s.id, report(1, ServiceStatus::Crashed, 1), at(6))
            .await
            .unwrap()
    );
}

pub async fn record_service_status_moves_the_stack_and_ignores_stale_generations<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let job = claim(&store, 1).await.unwrap();
    let api = ServiceName::parse("api").unwrap();
    let worker = ServiceName::parse("worker").unwrap();
    let status = |d: &StackDetail| d.stack.status;

    assert!(
        store
            .record_service_status(&job, &api, ServiceStatus::Deploying, None, None, at(2))
            .await
            .unwrap()
    );
    assert_eq!(
        status(&detail(&store, &s).await),
        StackStatus::Building,
        "worker is still building"
    );
    assert!(
        store
            .record_service_status(&job, &worker, ServiceStatus::Deploying, None, None, at(3))
            .await
            .unwrap()
    );
    assert_eq!(status(&detail(&store, &s).await), StackStatus::Deploying);
    let url = "http://api-x.localhost:8080";
    assert!(
        store
            .record_service_status(&job, &api, ServiceStatus::Healthy, Some(url), None, at(4))
            .await
            .unwrap()
    );
    assert_eq!(status(&detail(&store, &s).await), StackStatus::Deploying);
    assert!(
        store
            .record_service_status(&job, &worker, ServiceStatus::Healthy, None, None, at(5))
            .await
            .unwrap()
    );
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Healthy);
    assert_eq!(d.stack.updated_at, at(5));
    assert_eq!(d.services[0].url.as_deref(), Some(url));

    assert!(
        store
            .record_service_status(
                &job,
                &worker,
                ServiceStatus::Failed,
                None,
                Some("exit 1"),
                at(6)
            )
            .await
            .unwrap()
    );
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Failed);
    assert_eq!(d.stack.error.as_deref(), Some("exit 1"));
    assert_eq!(d.services[1].error.as_deref(), Some("exit 1"));
    assert!(
        store
            .record_service_status(&job, &worker, ServiceStatus::Healthy, None, None, at(7))
            .await
            .unwrap()
    );
    let d = detail(&store, &s).await;
    assert_eq!(
        (
            d.stack.status,
            d.stack.error.as_deref(),
            d.services[1].error.as_deref()
        ),
        (StackStatus::Healthy, None, None)
    );

    // A newer operation owns the stack: the old job's writes are ignored.
    delete(&store, Access::Team(t.id), &s.slug, 8).await;
    assert!(
        !store
            .record_service_status(&job, &api, ServiceStatus::Failed, None, Some("late"), at(9))
            .await
            .unwrap()
    );
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Deleting);
    assert_eq!(d.services[0].status, ServiceStatus::Healthy);
    assert_eq!(d.services[0].error, None);
}

pub async fn finish_deploy_ok_marks_release_live_and_stack_healthy<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let job = claim(&store, 1).await.unwrap();
    for name in ["api", "worker"] {
        let svc = ServiceName::parse(name).unwrap();
        store
            .record_service_status(&job, &svc, ServiceStatus::Healthy, None, None, at(2))
            .await
            .unwrap();
    }
    assert!(store.finish_deploy(&job, deployed(), at(3)).await.unwrap());
    let d = detail(&store, &s).await;
    assert_eq!(
        (d.stack.status, d.stack.error.as_deref(), d.stack.updated_at),
        (StackStatus::Healthy, None, at(3))
    );
    assert_eq!(d.release.unwrap().status, ReleaseStatus::Live);
    assert_eq!(release_status(&store, &s, 1).await, ReleaseStatus::Live);
    let rows = audit_all(&store, t.id, Some(s.slug.as_str()), Some("stack.deployed")).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].metadata["release"], 1);
    assert_eq!(rows[0].at, at(3));
    assert!(claim(&store, 4).await.is_none(), "the job is done");
    assert!(!store.finish_deploy(&job, deployed(), at(5)).await.unwrap());
}

pub async fn finish_deploy_failure_fails_release_stack_and_unfinished_services<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let job = claim(&store, 1).await.unwrap();
    let api = ServiceName::parse("api").unwrap();
    store
        .record_service_status(&job, &api, ServiceStatus::Healthy, None, None, at(2))
        .await
        .unwrap();
    let result = failed("worker exited");
    assert!(store.finish_deploy(&job, result, at(3)).await.unwrap());
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Failed);
    assert_eq!(d.stack.error.as_deref(), Some("worker exited"));
    assert_eq!(d.release.unwrap().status, ReleaseStatus::Failed);
    assert_eq!(
        d.services[0].status,
        ServiceStatus::Healthy,
        "healthy services stay healthy"
    );
    assert_eq!(d.services[1].status, ServiceStatus::Failed);
    let failed = audit_all(
        &store,
        t.id,
        Some(s.slug.as_str()),
        Some("stack.deploy_failed"),
    )
    .await;
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].metadata,
        json!({ "release": 1, "error": "worker exited" })
    );
    assert!(claim(&store, 4).await.is_none());
}

pub async fn finish_deploy_for_a_superseded_generation_only_closes_the_job<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let job = claim(&store, 1).await.unwrap();
    delete(&store, Access::Team(t.id), &s.slug, 2).await;
    assert!(
        store
            .finish_deploy(&job, failed("late"), at(3))
            .await
            .unwrap()
    );
    let d = detail(&store, &s).await;
    assert_eq!(
        (d.stack.status, d.stack.error),
        (StackStatus::Deleting, None)
    );
    assert_eq!(d.release.unwrap().status, ReleaseStatus::Pending);
    assert!(
        d.services
            .iter()
            .all(|x| x.status == ServiceStatus::Building)
    );
    assert!(
        audit_all(&store, t.id, None, Some("stack.deploy_failed"))
            .await
            .is_empty()
    );
    let teardown = claim(&store, 4).await.expect("the teardown runs next");
    assert_eq!(teardown.kind, JobKind::Teardown);
}

pub async fn finish_teardown_removes_the_stack_but_keeps_its_audit<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    apply_one(&store, &s, patch(json!({ "A": "1" }), 1))
        .await
        .unwrap();
    delete(&store, Access::Team(t.id), &s.slug, 2).await;
    let job = claim(&store, 3).await.unwrap();
    assert_eq!(job.kind, JobKind::Teardown);
    assert!(store.finish_teardown(&job, at(4)).await.unwrap().is_some());

    assert!(!visible(&store, Access::Team(t.id), &s.slug).await);
    assert!(store.list_releases(s.id).await.unwrap().is_empty());
    assert!(store.get_env(s.id, None).await.unwrap().is_none());
    assert_eq!(
        store.list_env_versions(s.id, 10, None).await.unwrap().total,
        0
    );
    assert!(store.deploy_context(&job).await.unwrap().is_none());
    assert!(matches!(
        store
            .apply_env_writes(s.id, &[patch(json!({ "B": "2" }), 5)])
            .await,
        Err(EnvBatchError::NotFound)
    ));
    assert!(
        store
            .request_deletion(Access::Team(t.id), &s.slug, ctx(5))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .list_stacks(t.id, &StackFilter::default(), 10, None)
            .await
            .unwrap()
            .total,
        0
    );
    assert!(
        store.finish_teardown(&job, at(6)).await.unwrap().is_none(),
        "the job is done"
    );
    assert!(claim(&store, 7).await.is_none());

    let kinds: Vec<String> = audit_all(&store, t.id, Some(s.slug.as_str()), None)
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "stack.deleted",
            "stack.deletion_requested",
            "stack.env.updated",
            "stack.created"
        ]
    );
    let deleted = audit_all(&store, t.id, None, Some("stack.deleted")).await;
    assert_eq!(deleted[0].stack_id.as_deref(), Some(s.slug.as_str()));
    assert_eq!(deleted[0].at, at(4));
}

/// The services of `services()` with their artifacts replaced by `digest`.
fn services_on(digest: &str) -> Vec<ReleaseService> {
    services()
        .into_iter()
        .map(|s| ReleaseService {
            artifact: digest.to_owned(),
            ..s
        })
        .collect()
}

/// Requests the deletion of `slug` and runs jobs (other stacks' deploys succeed) until its
/// teardown finishes; returns the artifacts the teardown reported unused.
async fn tear_down<S: Store>(store: &S, access: Access, slug: &StackSlug, now: i64) -> Vec<String> {
    delete(store, access, slug, now).await;
    loop {
        let job = claim(store, now + 1).await.expect("the teardown is queued");
        if job.kind == JobKind::Teardown {
            return store
                .finish_teardown(&job, at(now + 2))
                .await
                .unwrap()
                .expect("the claim is held");
        }
        let ok = DeployResult {
            ok: true,
            error: None,
        };
        assert!(store.finish_deploy(&job, ok, at(now + 1)).await.unwrap());
    }
}

pub async fn finish_teardown_reports_an_artifact_unused_only_once_its_last_release_is_gone<
    S: Store,
>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let digest = |c: char| c.to_string().repeat(64);
    let (api, worker) = (format!("{:0>64}", 3), format!("{:0>64}", 6));
    // `a` and `b` share api's and worker's artifacts; `c` has one of its own.
    let a = stack(&store, Some(t.id), 0).await;
    let b = stack(&store, Some(t.id), 1).await;
    let mut own = new_stack(Some(t.id), 2);
    own.services = services_on(&digest('c'));
    own.artifacts = vec![(digest('c'), 10)];
    let c = store.create_stack(own).await.unwrap();
    // `b`'s second release moves to new code; its first still uses the shared artifacts.
    let mut release = new_release(Some(services_on(&digest('d'))), 3);
    release.artifacts = vec![(digest('d'), 20)];
    store
        .create_release(Access::Team(t.id), &b.slug, release)
        .await
        .unwrap();
    let all = BTreeSet::from([api.clone(), worker.clone(), digest('c'), digest('d')]);
    assert_eq!(store.sweep_artifacts().await.unwrap(), all);

    let team = Access::Team(t.id);
    assert!(
        tear_down(&store, team, &a.slug, 10).await.is_empty(),
        "b still uses them"
    );
    assert_eq!(tear_down(&store, team, &c.slug, 20).await, [digest('c')]);
    assert_eq!(
        tear_down(&store, team, &b.slug, 30).await,
        [api, worker, digest('d')],
        "every artifact of every release of the last user, each once, in digest order"
    );
    assert!(store.sweep_artifacts().await.unwrap().is_empty());
}

pub async fn artifact_blobs_are_stored_once_and_go_only_unused_and_untouched_since_the_cutoff<
    S: Store,
>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let digest = |c: char| c.to_string().repeat(64);
    let (used, spare, raced) = (digest('a'), digest('b'), digest('e'));
    let big: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    // Stored before the release that names it, as an upload does.
    store.put_artifact_blob(&used, &big, at(0)).await.unwrap();
    store
        .put_artifact_blob(&spare, b"spare", at(0))
        .await
        .unwrap();
    // A create relying on a stored blob: its bytes stay, its touch moves to 10.
    store
        .put_artifact_blob(&used, b"never stored", at(10))
        .await
        .unwrap();
    assert_eq!(store.artifact_blob(&used).await.unwrap(), Some(big.clone()));
    assert_eq!(store.artifact_blob(&digest('c')).await.unwrap(), None);
    let mut own = new_stack(Some(t.id), 20);
    own.services = services_on(&used);
    own.artifacts = vec![(used.clone(), big.len() as i64)];
    let s = store.create_stack(own).await.unwrap();

    // Replicas storing one new digest at once: every one succeeds, one blob results.
    let barrier = Arc::new(Barrier::new(4));
    let puts: Vec<_> = (0..4)
        .map(|i| {
            let (store, barrier, raced) = (store.clone(), barrier.clone(), raced.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.put_artifact_blob(&raced, b"raced", at(i)).await
            })
        })
        .collect();
    for put in puts {
        put.await.unwrap().unwrap();
    }
    assert_eq!(
        store.artifact_blob(&raced).await.unwrap().as_deref(),
        Some(&b"raced"[..])
    );

    // The cutoff is strict, and a blob a release uses stays however old.
    assert_eq!(store.sweep_artifact_blobs(at(0)).await.unwrap(), 0);
    assert_eq!(
        store
            .delete_artifact_blobs(std::slice::from_ref(&used), at(1_000))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.sweep_artifact_blobs(at(1_000)).await.unwrap(),
        2,
        "the spare and the raced blob; not the used one"
    );
    assert_eq!(store.artifact_blob(&spare).await.unwrap(), None);
    assert_eq!(store.artifact_blob(&raced).await.unwrap(), None);

    let unused = tear_down(&store, Access::Team(t.id), &s.slug, 30).await;
    assert!(unused.contains(&used), "{unused:?}");
    // Untouched since 10: a cutoff at 10 keeps it (the refresh counted), one after takes it.
    assert_eq!(
        store.delete_artifact_blobs(&unused, at(10)).await.unwrap(),
        0
    );
    assert_eq!(
        store.delete_artifact_blobs(&unused, at(11)).await.unwrap(),
        1
    );
    assert_eq!(store.artifact_blob(&used).await.unwrap(), None);
    assert_eq!(
        store.delete_artifact_blobs(&unused, at(11)).await.unwrap(),
        0
    );
    assert_eq!(store.delete_artifact_blobs(&[], at(11)).await.unwrap(), 0);
}

pub async fn retry_job_requeues_until_run_after<S: Store>(store: S) {
    let s = stack(&store, None, 0).await;
    let job = claim(&store, 0).await.unwrap();
    assert!(
        store
            .retry_job(&job, "image pull failed", at(10_000), false)
            .await
            .unwrap()
    );
    assert!(
        !store.renew_job_lease(&job, at(1), LEASE).await.unwrap(),
        "the old claim is gone"
    );
    assert!(claim(&store, 5_000).await.is_none(), "not before run_after");
    let again = claim(&store, 10_000).await.expect("runnable at run_after");
    assert_eq!(
        (again.id, again.attempts, again.stack_id),
        (job.id, 2, s.id)
    );
    assert_eq!(
        detail(&store, &s).await.stack.status,
        StackStatus::Building,
        "a retry is not a failure"
    );
}

pub async fn retry_job_give_up_marks_a_current_deploy_failed<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let job = claim(&store, 1).await.unwrap();
    let api = ServiceName::parse("api").unwrap();
    store
        .record_service_status(&job, &api, ServiceStatus::Healthy, None, None, at(2))
        .await
        .unwrap();
    assert!(
        store
            .retry_job(&job, "gave up after 5 attempts", at(3), true)
            .await
            .unwrap()
    );
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Failed);
    assert_eq!(d.stack.error.as_deref(), Some("gave up after 5 attempts"));
    assert_eq!(d.release.unwrap().status, ReleaseStatus::Failed);
    assert_eq!(d.services[0].status, ServiceStatus::Healthy);
    assert_eq!(d.services[1].status, ServiceStatus::Failed);
    assert_eq!(
        d.services[1].error.as_deref(),
        Some("gave up after 5 attempts")
    );
    let failed = audit_all(
        &store,
        t.id,
        Some(s.slug.as_str()),
        Some("stack.deploy_failed"),
    )
    .await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].metadata["release"], 1);
    assert!(
        claim(&store, 1_000_000).await.is_none(),
        "a failed job is never claimed again"
    );
}

pub async fn requeue_running_jobs_returns_claimed_jobs_to_the_queue<S: Store>(store: S) {
    assert_eq!(store.requeue_running_jobs().await.unwrap(), 0);
    stack(&store, None, 0).await;
    stack(&store, None, 1).await;
    let a = claim(&store, 2).await.unwrap();
    let b = claim(&store, 2).await.unwrap();
    assert_eq!(store.requeue_running_jobs().await.unwrap(), 2);
    assert!(!store.renew_job_lease(&a, at(3), LEASE).await.unwrap());
    assert!(!store.finish_deploy(&b, deployed(), at(3)).await.unwrap());
    let a2 = claim(&store, 4).await.unwrap();
    let b2 = claim(&store, 4).await.unwrap();
    assert_eq!((a2.id, b2.id), (a.id, b.id));
    assert_eq!((a2.attempts, b2.attempts), (2, 2));
    assert!(claim(&store, 4).await.is_none());
}

pub async fn deploy_context_returns_the_release_and_the_env_it_recorded<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let new = new_stack(Some(t.id), 0);
    let s = store.create_stack(new.clone()).await.unwrap();
    let secret = json!({ "A": "1", "DATABASE_URL": "postgres://u:p@h/db" });
    apply_one(&store, &s, patch(secret, 1)).await.unwrap();
    let job = claim(&store, 2).await.unwrap();
    let (stack, release, env) = store
        .deploy_context(&job)
        .await
        .unwrap()
        .expect("stack exists");
    assert_eq!(stack.id, s.id);
    assert_eq!(stack.env_version, 1);
    assert_eq!(release.info.version, 1);
    assert_eq!(release.info.env_version, 0);
    assert_eq!(release.services, new.services);
    assert!(
        env.is_empty(),
        "release v1 carries env version 0 (empty), not what was written after it"
    );
    assert!(store.finish_deploy(&job, deployed(), at(3)).await.unwrap());

    let (_, info) = store
        .create_release(Access::Team(t.id), &s.slug, new_release(None, 4))
        .await
        .unwrap();
    assert_eq!((info.version, info.env_version), (2, 1));
    apply_one(&store, &s, patch(json!({ "A": "2", "B": "3" }), 5))
        .await
        .unwrap();
    let job = claim(&store, 6).await.unwrap();
    let (stack, release, env) = store.deploy_context(&job).await.unwrap().unwrap();
    assert_eq!(stack.env_version, 2);
    assert_eq!(release.info, info);
    assert_eq!(
        env.to_map(),
        vars(&[("A", "1"), ("DATABASE_URL", "postgres://u:p@h/db")]),
        "the release's own env, not the current one"
    );
}

// ---------------------------------------------------------------------------------------------
// idempotency

pub async fn idempotency_begin_reserves_then_reports_in_progress_mismatch_and_replay<S: Store>(
    store: S,
) {
    let s = stack(&store, None, 0).await;
    assert_eq!(
        begin(&store, "anon:1", "k", "h1", 1).await,
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin(&store, "anon:1", "k", "h1", 2).await,
        IdempotencyBegin::InProgress
    );
    assert_eq!(
        begin(&store, "anon:1", "k", "h2", 3).await,
        IdempotencyBegin::Mismatch
    );
    assert_eq!(
        begin(&store, "anon:2", "k", "h2", 3).await,
        IdempotencyBegin::Started,
        "keys are scoped"
    );

    let out = apply_one(
        &store,
        &s,
        with_key(patch(json!({ "A": "1" }), 4), "anon:1", "k"),
    )
    .await
    .unwrap();
    assert_eq!(
        begin(&store, "anon:1", "k", "h1", 5).await,
        IdempotencyBegin::Replay {
            status: 200,
            body: render(&out)
        }
    );
    assert_eq!(
        begin(&store, "anon:1", "k", "h2", 6).await,
        IdempotencyBegin::Mismatch
    );
}

pub async fn idempotency_stale_reservation_is_taken_over<S: Store>(store: S) {
    // stale_after is 60 s in `begin`.
    assert_eq!(
        begin(&store, "t", "k", "h", 0).await,
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin(&store, "t", "k", "h", 30_000).await,
        IdempotencyBegin::InProgress
    );
    assert_eq!(
        begin(&store, "t", "k", "h", 61_000).await,
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin(&store, "t", "k", "h", 62_000).await,
        IdempotencyBegin::InProgress,
        "the takeover is a fresh reservation"
    );
    assert_eq!(
        begin(&store, "t", "k", "other", 200_000).await,
        IdempotencyBegin::Mismatch
    );
}

pub async fn idempotency_expired_record_counts_as_absent<S: Store>(store: S) {
    let s = stack(&store, None, 0).await;
    assert_eq!(
        begin(&store, "t", "k", "h1", 0).await,
        IdempotencyBegin::Started
    );
    apply_one(
        &store,
        &s,
        with_key(patch(json!({ "A": "1" }), 1), "t", "k"),
    )
    .await
    .unwrap();
    let day = i64::try_from(DAY.as_millis()).unwrap();
    assert!(matches!(
        begin(&store, "t", "k", "h1", day - 1).await,
        IdempotencyBegin::Replay { status: 200, .. }
    ));
    assert_eq!(
        begin(&store, "t", "k", "h2", day + 1).await,
        IdempotencyBegin::Started,
        "an expired record is treated as absent, whatever its hash"
    );
    assert_eq!(
        begin(&store, "t", "k", "h2", day + 2).await,
        IdempotencyBegin::InProgress
    );
}

pub async fn idempotency_abandon_frees_only_pending_records<S: Store>(store: S) {
    let s = stack(&store, None, 0).await;
    assert_eq!(
        begin(&store, "t", "pending", "h", 1).await,
        IdempotencyBegin::Started
    );
    store.idempotency_abandon("t", "pending").await.unwrap();
    assert_eq!(
        begin(&store, "t", "pending", "other", 2).await,
        IdempotencyBegin::Started,
        "an abandoned key can be used again"
    );

    assert_eq!(
        begin(&store, "t", "done", "h", 3).await,
        IdempotencyBegin::Started
    );
    apply_one(
        &store,
        &s,
        with_key(patch(json!({ "A": "1" }), 4), "t", "done"),
    )
    .await
    .unwrap();
    store.idempotency_abandon("t", "done").await.unwrap();
    assert!(matches!(
        begin(&store, "t", "done", "h", 5).await,
        IdempotencyBegin::Replay { .. }
    ));
    store
        .idempotency_abandon("t", "never-seen")
        .await
        .expect("abandoning an unknown key is harmless");
}

pub async fn idempotency_concurrent_begins_start_exactly_once<S: Store>(store: S) {
    let barrier = Arc::new(Barrier::new(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            begin(&store, "team:1", "same-key", "h", 1).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(
        answers
            .iter()
            .filter(|a| **a == IdempotencyBegin::Started)
            .count(),
        1
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| **a == IdempotencyBegin::InProgress)
            .count(),
        9
    );
}

// ---------------------------------------------------------------------------------------------
// audit

pub async fn list_audit_filters_pages_and_scopes_by_team<S: Store>(store: S) {
    let a = team(&store, "alpha", None).await;
    let b = team(&store, "beta", None).await;
    let s1 = stack(&store, Some(a.id), 1).await;
    let s2 = stack(&store, Some(a.id), 2).await;
    let sb = stack(&store, Some(b.id), 3).await;
    for i in 0..3 {
        apply_one(&store, &s1, patch(json!({ "K": format!("v{i}") }), 10 + i))
            .await
            .unwrap();
    }
    apply_one(&store, &s2, patch(json!({ "K": "x" }), 20))
        .await
        .unwrap();
    apply_one(&store, &sb, patch(json!({ "K": "y" }), 21))
        .await
        .unwrap();
    store
        .create_token(a.id, new_token("ci").1, ctx(22))
        .await
        .unwrap();

    // Paging through everything: ids strictly descending, each row once, total constant.
    let everything = audit_all(&store, a.id, None, None).await;
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_audit(
                a.id,
                AuditFilter {
                    stack: None,
                    kind: None,
                    limit: 2,
                    cursor: cursor.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.total, everything.len() as i64);
        assert!(page.items.len() <= 2);
        let full = page.items.len() == 2;
        paged.extend(page.items);
        if !full {
            assert!(
                page.next_cursor.is_none(),
                "a page that is not full has no next cursor"
            );
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(paged.len() <= everything.len());
    }
    assert_eq!(paged, everything);
    assert!(paged.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    // team.created, 2 × stack.created, 4 × stack.env.updated, token.created
    assert_eq!(everything.len(), 8);
    assert!(
        everything
            .iter()
            .all(|e| e.stack_id.as_deref() != Some(sb.slug.as_str())),
        "team-scoped"
    );

    let created = audit_all(&store, a.id, None, Some("stack.created")).await;
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|e| e.kind == "stack.created"));
    let s1_rows = audit_all(&store, a.id, Some(s1.slug.as_str()), None).await;
    assert_eq!(s1_rows.len(), 4);
    assert!(
        s1_rows
            .iter()
            .all(|e| e.stack_id.as_deref() == Some(s1.slug.as_str()))
    );
    let both = audit_all(
        &store,
        a.id,
        Some(s1.slug.as_str()),
        Some("stack.env.updated"),
    )
    .await;
    let versions: Vec<i64> = both
        .iter()
        .map(|e| e.metadata["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    assert!(
        audit_all(&store, b.id, Some(s1.slug.as_str()), None)
            .await
            .is_empty(),
        "other teams see nothing"
    );
    assert_eq!(
        audit_all(&store, b.id, Some(sb.slug.as_str()), None)
            .await
            .len(),
        2
    );

    let page = store
        .list_audit(
            a.id,
            AuditFilter {
                stack: None,
                kind: None,
                limit: 3,
                cursor: Some("garbage".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.items,
        everything[..3].to_vec(),
        "an unreadable cursor starts from the newest"
    );
}

pub async fn audit_metadata_never_contains_env_values<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let secrets = [
        "hunter2-super-secret",
        "sk_live_0123456789",
        "postgres://admin:pa55@db/prod",
    ];
    apply_one(
        &store,
        &s,
        patch(json!({ "PASSWORD": secrets[0], "API_KEY": secrets[1] }), 1),
    )
    .await
    .unwrap();
    apply_one(
        &store,
        &s,
        patch(json!({ "DATABASE_URL": secrets[2], "PASSWORD": null }), 2),
    )
    .await
    .unwrap();
    apply_one(&store, &s, rollback(1, 3)).await.unwrap();
    store.get_env(s.id, Some(ctx(4))).await.unwrap().unwrap();
    delete(&store, Access::Team(t.id), &s.slug, 5).await;
    let rows = audit_all(&store, t.id, None, None).await;
    assert!(rows.len() >= 6);
    for e in rows {
        let text = e.metadata.to_string();
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{} audit metadata leaks a value",
                e.kind
            );
        }
    }
    let updated = audit_all(&store, t.id, None, Some("stack.env.updated")).await;
    assert_eq!(
        updated[0].metadata["set"],
        json!(["DATABASE_URL"]),
        "key names are recorded"
    );
}

// ---------------------------------------------------------------------------------------------
// env

pub async fn apply_env_writes_applies_in_order_with_one_version_per_change<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let out = apply(
        &store,
        &s,
        vec![
            patch(json!({ "A": "1" }), 10),
            patch(json!({ "A": "1" }), 11),
            patch(json!({ "B": "2", "Z": null }), 12),
            patch(json!({ "A": "" }), 13),
        ],
    )
    .await;
    let out: Vec<EnvOutcome> = out.into_iter().map(|o| o.unwrap()).collect();
    assert_eq!(
        out.iter().map(|o| o.version).collect::<Vec<_>>(),
        [1, 1, 2, 3]
    );
    assert_eq!(
        (out[0].changed.set.clone(), out[0].env.to_map()),
        (keys(&["A"]), vars(&[("A", "1")]))
    );
    assert!(out[1].changed.is_empty(), "same value is a no-op");
    assert_eq!(
        (out[2].changed.set.clone(), out[2].changed.deleted.clone()),
        (keys(&["B"]), keys(&[]))
    );
    assert_eq!(out[3].changed.deleted, keys(&["A"]));
    assert_eq!(out[3].env.to_map(), vars(&[("B", "2")]));

    let env = current_env(&store, &s).await;
    assert_eq!((env.version, env.env.to_map()), (3, vars(&[("B", "2")])));
    assert_eq!(
        env.updated_at,
        at(13),
        "the batch commits at its latest write's time"
    );
    assert_eq!(detail(&store, &s).await.stack.env_version, 3);

    let versions = store.list_env_versions(s.id, 10, None).await.unwrap();
    assert_eq!(versions.total, 3);
    let got: Vec<(i64, Vec<String>, Vec<String>)> = versions
        .items
        .iter()
        .map(|v| (v.version, v.set.clone(), v.deleted.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (3, keys(&[]), keys(&["A"])),
            (2, keys(&["B"]), keys(&[])),
            (1, keys(&["A"]), keys(&[]))
        ]
    );
    assert!(versions.items.iter().all(|v| v.actor == "token:1"));

    let audit = audit_all(
        &store,
        t.id,
        Some(s.slug.as_str()),
        Some("stack.env.updated"),
    )
    .await;
    assert_eq!(audit.len(), 3, "one audit row per effective write");
    assert_eq!(
        audit[1].metadata,
        json!({ "version": 2, "keys_set": 1, "keys_deleted": 0, "total_after": 2, "set": ["B"], "deleted": [] })
    );
    assert_eq!(audit[1].request_id.as_deref(), Some("req-12"));
    assert_eq!(
        audit[1].at,
        at(13),
        "a batch stamps its rows with its latest write's time"
    );

    // A batch of no-ops writes nothing.
    let out = apply(
        &store,
        &s,
        vec![
            patch(json!({ "B": "2" }), 20),
            patch(json!({ "GONE": null }), 21),
        ],
    )
    .await;
    assert!(
        out.iter()
            .all(|o| o.as_ref().unwrap().version == 3 && o.as_ref().unwrap().changed.is_empty())
    );
    assert_eq!(
        store.list_env_versions(s.id, 10, None).await.unwrap().total,
        3
    );
    assert_eq!(
        audit_all(
            &store,
            t.id,
            Some(s.slug.as_str()),
            Some("stack.env.updated")
        )
        .await
        .len(),
        3
    );
    assert_eq!(current_env(&store, &s).await.updated_at, at(13));
    assert!(apply(&store, &s, vec![]).await.is_empty());
}

pub async fn apply_env_writes_if_match_refuses_only_the_stale_write<S: Store>(store: S) {
    let s = stack(&store, None, 0).await;
    apply_one(&store, &s, patch(json!({ "A": "1" }), 1))
        .await
        .unwrap();
    let out = apply(
        &store,
        &s,
        vec![
            if_match(patch(json!({ "C": "3" }), 2), 1),
            if_match(patch(json!({ "D": "4" }), 2), 1),
            if_match(patch(json!({ "E": "5" }), 2), 2),
            patch(json!({ "F": "6" }), 2),
        ],
    )
    .await;
    assert_eq!(out[0].as_ref().unwrap().version, 2);
    assert_eq!(out[1], Err(EnvWriteError::VersionMismatch { current: 2 }));
    assert_eq!(out[2].as_ref().unwrap().version, 3);
    assert_eq!(out[3].as_ref().unwrap().version, 4);
    assert_eq!(
        current_env(&store, &s).await.env.to_map(),
        vars(&[("A", "1"), ("C", "3"), ("E", "5"), ("F", "6")])
    );
    assert_eq!(
        apply_one(&store, &s, if_match(patch(json!({ "G": "7" }), 3), 0)).await,
        Err(EnvWriteError::VersionMismatch { current: 4 })
    );
}

pub async fn apply_env_writes_too_large_write_is_refused_alone<S: Store>(store: S) {
    let s = stack(&store, None, 0).await;
    let big = "x".repeat(70_000);
    let out = apply(
        &store,
        &s,
        vec![
            patch(json!({ "A": "1" }), 1),
            patch(json!({ "BIG": big }), 1),
            patch(json!({ "B": "2" }), 1),
        ],
    )
    .await;
    assert_eq!(out[0].as_ref().unwrap().version, 1);
    assert!(matches!(
        out[1],
        Err(EnvWriteError::Invalid(EnvError::TooLarge { .. }))
    ));
    assert_eq!(out[2].as_ref().unwrap().version, 2);

    // {"A":"1","B":"2"} plus ,"K":"<v>" is exactly the limit when v has this many bytes:
    let base = r#"{"A":"1","B":"2"}"#.len() + r#","K":"""#.len();
    let exact = "v".repeat(MAX_ENV_BYTES - base);
    let over = "v".repeat(MAX_ENV_BYTES - base + 1);
    assert_eq!(
        apply_one(&store, &s, patch(json!({ "K": over }), 2)).await,
        Err(EnvWriteError::Invalid(EnvError::TooLarge {
            size: MAX_ENV_BYTES + 1
        }))
    );
    let ok = apply_one(&store, &s, patch(json!({ "K": exact }), 3))
        .await
        .expect("exactly 65,536 bytes fits");
    assert_eq!((ok.version, ok.env.encoded_len()), (3, MAX_ENV_BYTES));
    let env = current_env(&store, &s).await;
    assert_eq!((env.version, env.env.to_json().len()), (3, MAX_ENV_BYTES));
    assert!(matches!(
        apply_one(&store, &s, patch(json!({ "C": "3" }), 4)).await,
        Err(EnvWriteError::Invalid(EnvError::TooLarge { .. }))
    ));
    assert_eq!(
        current_env(&store, &s).await.version,
        3,
        "a refused write leaves the map alone"
    );
}

pub async fn apply_env_writes_rollback_restores_an_older_map_as_a_new_version<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    apply_one(&store, &s, patch(json!({ "A": "1" }), 1))
        .await
        .unwrap();
    apply_one(&store, &s, patch(json!({ "A": "2", "B": "3" }), 2))
        .await
        .unwrap();
    apply_one(&store, &s, patch(json!({ "A": null }), 3))
        .await
        .unwrap();

    let out = apply_one(&store, &s, rollback(1, 4)).await.unwrap();
    assert_eq!(out.version, 4, "history is never rewritten");
    assert_eq!(out.env.to_map(), vars(&[("A", "1")]));
    assert_eq!(
        (out.changed.set.clone(), out.changed.deleted.clone()),
        (keys(&["A"]), keys(&["B"]))
    );
    let rolled = audit_all(
        &store,
        t.id,
        Some(s.slug.as_str()),
        Some("stack.env.rolled_back"),
    )
    .await;
    assert_eq!(rolled.len(), 1);
    assert_eq!(rolled[0].metadata["from_version"], 3);
    assert_eq!(rolled[0].metadata["to_version"], 1);

    assert_eq!(
        apply_one(&store, &s, rollback(99, 5)).await,
        Err(EnvWriteError::VersionNotFound(99))
    );
    assert_eq!(
        apply_one(&store, &s, rollback(-1, 5)).await,
        Err(EnvWriteError::VersionNotFound(-1))
    );
    let same = apply_one(&store, &s, rollback(4, 5)).await.unwrap();
    assert_eq!(
        (same.version, same.changed.is_empty()),
        (4, true),
        "rolling back to the current map is a no-op"
    );

    // Version 0 is the empty map; a rollback may target a version made earlier in its batch.
    let out = apply(
        &store,
        &s,
        vec![
            rollback(0, 6),
            patch(json!({ "Q": "1" }), 6),
            patch(json!({ "Q": "2" }), 6),
            rollback(6, 6),
        ],
    )
    .await;
    assert_eq!(out[0].as_ref().unwrap().env.to_map(), BTreeMap::new());
    assert_eq!(out[3].as_ref().unwrap().version, 8);
    assert_eq!(
        current_env(&store, &s).await.env.to_map(),
        vars(&[("Q", "1")])
    );
    assert_eq!(
        apply_one(&store, &s, rollback(2, 7))
            .await
            .unwrap()
            .env
            .to_map(),
        vars(&[("A", "2"), ("B", "3")])
    );
}

pub async fn apply_env_writes_refuses_deleting_and_missing_stacks<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    apply_one(&store, &s, patch(json!({ "A": "1" }), 1))
        .await
        .unwrap();
    delete(&store, Access::Team(t.id), &s.slug, 2).await;
    assert_eq!(
        store
            .apply_env_writes(s.id, &[patch(json!({ "B": "2" }), 3)])
            .await,
        Err(EnvBatchError::Deleting)
    );
    assert_eq!(
        store
            .preview_env_write(s.id, patch(json!({ "B": "2" }), 3))
            .await,
        Err(EnvBatchError::Deleting)
    );
    let env = current_env(&store, &s).await;
    assert_eq!((env.version, env.env.to_map()), (1, vars(&[("A", "1")])));
    assert_eq!(
        audit_all(&store, t.id, None, Some("stack.env.updated"))
            .await
            .len(),
        1
    );

    let missing = StackId(i64::from(i32::MAX));
    assert_eq!(
        store
            .apply_env_writes(missing, &[patch(json!({ "B": "2" }), 3)])
            .await,
        Err(EnvBatchError::NotFound)
    );
    assert_eq!(
        store
            .preview_env_write(missing, patch(json!({ "B": "2" }), 3))
            .await,
        Err(EnvBatchError::NotFound)
    );
    assert!(store.get_env(missing, None).await.unwrap().is_none());
}

pub async fn apply_env_writes_completes_idempotency_records_in_the_batch<S: Store>(store: S) {
    let s = stack(&store, None, 0).await;
    apply_one(&store, &s, patch(json!({ "A": "1" }), 1))
        .await
        .unwrap();
    for k in ["k1", "k2", "k3"] {
        assert_eq!(begin(&store, "t", k, k, 2).await, IdempotencyBegin::Started);
    }
    let out = apply(
        &store,
        &s,
        vec![
            with_key(patch(json!({ "B": "2" }), 3), "t", "k1"),
            with_key(patch(json!({ "A": "1" }), 3), "t", "k2"),
            with_key(if_match(patch(json!({ "C": "3" }), 3), 1), "t", "k3"),
        ],
    )
    .await;
    let o1 = out[0].clone().unwrap();
    let o2 = out[1].clone().unwrap();
    assert!(out[2].is_err());
    assert_eq!(
        begin(&store, "t", "k1", "k1", 4).await,
        IdempotencyBegin::Replay {
            status: 200,
            body: render(&o1)
        }
    );
    assert_eq!(
        begin(&store, "t", "k2", "k2", 4).await,
        IdempotencyBegin::Replay {
            status: 200,
            body: render(&o2)
        },
        "a no-op write completes its record too"
    );
    assert_eq!(
        begin(&store, "t", "k3", "k3", 4).await,
        IdempotencyBegin::InProgress,
        "a refused write leaves its reservation for the caller to abandon"
    );

    // A batch whose only effect is completing a record still commits it.
    assert_eq!(
        begin(&store, "t", "k4", "k4", 5).await,
        IdempotencyBegin::Started
    );
    let o4 = apply_one(
        &store,
        &s,
        with_key(patch(json!({ "B": "2" }), 6), "t", "k4"),
    )
    .await
    .unwrap();
    assert!(o4.changed.is_empty());
    assert_eq!(
        begin(&store, "t", "k4", "k4", 7).await,
        IdempotencyBegin::Replay {
            status: 200,
            body: render(&o4)
        }
    );
    assert_eq!(current_env(&store, &s).await.version, 2);
}

pub async fn apply_env_writes_concurrent_batches_lose_nothing<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let barrier = Arc::new(Barrier::new(64));
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (store, barrier, id) = (store.clone(), barrier.clone(), s.id);
        tasks.push(tokio::spawn(async move {
            let writes: Vec<EnvWrite> = (0..4)
                .map(|j| patch(json!({ format!("T{i}_{j}"): format!("v{i}.{j}") }), i))
                .collect();
            barrier.wait().await;
            store.apply_env_writes(id, &writes).await
        }));
    }
    let mut versions = BTreeSet::new();
    for task in tasks {
        for o in task.await.unwrap().expect("the batch commits") {
            assert!(
                versions.insert(o.expect("every write applies").version),
                "versions are unique"
            );
        }
    }
    assert_eq!(versions, (1..=256).collect::<BTreeSet<i64>>());
    let env = current_env(&store, &s).await;
    assert_eq!(env.version, 256, "env_version counts every effective write");
    assert_eq!(env.env.len(), 256, "no write was lost");
    for i in 0..64 {
        for j in 0..4 {
            assert_eq!(
                env.env.get(&format!("T{i}_{j}")),
                Some(format!("v{i}.{j}").as_str())
            );
        }
    }
    assert_eq!(
        store.list_env_versions(s.id, 10, None).await.unwrap().total,
        256
    );
    let page = store
        .list_audit(
            t.id,
            AuditFilter {
                stack: Some(s.slug.to_string()),
                kind: Some("stack.env.updated".into()),
                limit: 1,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 256);
}

pub async fn env_history_is_pruned_but_keeps_the_configured_window<S: Store>(store: S) {
    // The factory was given env_history = 150.
    let s = stack(&store, None, 0).await;
    let mut model: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    let mut map = BTreeMap::new();
    for batch in 0..12 {
        let mut writes = Vec::new();
        for j in 0..25 {
            let n = batch * 25 + j + 1;
            let key = format!("K{}", n % 7);
            let value = format!("v{n}");
            map.insert(key.clone(), value.clone());
            model.push(map.clone());
            writes.push(patch(json!({ key: value }), n));
        }
        for o in apply(&store, &s, writes).await {
            o.unwrap();
        }
    }
    assert_eq!(current_env(&store, &s).await.version, 300);

    // Every version of the newest 150 is listed, newest first, without gaps.
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_env_versions(s.id, 100, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.total >= 150 && page.total <= 300);
        listed.extend(page.items.iter().map(|v| v.version));
        match page.next_cursor {
            Some(c) if !page.items.is_empty() => cursor = Some(c),
            _ => break,
        }
    }
    assert!(
        listed.len() >= 150 && listed.len() < 300,
        "old versions were pruned ({} kept)",
        listed.len()
    );
    assert!(listed.windows(2).all(|w| w[0] == w[1] + 1));
    assert_eq!(listed[0], 300);
    let oldest = *listed.last().unwrap();

    for (i, to) in [151, 200, 300, oldest].into_iter().enumerate() {
        let out = apply_one(&store, &s, rollback(to, 1_000 + i as i64))
            .await
            .expect("kept versions restore");
        assert_eq!(out.env.to_map(), model[to as usize], "version {to}");
    }
    assert_eq!(
        apply_one(&store, &s, rollback(1, 2_000)).await,
        Err(EnvWriteError::VersionNotFound(1))
    );
    assert_eq!(
        apply_one(&store, &s, rollback(0, 2_000)).await,
        Err(EnvWriteError::VersionNotFound(0))
    );
    assert_eq!(
        apply_one(&store, &s, rollback(oldest - 1, 2_000)).await,
        Err(EnvWriteError::VersionNotFound(oldest - 1))
    );
}

/// The model of one write: what the map, version and answer must be after it.
struct Model {
    map: BTreeMap<String, String>,
    history: Vec<BTreeMap<String, String>>,
}

impl Model {
    fn version(&self) -> i64 {
        self.history.len() as i64 - 1
    }

    fn json_len(map: &BTreeMap<String, String>) -> usize {
        serde_json::to_string(map).unwrap().len()
    }

    /// Applies one write to the model and returns the answer the store must give.
    fn apply(&mut self, w: &EnvWrite, now: Millis) -> Result<EnvOutcome, EnvWriteError> {
        if let Some(v) = w.if_match
            && v != self.version()
        {
            return Err(EnvWriteError::VersionMismatch {
                current: self.version(),
            });
        }
        let target: BTreeMap<String, String> = match &w.op {
            EnvOp::Patch(p) => {
                let mut next = self.map.clone();
                for (k, v) in p.entries() {
                    match v {
                        Some(v) => next.insert(k.to_string(), v.clone()),
                        None => next.remove(k.as_str()),
                    };
                }
                next
            }
            EnvOp::Rollback { to_version } => match usize::try_from(*to_version)
                .ok()
                .and_then(|i| self.history.get(i))
            {
                Some(m) => m.clone(),
                None => return Err(EnvWriteError::VersionNotFound(*to_version)),
            },
        };
        let size = Self::json_len(&target);
        if size > MAX_ENV_BYTES {
            return Err(EnvWriteError::Invalid(EnvError::TooLarge { size }));
        }
        let set: Vec<String> = target
            .iter()
            .filter(|(k, v)| self.map.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        let deleted: Vec<String> = self
            .map
            .keys()
            .filter(|k| !target.contains_key(*k))
            .cloned()
            .collect();
        let changed = stackyard_core::env::EnvChange { set, deleted };
        if !changed.is_empty() {
            self.map = target;
            self.history.push(self.map.clone());
        }
        Ok(EnvOutcome {
            version: self.version(),
            changed,
            env: EnvMap::from_map(self.map.clone()),
            updated_at: now,
        })
    }
}

const MODEL_KEYS: [&str; 8] = [
    "A",
    "B",
    "C",
    "DATABASE_URL",
    "E_1",
    "_F",
    "LONG_KEY_NAME_G",
    "h",
];

/// What one write of the model test does, decided against the model's state when it runs (so a
/// shrunk sequence still makes sense): a rollback (to an existing version or not), a value
/// sized to land the map exactly on, just below or just above the 65,536-byte limit, or a
/// merge of sets, `""` and `null` deletes and no-ops; optionally with an `If-Match` that is
/// current or one version stale.
#[derive(Debug, Clone)]
struct WriteSpec {
    kind: WriteKind,
    stale_if_match: Option<i64>,
}

#[derive(Debug, Clone)]
enum WriteKind {
    Rollback(usize),
    NearLimit { key: usize, over: usize },
    Merge(Vec<(usize, ValueSpec)>),
}

#[derive(Debug, Clone)]
enum ValueSpec {
    Null,
    Empty,
    /// The key's current value: a no-op for that key.
    Same,
    Set(String),
}

fn write_specs() -> impl Strategy<Value = Vec<Vec<WriteSpec>>> {
    const CHARS: [&str; 10] = ["a", "b", "z", "0", "\"", "\\", "\n", "é", "😀", " "];
    let value = prop_oneof![
        1 => Just(ValueSpec::Null),
        1 => Just(ValueSpec::Empty),
        1 => Just(ValueSpec::Same),
        3 => prop::collection::vec(prop::sample::select(&CHARS[..]), 1..=12)
            .prop_map(|cs| ValueSpec::Set(cs.concat())),
    ];
    let kind = prop_oneof![
        1 => (0usize..10).prop_map(WriteKind::Rollback),
        2 => (0..MODEL_KEYS.len(), 0usize..3)
            .prop_map(|(key, over)| WriteKind::NearLimit { key, over }),
        7 => prop::collection::vec((0..MODEL_KEYS.len(), value), 1..=4).prop_map(WriteKind::Merge),
    ];
    let write = (kind, prop::option::weighted(0.15, 0i64..2)).prop_map(|(kind, stale_if_match)| {
        WriteSpec {
            kind,
            stale_if_match,
        }
    });
    prop::collection::vec(prop::collection::vec(write, 1..=4), 1..=40)
}

/// The write `spec` describes, against `model` as it stands.
fn write_of(spec: &WriteSpec, model: &Model, now: i64) -> EnvWrite {
    let mut w = match &spec.kind {
        WriteKind::Rollback(to) => {
            let to = (to % (model.history.len() + 2)) as i64 - 1;
            rollback(to, now)
        }
        WriteKind::NearLimit { key, over } => {
            // One key sized so that the whole map is MAX-1, MAX or MAX+1 bytes.
            let key = MODEL_KEYS[*key];
            let mut probe = model.map.clone();
            probe.insert(key.to_owned(), String::new());
            let target = MAX_ENV_BYTES - 1 + over;
            let len = target.saturating_sub(Model::json_len(&probe)).max(1);
            patch(json!({ key: "x".repeat(len) }), now)
        }
        WriteKind::Merge(values) => {
            let mut env = serde_json::Map::new();
            for (key, value) in values {
                let key = MODEL_KEYS[*key];
                let value = match value {
                    ValueSpec::Null => Value::Null,
                    ValueSpec::Empty => Value::String(String::new()),
                    ValueSpec::Same => model
                        .map
                        .get(key)
                        .map_or(Value::Null, |v| Value::String(v.clone())),
                    ValueSpec::Set(v) => Value::String(v.clone()),
                };
                env.insert(key.to_owned(), value);
            }
            patch(Value::Object(env), now)
        }
    };
    w.if_match = spec.stale_if_match.map(|back| model.version() - back);
    w
}

/// A property test with shrinking: random batches of writes (see [`WriteSpec`]) applied to a
/// fresh stack give, write by write, the answers, map and version of a `BTreeMap` model, and
/// one history row per effective write. A failure is reported as its smallest sequence.
pub async fn env_model_random_patches_match_a_btreemap<S: Store>(store: S) {
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner.run(&write_specs(), |batches| {
            handle
                .block_on(model_matches(&store, &batches))
                .map_err(TestCaseError::fail)
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

type Shown = Result<(i64, EnvChange, BTreeMap<String, String>, Millis), EnvWriteError>;

fn shown(outcomes: &[Result<EnvOutcome, EnvWriteError>]) -> Vec<Shown> {
    outcomes
        .iter()
        .map(|o| {
            o.clone()
                .map(|o| (o.version, o.changed, o.env.masked(), o.updated_at))
        })
        .collect()
}

async fn model_matches<S: Store>(store: &S, batches: &[Vec<WriteSpec>]) -> Result<(), String> {
    let s = stack(store, None, 0).await;
    let mut model = Model {
        map: BTreeMap::new(),
        history: vec![BTreeMap::new()],
    };
    for (step, specs) in batches.iter().enumerate() {
        let now = i64::try_from(step).unwrap_or(i64::MAX) + 1;
        let batch: Vec<EnvWrite> = specs.iter().map(|w| write_of(w, &model, now)).collect();
        let expected: Vec<_> = batch.iter().map(|w| model.apply(w, at(now))).collect();
        // Compared as the API shows them: a write's outcome keeps secret-looking values it
        // did not open closed (masked); the stored map below is read opened.
        let got = shown(&apply(store, &s, batch).await);
        let expected = shown(&expected);
        if got != expected {
            return Err(format!("step {step}: got {got:?}, expected {expected:?}"));
        }
        let env = current_env(store, &s).await;
        if (env.version, env.env.to_map()) != (model.version(), model.map.clone()) {
            return Err(format!("step {step}: the stored map or version differs"));
        }
    }
    let versions = store.list_env_versions(s.id, 1, None).await.unwrap();
    if versions.total != model.version() {
        return Err(format!(
            "{} history rows for {} effective writes",
            versions.total,
            model.version()
        ));
    }
    Ok(())
}

pub async fn get_env_with_reveal_writes_an_audit_row<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    apply_one(&store, &s, patch(json!({ "PASSWORD": "hunter2" }), 1))
        .await
        .unwrap();
    let plain = store.get_env(s.id, None).await.unwrap().unwrap();
    assert_eq!((plain.version, plain.updated_at), (1, at(1)));
    assert!(plain.changed.is_empty());
    assert_eq!(
        plain.env.get("PASSWORD"),
        Some("hunter2"),
        "the store returns values; masking is the API's job"
    );
    assert!(
        audit_all(&store, t.id, None, Some("stack.env.revealed"))
            .await
            .is_empty()
    );

    let revealed = store.get_env(s.id, Some(ctx(2))).await.unwrap().unwrap();
    assert_eq!(revealed, plain);
    let rows = audit_all(
        &store,
        t.id,
        Some(s.slug.as_str()),
        Some("stack.env.revealed"),
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].metadata, json!({ "version": 1 }));
    assert_eq!(
        (
            rows[0].actor.as_str(),
            rows[0].request_id.as_deref(),
            rows[0].at
        ),
        ("token:1", Some("req-2"), at(2))
    );

    assert!(
        store
            .get_env(StackId(i64::from(i32::MAX)), Some(ctx(3)))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        audit_all(&store, t.id, None, Some("stack.env.revealed"))
            .await
            .len(),
        1
    );
}

pub async fn list_env_versions_pages_newest_first<S: Store>(store: S) {
    let s = stack(&store, None, 0).await;
    for i in 1..=7 {
        let w = if i % 3 == 0 {
            patch(json!({ format!("K{}", i - 1): null }), i)
        } else {
            patch(json!({ format!("K{i}"): "v" }), i)
        };
        apply_one(&store, &s, w).await.unwrap();
    }
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_env_versions(s.id, 3, cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(page.total, 7);
        pages.push(page.items.iter().map(|v| v.version).collect::<Vec<_>>());
        match page.next_cursor {
            Some(c) if !page.items.is_empty() => cursor = Some(c),
            _ => break,
        }
        assert!(pages.len() <= 4);
    }
    let flat: Vec<i64> = pages.concat();
    assert_eq!(flat, [7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&pages[..3], &[vec![7, 6, 5], vec![4, 3, 2], vec![1]]);
    let first = store.list_env_versions(s.id, 3, None).await.unwrap();
    assert_eq!(first.items[1].version, 6);
    assert_eq!(
        (first.items[1].set.clone(), first.items[1].deleted.clone()),
        (keys(&[]), keys(&["K5"]))
    );
    assert_eq!(
        (first.items[0].set.clone(), first.items[0].created_at),
        (keys(&["K7"]), at(7))
    );
    let garbage = store.list_env_versions(s.id, 3, Some("x")).await.unwrap();
    assert_eq!(
        garbage.items, first.items,
        "an unreadable cursor starts from the newest"
    );
}

pub async fn preview_env_write_writes_nothing<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    apply_one(&store, &s, patch(json!({ "A": "1" }), 1))
        .await
        .unwrap();
    let p = store
        .preview_env_write(s.id, patch(json!({ "A": "2", "B": "3" }), 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.version, 2);
    assert_eq!(p.changed.set, keys(&["A", "B"]));
    assert_eq!(p.env.to_map(), vars(&[("A", "2"), ("B", "3")]));
    assert_eq!(
        store
            .preview_env_write(s.id, if_match(patch(json!({ "A": "2" }), 2), 0))
            .await
            .unwrap(),
        Err(EnvWriteError::VersionMismatch { current: 1 })
    );
    let back = store
        .preview_env_write(s.id, rollback(0, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (back.version, back.changed.deleted.clone()),
        (2, keys(&["A"]))
    );
    let noop = store
        .preview_env_write(s.id, patch(json!({ "A": "1" }), 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((noop.version, noop.changed.is_empty()), (1, true));

    let env = current_env(&store, &s).await;
    assert_eq!((env.version, env.env.to_map()), (1, vars(&[("A", "1")])));
    assert_eq!(
        store.list_env_versions(s.id, 10, None).await.unwrap().total,
        1
    );
    assert_eq!(
        audit_all(&store, t.id, None, Some("stack.env.updated"))
            .await
            .len(),
        1
    );
    assert!(
        audit_all(&store, t.id, None, Some("stack.env.rolled_back"))
            .await
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// releases (redeploys)

pub async fn create_release_records_the_env_of_that_moment_and_queues_one_deploy<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let new = new_stack(Some(t.id), 0);
    let s = store.create_stack(new.clone()).await.unwrap();
    apply_one(&store, &s, patch(json!({ "A": "1", "B": "2" }), 1))
        .await
        .unwrap();
    let scope = format!("team:{}", t.id.0);
    assert_eq!(
        begin(&store, &scope, "redeploy-1", "h", 2).await,
        IdempotencyBegin::Started
    );
    let mut rel = new_release(None, 2);
    rel.idempotency = Some(Idempotent::new(
        scope.clone(),
        "redeploy-1".into(),
        202,
        |(s, info): &(Stack, ReleaseInfo)| render_release(&s.slug, info, "a warning"),
    ));
    let (s2, info) = store
        .create_release(Access::Team(t.id), &s.slug, rel)
        .await
        .unwrap();
    assert_eq!(
        (s2.release, s2.op_generation, s2.status, s2.error.as_deref()),
        (2, 2, StackStatus::Building, None)
    );
    assert_eq!((s2.env_version, s2.updated_at), (1, at(2)));
    assert_eq!(
        info,
        ReleaseInfo {
            version: 2,
            status: ReleaseStatus::Pending,
            env_version: 1,
            created_at: at(2)
        }
    );
    let d = detail(&store, &s).await;
    assert_eq!(d.stack, s2);
    assert_eq!(d.release.as_ref(), Some(&info));
    let names: Vec<&str> = d.services.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["api", "worker"]);
    assert!(
        d.services
            .iter()
            .all(|x| x.status == ServiceStatus::Building)
    );
    let releases = store.list_releases(s.id).await.unwrap();
    assert_eq!(
        releases.iter().map(|r| r.info.version).collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(
        releases[0].services, new.services,
        "no services given: the newest release's"
    );
    assert_eq!(
        releases[1].info.status,
        ReleaseStatus::Superseded,
        "v1 was still pending: it can never go live now"
    );

    // Env written after the release does not change what it deploys.
    apply_one(&store, &s, patch(json!({ "A": "changed", "C": "3" }), 3))
        .await
        .unwrap();
    let job = claim(&store, 4).await.expect("the redeploy is queued");
    assert_eq!(
        (job.kind, job.generation, job.release),
        (JobKind::Deploy, 2, 2)
    );
    assert!(
        claim(&store, 4).await.is_none(),
        "the first deploy was superseded: one job only"
    );
    let (_, release, env) = store.deploy_context(&job).await.unwrap().unwrap();
    assert_eq!(release.info, info);
    assert_eq!(release.services, new.services);
    assert_eq!(env.to_map(), vars(&[("A", "1"), ("B", "2")]));

    let rows = audit_all(
        &store,
        t.id,
        Some(s.slug.as_str()),
        Some("stack.redeploy_requested"),
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].metadata, json!({ "release": 2, "from_release": 1 }));
    assert_eq!(
        (
            rows[0].actor.as_str(),
            rows[0].request_id.as_deref(),
            rows[0].at
        ),
        ("token:1", Some("req-2"), at(2))
    );
    assert_eq!(
        begin(&store, &scope, "redeploy-1", "h", 5).await,
        IdempotencyBegin::Replay {
            status: 202,
            body: render_release(&s.slug, &info, "a warning")
        }
    );

    // A second redeploy while v2's deploy runs: v3 waits for it, v2 can never go live.
    let (s3, info3) = store
        .create_release(Access::Team(t.id), &s.slug, new_release(None, 6))
        .await
        .unwrap();
    assert_eq!((s3.release, s3.op_generation, info3.env_version), (3, 3, 2));
    assert_eq!(
        release_status(&store, &s, 2).await,
        ReleaseStatus::Superseded
    );
    assert!(
        claim(&store, 7).await.is_none(),
        "v3 waits for the running deploy of v2"
    );
    assert!(store.finish_deploy(&job, deployed(), at(8)).await.unwrap());
    assert_eq!(
        release_status(&store, &s, 2).await,
        ReleaseStatus::Superseded,
        "a stale deploy changes no release"
    );
    assert_eq!(detail(&store, &s).await.stack.status, StackStatus::Building);
    let job3 = claim(&store, 9).await.expect("v3's deploy runs now");
    assert_eq!((job3.generation, job3.release), (3, 3));
    let (_, _, env3) = store.deploy_context(&job3).await.unwrap().unwrap();
    assert_eq!(
        env3.to_map(),
        vars(&[("A", "changed"), ("B", "2"), ("C", "3")])
    );
}

pub async fn create_release_with_new_services_replaces_the_service_rows<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    deploy_now(&store, &s, 1).await;

    // New code: `web` added first, `api` on another port, `worker` dropped.
    let mut api = services().remove(0);
    api.port = 3001;
    api.artifact = "a".repeat(64);
    let next = vec![extra_service("web", 5000, true), api];
    let mut rel = new_release(Some(next.clone()), 10);
    rel.manifest = Some("services:\n  web: {}\n  api: {}\n".into());
    rel.artifacts = next.iter().map(|x| (x.artifact.clone(), 99)).collect();
    let (s2, info) = store
        .create_release(Access::Team(t.id), &s.slug, rel)
        .await
        .unwrap();
    assert_eq!((s2.release, info.version), (2, 2));
    let d = detail(&store, &s).await;
    let got: Vec<_> = d
        .services
        .iter()
        .map(|x| {
            (
                x.name.as_str(),
                x.status,
                x.port,
                x.expose,
                x.url.as_deref(),
                x.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("web", ServiceStatus::Building, 5000, true, None, None),
            (
                "api",
                ServiceStatus::Building,
                3001,
                true,
                Some(API_URL),
                None
            ),
        ],
        "the rows follow the new release; a kept service keeps its URL (the old one still serves)"
    );
    assert_eq!(
        release_status(&store, &s, 1).await,
        ReleaseStatus::Live,
        "v1 serves until v2 is live"
    );
    let releases = store.list_releases(s.id).await.unwrap();
    assert_eq!(releases[0].services, next);

    let job = claim(&store, 11).await.unwrap();
    assert_eq!(job.release, 2);
    let worker = ServiceName::parse("worker").unwrap();
    assert!(
        !store
            .record_service_status(&job, &worker, ServiceStatus::Healthy, None, None, at(12))
            .await
            .unwrap(),
        "a service the release does not have"
    );
    let (_, release, _) = store.deploy_context(&job).await.unwrap().unwrap();
    assert_eq!(release.services, next);
    let before = events_of(&store, s.id).await;
    for svc in &next {
        assert!(
            store
                .record_service_status(&job, &svc.name, ServiceStatus::Healthy, None, None, at(13))
                .await
                .unwrap()
        );
    }
    assert!(store.finish_deploy(&job, deployed(), at(14)).await.unwrap());
    assert_eq!(release_status(&store, &s, 2).await, ReleaseStatus::Live);
    assert_eq!(
        release_status(&store, &s, 1).await,
        ReleaseStatus::Superseded
    );
    let d = detail(&store, &s).await;
    assert_eq!(
        (d.stack.status, d.stack.error.as_deref()),
        (StackStatus::Healthy, None)
    );
    let after = events_of(&store, s.id).await;
    let tail: Vec<(&str, &Value)> = after[before.len()..]
        .iter()
        .filter(|e| e.kind != "service.status")
        .map(|e| (e.kind.as_str(), &e.data))
        .collect();
    assert_eq!(
        tail,
        [
            (
                "stack.status",
                &json!({ "status": "healthy", "error": null })
            ),
            (
                "release.status",
                &json!({ "release": 1, "status": "superseded", "error": null })
            ),
            (
                "release.status",
                &json!({ "release": 2, "status": "live", "error": null })
            ),
            (
                "stack.status",
                &json!({ "status": "healthy", "error": null })
            ),
        ]
    );
}

pub async fn create_release_refuses_deleting_and_missing_stacks_and_writes_nothing<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let other = team(&store, "other", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let kept = stack(&store, Some(t.id), 0).await;
    delete(&store, Access::Team(t.id), &s.slug, 1).await;
    let scope = format!("team:{}", t.id.0);
    assert_eq!(
        begin(&store, &scope, "k", "h", 2).await,
        IdempotencyBegin::Started
    );

    let snapshot = |s: Stack| {
        let store = store.clone();
        async move {
            (
                detail(&store, &s).await,
                store.list_releases(s.id).await.unwrap(),
                events_of(&store, s.id).await,
                audit_all(&store, t.id, None, None).await.len(),
            )
        }
    };
    let before = snapshot(s.clone()).await;
    let before_kept = snapshot(kept.clone()).await;
    let mut rel = new_release(Some(vec![extra_service("web", 80, true)]), 3);
    rel.artifacts = vec![("b".repeat(64), 1)];
    rel.idempotency = Some(Idempotent::new(
        scope.clone(),
        "k".into(),
        202,
        |(s, info): &(Stack, ReleaseInfo)| render_release(&s.slug, info, ""),
    ));
    assert_eq!(
        store
            .create_release(Access::Team(t.id), &s.slug, rel.clone())
            .await,
        Err(ReleaseError::Deleting)
    );
    for (access, slug) in [
        (Access::Team(other.id), &kept.slug),
        (Access::Anonymous, &kept.slug),
        (Access::Team(t.id), &StackSlug::generate()),
    ] {
        assert_eq!(
            store.create_release(access, slug, rel.clone()).await,
            Err(ReleaseError::NotFound)
        );
    }
    assert_eq!(
        snapshot(s.clone()).await,
        before,
        "a refused redeploy wrote nothing"
    );
    assert_eq!(snapshot(kept.clone()).await, before_kept);
    assert_eq!(
        begin(&store, &scope, "k", "h", 4).await,
        IdempotencyBegin::InProgress,
        "the record was not completed"
    );
    // Only the teardown of `s` and the first deploy of `kept` are queued.
    let mut jobs = Vec::new();
    while let Some(job) = claim(&store, 5).await {
        jobs.push((job.stack_id, job.kind, job.generation, job.release));
    }
    jobs.sort_by_key(|j| j.0);
    assert_eq!(
        jobs,
        [
            (s.id, JobKind::Teardown, 2, 1),
            (kept.id, JobKind::Deploy, 1, 1)
        ]
    );
}

pub async fn create_release_racing_request_deletion_never_releases_a_deleting_stack<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let rounds = 25;
    let (mut redeployed_first, mut refused) = (0, 0);
    let mut stacks = Vec::new();
    for round in 0..rounds {
        let now = round * 10;
        let s = stack(&store, Some(t.id), now).await;
        let barrier = Arc::new(Barrier::new(2));
        let spawn_redeploy = || {
            let (store, barrier, slug) = (store.clone(), barrier.clone(), s.slug.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .create_release(Access::Team(t.id), &slug, new_release(None, now + 1))
                    .await
            })
        };
        let spawn_delete = || {
            let (store, barrier, slug) = (store.clone(), barrier.clone(), s.slug.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .request_deletion(Access::Team(t.id), &slug, ctx(now + 1))
                    .await
            })
        };
        // Which task reaches the barrier last (and so runs on first) alternates, so both
        // orders happen even where the scheduler would otherwise always pick the same one.
        let (redeploy, delete) = if round % 2 == 0 {
            let r = spawn_redeploy();
            (r, spawn_delete())
        } else {
            let d = spawn_delete();
            (spawn_redeploy(), d)
        };
        let redeploy = redeploy.await.unwrap();
        let deleted = delete.await.unwrap().unwrap().expect("the stack exists");
        assert_eq!(deleted.status, StackStatus::Deleting);

        let d = detail(&store, &s).await.stack;
        let releases = store.list_releases(s.id).await.unwrap();
        let events = events_of(&store, s.id).await;
        let deleting_at = events
            .iter()
            .position(|e| e.kind == "stack.status" && e.data["status"] == "deleting")
            .expect("a deleting event");
        assert_eq!(
            deleting_at,
            events.len() - 1,
            "nothing happens to a deleting stack"
        );
        let created: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == "release.created" && e.data["release"] == 2)
            .map(|(i, _)| i)
            .collect();
        match redeploy {
            Ok((redeployed, info)) => {
                redeployed_first += 1;
                assert_eq!(
                    (redeployed.status, info.version),
                    (StackStatus::Building, 2)
                );
                assert_eq!((d.release, d.op_generation), (2, 3));
                assert_eq!(releases.len(), 2);
                assert_eq!(created.len(), 1);
                assert!(
                    created[0] < deleting_at,
                    "the release came before the deletion"
                );
            }
            Err(ReleaseError::Deleting) => {
                refused += 1;
                assert_eq!((d.release, d.op_generation), (1, 2));
                assert_eq!(releases.len(), 1, "no release of a deleting stack");
                assert!(created.is_empty());
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
        stacks.push(d);
    }
    assert_eq!(redeployed_first + refused, rounds);
    assert!(
        redeployed_first > 0 && refused > 0,
        "both orders must happen for this test to mean anything \
         ({redeployed_first} redeployed first, {refused} refused)"
    );
    // Whatever the order, each stack's only runnable job is its teardown, of the newest
    // generation: a redeploy that won had its deploy superseded by the deletion.
    let mut teardowns = Vec::new();
    while let Some(job) = claim(&store, 1_000_000).await {
        teardowns.push(job);
    }
    assert_eq!(teardowns.len(), stacks.len());
    for s in &stacks {
        let job = teardowns
            .iter()
            .find(|j| j.stack_id == s.id)
            .expect("one job per stack");
        assert_eq!(
            (job.kind, job.generation, job.release),
            (JobKind::Teardown, s.op_generation, s.release)
        );
    }
}

/// A build's progress event is written while its job owns the stack, and dropped (nothing
/// written) once a redeploy has superseded the job.
pub async fn record_job_event_writes_only_for_the_job_that_owns_the_stack<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let job = claim(&store, 1).await.unwrap();
    let step = |status| NewEvent::build_step("api", 1, 2, "RUN npm install", status, None);
    assert!(
        store
            .record_job_event(&job, step("running"), at(2))
            .await
            .unwrap()
    );
    let events = events_of(&store, s.id).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "build.step");
    assert_eq!(last.data["instruction"], "RUN npm install");
    assert_eq!(last.data["status"], "running");
    store
        .create_release(Access::Team(t.id), &s.slug, new_release(None, 3))
        .await
        .unwrap();
    let before = events_of(&store, s.id).await;
    assert!(
        !store
            .record_job_event(&job, step("done"), at(4))
            .await
            .unwrap()
    );
    assert_eq!(events_of(&store, s.id).await, before);
}

pub async fn record_service_status_of_a_job_superseded_by_a_redeploy_is_a_noop<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let old = claim(&store, 1).await.unwrap();
    let api = ServiceName::parse("api").unwrap();
    assert!(
        store
            .record_service_status(&old, &api, ServiceStatus::Deploying, None, None, at(2))
            .await
            .unwrap()
    );
    store
        .create_release(Access::Team(t.id), &s.slug, new_release(None, 3))
        .await
        .unwrap();
    let before = (detail(&store, &s).await, events_of(&store, s.id).await);
    assert!(
        !store
            .record_service_status(&old, &api, ServiceStatus::Failed, None, Some("late"), at(4))
            .await
            .unwrap()
    );
    assert_eq!(
        (detail(&store, &s).await, events_of(&store, s.id).await),
        before,
        "the stale write changed nothing and wrote no event"
    );
    assert!(
        before
            .0
            .services
            .iter()
            .all(|x| x.status == ServiceStatus::Building)
    );
    assert!(
        store
            .finish_deploy(&old, failed("late"), at(5))
            .await
            .unwrap(),
        "the stale job is closed"
    );
    assert_eq!(detail(&store, &s).await.stack.status, StackStatus::Building);
    assert_eq!(
        release_status(&store, &s, 1).await,
        ReleaseStatus::Superseded
    );
    assert_eq!(release_status(&store, &s, 2).await, ReleaseStatus::Pending);
    assert!(
        audit_all(&store, t.id, None, Some("stack.deploy_failed"))
            .await
            .is_empty()
    );

    let new = claim(&store, 6).await.expect("the redeploy runs now");
    assert_eq!((new.generation, new.release), (2, 2));
    assert!(
        store
            .record_service_status(&new, &api, ServiceStatus::Deploying, None, None, at(7))
            .await
            .unwrap()
    );
    assert_eq!(
        detail(&store, &s).await.services[0].status,
        ServiceStatus::Deploying
    );
}

/// v1 live; a v2 with an extra service whose deploy fails. Returns the stack and v2's job.
async fn failing_redeploy<S: Store>(store: &S, t: &Team) -> (Stack, Job) {
    let s = stack(store, Some(t.id), 0).await;
    deploy_now(store, &s, 1).await;
    let mut next = services();
    next.push(extra_service("extra", 9000, false));
    store
        .create_release(Access::Team(t.id), &s.slug, new_release(Some(next), 10))
        .await
        .unwrap();
    let job = claim(store, 11).await.unwrap();
    let api = ServiceName::parse("api").unwrap();
    let extra = ServiceName::parse("extra").unwrap();
    store
        .record_service_status(
            &job,
            &api,
            ServiceStatus::Healthy,
            Some(API_URL),
            None,
            at(12),
        )
        .await
        .unwrap();
    store
        .record_service_status(
            &job,
            &extra,
            ServiceStatus::Failed,
            None,
            Some("exit 1"),
            at(12),
        )
        .await
        .unwrap();
    let d = detail(store, &s).await;
    assert_eq!(
        (d.stack.status, d.stack.error.as_deref()),
        (StackStatus::Failed, Some("exit 1")),
        "while it runs the redeploy's statuses show"
    );
    (s, job)
}

async fn assert_still_serving_v1<S: Store>(store: &S, t: &Team, s: &Stack, error: &str) {
    let message = format!("release v2 failed: {error}");
    let d = detail(store, s).await;
    assert_eq!(
        (d.stack.status, d.stack.error.as_deref()),
        (StackStatus::Healthy, Some(message.as_str()))
    );
    let got: Vec<(&str, ServiceStatus, Option<&str>, Option<&str>)> = d
        .services
        .iter()
        .map(|x| {
            (
                x.name.as_str(),
                x.status,
                x.url.as_deref(),
                x.error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("api", ServiceStatus::Healthy, Some(API_URL), None),
            ("worker", ServiceStatus::Healthy, None, None),
        ],
        "back to v1's services, which still serve"
    );
    assert_eq!(release_status(store, s, 2).await, ReleaseStatus::Failed);
    assert_eq!(release_status(store, s, 1).await, ReleaseStatus::Live);
    assert_eq!(d.release.unwrap().status, ReleaseStatus::Failed);
    let rows = audit_all(
        store,
        t.id,
        Some(s.slug.as_str()),
        Some("stack.deploy_failed"),
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].metadata,
        json!({ "release": 2, "error": error, "still_serving": 1 })
    );
    assert_eq!(
        audit_all(store, t.id, Some(s.slug.as_str()), Some("stack.deployed"))
            .await
            .len(),
        1
    );
    let events = events_of(store, s.id).await;
    let tail: Vec<(&str, &Value)> = events[events.len() - 4..]
        .iter()
        .map(|e| (e.kind.as_str(), &e.data))
        .collect();
    assert_eq!(
        tail,
        [
            (
                "release.status",
                &json!({ "release": 2, "status": "failed", "error": error })
            ),
            (
                "service.status",
                &json!({ "service": "api", "status": "healthy", "url": API_URL, "error": null })
            ),
            (
                "service.status",
                &json!({ "service": "worker", "status": "healthy", "url": null, "error": null })
            ),
            (
                "stack.status",
                &json!({ "status": "healthy", "error": message })
            ),
        ]
    );
    let running = store.running_stacks().await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!((running[0].0.id, running[0].1.info.version), (s.id, 1));
    assert!(claim(store, 1_000).await.is_none());
}

pub async fn finish_deploy_failure_with_a_live_release_keeps_the_stack_healthy<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let (s, job) = failing_redeploy(&store, &t).await;
    assert!(
        store
            .finish_deploy(&job, failed("extra exited"), at(13))
            .await
            .unwrap()
    );
    assert_still_serving_v1(&store, &t, &s, "extra exited").await;

    // A failure with nothing live still fails the stack.
    let lone = stack(&store, Some(t.id), 20).await;
    let job = claim(&store, 21).await.unwrap();
    assert!(
        store
            .finish_deploy(&job, failed("boom"), at(22))
            .await
            .unwrap()
    );
    let d = detail(&store, &lone).await;
    assert_eq!(
        (d.stack.status, d.stack.error.as_deref()),
        (StackStatus::Failed, Some("boom"))
    );
    let events = events_of(&store, lone.id).await;
    let tail: Vec<(&str, &Value)> = events[2..]
        .iter()
        .map(|e| (e.kind.as_str(), &e.data))
        .collect();
    assert_eq!(
        tail,
        [
            (
                "release.status",
                &json!({ "release": 1, "status": "failed", "error": "boom" })
            ),
            (
                "service.status",
                &json!({ "service": "api", "status": "failed", "url": null, "error": "boom" })
            ),
            (
                "service.status",
                &json!({ "service": "worker", "status": "failed", "url": null, "error": "boom" })
            ),
            (
                "stack.status",
                &json!({ "status": "failed", "error": "boom" })
            ),
        ]
    );
}

pub async fn retry_job_give_up_with_a_live_release_keeps_the_stack_healthy<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let (s, job) = failing_redeploy(&store, &t).await;
    assert!(
        store
            .retry_job(&job, "gave up after 5 attempts", at(13), false)
            .await
            .unwrap(),
        "a retry first"
    );
    assert_eq!(detail(&store, &s).await.stack.status, StackStatus::Failed);
    let job = claim(&store, 14).await.expect("the retry");
    assert!(
        store
            .retry_job(&job, "gave up after 5 attempts", at(15), true)
            .await
            .unwrap()
    );
    assert_still_serving_v1(&store, &t, &s, "gave up after 5 attempts").await;
}

// ---------------------------------------------------------------------------------------------
// expiry and rate limits

pub async fn expired_stacks_lists_only_anonymous_expired_stacks_not_being_deleted<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let anon = |expires: Option<i64>| {
        let mut n = new_stack(None, 0);
        n.expires_at = expires.map(at);
        n
    };
    let a = store.create_stack(anon(Some(100))).await.unwrap();
    let b = store.create_stack(anon(Some(50))).await.unwrap();
    let c = store.create_stack(anon(Some(200))).await.unwrap();
    let deleting = store.create_stack(anon(Some(100))).await.unwrap();
    store.create_stack(anon(None)).await.unwrap();
    let mut team_stack = new_stack(Some(t.id), 0);
    team_stack.expires_at = Some(at(10));
    store.create_stack(team_stack).await.unwrap();
    delete(&store, Access::Anonymous, &deleting.slug, 1).await;

    let expired = |now: i64, limit: i64| {
        let store = store.clone();
        async move { store.expired_stacks(at(now), limit).await.unwrap() }
    };
    assert_eq!(expired(10, 10).await, [], "team stacks never expire here");
    assert_eq!(expired(49, 10).await, []);
    assert_eq!(
        expired(50, 10).await,
        vec![b.slug.clone()],
        "expires_at <= now"
    );
    assert_eq!(
        expired(100, 10).await,
        [b.slug.clone(), a.slug.clone()],
        "soonest first, deleting ones left out"
    );
    assert_eq!(
        expired(1_000, 10).await,
        [b.slug.clone(), a.slug.clone(), c.slug.clone()]
    );
    assert_eq!(expired(1_000, 2).await, [b.slug.clone(), a.slug.clone()]);
}

pub async fn count_anonymous_create_counts_per_fingerprint_per_utc_day<S: Store>(store: S) {
    let midnight = at(0).next_utc_midnight();
    let before = Millis(midnight.0 - 1);
    let count = |fp: &'static str, now: Millis| {
        let store = store.clone();
        async move { store.count_anonymous_create(fp, now).await.unwrap() }
    };
    assert_eq!(count("203.0.113.0/24", before).await, 1);
    assert_eq!(
        count("203.0.113.0/24", Millis(before.0 - 3_600_000)).await,
        2
    );
    assert_eq!(count("203.0.113.0/24", before).await, 3);
    assert_eq!(count("2001:db8::/64", before).await, 1, "per fingerprint");
    assert_eq!(count("203.0.113.0/24", midnight).await, 1, "a new UTC day");
    assert_eq!(count("203.0.113.0/24", before).await, 4);
    assert_eq!(count("203.0.113.0/24", midnight).await, 2);
}

pub async fn count_anonymous_create_is_exact_under_concurrent_calls<S: Store>(store: S) {
    let barrier = Arc::new(Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .count_anonymous_create("198.51.100.0/24", at(0))
                .await
                .expect("count_anonymous_create")
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.unwrap());
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=20).collect::<Vec<i64>>(),
        "each call got its own count"
    );
    assert_eq!(
        store
            .count_anonymous_create("198.51.100.0/24", at(1))
            .await
            .unwrap(),
        21
    );
}

// ---------------------------------------------------------------------------------------------
// events, recovery, pruning

pub async fn events_record_each_change_in_commit_order_and_outlive_the_stack<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let secrets = ["hunter2-super-secret", "postgres://admin:pa55@db/prod"];
    apply(
        &store,
        &s,
        vec![
            patch(json!({ "A": secrets[0] }), 1),
            patch(json!({ "A": secrets[0] }), 1),
            patch(json!({ "B": secrets[1], "A": null }), 1),
        ],
    )
    .await;
    apply_one(&store, &s, rollback(1, 2)).await.unwrap();
    let job = claim(&store, 3).await.unwrap();
    let api = ServiceName::parse("api").unwrap();
    let worker = ServiceName::parse("worker").unwrap();
    let report = |svc: &ServiceName, status, url, error, now| {
        let (store, job, svc) = (store.clone(), job.clone(), svc.clone());
        async move {
            assert!(
                store
                    .record_service_status(&job, &svc, status, url, error, at(now))
                    .await
                    .unwrap()
            );
        }
    };
    report(&api, ServiceStatus::Deploying, None, None, 4).await;
    report(&api, ServiceStatus::Deploying, None, None, 5).await;
    report(&worker, ServiceStatus::Deploying, None, None, 6).await;
    report(&api, ServiceStatus::Healthy, Some(API_URL), None, 7).await;
    report(&worker, ServiceStatus::Failed, None, Some("boom"), 8).await;
    report(&worker, ServiceStatus::Healthy, None, None, 9).await;
    assert!(store.finish_deploy(&job, deployed(), at(10)).await.unwrap());
    store
        .create_release(Access::Team(t.id), &s.slug, new_release(None, 11))
        .await
        .unwrap();
    delete(&store, Access::Team(t.id), &s.slug, 12).await;
    let teardown = claim(&store, 13).await.unwrap();
    assert_eq!(teardown.kind, JobKind::Teardown);
    assert!(
        store
            .finish_teardown(&teardown, at(14))
            .await
            .unwrap()
            .is_some()
    );

    let stack_status =
        |status: &str, error: Option<&str>| json!({ "status": status, "error": error });
    let service = |name: &str, status: &str, url: Option<&str>, error: Option<&str>| json!({ "service": name, "status": status, "url": url, "error": error });
    let expected: Vec<(&str, Value, i64)> = vec![
        ("stack.status", stack_status("building", None), 0),
        (
            "release.created",
            json!({ "release": 1, "env_version": 0 }),
            0,
        ),
        (
            "env.version",
            json!({ "version": 1, "set": ["A"], "deleted": [] }),
            1,
        ),
        (
            "env.version",
            json!({ "version": 2, "set": ["B"], "deleted": ["A"] }),
            1,
        ),
        (
            "env.version",
            json!({ "version": 3, "set": ["A"], "deleted": ["B"] }),
            2,
        ),
        ("service.status", service("api", "deploying", None, None), 4),
        (
            "service.status",
            service("worker", "deploying", None, None),
            6,
        ),
        ("stack.status", stack_status("deploying", None), 6),
        (
            "service.status",
            service("api", "healthy", Some(API_URL), None),
            7,
        ),
        (
            "service.status",
            service("worker", "failed", None, Some("boom")),
            8,
        ),
        ("stack.status", stack_status("failed", Some("boom")), 8),
        (
            "service.status",
            service("worker", "healthy", None, None),
            9,
        ),
        ("stack.status", stack_status("healthy", None), 9),
        (
            "release.status",
            json!({ "release": 1, "status": "live", "error": null }),
            10,
        ),
        ("stack.status", stack_status("healthy", None), 10),
        (
            "release.created",
            json!({ "release": 2, "env_version": 3 }),
            11,
        ),
        ("stack.status", stack_status("building", None), 11),
        ("stack.status", stack_status("deleting", None), 12),
        ("stack.deleted", json!({}), 14),
    ];
    assert!(
        !visible(&store, Access::Team(t.id), &s.slug).await,
        "the stack is gone"
    );
    let events = events_of(&store, s.id).await;
    let got: Vec<(&str, Value, i64)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.data.clone(), e.at.0 - T0))
        .collect();
    assert_eq!(got, expected, "its events stay, ending with stack.deleted");
    assert!(
        events.windows(2).all(|w| w[0].id < w[1].id),
        "ids follow commit order"
    );
    for e in &events {
        let text = e.data.to_string();
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "{} event leaks an env value",
                e.kind
            );
        }
    }
}

pub async fn list_events_pages_by_after_and_is_per_stack<S: Store>(store: S) {
    let a = stack(&store, None, 0).await;
    let b = stack(&store, None, 0).await;
    for i in 1..=5 {
        apply_one(&store, &a, patch(json!({ "K": format!("v{i}") }), i))
            .await
            .unwrap();
    }
    let all = store.list_events(a.id, 0, 100).await.unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(
        kinds(&all),
        [
            "stack.status",
            "release.created",
            "env.version",
            "env.version",
            "env.version",
            "env.version",
            "env.version"
        ]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all[6].data["version"], 5);

    let mut paged = Vec::new();
    let mut after = 0;
    let mut sizes = Vec::new();
    loop {
        let page = store.list_events(a.id, after, 3).await.unwrap();
        sizes.push(page.len());
        let Some(last) = page.last() else { break };
        after = last.id;
        paged.extend(page);
    }
    assert_eq!(sizes, [3, 3, 1, 0]);
    assert_eq!(paged, all);
    assert_eq!(
        store.list_events(a.id, all[3].id, 100).await.unwrap(),
        all[4..].to_vec(),
        "`after` resumes just past that id"
    );
    assert!(
        store
            .list_events(a.id, all[6].id, 100)
            .await
            .unwrap()
            .is_empty()
    );

    let theirs = store.list_events(b.id, 0, 100).await.unwrap();
    assert_eq!(kinds(&theirs), ["stack.status", "release.created"]);
    assert!(theirs.iter().all(|e| !all.contains(e)), "per stack");
    assert!(
        store
            .list_events(StackId(i64::from(i32::MAX)), 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn running_stacks_returns_live_releases_of_stacks_not_being_deleted<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    // a: v1 live; then env and a redeploy that has not finished.
    let a = stack(&store, Some(t.id), 0).await;
    deploy_now(&store, &a, 1).await;
    // c: live, deleted at the end.
    let c = stack(&store, Some(t.id), 2).await;
    deploy_now(&store, &c, 3).await;
    // d: v2 live, carrying env version 1.
    let d = stack(&store, Some(t.id), 4).await;
    deploy_now(&store, &d, 5).await;
    apply_one(&store, &d, patch(json!({ "B": "2" }), 6))
        .await
        .unwrap();
    store
        .create_release(Access::Team(t.id), &d.slug, new_release(None, 7))
        .await
        .unwrap();
    deploy_now(&store, &d, 8).await;
    apply_one(&store, &d, patch(json!({ "B": "later" }), 9))
        .await
        .unwrap();
    // e: its first deploy failed.
    let e = stack(&store, Some(t.id), 10).await;
    let job = claim(&store, 11).await.unwrap();
    assert_eq!(job.stack_id, e.id);
    store
        .finish_deploy(&job, failed("boom"), at(12))
        .await
        .unwrap();
    // a's redeploy, b never deployed, c being deleted.
    apply_one(&store, &a, patch(json!({ "A": "1" }), 13))
        .await
        .unwrap();
    store
        .create_release(Access::Team(t.id), &a.slug, new_release(None, 14))
        .await
        .unwrap();
    stack(&store, Some(t.id), 15).await;
    delete(&store, Access::Team(t.id), &c.slug, 16).await;

    let mut running = store.running_stacks().await.unwrap();
    running.sort_by_key(|(s, _, _)| s.id);
    let got: Vec<_> = running
        .iter()
        .map(|(s, r, env)| {
            (
                s.id,
                r.info.version,
                r.info.status,
                r.info.env_version,
                env.to_map(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (a.id, 1, ReleaseStatus::Live, 0, BTreeMap::new()),
            (d.id, 2, ReleaseStatus::Live, 1, vars(&[("B", "2")])),
        ]
    );
    assert_eq!(running[0].0, detail(&store, &a).await.stack);
    assert_eq!(
        running[0].0.status,
        StackStatus::Building,
        "a is redeploying"
    );
    assert_eq!(running[1].1.services, services());
}

pub async fn prune_removes_old_events_expired_records_and_past_counters_only<S: Store>(store: S) {
    let day = i64::try_from(DAY.as_millis()).unwrap();
    let s = stack(&store, None, 0).await;
    apply_one(&store, &s, patch(json!({ "A": "1" }), 10))
        .await
        .unwrap();
    apply_one(&store, &s, patch(json!({ "A": "2" }), 20))
        .await
        .unwrap();
    for (key, now) in [("old", 0), ("new", day / 2)] {
        assert_eq!(
            begin(&store, "t", key, "h", now).await,
            IdempotencyBegin::Started
        );
    }
    let fp = "203.0.113.0/24";
    assert_ne!(at(0).utc_day(), at(day).utc_day());
    store.count_anonymous_create(fp, at(0)).await.unwrap();
    store.count_anonymous_create(fp, at(0)).await.unwrap();
    store.count_anonymous_create(fp, at(day)).await.unwrap();

    // Events at 0, 0 and 10 are older than 20; "old" expires at exactly `day`; the counter of
    // at(0)'s day is past.
    assert_eq!(store.prune(at(day), at(20)).await.unwrap(), 3 + 1 + 1);
    assert_eq!(
        store.prune(at(day), at(20)).await.unwrap(),
        0,
        "nothing left"
    );

    let events = events_of(&store, s.id).await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.kind.as_str(), e.at))
            .collect::<Vec<_>>(),
        [("env.version", at(20))],
        "an event exactly at the bound stays"
    );
    assert_eq!(
        begin(&store, "t", "new", "h", day / 2 + 1_000).await,
        IdempotencyBegin::InProgress,
        "a live record stays"
    );
    assert_eq!(
        store.count_anonymous_create(fp, at(day)).await.unwrap(),
        2,
        "today's counter stays"
    );
    assert_eq!(
        store.count_anonymous_create(fp, at(0)).await.unwrap(),
        1,
        "the past day's counter was removed"
    );
    assert_eq!(
        current_env(&store, &s).await.version,
        2,
        "nothing else is touched"
    );
}

/// A read that starts after a write returned sees that write, however many reads race it (the
/// SQLite store answers `get_stack` from memory between writes: this is the rule it keeps).
pub async fn get_stack_after_a_write_returns_sees_it_while_readers_race<S: Store>(store: S) {
    let t = team(&store, "racers", None).await;
    let s = stack(&store, Some(t.id), 1).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(9));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (store, s, stop, barrier) = (store.clone(), s.clone(), stop.clone(), barrier.clone());
        readers.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                detail(&store, &s).await;
                reads += 1;
                // An answer from memory never waits: let the writer run.
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    barrier.wait().await;
    for i in 1..=40 {
        let out = apply_one(&store, &s, patch(json!({ "K": i.to_string() }), 10 + i)).await;
        assert_eq!(out.unwrap().version, i);
        let seen = detail(&store, &s).await;
        assert_eq!(
            seen.stack.env_version, i,
            "a read after write {i} returned missed it"
        );
        if i % 10 == 0 {
            // A lifecycle write too: the stack's status changes.
            let job = claim(&store, 100 + i).await.expect("the deploy job");
            store
                .finish_deploy(
                    &job,
                    DeployResult {
                        ok: true,
                        error: None,
                    },
                    at(100 + i),
                )
                .await
                .unwrap();
            assert_eq!(detail(&store, &s).await.stack.status, StackStatus::Healthy);
            store
                .create_release(Access::Team(t.id), &s.slug, new_release(None, 100 + i))
                .await
                .unwrap();
            assert_eq!(detail(&store, &s).await.stack.status, StackStatus::Building);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// restarts

pub async fn request_restart_queues_one_restart_job_with_its_audit_and_events<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    deploy_now(&store, &s, 1).await;
    let worker = ServiceName::parse("worker").unwrap();

    let queued = store
        .request_restart(access(&s), &s.slug, Some(worker.clone()), ctx(2))
        .await
        .expect("request_restart");
    assert_eq!(queued.services, std::slice::from_ref(&worker));
    assert_eq!(
        (queued.release.version, queued.release.status),
        (1, ReleaseStatus::Live)
    );
    assert_eq!(queued.stack.status, StackStatus::Degraded);
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Degraded);
    assert_eq!(
        d.stack.op_generation, s.op_generation,
        "not a new operation"
    );
    assert_eq!(
        (d.services[0].status, d.services[1].status),
        (ServiceStatus::Healthy, ServiceStatus::Restarting)
    );
    assert_eq!(d.release.map(|r| r.version), Some(1), "no new release");

    let audit = audit_all(
        &store,
        t.id,
        Some(s.slug.as_str()),
        Some("stack.restart_requested"),
    )
    .await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].request_id.as_deref(), Some("req-2"));
    assert_eq!(
        audit[0].metadata,
        json!({ "release": 1, "services": ["worker"] })
    );
    let events = events_of(&store, s.id).await;
    let tail: Vec<&str> = kinds(&events).into_iter().rev().take(3).rev().collect();
    assert_eq!(
        tail,
        ["restart.requested", "service.status", "stack.status"]
    );
    let requested = &events[events.len() - 3];
    assert_eq!(
        requested.data,
        json!({ "release": 1, "services": ["worker"], "request_id": "req-2" })
    );

    let job = claim(&store, 3).await.expect("the restart is queued");
    assert_eq!(
        (job.kind, job.release, job.service.as_ref(), job.generation),
        (JobKind::Restart, 1, Some(&worker), s.op_generation)
    );
    // The job's own reports move the service, the stack heals once all are healthy.
    assert!(
        store
            .record_service_status(&job, &worker, ServiceStatus::Healthy, None, None, at(4))
            .await
            .unwrap()
    );
    let d = detail(&store, &s).await;
    assert_eq!(
        (d.stack.status, d.services[1].status),
        (StackStatus::Healthy, ServiceStatus::Healthy)
    );
    assert!(store.finish_restart(&job, deployed(), at(5)).await.unwrap());
    assert!(claim(&store, 6).await.is_none());

    // A whole-stack restart that the runtime reports nothing about is settled by its end.
    store
        .request_restart(access(&s), &s.slug, None, ctx(7))
        .await
        .unwrap();
    let job = claim(&store, 8).await.unwrap();
    assert_eq!(job.service, None);
    assert!(store.finish_restart(&job, deployed(), at(9)).await.unwrap());
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Healthy);
    assert!(
        d.services
            .iter()
            .all(|x| x.status == ServiceStatus::Healthy)
    );
    assert_eq!(d.services[0].url.as_deref(), Some(API_URL), "the URL stays");
    assert!(
        !store
            .finish_restart(&job, deployed(), at(10))
            .await
            .unwrap(),
        "a job ends once"
    );
}

pub async fn request_restart_refuses_missing_not_running_unknown_and_deleting_and_writes_nothing<
    S: Store,
>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let other = team(&store, "other", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    let restart = |access, service: Option<&str>, now| {
        let store = store.clone();
        let slug = s.slug.clone();
        let service = service.map(|n| ServiceName::parse(n).unwrap());
        async move {
            store
                .request_restart(access, &slug, service, ctx(now))
                .await
        }
    };
    assert_eq!(
        restart(access(&s), None, 1).await.unwrap_err(),
        RestartError::NotRunning {
            status: StackStatus::Building
        },
        "the first deploy has not finished"
    );
    deploy_now(&store, &s, 2).await;
    assert_eq!(
        restart(Access::Team(other.id), None, 3).await.unwrap_err(),
        RestartError::NotFound
    );
    assert_eq!(
        restart(Access::Anonymous, None, 3).await.unwrap_err(),
        RestartError::NotFound
    );
    assert_eq!(
        restart(access(&s), Some("db"), 4).await.unwrap_err(),
        RestartError::UnknownService(ServiceName::parse("db").unwrap())
    );
    delete(&store, access(&s), &s.slug, 5).await;
    assert_eq!(
        restart(access(&s), None, 6).await.unwrap_err(),
        RestartError::Deleting
    );
    let audit = audit_all(&store, t.id, None, Some("stack.restart_requested")).await;
    assert!(audit.is_empty(), "{audit:?}");
    let events = events_of(&store, s.id).await;
    assert!(!kinds(&events).contains(&"restart.requested"));
    let job = claim(&store, 7).await.unwrap();
    assert_eq!(job.kind, JobKind::Teardown, "no restart was queued");
}

pub async fn restart_job_overtaken_by_a_redeploy_writes_nothing<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    deploy_now(&store, &s, 1).await;
    store
        .request_restart(access(&s), &s.slug, None, ctx(2))
        .await
        .unwrap();
    let job = claim(&store, 3).await.unwrap();
    assert_eq!(job.kind, JobKind::Restart);
    store
        .create_release(access(&s), &s.slug, new_release(None, 4))
        .await
        .unwrap();
    let api = ServiceName::parse("api").unwrap();
    assert!(
        !store
            .record_service_status(&job, &api, ServiceStatus::Healthy, None, None, at(5))
            .await
            .unwrap(),
        "the redeploy owns the stack now"
    );
    assert!(store.finish_restart(&job, deployed(), at(6)).await.unwrap());
    let d = detail(&store, &s).await;
    assert_eq!(d.stack.status, StackStatus::Building);
    assert!(
        d.services
            .iter()
            .all(|x| x.status == ServiceStatus::Building)
    );
    let next = claim(&store, 7).await.unwrap();
    assert_eq!((next.kind, next.release), (JobKind::Deploy, 2));
}

// ---- resources ----

fn new_resource(team: Option<TeamId>, now: i64, max: Option<i64>) -> NewResource {
    let id = generate_id();
    NewResource {
        resource: Resource {
            connection_url: format!("postgres://sy_{id}:pw@db:5432/sy_{id}"),
            id,
            token: ResourceToken::generate(),
            kind: ResourceKind::Postgres,
            name: ResourceName::parse("orders").unwrap(),
            team_id: team,
            tier: if team.is_some() {
                "team"
            } else {
                ANONYMOUS_TIER
            }
            .to_owned(),
            status: ResourceStatus::Provisioning,
            created_at: at(now),
            expires_at: team.is_none().then(|| at(now + 1000)),
            stack: None,
        },
        fingerprint: team.is_none().then(|| "10.0.0.0/24".to_owned()),
        max_per_team: max,
    }
}

pub async fn resource_rows_move_provisioning_ready_deleting_gone_with_their_audit_rows<S: Store>(
    store: S,
) {
    let t = team(&store, "res", None).await;
    let new = new_resource(Some(t.id), 1, None);
    let r = new.resource.clone();
    store.insert_resource(new).await.unwrap();
    // Not ready yet: the URL is not handed out.
    assert!(
        store
            .reveal_resource(t.id, &r.token, ctx(2))
            .await
            .unwrap()
            .is_none()
    );
    let got = store.get_resource(t.id, &r.token).await.unwrap().unwrap();
    assert_eq!(got.status, ResourceStatus::Provisioning);

    assert!(store.mark_resource_ready(&r, ctx(3), None).await.unwrap());
    assert!(!store.mark_resource_ready(&r, ctx(3), None).await.unwrap());
    let shown = store
        .reveal_resource(t.id, &r.token, ctx(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shown.connection_url, r.connection_url);
    let other = team(&store, "other", None).await;
    assert!(
        store
            .reveal_resource(other.id, &r.token, ctx(4))
            .await
            .unwrap()
            .is_none()
    );

    let page = store.list_resources(t.id, 10, None).await.unwrap();
    assert_eq!((page.total, page.items.len()), (1, 1));

    let d = store
        .mark_resource_deleting(Some(other.id), &r.token, ctx(5))
        .await
        .unwrap();
    assert!(d.is_none(), "another team cannot delete it");
    let d = store
        .mark_resource_deleting(Some(t.id), &r.token, ctx(5))
        .await
        .unwrap();
    assert_eq!(d.unwrap().status, ResourceStatus::Deleting);
    // A repeat (a retried DELETE) returns the row again without a second audit row.
    assert!(
        store
            .mark_resource_deleting(None, &r.token, ctx(6))
            .await
            .unwrap()
            .is_some()
    );
    store.remove_resource(&r.token).await.unwrap();
    assert!(store.get_resource(t.id, &r.token).await.unwrap().is_none());

    let kinds: Vec<String> = audit_all(&store, t.id, None, None)
        .await
        .into_iter()
        .filter(|e| e.kind.starts_with("resource."))
        .map(|e| {
            assert_eq!(e.metadata["resource"], r.token.as_str());
            assert!(
                !e.metadata.to_string().contains("pw@"),
                "no URL in the audit"
            );
            e.kind
        })
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    for k in ["resource.created", "resource.url_read", "resource.deleted"] {
        assert!(kinds.iter().any(|x| x == k), "{kinds:?}");
    }
}

pub async fn insert_resource_enforces_the_team_cap_under_concurrent_creates<S: Store>(store: S) {
    let t = team(&store, "capped", None).await;
    let barrier = Arc::new(Barrier::new(6));
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .insert_resource(new_resource(Some(t.id), i, Some(2)))
                    .await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(CreateResourceError::LimitReached { max }) => assert_eq!(max, 2),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 2);
}

pub async fn resources_to_reconcile_skips_young_provisioning_rows_and_ready_ones_unless_asked<
    S: Store,
>(
    store: S,
) {
    let old = new_resource(None, 10, None);
    let young = new_resource(None, 1000, None);
    let ready = new_resource(None, 10, None);
    for n in [&old, &young, &ready] {
        store.insert_resource(n.clone()).await.unwrap();
    }
    store
        .mark_resource_ready(&ready.resource, ctx(11), None)
        .await
        .unwrap();
    let tokens = |v: Vec<Resource>| v.into_iter().map(|r| r.token).collect::<Vec<_>>();
    let got = tokens(store.resources_to_reconcile(at(500), false).await.unwrap());
    assert_eq!(got, vec![old.resource.token.clone()]);
    let got = tokens(store.resources_to_reconcile(at(500), true).await.unwrap());
    assert_eq!(got.len(), 2);
    assert!(got.contains(&ready.resource.token));
    // Expiry sees only ready rows past their time.
    let expired = tokens(store.expired_resources(at(2000), 10).await.unwrap());
    assert_eq!(expired, vec![ready.resource.token.clone()]);
}

pub async fn stack_owned_resources_are_found_by_stack_and_env_and_outside_the_team_cap<S: Store>(
    store: S,
) {
    use stackyard_core::resource::StackOwner;
    let t = team(&store, "owned", None).await;
    let stack = StackId(4242);
    let owned = |env: &str, now: i64| {
        let mut n = new_resource(Some(t.id), now, Some(1));
        n.resource.stack = Some(StackOwner {
            stack_id: stack,
            env: env.to_owned(),
            slug: None,
        });
        n
    };
    let (a, b) = (owned("DATABASE_URL", 1), owned("DATABASE_URL_2", 2));
    store.insert_resource(a.clone()).await.unwrap();
    // Stack-owned rows do not count against the cap (1): a second one, and the team's own.
    store.insert_resource(b.clone()).await.unwrap();
    store
        .insert_resource(new_resource(Some(t.id), 3, Some(1)))
        .await
        .unwrap();
    // One row per (stack, env name).
    let mut dup = owned("DATABASE_URL", 4);
    dup.max_per_team = None;
    assert!(store.insert_resource(dup).await.is_err());

    let got = store
        .stack_resource(stack, "DATABASE_URL")
        .await
        .unwrap()
        .expect("found by stack and env");
    assert_eq!(got.token, a.resource.token);
    assert_eq!(
        got.stack.as_ref().map(|s| s.env.as_str()),
        Some("DATABASE_URL")
    );
    assert!(
        store
            .stack_resource(stack, "REDIS_URL")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .stack_resource(StackId(4243), "DATABASE_URL")
            .await
            .unwrap()
            .is_none()
    );
    let all: Vec<_> = store
        .stack_resources(stack)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.token)
        .collect();
    assert_eq!(
        all,
        vec![a.resource.token.clone(), b.resource.token.clone()]
    );

    // A granted read needs the owner to match and the row to be ready.
    assert!(
        store
            .reveal_granted_resource(Some(t.id), &a.resource.token, ctx(5))
            .await
            .unwrap()
            .is_none()
    );
    store
        .mark_resource_ready(&a.resource, ctx(5), None)
        .await
        .unwrap();
    assert!(
        store
            .reveal_granted_resource(None, &a.resource.token, ctx(6))
            .await
            .unwrap()
            .is_none()
    );
    let revealed = store
        .reveal_granted_resource(Some(t.id), &a.resource.token, ctx(6))
        .await
        .unwrap()
        .expect("its owner reads it");
    assert_eq!(revealed.connection_url, a.resource.connection_url);
    assert!(
        store
            .find_resource(&b.resource.token)
            .await
            .unwrap()
            .is_some()
    );
}

pub async fn master_canary_is_written_once_and_swapped_only_from_the_expected_one<S: Store>(
    store: S,
) {
    use stackyard_core::crypto::MasterKey;
    let (a, b, c) = (
        MasterKey::generate(),
        MasterKey::generate(),
        MasterKey::generate(),
    );
    assert_eq!(store.master_canary().await.unwrap(), None);
    let (first, second) = (a.seal_canary(), b.seal_canary());
    // Two first starts race: exactly one canary is written.
    let (x, y) = tokio::join!(
        store.swap_master_canary(None, &first, at(1)),
        store.swap_master_canary(None, &second, at(1)),
    );
    assert!(x.unwrap() ^ y.unwrap(), "exactly one first canary wins");
    let stored = store.master_canary().await.unwrap().unwrap();
    let winner = if a.check_canary(&stored).is_ok() {
        &a
    } else {
        &b
    };
    // A rotation from a canary that is no longer stored changes nothing.
    let stale = if stored == first {
        b.seal_canary()
    } else {
        first
    };
    assert!(
        !store
            .swap_master_canary(Some(&stale), &c.seal_canary(), at(2))
            .await
            .unwrap()
    );
    assert!(
        winner
            .check_canary(&store.master_canary().await.unwrap().unwrap())
            .is_ok()
    );
    let rotated = c.seal_canary();
    assert!(
        store
            .swap_master_canary(Some(&stored), &rotated, at(3))
            .await
            .unwrap()
    );
    assert_eq!(store.master_canary().await.unwrap(), Some(rotated));
}

/// The stack's wrapped data key, as `wrapped_keys` lists it.
async fn stack_key<S: Store>(store: &S, s: &Stack) -> Option<Vec<u8>> {
    store
        .wrapped_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.row == WrappedRow::Stack(s.id.0))
        .map(|k| k.wrapped)
}

pub async fn rekey_stack_gives_a_new_data_key_and_loses_no_concurrent_write_or_old_version<
    S: Store,
>(
    store: S,
) {
    const WRITERS: usize = 4;
    const WRITES: usize = 10;
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 0).await;
    apply_one(&store, &s, patch(json!({ "A": "one" }), 1))
        .await
        .unwrap();
    let first = stack_key(&store, &s)
        .await
        .expect("sealed by its first write");
    let barrier = Arc::new(Barrier::new(WRITERS + 1));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, s, barrier) = (store.clone(), s.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            for i in 0..WRITES {
                let key = format!("W{w}");
                apply_one(&store, &s, patch(json!({ key: format!("v{i}") }), 2))
                    .await
                    .unwrap();
            }
        }));
    }
    barrier.wait().await;
    for _ in 0..5 {
        assert!(store.rekey_stack(s.id).await.unwrap());
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(store.rekey_stack(s.id).await.unwrap());
    let last = stack_key(&store, &s).await.unwrap();
    assert_ne!(first, last, "a new data key");
    let env = store.get_env(s.id, None).await.unwrap().unwrap();
    assert_eq!(env.version, 1 + (WRITERS * WRITES) as i64);
    assert_eq!(env.env.get("A"), Some("one"));
    for w in 0..WRITERS {
        assert_eq!(
            env.env.get(&format!("W{w}")),
            Some(format!("v{}", WRITES - 1).as_str())
        );
    }
    // The history was sealed again too: version 1 still rebuilds.
    let out = apply_one(&store, &s, rollback(1, 3)).await.unwrap();
    assert_eq!(out.env.to_map(), vars(&[("A", "one")]));
    assert!(
        !store.rekey_stack(StackId(s.id.0 + 1000)).await.unwrap(),
        "no such stack"
    );
}

// ---------------------------------------------------------------------------------------------
// the team vault

fn venv(s: &str) -> EnvironmentName {
    EnvironmentName::parse(s).unwrap()
}

fn vkey(s: &str) -> VaultKey {
    VaultKey::parse(s).unwrap()
}

async fn vput<S: Store>(store: &S, t: &Team, env: &str, key: &str, value: &str, now: i64) -> i64 {
    store
        .put_vault_value(
            t.id,
            &venv(env),
            &vkey(key),
            value,
            VaultWrite::Set,
            ctx(now),
        )
        .await
        .expect("put_vault_value")
}

async fn vget<S: Store>(
    store: &S,
    t: &Team,
    env: &str,
    key: &str,
    version: Option<i64>,
) -> Option<(i64, String)> {
    store
        .read_vault_value(t.id, &venv(env), &vkey(key), version, ctx(99))
        .await
        .expect("read_vault_value")
        .map(|v| (v.version, v.value))
}

async fn audit_kinds<S: Store>(store: &S, t: &Team, kind: &str) -> Vec<AuditEntry> {
    store
        .list_audit(
            t.id,
            AuditFilter {
                stack: None,
                kind: Some(kind.into()),
                limit: 100,
                cursor: None,
            },
        )
        .await
        .unwrap()
        .items
}

pub async fn vault_writes_get_increasing_versions_and_each_version_reads_back_audited<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let other = team(&store, "other", None).await;
    assert_eq!(
        vput(&store, &t, "prod", "DB_PASS", "one-sentinel", 1).await,
        1
    );
    assert_eq!(
        vput(&store, &t, "prod", "DB_PASS", "two-sentinel", 2).await,
        2
    );
    let v3 = store
        .put_vault_value(
            t.id,
            &venv("prod"),
            &vkey("DB_PASS"),
            "three",
            VaultWrite::Rotate,
            ctx(3),
        )
        .await
        .unwrap();
    assert_eq!(v3, 3);
    assert_eq!(
        vput(&store, &t, "dev", "DB_PASS", "dev", 4).await,
        1,
        "per env"
    );
    assert_eq!(
        vget(&store, &t, "prod", "DB_PASS", None).await,
        Some((3, "three".into()))
    );
    assert_eq!(
        vget(&store, &t, "prod", "DB_PASS", Some(1)).await,
        Some((1, "one-sentinel".into()))
    );
    assert_eq!(vget(&store, &t, "prod", "DB_PASS", Some(9)).await, None);
    assert_eq!(
        vget(&store, &other, "prod", "DB_PASS", None).await,
        None,
        "per team"
    );
    assert_eq!(
        store.list_vault_keys(t.id, &venv("prod")).await.unwrap(),
        vec![vkey("DB_PASS")]
    );
    let reads = audit_kinds(&store, &t, "vault.read").await;
    assert_eq!(reads.len(), 2);
    assert_eq!(reads[0].metadata["version"], 1);
    assert_eq!(reads[0].metadata["key"], "DB_PASS");
    assert_eq!(audit_kinds(&store, &t, "vault.set").await.len(), 3);
    assert_eq!(audit_kinds(&store, &t, "vault.rotated").await.len(), 1);
    for kind in ["vault.read", "vault.set", "vault.rotated"] {
        for a in audit_kinds(&store, &t, kind).await {
            let m = a.metadata.to_string();
            assert!(!m.contains("sentinel") && !m.contains("three"), "{m}");
        }
    }
}

pub async fn vault_delete_removes_every_version_and_versions_are_never_reused<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    vput(&store, &t, "prod", "K", "a", 1).await;
    vput(&store, &t, "prod", "K", "b", 2).await;
    vput(&store, &t, "prod", "OTHER", "c", 3).await;
    let del = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .delete_vault_key(t.id, &venv("prod"), &vkey(key), ctx(4))
                .await
                .unwrap()
        }
    };
    assert!(del("K").await);
    assert!(!del("K").await, "a second delete finds nothing");
    assert!(!del("NEVER").await);
    assert_eq!(vget(&store, &t, "prod", "K", None).await, None);
    assert_eq!(vget(&store, &t, "prod", "K", Some(1)).await, None);
    assert_eq!(
        store.list_vault_keys(t.id, &venv("prod")).await.unwrap(),
        vec![vkey("OTHER")]
    );
    assert_eq!(
        vput(&store, &t, "prod", "K", "again", 5).await,
        3,
        "a version a release may have recorded is never reused"
    );
    assert_eq!(audit_kinds(&store, &t, "vault.deleted").await.len(), 1);
}

pub async fn vault_copy_copies_skips_overwrites_and_reports_missing_and_a_dry_run_writes_nothing<
    S: Store,
>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    vput(&store, &t, "dev", "A", "a1", 1).await;
    vput(&store, &t, "dev", "A", "a2", 2).await;
    vput(&store, &t, "dev", "B", "b-dev", 3).await;
    vput(&store, &t, "prod", "B", "b-prod", 4).await;
    let copy = |keys: Option<&[&str]>, dry_run: bool, overwrite: bool| VaultCopy {
        from: venv("dev"),
        to: venv("prod"),
        keys: keys.map(|k| k.iter().map(|k| vkey(k)).collect()),
        dry_run,
        overwrite,
    };
    let actions = |out: &stackyard_core::vault::CopyOutcome| -> Vec<(String, CopyAction)> {
        out.plan
            .iter()
            .map(|(k, a)| (k.as_str().to_owned(), *a))
            .collect()
    };

    let dry = store
        .copy_vault(t.id, &copy(None, true, false), ctx(5))
        .await
        .unwrap();
    assert_eq!(
        actions(&dry),
        [
            ("A".into(), CopyAction::Copy),
            ("B".into(), CopyAction::Skip)
        ]
    );
    assert_eq!((dry.copied, dry.skipped, dry.missing), (0, 1, 0));
    assert_eq!(vget(&store, &t, "prod", "A", None).await, None, "dry run");

    let out = store
        .copy_vault(t.id, &copy(None, false, false), ctx(6))
        .await
        .unwrap();
    assert_eq!((out.copied, out.skipped, out.missing), (1, 1, 0));
    assert_eq!(
        vget(&store, &t, "prod", "A", None).await,
        Some((1, "a2".into())),
        "the newest version, as a new version in the target"
    );
    assert_eq!(
        vget(&store, &t, "prod", "B", None).await,
        Some((1, "b-prod".into()))
    );

    let out = store
        .copy_vault(t.id, &copy(Some(&["B", "NOPE"]), false, true), ctx(7))
        .await
        .unwrap();
    assert_eq!(
        actions(&out),
        [
            ("B".into(), CopyAction::Overwrite),
            ("NOPE".into(), CopyAction::Missing)
        ]
    );
    assert_eq!((out.copied, out.skipped, out.missing), (1, 0, 1));
    assert_eq!(
        vget(&store, &t, "prod", "B", None).await,
        Some((2, "b-dev".into()))
    );
    let copies = audit_kinds(&store, &t, "vault.copied").await;
    assert_eq!(copies.len(), 2, "a dry run is not audited");
    assert!(!copies[0].metadata.to_string().contains("b-dev"));
}

pub async fn vault_concurrent_writers_to_one_key_never_share_a_version<S: Store>(store: S) {
    let t = team(&store, "acme", None).await;
    let n = 12;
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let v = store
                    .put_vault_value(
                        t.id,
                        &venv("prod"),
                        &vkey("HOT"),
                        &format!("value-{i}"),
                        VaultWrite::Set,
                        ctx(i as i64),
                    )
                    .await
                    .expect("put_vault_value");
                (v, i)
            })
        })
        .collect();
    let mut versions = BTreeMap::new();
    for task in tasks {
        let (v, i) = task.await.unwrap();
        assert!(versions.insert(v, i).is_none(), "version {v} given twice");
    }
    assert_eq!(
        versions.keys().copied().collect::<Vec<_>>(),
        (1..=n as i64).collect::<Vec<_>>()
    );
    for (v, i) in versions {
        assert_eq!(
            vget(&store, &t, "prod", "HOT", Some(v)).await,
            Some((v, format!("value-{i}")))
        );
    }
}

fn with_manifest_env(mut new: NewStack, key: &str, value: &str) -> NewStack {
    new.services[0].env.insert(key.into(), value.into());
    new
}

pub async fn vault_refs_are_pinned_per_release_so_a_rotation_changes_only_later_releases<
    S: Store,
>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    vput(&store, &t, "development", "DB_PASS", "v1-secret", 1).await;
    vput(&store, &t, "development", "API", "api-1", 2).await;
    let new = with_manifest_env(new_stack(Some(t.id), 3), "DB", "vault://DB_PASS");
    let s = store.create_stack(new).await.unwrap();
    let values = store.release_vault_values(s.id, 1).await.unwrap().unwrap();
    assert_eq!(
        values,
        BTreeMap::from([("DB_PASS".into(), "v1-secret".into())])
    );

    // The stack env names a key too; the env map keeps showing the reference.
    apply_one(&store, &s, patch(json!({ "API_KEY": "vault://API" }), 4))
        .await
        .unwrap();
    store
        .put_vault_value(
            t.id,
            &venv("development"),
            &vkey("DB_PASS"),
            "v2-secret",
            VaultWrite::Rotate,
            ctx(5),
        )
        .await
        .unwrap();
    assert_eq!(
        store.release_vault_values(s.id, 1).await.unwrap().unwrap()["DB_PASS"],
        "v1-secret",
        "release 1 keeps the version it recorded"
    );
    let (_, info) = store
        .create_release(Access::Team(t.id), &s.slug, new_release(None, 6))
        .await
        .unwrap();
    let values = store
        .release_vault_values(s.id, info.version)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        values,
        BTreeMap::from([
            ("API".into(), "api-1".into()),
            ("DB_PASS".into(), "v2-secret".into())
        ])
    );
    let env = store.get_env(s.id, None).await.unwrap().unwrap();
    assert_eq!(env.env.get("API_KEY"), Some("vault://API"));

    // A recorded version deleted since: the release cannot be reproduced.
    store
        .delete_vault_key(t.id, &venv("development"), &vkey("DB_PASS"), ctx(7))
        .await
        .unwrap();
    assert!(matches!(
        store.release_vault_values(s.id, 1).await.unwrap(),
        Err(VaultRefError::Missing { .. })
    ));
}

pub async fn an_env_rollback_takes_the_vault_versions_its_target_was_released_with<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    vput(&store, &t, "development", "DB_PASS", "v1-secret", 1).await;
    let s = stack(&store, Some(t.id), 2).await;
    let release = |now: i64| {
        let (store, slug) = (store.clone(), s.slug.clone());
        async move {
            let (_, info) = store
                .create_release(Access::Team(t.id), &slug, new_release(None, now))
                .await
                .unwrap();
            let values = store.release_vault_values(s.id, info.version).await;
            values.unwrap().unwrap()["DB_PASS"].clone()
        }
    };
    // Env v1 refers to the vault; its release takes the newest value, v1.
    apply_one(&store, &s, patch(json!({ "DB": "vault://DB_PASS" }), 3))
        .await
        .unwrap();
    assert_eq!(release(4).await, "v1-secret");
    // The value rotates and the env moves on (v2): the next release takes the new value.
    vput(&store, &t, "development", "DB_PASS", "v2-secret", 5).await;
    apply_one(&store, &s, patch(json!({ "OTHER": "x" }), 6))
        .await
        .unwrap();
    assert_eq!(release(7).await, "v2-secret");
    // Env rolled back to v1 (as v3): the release is built with what v1 was released with.
    apply_one(&store, &s, rollback(1, 8)).await.unwrap();
    assert_eq!(release(9).await, "v1-secret");
    // A change after the rollback: newest again.
    apply_one(&store, &s, patch(json!({ "OTHER": "y" }), 10))
        .await
        .unwrap();
    assert_eq!(release(11).await, "v2-secret");
    // A rollback to a version no release was built from (v5) takes the newest.
    apply_one(&store, &s, patch(json!({ "OTHER": "z" }), 12))
        .await
        .unwrap();
    vput(&store, &t, "development", "DB_PASS", "v3-secret", 13).await;
    apply_one(&store, &s, patch(json!({ "OTHER": "w" }), 14))
        .await
        .unwrap();
    apply_one(&store, &s, rollback(5, 15)).await.unwrap();
    assert_eq!(release(16).await, "v3-secret");
}

fn promotion(to: &str, from: Option<&str>, now: i64) -> Promotion {
    Promotion {
        from: from.map(str::to_owned),
        to: to.to_owned(),
        name: None,
        copy_vault: true,
        new_slug: StackSlug::generate(),
        ctx: ctx(now),
        idempotency: None,
    }
}

/// The env map the deploy job of `stack`'s queued job would apply, after running it.
async fn deployed_env<S: Store>(store: &S, stack: &Stack, now: i64) -> BTreeMap<String, String> {
    let job = claim(store, now).await.expect("a deploy is queued");
    assert_eq!(job.stack_id, stack.id);
    let (_, _, env) = store.deploy_context(&job).await.unwrap().unwrap();
    let env = env.to_map();
    assert!(
        store
            .finish_deploy(&job, deployed(), at(now))
            .await
            .unwrap()
    );
    env
}

pub async fn promote_creates_the_family_stack_then_updates_it_with_the_source_live_release<
    S: Store,
>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    let src = stack(&store, Some(t.id), 1).await;
    deploy_now(&store, &src, 2).await;
    apply_one(
        &store,
        &src,
        patch(json!({ "A": "source", "B": "source" }), 3),
    )
    .await
    .unwrap();
    vput(&store, &t, "development", "ONLY_DEV", "dev-secret", 4).await;

    let first = store
        .promote(
            t.id,
            &src.slug,
            promotion("staging", Some("development"), 5),
        )
        .await
        .unwrap();
    assert_eq!(first.action, PromoteAction::Created);
    assert_eq!(
        (first.parent.clone(), first.source.clone()),
        (src.slug.clone(), src.slug.clone())
    );
    assert_eq!(first.stack.environment, "staging");
    assert_eq!((first.release.version, first.source_release), (1, 1));
    assert_eq!(first.vault_keys_copied, vec!["ONLY_DEV".to_owned()]);
    let target = first.stack.clone();
    // The target runs the source's services, with the source's env.
    let releases = store.list_releases(target.id).await.unwrap();
    assert_eq!(releases[0].services, services());
    assert_eq!(
        deployed_env(&store, &target, 6).await,
        vars(&[("A", "source"), ("B", "source")])
    );

    // The target's own env wins over the source's; a second promote updates the same stack.
    apply_one(&store, &target, patch(json!({ "B": "target" }), 7))
        .await
        .unwrap();
    let second = store
        .promote(t.id, &src.slug, promotion("staging", None, 8))
        .await
        .unwrap();
    assert_eq!(second.action, PromoteAction::UpdatedExisting);
    assert_eq!(
        (second.stack.slug.clone(), second.release.version),
        (target.slug.clone(), 2)
    );
    assert!(second.vault_keys_copied.is_empty(), "never overwrites");
    assert_eq!(
        deployed_env(&store, &target, 9).await,
        vars(&[("A", "source"), ("B", "target")])
    );
    // The target's own env map is untouched by the promote.
    assert_eq!(
        current_env(&store, &target).await.env.to_map(),
        vars(&[("B", "target")])
    );

    // The family, root first; from the target too.
    let family = store.family(t.id, &target.slug).await.unwrap().unwrap();
    let members: Vec<(&str, bool, Option<&StackSlug>)> = family
        .iter()
        .map(|m| (m.env.as_str(), m.is_root, m.parent.as_ref()))
        .collect();
    assert_eq!(
        members,
        [
            ("development", true, None),
            ("staging", false, Some(&src.slug))
        ]
    );
    assert_eq!(family[0].url.as_deref(), Some(API_URL));
    // Promoting from the target to production joins the same family.
    deploy_now_on(&store, &target).await;
    let prod = store
        .promote(t.id, &target.slug, promotion("production", None, 11))
        .await
        .unwrap();
    assert_eq!(prod.parent, src.slug);
    assert_eq!(
        store.family(t.id, &src.slug).await.unwrap().unwrap().len(),
        3
    );
    // Another team sees none of it.
    let other = team(&store, "other", None).await;
    assert!(store.family(other.id, &src.slug).await.unwrap().is_none());
    assert!(matches!(
        store
            .promote(other.id, &src.slug, promotion("qa", None, 12))
            .await,
        Err(PromoteError::NotFound)
    ));
}

/// The target already went live (its deploy finished) in `deployed_env`: nothing to do but
/// check it is live.
async fn deploy_now_on<S: Store>(store: &S, s: &Stack) {
    let releases = store.list_releases(s.id).await.unwrap();
    assert_eq!(releases[0].info.status, ReleaseStatus::Live);
}

pub async fn promote_refusals_write_nothing<S: Store>(store: S) {
    let t = team(&store, "acme", Some(1)).await;
    let src = stack(&store, Some(t.id), 1).await;
    // No live release yet.
    assert!(matches!(
        store
            .promote(t.id, &src.slug, promotion("staging", None, 2))
            .await,
        Err(PromoteError::NoLiveRelease)
    ));
    deploy_now(&store, &src, 3).await;
    assert_eq!(
        store
            .promote(t.id, &src.slug, promotion("staging", Some("prod"), 4))
            .await
            .unwrap_err(),
        PromoteError::EnvMismatch {
            actual: "development".into()
        }
    );
    // The team is at its cap of 1 stack: a new target is refused.
    assert_eq!(
        store
            .promote(t.id, &src.slug, promotion("staging", None, 5))
            .await
            .unwrap_err(),
        PromoteError::LimitReached { max: 1 }
    );
    // A missing vault:// key in the target env.
    let u = team(&store, "beta", None).await;
    let s2 = store
        .create_stack(with_manifest_env(
            new_stack(Some(u.id), 6),
            "X",
            "vault://ONLY_PROD",
        ))
        .await;
    assert!(s2.is_err(), "no value in development either");
    let s3 = stack(&store, Some(u.id), 7).await;
    deploy_now(&store, &s3, 8).await;
    apply_one(&store, &s3, patch(json!({ "X": "vault://ONLY_PROD" }), 9))
        .await
        .unwrap();
    assert!(matches!(
        store
            .promote(u.id, &s3.slug, promotion("prod", None, 10))
            .await,
        Err(PromoteError::Vault(VaultRefError::Missing { .. }))
    ));
    assert_eq!(
        store.family(u.id, &s3.slug).await.unwrap().unwrap().len(),
        1
    );
    assert_eq!(store.count_stacks(u.id).await.unwrap(), 1);
    // A deleting source.
    delete(&store, Access::Team(u.id), &s3.slug, 11).await;
    assert!(matches!(
        store
            .promote(u.id, &s3.slug, promotion("prod", None, 12))
            .await,
        Err(PromoteError::Deleting)
    ));
}

fn new_domain(host: &str, max: Option<i64>, now: i64) -> NewDomain {
    NewDomain {
        id: format!("dom_{host}"),
        hostname: host.to_owned(),
        token: format!("stackyard-verify-{host}"),
        max_per_team: max,
        ctx: ctx(now),
    }
}

pub async fn domains_are_unique_across_teams_capped_per_team_checked_routed_and_removed<
    S: Store,
>(
    store: S,
) {
    use stackyard_core::domain::{CheckResult, DomainStatus, after_check};
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 1).await;
    let d = store
        .add_domain(t.id, &s.slug, new_domain("app.example.com", Some(2), 2))
        .await
        .unwrap();
    assert_eq!(d.status, DomainStatus::PendingVerification);
    let other = team(&store, "other", None).await;
    let theirs = stack(&store, Some(other.id), 3).await;
    assert_eq!(
        store
            .add_domain(
                other.id,
                &theirs.slug,
                new_domain("app.example.com", None, 4)
            )
            .await
            .unwrap_err(),
        DomainError::HostnameTaken
    );
    // Another team's token does not see the stack.
    assert_eq!(
        store
            .add_domain(other.id, &s.slug, new_domain("b.example.com", None, 4))
            .await
            .unwrap_err(),
        DomainError::NotFound
    );
    store
        .add_domain(t.id, &s.slug, new_domain("b.example.com", Some(2), 5))
        .await
        .unwrap();
    assert_eq!(
        store
            .add_domain(t.id, &s.slug, new_domain("c.example.com", Some(2), 6))
            .await
            .unwrap_err(),
        DomainError::LimitReached { max: 2 }
    );
    assert!(store.domain_routes().await.unwrap().is_empty());

    // Verified once the stack has an exposed service with a URL: routed there.
    assert_eq!(store.domain_route_target(&d).await.unwrap(), None);
    deploy_now(&store, &s, 7).await;
    let target = store.domain_route_target(&d).await.unwrap();
    assert_eq!(target.as_deref(), Some(API_URL));
    let d = after_check(d, CheckResult::Found, target.is_some(), at(8));
    assert!(store.save_domain_check(&d).await.unwrap());
    let listed = store.list_domains(t.id, &s.slug).await.unwrap().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        (listed[0].status, listed[0].verified_at),
        (DomainStatus::Routed, Some(at(8)))
    );
    let routes = store.domain_routes().await.unwrap();
    assert_eq!(
        routes,
        [DomainRoute {
            hostname: "app.example.com".into(),
            service_url: API_URL.into()
        }]
    );
    // Due for a re-check a day later, not before.
    assert!(
        store
            .domains_to_recheck(at(8), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.domains_to_recheck(at(9), 10).await.unwrap().len(), 1);

    assert!(
        !store
            .remove_domain(other.id, &s.slug, &d.id, ctx(10))
            .await
            .unwrap()
    );
    assert!(
        store
            .remove_domain(t.id, &s.slug, &d.id, ctx(10))
            .await
            .unwrap()
    );
    assert!(store.domain_routes().await.unwrap().is_empty());
    assert!(
        store
            .list_domains(other.id, &s.slug)
            .await
            .unwrap()
            .is_none()
    );
    // The hostname is free again.
    store
        .add_domain(
            other.id,
            &theirs.slug,
            new_domain("app.example.com", None, 11),
        )
        .await
        .unwrap();
}

pub async fn certificates_are_claimed_once_sealed_renewed_when_due_and_gone_with_their_domain<
    S: Store,
>(
    store: S,
) {
    use stackyard_core::domain::{CERT_ORDER_LEASE_MS, CheckResult, DomainStatus, after_check};
    const DAY: i64 = 24 * 3600 * 1000;
    let t = team(&store, "acme", None).await;
    let s = stack(&store, Some(t.id), 1).await;
    deploy_now(&store, &s, 2).await;
    let d = store
        .add_domain(t.id, &s.slug, new_domain("tls.example.com", None, 3))
        .await
        .unwrap();
    let now = at(4);
    // Not verified: nothing to order.
    assert!(store.certificates_due(now, 10).await.unwrap().is_empty());
    let d = after_check(d, CheckResult::Found, true, now);
    assert!(store.save_domain_check(&d).await.unwrap());
    let due = store.certificates_due(now, 10).await.unwrap();
    assert_eq!(due.iter().map(|d| &d.id).collect::<Vec<_>>(), [&d.id]);

    // Servers racing for the order: one claim wins.
    let barrier = Arc::new(Barrier::new(4));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, barrier, id) = (store.clone(), barrier.clone(), d.id.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.claim_certificate_order(&id, now).await.unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    // Claimed: not due within the lease; a failure keeps the domain routed and says why.
    assert!(store.certificates_due(now, 10).await.unwrap().is_empty());
    assert!(
        store
            .save_certificate_failure(&d.id, "the CA is unreachable", false, now)
            .await
            .unwrap()
    );
    let listed = store.list_domains(t.id, &s.slug).await.unwrap().unwrap();
    assert_eq!(
        (listed[0].status, listed[0].cert_error.as_deref()),
        (DomainStatus::Routed, Some("the CA is unreachable"))
    );
    let later = Millis(now.0 + CERT_ORDER_LEASE_MS + 1);
    assert_eq!(store.certificates_due(later, 10).await.unwrap().len(), 1);
    assert!(store.claim_certificate_order(&d.id, later).await.unwrap());

    // Stored: `certificate_ready`, served with its key opened, sealed under its own data key.
    let cert = NewCertificate {
        chain_pem: "CHAIN".into(),
        key_pem: "KEY-SENTINEL".into(),
        not_before: later,
        not_after: Millis(later.0 + 90 * DAY),
    };
    assert!(store.save_certificate(&d.id, cert, later).await.unwrap());
    let listed = store.list_domains(t.id, &s.slug).await.unwrap().unwrap();
    assert_eq!(
        (listed[0].status, listed[0].cert_error.as_deref()),
        (DomainStatus::CertificateReady, None)
    );
    assert_eq!(listed[0].cert_not_after, Some(Millis(later.0 + 90 * DAY)));
    let served = store.certificates().await.unwrap();
    assert_eq!(
        served
            .iter()
            .map(|c| (c.hostname.as_str(), c.key_pem.as_str()))
            .collect::<Vec<_>>(),
        [("tls.example.com", "KEY-SENTINEL")]
    );
    let keys = store.wrapped_keys().await.unwrap();
    assert!(
        keys.iter()
            .any(|k| k.row == WrappedRow::Certificate(d.id.clone()))
    );
    // The daily check keeps it certified; renewal is due with a third of its life left.
    let checked = after_check(listed[0].clone(), CheckResult::Found, true, later);
    assert_eq!(checked.status, DomainStatus::CertificateReady);
    let renew = Millis(later.0 + 60 * DAY);
    assert!(
        store
            .certificates_due(Millis(renew.0 - 1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.certificates_due(renew, 10).await.unwrap().len(), 1);

    // One ACME account per directory: the first stored is the one every server uses.
    let dir = "https://ca.example/dir";
    assert_eq!(store.acme_account(dir).await.unwrap(), None);
    assert_eq!(
        store.save_acme_account(dir, "first", now).await.unwrap(),
        "first"
    );
    assert_eq!(
        store.save_acme_account(dir, "second", now).await.unwrap(),
        "first"
    );
    assert_eq!(
        store.acme_account(dir).await.unwrap().as_deref(),
        Some("first")
    );
    let keys = store.wrapped_keys().await.unwrap();
    assert!(
        keys.iter()
            .any(|k| k.row == WrappedRow::AcmeAccount(dir.into()))
    );

    // Refused by the CA: `failed`, still routed over plain HTTP.
    assert!(
        store
            .save_certificate_failure(&d.id, "rejectedIdentifier", true, renew)
            .await
            .unwrap()
    );
    let listed = store.list_domains(t.id, &s.slug).await.unwrap().unwrap();
    assert_eq!(listed[0].status, DomainStatus::Failed);
    assert_eq!(store.domain_routes().await.unwrap().len(), 1);
    // Removed: its certificate goes with it.
    assert!(
        store
            .remove_domain(t.id, &s.slug, &d.id, ctx(20))
            .await
            .unwrap()
    );
    assert!(store.certificates().await.unwrap().is_empty());
}

pub async fn vault_refs_missing_or_anonymous_refuse_the_release_and_write_nothing<S: Store>(
    store: S,
) {
    let t = team(&store, "acme", None).await;
    vput(&store, &t, "prod", "ONLY_PROD", "x", 1).await;
    // The stack's environment is `development`: a key only in `prod` is missing.
    let new = with_manifest_env(new_stack(Some(t.id), 2), "X", "vault://ONLY_PROD");
    let slug = new.slug.clone();
    assert!(matches!(
        store.create_stack(new).await,
        Err(CreateStackError::Vault(VaultRefError::Missing { .. }))
    ));
    assert!(
        store
            .get_stack(Access::Team(t.id), &slug)
            .await
            .unwrap()
            .is_none()
    );

    let anon = with_manifest_env(new_stack(None, 3), "X", "vault://ONLY_PROD");
    assert!(matches!(
        store.create_stack(anon).await,
        Err(CreateStackError::Vault(VaultRefError::RequiresAuth))
    ));

    let s = store.create_stack(new_stack(Some(t.id), 4)).await.unwrap();
    apply_one(&store, &s, patch(json!({ "X": "vault://NOPE" }), 5))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_release(Access::Team(t.id), &s.slug, new_release(None, 6))
            .await,
        Err(ReleaseError::Vault(VaultRefError::Missing { .. }))
    ));
    let releases = store.list_releases(s.id).await.unwrap();
    assert_eq!(releases.len(), 1, "no release 2");
}
