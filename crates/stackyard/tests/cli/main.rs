//! Client-command tests: the real `stackyard` binary driven as a user would, against a real
//! `stackyard serve` child (noop runtime, fresh SQLite database, port 0) or, for faults a real
//! server cannot be made to produce on demand, a scripted HTTP server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod domains;
mod errors;
mod local_runtime;
mod promote;
mod tls;
mod vault;
mod walkthrough;
