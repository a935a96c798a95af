//! Liveness and readiness.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /healthz`: the process is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub ok: bool,
}

/// `GET /readyz`: the store answers; which runtime runs services, and how they are confined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    pub ok: bool,
    /// `sqlite` or `postgres`.
    #[schema(example = "sqlite")]
    pub store: String,
    /// `local` or `noop`.
    #[schema(example = "local")]
    pub runtime: String,
    /// The sandbox layers active for every service (empty: services run unconfined).
    #[schema(example = json!(["landlock-files (abi 7)", "landlock-tcp", "landlock-scopes", "stack-users", "cgroup-memory", "cgroup-pids", "rlimits"]))]
    pub sandbox: Vec<String>,
}
