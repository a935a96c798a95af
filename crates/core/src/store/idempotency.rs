//! `Idempotency-Key` records: reserved when a request arrives (`Housekeeping::idempotency_begin`)
//! and completed by the change itself, in its own transaction, with the response a replay
//! returns.

use crate::time::Millis;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How long a completed idempotency record answers replays (spec: 24 h); a store uses it for a
/// record completed without a reservation, which carries no `IdempotencyRequest::ttl`.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The one shape every idempotent write takes: the reserved key, the status of the answer, and
/// how to render its body from what the change decided under its lock (the stack it created,
/// the release number it got, the env version it wrote). The change completes the record in its
/// own transaction, so a committed change always has its replayable answer.
pub struct Idempotent<T> {
    pub scope: String,
    pub key: String,
    pub status: u16,
    pub render: Arc<dyn Fn(&T) -> String + Send + Sync>,
}

impl<T> Idempotent<T> {
    pub fn new(
        scope: String,
        key: String,
        status: u16,
        render: impl Fn(&T) -> String + Send + Sync + 'static,
    ) -> Self {
        Self {
            scope,
            key,
            status,
            render: Arc::new(render),
        }
    }

    /// The record to store once the change decided `outcome`.
    pub fn record(&self, outcome: &T) -> IdempotencyRecord {
        IdempotencyRecord {
            scope: self.scope.clone(),
            key: self.key.clone(),
            status: self.status,
            body: (self.render)(outcome),
        }
    }
}

impl<T> Clone for Idempotent<T> {
    fn clone(&self) -> Self {
        Self {
            scope: self.scope.clone(),
            key: self.key.clone(),
            status: self.status,
            render: self.render.clone(),
        }
    }
}

impl<T> fmt::Debug for Idempotent<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotent")
            .field("scope", &self.scope)
            .field("key", &self.key)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A completed record as the stores write it: what a replay of `(scope, key)` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub scope: String,
    pub key: String,
    pub status: u16,
    pub body: String,
}

/// The state of an `Idempotency-Key` when a request arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// No live record: one is now reserved for this request; complete or abandon it.
    Started,
    /// The first request finished: answer with its response.
    Replay { status: u16, body: String },
    /// The key was used with a different request.
    Mismatch,
    /// The first request is still running.
    InProgress,
}

#[derive(Debug, Clone)]
pub struct IdempotencyRequest<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    /// SHA-256 of what identifies the request (method, path, parsed body).
    pub request_hash: &'a str,
    pub now: Millis,
    /// How long a completed record answers replays (spec: 24 h).
    pub ttl: Duration,
    /// After how long a reservation whose request never finished (crashed server) may be taken over.
    pub stale_after: Duration,
}
