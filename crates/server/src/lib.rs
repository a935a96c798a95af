//! Stackyard's server: the axum API, the envelope middleware, auth, durable job workers and
//! the wiring that picks a store and a runtime at start-up.

pub mod acme;
pub mod admin;
pub mod artifacts;
pub mod auth;
pub mod authcache;
pub mod bodies;
pub mod certs;
pub mod config;
pub mod dns;
pub mod domains;
pub mod envqueue;
pub mod error;
pub mod extract;
pub mod http;
pub mod idempotency;
pub mod jobs;
pub mod kubernetes;
pub mod maintenance;
pub mod masterkey;
pub mod middleware;
pub mod needs;
pub mod noop;
pub mod openapi;
pub mod ratelimit;
pub mod resources;
pub mod router;
pub mod routes;
pub mod serve;
pub mod state;
pub mod telemetry;
pub mod ui;

pub use config::{RuntimeKind, ServeArgs, StoreArgs};
pub use router::router;
pub use serve::{RunningServer, start};
pub use state::AppState;

use stackyard_core::Millis;

/// The wall clock as `Millis`.
pub fn now() -> Millis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here rather than across an await.
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}
