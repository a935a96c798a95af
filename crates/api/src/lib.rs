//! Stackyard's wire contract: every request and response body of the HTTP API as a Rust type
//! (`Serialize` for the server, `Deserialize` for clients, `ToSchema` for the OpenAPI document),
//! one module per resource. `shared/spec/api.md` is the prose; these types are the letter.
//!
//! Field names and presence are the compat contract: a field that is omitted when unset says so
//! with `skip_serializing_if`; every other `Option` is sent as `null`. Times are RFC 3339
//! strings in UTC with milliseconds. Response types are `Deserialize` too, so a client reads
//! exactly what the server writes.
//!
//! Conversions from the domain records (`From<&stackyard_core::model::…>`) live beside each
//! type, so the server renders by converting and clients read by deserializing the same types.

pub mod audit;
pub mod domains;
pub mod env;
pub mod error;
pub mod family;
pub mod ops;
pub mod resources;
pub mod schema;
pub mod stacks;
pub mod tokens;
pub mod vault;

pub use audit::{AuditItem, AuditPage};
pub use domains::{
    AddDomainRequest, DnsRecord, DomainAnswer, DomainItem, DomainList, DomainRemoved,
    DomainVerification,
};
pub use env::{
    EnvChanged, EnvPatchRequest, EnvRead, EnvVars, EnvVersion, EnvVersionPage, EnvWriteResponse,
    RollbackRequest,
};
pub use error::ErrorEnvelope;
pub use family::{
    Family, FamilyMember, PromoteRequest, Promoted, PromotionDecided, PromotionItem, PromotionList,
    PromotionPending,
};
pub use ops::{ArtifactUsage, Health, Ready};
pub use resources::{
    CreateResourceRequest, CreatedResource, DeletedResource, ResourceDetail, ResourceItem,
    ResourceLimits, ResourceList,
};
pub use stacks::{
    CreatedRelease, CreatedService, CreatedStack, DeletedStack, RedeployForm, Redeployed, Release,
    ReleaseItem, ReleaseList, ReleaseServiceItem, RestartRequest, Restarted, Service, SseEvent,
    StackDetail, StackEventData, StackForm, StackList, StackSummary,
};
pub use tokens::{
    CreateTokenRequest, CreatedToken, RevokedToken, TeamInfo, TokenItem, TokenList, Whoami,
};

/// Renders a body as compact JSON, the one form the server sends and stores for idempotent
/// replays. `capacity` is a hint for bodies whose size is known (an env map's encoded length).
pub fn to_json_string<T: serde::Serialize + ?Sized>(body: &T, capacity: usize) -> String {
    let mut out = Vec::with_capacity(capacity.max(128));
    // Our bodies are maps of strings, numbers and bools, which cannot fail to serialise, and
    // serde_json writes only UTF-8; an empty object stands in should either ever not hold.
    match serde_json::to_writer(&mut out, body) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| "{}".to_owned()),
        Err(_) => "{}".to_owned(),
    }
}
pub use vault::{
    VaultCopied, VaultCopyItem, VaultCopyRequest, VaultKeys, VaultPutRequest, VaultValue,
    VaultWritten,
};
