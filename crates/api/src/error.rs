//! The error envelope every 4xx/5xx carries, ours and the framework's alike.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{ok: false, error, message, request_id, …}`. `error` is a stable code clients branch on;
/// `message` is one human sentence that never echoes a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always `false`.
    pub ok: bool,
    /// The error code, e.g. `not_found`, `invalid_body`, `version_mismatch`.
    #[schema(example = "not_found")]
    pub error: String,
    pub message: String,
    /// The request's `X-Request-Id`.
    pub request_id: String,
    /// A full sentence telling an agent what to do next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_action: Option<String>,
    /// On 429 and 503, with the same number in the `Retry-After` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// On 412 `version_mismatch`: the env version the stack is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
}

impl ErrorEnvelope {
    pub fn new(error: &str, message: &str, request_id: &str) -> Self {
        Self {
            ok: false,
            error: error.to_owned(),
            message: message.to_owned(),
            request_id: request_id.to_owned(),
            agent_action: None,
            retry_after_seconds: None,
            current_version: None,
        }
    }
}
