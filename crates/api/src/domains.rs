//! `/api/v1/stacks/:slug/domains`: custom domains of a stack.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/stacks/:slug/domains`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDomainRequest {
    /// The bare hostname (`app.example.com`): no scheme, port, path or wildcard.
    #[schema(
        example = "app.example.com",
        max_length = 253,
        pattern = "^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z][A-Za-z0-9-]{0,61}[A-Za-z0-9]$"
    )]
    pub hostname: String,
}

/// A DNS record the domain's owner creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DnsRecord {
    pub record_type: String,
    pub record_name: String,
    pub record_value: String,
}

/// The records that prove ownership (TXT) and send traffic here (CNAME).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DomainVerification {
    pub txt: DnsRecord,
    pub cname: DnsRecord,
}

/// One custom domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DomainItem {
    /// `dom_…`.
    pub id: String,
    pub hostname: String,
    /// `pending_verification`, `verified`, `routed`, `certificate_ready` or `failed`.
    pub status: String,
    pub created_at: String,
    pub verification: DomainVerification,
    pub verified: bool,
    pub certificate_ready: bool,
    pub last_check_at: Option<String>,
    /// Why the last check did not find the record.
    pub last_check_err: Option<String>,
    /// When the domain's certificate expires (it is renewed with a third of its lifetime
    /// left); none before the first is issued.
    pub certificate_expires_at: Option<String>,
    /// Why the last certificate order failed (`failed`: the CA refused it).
    pub certificate_error: Option<String>,
}

/// `POST /api/v1/stacks/:slug/domains` 201 and `POST …/verify` 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DomainAnswer {
    pub ok: bool,
    pub domain: DomainItem,
}

/// `GET /api/v1/stacks/:slug/domains`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DomainList {
    pub ok: bool,
    pub items: Vec<DomainItem>,
    pub total: usize,
}

/// `DELETE /api/v1/stacks/:slug/domains/:id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DomainRemoved {
    pub ok: bool,
    pub id: String,
    pub message: String,
}
