//! Process-level tests: the real `stackyard` binary, killed with SIGKILL, restarted, or run
//! twice against one PostgreSQL database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
mod artifacts;
mod backup;
mod build;
mod crash;
mod domains;
mod logs;
mod masterkey;
mod needs;
mod planned_stop;
mod restart;
mod runtime;
mod sandbox;
mod shared_queue;
mod supervisor;
mod tls;
mod upgrade;
