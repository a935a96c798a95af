//! Integration tests of the local runtime and its router: real processes (python3's standard
//! library and sh), real sockets, a fresh data dir per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deploy;
mod logs;
mod recover;
mod rolling;
mod router;
mod support;
mod teardown;
