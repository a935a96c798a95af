//! Rows as both stores select them, decoded by `sqlx::FromRow` and checked into domain types.
//! The column sets agree across the dialects because each store's SQL selects them under these
//! names (PostgreSQL casts its `jsonb` columns `::text`); integers the schema keeps as `INT` in
//! PostgreSQL decode as `i32`. Release columns carry an `r_` prefix so a release can be
//! selected next to its stack.

use crate::error::{Error, Result, corrupt, from_json, parsed};
use crate::seal::{EnvCodec, Opening};
use stackyard_core::crypto::Keyring;
use stackyard_core::env::EnvMap;
use stackyard_core::ids::{ServiceName, StackSlug};
use stackyard_core::model::*;
use stackyard_core::store::IdempotencyBegin;
use stackyard_core::time::Millis;

#[derive(Debug, sqlx::FromRow)]
pub struct StackRow {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub environment: String,
    pub team_id: Option<i64>,
    pub tier: String,
    pub status: String,
    pub error: Option<String>,
    pub env_version: i64,
    pub release: i64,
    pub op_generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
}

impl TryFrom<StackRow> for Stack {
    type Error = Error;
    fn try_from(r: StackRow) -> Result<Stack> {
        Ok(Stack {
            id: StackId(r.id),
            slug: slug(&r.slug)?,
            name: r.name,
            environment: r.environment,
            team_id: r.team_id.map(TeamId),
            tier: r.tier,
            status: parsed(StackStatus::parse(&r.status), "stack status")?,
            error: r.error,
            env_version: r.env_version,
            release: r.release,
            op_generation: r.op_generation,
            created_at: Millis(r.created_at),
            updated_at: Millis(r.updated_at),
            expires_at: r.expires_at.map(Millis),
        })
    }
}

/// A stored stack slug.
pub fn slug(s: &str) -> Result<StackSlug> {
    parsed(StackSlug::parse(s).ok(), "stack slug")
}

#[derive(Debug, sqlx::FromRow)]
pub struct ServiceRow {
    pub name: String,
    pub status: String,
    pub expose: bool,
    pub port: i32,
    pub url: Option<String>,
    pub error: Option<String>,
    pub restarts: i64,
    pub last_exit: Option<String>,
}

impl TryFrom<ServiceRow> for Service {
    type Error = Error;
    fn try_from(r: ServiceRow) -> Result<Service> {
        Ok(Service {
            name: parsed(ServiceName::parse(&r.name).ok(), "service name")?,
            status: parsed(ServiceStatus::parse(&r.status), "service status")?,
            expose: r.expose,
            port: parsed(u16::try_from(r.port).ok(), "service port")?,
            url: r.url,
            error: r.error,
            restarts: r.restarts,
            last_exit: r.last_exit,
        })
    }
}

/// `get_stack`'s one row: the stack, its newest release (`r_*`, NULL before the first) and its
/// services as a JSON array of `[name, status, expose, port, url, error, restarts, last_exit]`
/// in position order.
#[derive(Debug, sqlx::FromRow)]
pub struct DetailRow {
    #[sqlx(flatten)]
    pub stack: StackRow,
    pub r_version: Option<i64>,
    pub r_status: Option<String>,
    pub r_env_version: Option<i64>,
    pub r_created_at: Option<i64>,
    pub services: String,
}

/// One element of [`DetailRow::services`]. `expose` is a JSON boolean from PostgreSQL and 0 / 1
/// from SQLite.
type ServiceJson = (
    String,
    String,
    serde_json::Value,
    i64,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
);

impl TryFrom<DetailRow> for StackDetail {
    type Error = Error;
    fn try_from(r: DetailRow) -> Result<StackDetail> {
        let release = match (r.r_version, r.r_status, r.r_env_version, r.r_created_at) {
            (Some(version), Some(status), Some(env_version), Some(created_at)) => {
                Some(ReleaseInfo {
                    version,
                    status: parsed(ReleaseStatus::parse(&status), "release status")?,
                    env_version,
                    created_at: Millis(created_at),
                })
            }
            _ => None,
        };
        let services: Vec<ServiceJson> = from_json(&r.services, "service list")?;
        let services = services
            .into_iter()
            .map(
                |(name, status, expose, port, url, error, restarts, last_exit)| {
                    let expose = match expose {
                        serde_json::Value::Bool(b) => b,
                        serde_json::Value::Number(n) => n.as_i64() != Some(0),
                        _ => return Err(corrupt("stored service expose flag is not valid")),
                    };
                    Ok(Service {
                        name: parsed(ServiceName::parse(&name).ok(), "service name")?,
                        status: parsed(ServiceStatus::parse(&status), "service status")?,
                        expose,
                        port: parsed(u16::try_from(port).ok(), "service port")?,
                        url,
                        error,
                        restarts,
                        last_exit,
                    })
                },
            )
            .collect::<Result<Vec<_>>>()?;
        Ok(StackDetail {
            stack: r.stack.try_into()?,
            services,
            release,
        })
    }
}

/// A release row, selected as `r_version, r_status, r_env_version, r_created_at, r_spec`.
#[derive(Debug, sqlx::FromRow)]
pub struct ReleaseRow {
    pub r_version: i64,
    pub r_status: String,
    pub r_env_version: i64,
    pub r_created_at: i64,
    pub r_spec: String,
}

impl TryFrom<ReleaseRow> for Release {
    type Error = Error;
    fn try_from(r: ReleaseRow) -> Result<Release> {
        Ok(Release {
            info: ReleaseInfo {
                version: r.r_version,
                status: parsed(ReleaseStatus::parse(&r.r_status), "release status")?,
                env_version: r.r_env_version,
                created_at: Millis(r.r_created_at),
            },
            services: from_json(&r.r_spec, "release spec")?,
        })
    }
}

/// A release with the env map it recorded (`r_env`), next to its stack.
#[derive(Debug, sqlx::FromRow)]
pub struct DeployRow {
    #[sqlx(flatten)]
    pub stack: StackRow,
    #[sqlx(flatten)]
    pub release: ReleaseRow,
    pub r_env: String,
    /// The stack's wrapped data key (`crate::seal`): how `r_env` is stored.
    pub data_key: Option<Vec<u8>>,
}

impl DeployRow {
    pub fn decode(self, keyring: &Keyring) -> Result<(Stack, Release, EnvMap)> {
        let stack: Stack = self.stack.try_into()?;
        let release: Release = self.release.try_into()?;
        let codec = EnvCodec::of_stack(keyring, stack.id, self.data_key.as_deref())?;
        let env = codec.open_map(&self.r_env, release.info.env_version, Opening::All)?;
        Ok((stack, release, env))
    }
}

/// A stored env map. serde_json's message could quote a value: only that it failed is kept.
pub fn env_map(text: &str) -> Result<EnvMap> {
    EnvMap::from_json(text).map_err(|_| corrupt("a stored env map is not valid"))
}

#[derive(Debug, sqlx::FromRow)]
pub struct JobRow {
    pub id: i64,
    pub stack_id: i64,
    pub stack_slug: String,
    pub kind: String,
    pub generation: i64,
    pub release: i64,
    pub service: Option<String>,
    pub attempts: i64,
    pub claim: Option<String>,
}

impl TryFrom<JobRow> for Job {
    type Error = Error;
    fn try_from(r: JobRow) -> Result<Job> {
        Ok(Job {
            id: r.id,
            stack_id: StackId(r.stack_id),
            slug: slug(&r.stack_slug)?,
            kind: parsed(JobKind::parse(&r.kind), "job kind")?,
            generation: r.generation,
            release: r.release,
            service: r
                .service
                .map(|s| {
                    ServiceName::parse(&s).map_err(|_| corrupt("a job names an invalid service"))
                })
                .transpose()?,
            attempts: r.attempts,
            claim: parsed(r.claim, "job claim")?,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct TeamRow {
    pub id: i64,
    pub name: String,
    pub tier: String,
    pub max_stacks: Option<i64>,
    pub created_at: i64,
}

impl From<TeamRow> for Team {
    fn from(r: TeamRow) -> Team {
        Team {
            id: TeamId(r.id),
            name: r.name,
            tier: r.tier,
            max_stacks: r.max_stacks,
            created_at: Millis(r.created_at),
        }
    }
}

/// A token's metadata, selected as `token_id, team_id, token_name, token_created_at`.
#[derive(Debug, sqlx::FromRow)]
pub struct TokenRow {
    pub token_id: i64,
    pub team_id: i64,
    pub token_name: String,
    pub token_created_at: i64,
}

impl From<TokenRow> for TokenInfo {
    fn from(r: TokenRow) -> TokenInfo {
        TokenInfo {
            id: r.token_id,
            team_id: TeamId(r.team_id),
            name: r.token_name,
            created_at: Millis(r.token_created_at),
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct PrincipalRow {
    #[sqlx(flatten)]
    pub team: TeamRow,
    #[sqlx(flatten)]
    pub token: TokenRow,
}

impl From<PrincipalRow> for Principal {
    fn from(r: PrincipalRow) -> Principal {
        Principal {
            team: r.team.into(),
            token: r.token.into(),
            via: Via::Token,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct AuditEntryRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub kind: String,
    pub stack_slug: Option<String>,
    pub request_id: Option<String>,
    pub metadata: String,
}

impl TryFrom<AuditEntryRow> for AuditEntry {
    type Error = Error;
    fn try_from(r: AuditEntryRow) -> Result<AuditEntry> {
        Ok(AuditEntry {
            id: r.id,
            at: Millis(r.at),
            actor: r.actor,
            kind: r.kind,
            stack_id: r.stack_slug,
            request_id: r.request_id,
            metadata: from_json(&r.metadata, "audit metadata")?,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub data: String,
}

impl TryFrom<EventRow> for StackEvent {
    type Error = Error;
    fn try_from(r: EventRow) -> Result<StackEvent> {
        Ok(StackEvent {
            id: r.id,
            at: Millis(r.at),
            kind: r.kind,
            data: from_json(&r.data, "event data")?,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct EnvVersionRow {
    pub version: i64,
    pub created_at: i64,
    pub actor: String,
    pub set_keys: String,
    pub deleted_keys: String,
}

impl TryFrom<EnvVersionRow> for EnvVersionInfo {
    type Error = Error;
    fn try_from(r: EnvVersionRow) -> Result<EnvVersionInfo> {
        Ok(EnvVersionInfo {
            version: r.version,
            created_at: Millis(r.created_at),
            actor: r.actor,
            set: from_json(&r.set_keys, "env key list")?,
            deleted: from_json(&r.deleted_keys, "env key list")?,
        })
    }
}

/// The stack row as the env path sees it: the map, its version, and what a write is refused
/// or audited by.
#[derive(Debug, sqlx::FromRow)]
pub struct EnvHeadRow {
    pub status: String,
    pub env: String,
    pub env_version: i64,
    pub env_updated_at: i64,
    pub team_id: Option<i64>,
    pub slug: String,
    /// The stack's wrapped data key (`crate::seal`): how `env` is stored.
    pub data_key: Option<Vec<u8>>,
}

/// [`EnvHeadRow`] decoded.
#[derive(Debug, Clone)]
pub struct EnvHead {
    pub env: EnvMap,
    pub version: i64,
    pub updated_at: Millis,
    pub team_id: Option<TeamId>,
    pub slug: StackSlug,
    pub deleting: bool,
}

impl EnvHeadRow {
    /// The head with its map opened, and the codec the stack's documents are stored with.
    pub fn decode(
        self,
        keyring: &Keyring,
        stack: StackId,
        opening: Opening,
    ) -> Result<(EnvHead, EnvCodec)> {
        let r = self;
        let codec = EnvCodec::of_stack(keyring, stack, r.data_key.as_deref())?;
        let head = EnvHead {
            env: codec.open_map(&r.env, r.env_version, opening)?,
            version: r.env_version,
            updated_at: Millis(r.env_updated_at),
            team_id: r.team_id.map(TeamId),
            slug: slug(&r.slug)?,
            deleting: r.status == StackStatus::Deleting.as_str(),
        };
        Ok((head, codec))
    }
}

impl EnvHead {
    /// The current map as an `EnvOutcome` of no change.
    pub fn outcome(self) -> EnvOutcome {
        EnvOutcome {
            version: self.version,
            changed: Default::default(),
            env: self.env,
            updated_at: self.updated_at,
        }
    }
}

/// Decodes every row of a result.
pub fn decode<R, T>(rows: Vec<R>) -> Result<Vec<T>>
where
    T: TryFrom<R, Error = Error>,
{
    rows.into_iter().map(T::try_from).collect()
}

/// A row of a listing, with the count of the whole listing next to it (`total`).
#[derive(Debug, sqlx::FromRow)]
pub struct Counted<T> {
    #[sqlx(flatten)]
    pub row: T,
    pub total: i64,
}

/// An `Idempotency-Key` record, selected as `request_hash, state, status, body, created_at,
/// expires_at`.
#[derive(Debug, sqlx::FromRow)]
pub struct IdempotencyRow {
    pub request_hash: String,
    pub state: String,
    pub status: Option<i32>,
    pub body: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl IdempotencyRow {
    /// What a live record answers a request identified by `request_hash`: a different request
    /// `Mismatch`, a finished one its answer, an unfinished one `InProgress`. (Taking over a
    /// stale reservation is the store's decision: it happens under its lock.)
    pub fn answer(self, request_hash: &str) -> Result<IdempotencyBegin> {
        if self.request_hash != request_hash {
            return Ok(IdempotencyBegin::Mismatch);
        }
        if self.state != "done" {
            return Ok(IdempotencyBegin::InProgress);
        }
        let status = self.status.and_then(|s| u16::try_from(s).ok());
        Ok(IdempotencyBegin::Replay {
            status: parsed(status, "idempotency status")?,
            body: self.body.unwrap_or_default(),
        })
    }
}

/// A `resources` row (`RESOURCE_COLS`). No `Debug`: it holds the connection URL.
#[derive(sqlx::FromRow)]
pub struct ResourceRow {
    pub token: String,
    pub id: String,
    pub kind: String,
    pub name: String,
    pub team_id: Option<i64>,
    pub tier: String,
    pub status: String,
    pub connection_url: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub stack_id: Option<i64>,
    pub stack_env: Option<String>,
    pub stack_slug: Option<String>,
    /// The resource's wrapped data key: `connection_url` is sealed when set (`crate::seal`).
    pub data_key: Option<Vec<u8>>,
}

impl ResourceRow {
    pub fn decode(self, keyring: &Keyring) -> Result<stackyard_core::resource::Resource> {
        use stackyard_core::ids::{ResourceName, ResourceToken};
        use stackyard_core::resource::{ResourceKind, ResourceStatus};
        let r = self;
        let connection_url = crate::seal::open_resource_url(
            keyring,
            &r.id,
            r.connection_url,
            r.data_key.as_deref(),
        )?;
        Ok(stackyard_core::resource::Resource {
            id: r.id,
            token: parsed(ResourceToken::parse(&r.token).ok(), "resource token")?,
            kind: parsed(ResourceKind::parse(&r.kind), "resource kind")?,
            name: parsed(ResourceName::parse(&r.name).ok(), "resource name")?,
            team_id: r.team_id.map(TeamId),
            tier: r.tier,
            status: parsed(ResourceStatus::parse(&r.status), "resource status")?,
            connection_url,
            created_at: Millis(r.created_at),
            expires_at: r.expires_at.map(Millis),
            stack: match (r.stack_id, r.stack_env) {
                (Some(id), Some(env)) => Some(stackyard_core::resource::StackOwner {
                    stack_id: stackyard_core::model::StackId(id),
                    env,
                    slug: r.stack_slug,
                }),
                _ => None,
            },
        })
    }
}

/// One member of a family (`family_sql::MEMBERS`).
#[derive(Debug, sqlx::FromRow)]
pub struct FamilyRow {
    pub slug: String,
    pub name: String,
    pub environment: String,
    pub status: String,
    pub tier: String,
    pub created_at: i64,
    pub is_root: bool,
    pub parent_slug: Option<String>,
    pub url: Option<String>,
    pub last_deploy_at: Option<i64>,
}

impl FamilyRow {
    pub fn decode(self) -> Result<stackyard_core::store::FamilyMember> {
        Ok(stackyard_core::store::FamilyMember {
            slug: slug(&self.slug)?,
            name: self.name,
            env: self.environment,
            status: parsed(StackStatus::parse(&self.status), "stack status")?,
            tier: self.tier,
            url: self.url,
            is_root: self.is_root,
            parent: self.parent_slug.as_deref().map(slug).transpose()?,
            last_deploy_at: self.last_deploy_at.map(Millis),
            created_at: Millis(self.created_at),
        })
    }
}

/// The columns `ApprovalRow` reads, in its order.
#[macro_export]
macro_rules! approval_cols {
    () => {
        "id, team_id, source_slug, from_env, to_env, name, copy_vault, requested_by, status, \
         created_at, expires_at, decided_by, target_slug"
    };
}

/// A `promotions` row.
#[derive(Debug, sqlx::FromRow)]
pub struct ApprovalRow {
    pub id: String,
    pub team_id: i64,
    pub source_slug: String,
    pub from_env: String,
    pub to_env: String,
    pub name: Option<String>,
    pub copy_vault: i64,
    pub requested_by: i64,
    pub status: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_by: Option<i64>,
    pub target_slug: Option<String>,
}

impl ApprovalRow {
    pub fn decode(self) -> Result<stackyard_core::store::Approval> {
        use stackyard_core::store::ApprovalStatus;
        Ok(stackyard_core::store::Approval {
            id: self.id,
            team: TeamId(self.team_id),
            source: slug(&self.source_slug)?,
            from: self.from_env,
            to: self.to_env,
            name: self.name,
            copy_vault: self.copy_vault != 0,
            requested_by: self.requested_by,
            status: parsed(ApprovalStatus::parse(&self.status), "approval status")?,
            created_at: Millis(self.created_at),
            expires_at: Millis(self.expires_at),
            decided_by: self.decided_by,
            target: self.target_slug.as_deref().map(slug).transpose()?,
        })
    }
}

/// The columns `DomainRow` reads (the stack's slug joined), in its order.
#[macro_export]
macro_rules! domain_cols {
    () => {
        "d.id, d.team_id, d.stack_id, s.slug AS stack_slug, d.hostname, d.token, d.status, \
         d.created_at, d.verified_at, d.last_check_at, d.last_check_err, d.missing_since, \
         d.cert_error, c.not_after AS cert_not_after"
    };
}

/// What every `domain_cols!` select reads from: the domain, its stack, its certificate.
#[macro_export]
macro_rules! domain_from {
    () => {
        " FROM domains d JOIN stacks s ON s.id = d.stack_id \
         LEFT JOIN certificates c ON c.domain_id = d.id"
    };
}

/// A `domains` row with its stack's slug.
#[derive(Debug, sqlx::FromRow)]
pub struct DomainRow {
    pub id: String,
    pub team_id: i64,
    pub stack_id: i64,
    pub stack_slug: String,
    pub hostname: String,
    pub token: String,
    pub status: String,
    pub created_at: i64,
    pub verified_at: Option<i64>,
    pub last_check_at: Option<i64>,
    pub last_check_err: Option<String>,
    pub missing_since: Option<i64>,
    pub cert_error: Option<String>,
    pub cert_not_after: Option<i64>,
}

impl DomainRow {
    pub fn decode(self) -> Result<stackyard_core::domain::Domain> {
        use stackyard_core::domain::{Domain, DomainStatus};
        Ok(Domain {
            id: self.id,
            team: TeamId(self.team_id),
            stack: StackId(self.stack_id),
            stack_slug: slug(&self.stack_slug)?,
            hostname: self.hostname,
            token: self.token,
            status: parsed(DomainStatus::parse(&self.status), "domain status")?,
            created_at: Millis(self.created_at),
            verified_at: self.verified_at.map(Millis),
            last_check_at: self.last_check_at.map(Millis),
            last_check_err: self.last_check_err,
            missing_since: self.missing_since.map(Millis),
            cert_error: self.cert_error,
            cert_not_after: self.cert_not_after.map(Millis),
        })
    }
}

/// A served certificate: its domain, the chain, the sealed key and its wrapped data key.
#[derive(Debug, sqlx::FromRow)]
pub struct CertificateRow {
    pub id: String,
    pub hostname: String,
    pub chain_pem: String,
    pub key_sealed: Vec<u8>,
    pub data_key: Vec<u8>,
    pub not_after: i64,
}
