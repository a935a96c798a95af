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
    /// The uploaded service tarballs this server keeps (each stored once however many
    /// releases use it, removed once none does).
    #[serde(default)]
    pub artifacts: ArtifactUsage,
}

/// How many artifact files the data directory holds and their total size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactUsage {
    #[schema(example = 12)]
    pub count: u64,
    #[schema(example = 73_400_320)]
    pub bytes: u64,
}
