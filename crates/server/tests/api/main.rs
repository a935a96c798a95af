//! API tests over real HTTP: a server on port 0, a fresh SQLite file or PostgreSQL database per
//! test, every route's happy path and every listed error code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod artifacts;
mod compat;
mod env;
mod family;
mod hostile;
mod internal;
mod kubernetes;
mod limits;
mod messages;
mod needs;
mod resources;
mod restart;
mod sealed;
mod stacks;
mod tokens;
mod ui;
mod vault;
mod wire;
