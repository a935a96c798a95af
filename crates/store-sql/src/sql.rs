//! The statements the shared operations run, one field per statement, in one store's SQL
//! dialect. Each store fills one [`Sql`] (`sql.rs` in the store crate); the shared code binds
//! the parameters in the order given here and reads the columns named here. Every statement
//! of a write runs inside the transaction the store opened for it (`BEGIN IMMEDIATE` on
//! SQLite; on PostgreSQL `BEGIN` with `lock_timeout`, the `lock_*` statements taking the row
//! locks with `FOR UPDATE`).

#[derive(Debug)]
pub struct Sql {
    // ---- the stack a lifecycle step changes, read under its lock ----
    /// `$1` slug, `$2` team id or NULL (anonymous) → a `StackRow`, locked.
    pub lock_stack_by_slug: &'static str,
    /// `$1` stack id → a `StackRow`, locked.
    pub lock_stack_by_id: &'static str,
    /// `$1` stack id → a `StackRow`, no lock (reads).
    pub stack_by_id: &'static str,
    /// `$1` stack id → `ServiceRow`s in position order.
    pub services_of: &'static str,
    /// `$1` stack id, `$2` the newest release → `ReleaseRow`s of that release and of every
    /// `pending` or `live` one, oldest first.
    pub open_releases: &'static str,

    // ---- a new stack and its team's cap ----
    /// `$1` team id → `max_stacks` (NULL: no cap), no lock.
    pub team_cap: &'static str,
    /// `$1` team id → `max_stacks`, taking the team's lock: capped creates of one team queue.
    pub lock_team_cap: &'static str,
    /// `$1` team id → how many stacks it holds, `deleting` ones excluded.
    pub count_team_stacks: &'static str,

    // ---- the plan writer ----
    /// `$1` slug, `$2` name, `$3` environment, `$4` team id, `$5` fingerprint, `$6` tier,
    /// `$7` status, `$8` error, `$9` release, `$10` op_generation, `$11` manifest,
    /// `$12` created_at (also `env_updated_at`), `$13` updated_at, `$14` expires_at; the env
    /// map `{}` at version 0 → the new `id`.
    pub insert_stack: &'static str,
    /// `$1` id, `$2` status, `$3` error, `$4` release, `$5` op_generation, `$6` updated_at,
    /// `$7` manifest or NULL (keep).
    pub update_stack: &'static str,
    /// `$1` id (cascades to services, releases, env versions).
    pub delete_stack: &'static str,
    /// `$1` stack id, `$2` name, `$3` position, `$4` status, `$5` expose, `$6` port, `$7` url,
    /// `$8` error, `$9` updated_at: insert, or update every column of the row with that name.
    pub put_service: &'static str,
    /// `$1` stack id, `$2` name.
    pub remove_service: &'static str,
    /// `$1` stack id, `$2` version, `$3` spec (JSON text), `$4` created_at: a `pending` release
    /// copying `env` and `env_version` from the stack row inside the database.
    pub insert_release: &'static str,
    /// `$1` stack id, `$2` version, `$3` status.
    pub set_release_status: &'static str,
    /// `$1` stack id, `$2` created_at, `$3` actor: env version 0, the empty map as snapshot.
    pub insert_env_version_zero: &'static str,
    /// `$1` stack id, `$2` updated_at: queued jobs become `superseded`.
    pub supersede_queued_jobs: &'static str,
    /// `$1` stack id, `$2` slug, `$3` kind, `$4` generation, `$5` release, `$6` now, `$7` the
    /// service a restart names, or NULL.
    pub queue_job: &'static str,
    /// `$1` digest, `$2` size, `$3` created_at; a known digest's row is kept but locked (an
    /// upsert, not `DO NOTHING`), so a teardown deciding that digest is unused waits for us.
    pub insert_artifact: &'static str,
    /// `$1` stack id, `$2` version, `$3` digest: the release uses that artifact (a repeat is
    /// a no-op: two services may share one tarball).
    pub insert_release_artifact: &'static str,
    /// `$1` at, `$2` team id, `$3` actor, `$4` kind, `$5` stack slug, `$6` request id,
    /// `$7` metadata (JSON text).
    pub insert_audit: &'static str,
    /// `$1` stack id, `$2` slug, `$3` kind, `$4` data (JSON text), `$5` at.
    pub insert_event: &'static str,
    /// `$1` scope, `$2` key, `$3` status, `$4` body, `$5` now, `$6` expires_at: the record
    /// `done` with this answer, inserted if its reservation is gone.
    pub complete_idempotency: &'static str,

    // ---- jobs, fenced by their claim (`RETURNING id`: no row, the claim was lost) ----
    /// `$1` id, `$2` claim, `$3` now: `done`.
    pub close_job: &'static str,
    /// `$1` id, `$2` claim, `$3` error, `$4` run_after (also `updated_at`): back to `queued`.
    pub requeue_job: &'static str,
    /// `$1` id, `$2` claim, `$3` error, `$4` now: `failed`.
    pub fail_job: &'static str,
    /// `$1` id, `$2` claim, `$3` lease_until, `$4` now.
    pub renew_job_lease: &'static str,
    /// No parameters: every `running` job back to `queued` → their ids.
    pub requeue_running_jobs: &'static str,

    // ---- reads ----
    /// `$1` slug, `$2` team id or NULL → a `DetailRow`: the stack, its newest release and its
    /// services, in one statement (the most polled read).
    pub get_stack: &'static str,
    /// `$1` stack id, `$2` release (0: the stack's newest) → a `DeployRow`.
    pub deploy_context: &'static str,
    /// No parameters → `DeployRow`s of every stack not `deleting` with a `live` release.
    pub running_stacks: &'static str,
    /// `$1` stack id → `ReleaseRow`s, newest first.
    pub list_releases: &'static str,
    /// `$1` team id, `$2` before created_at, `$3` before id, `$4` limit, `$5` status or NULL,
    /// `$6` environment or NULL → matching `StackRow`s newest first, each with the number of
    /// matches as `total`.
    pub list_stacks: &'static str,
    /// `$1` team id, `$2` status or NULL, `$3` environment or NULL → how many of its stacks
    /// match (the listing's `total` when its page is empty).
    pub count_all_team_stacks: &'static str,
    /// `$1` now, `$2` limit → slugs of anonymous stacks expired and not `deleting`.
    pub expired_stacks: &'static str,
    /// `$1` stack id, `$2` after id, `$3` limit → `EventRow`s oldest first.
    pub list_events: &'static str,
    /// `$1` team id, `$2` stack slug or NULL, `$3` kind or NULL, `$4` before id, `$5` limit →
    /// `AuditEntryRow`s newest first, each with the filtered count as `total`.
    pub list_audit: &'static str,
    /// `$1` team id, `$2` stack slug or NULL, `$3` kind or NULL → the filtered count.
    pub count_audit: &'static str,
    /// `$1` stack id → an `EnvHeadRow`, no lock.
    pub env_head: &'static str,
    /// `$1` stack id → an `EnvHeadRow`, locked.
    pub lock_env_head: &'static str,
    /// `$1` stack id, `$2` before version, `$3` limit → `EnvVersionRow`s (version ≥ 1) newest
    /// first, each with the count as `total`.
    pub list_env_versions: &'static str,
    /// `$1` stack id → how many versions ≥ 1 are kept.
    pub count_env_versions: &'static str,
    /// `$1` stack id, `$2` version → `(version, snapshot)` of the newest snapshot at or below it.
    pub env_snapshot_at: &'static str,
    /// `$1` stack id, `$2` after version, `$3` up to version → the `changes` of those versions,
    /// oldest first.
    pub env_changes_between: &'static str,

    // ---- encryption at rest (`Ops::seal_stack`) ----
    /// `$1` stack id, `$2` env (JSON text), `$3` wrapped data key.
    pub seal_stack_head: &'static str,
    /// `$1` stack id → `(version, changes, snapshot)` of every env version, JSON text.
    pub env_rows_of: &'static str,
    /// `$1` stack id, `$2` version, `$3` changes, `$4` snapshot or NULL (JSON text).
    pub seal_env_row: &'static str,
    /// `$1` stack id → `(version, env_version, env)` of every release, JSON text.
    pub release_envs_of: &'static str,
    /// `$1` stack id, `$2` version, `$3` env (JSON text).
    pub seal_release_env: &'static str,
    /// No parameters → the master key's canary, read under a shared lock of the keyring row,
    /// so a rotation moving the canary waits for (or is seen by) a data key wrapped meanwhile.
    pub keyring_canary_shared: &'static str,
    /// `$1` approval id, `$2` team → its row, locked for the transaction.
    pub lock_promotion: &'static str,

    // ---- teams and tokens ----
    /// No parameters → any team's id.
    pub any_team: &'static str,
    /// `$1` name, `$2` max_stacks, `$3` created_at; nothing if the name is taken → a `TeamRow`.
    pub insert_team: &'static str,
    /// `$1` team id → its id if it exists.
    pub team_exists: &'static str,
    /// `$1` team id, `$2` name, `$3` digest, `$4` created_at → the token's id.
    pub insert_token: &'static str,
    /// `$1` digest → a `PrincipalRow` of a live token.
    pub authenticate: &'static str,
    /// `$1` team id → `TokenRow`s of its live tokens, oldest first.
    pub list_tokens: &'static str,
    /// `$1` token id, `$2` team id, `$3` now → its id if it was live.
    pub revoke_token: &'static str,
    /// `$1` session digest, `$2` token id, `$3` created_at, `$4` expires_at.
    pub insert_session: &'static str,
    /// `$1` session digest, `$2` now → a `PrincipalRow` of an unexpired session whose token is
    /// live.
    pub session_principal: &'static str,
    /// `$1` session digest → that digest if its row existed.
    pub delete_session: &'static str,

    // ---- artifact retention ----
    /// `$1` stack id → the digests its releases use, each once, in digest order.
    pub artifacts_of_stack: &'static str,
    /// `$1` digest → that digest if its row exists, locked (`insert_artifact` takes the same
    /// lock, so a create of the digest in flight is waited for and then seen).
    pub lock_artifact: &'static str,
    /// `$1` digest → a row if some release uses the artifact.
    pub artifact_in_use: &'static str,
    /// `$1` digest.
    pub delete_artifact: &'static str,
    /// No parameters → digests of artifact rows no release uses, in digest order.
    pub unused_artifacts: &'static str,
    /// No parameters → every digest some release uses, each once.
    pub used_artifacts: &'static str,

    // ---- housekeeping ----
    /// `$1` scope, `$2` key: a pending reservation is dropped.
    pub abandon_idempotency: &'static str,
    /// `$1` fingerprint, `$2` UTC day → the count after adding one.
    pub count_anonymous_create: &'static str,
}
