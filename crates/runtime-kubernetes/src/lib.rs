//! Stackyard's Kubernetes runtime: a stack is a namespace `sy-<slug>` holding one Secret,
//! Deployment and Service per service (and an Ingress per exposed one), applied server-side.
//!
//! This crate so far holds the pure half: [`render`] turns a [`DeployPlan`] into the typed
//! objects to apply, and [`rollout`] decides from what the API server reports whether a
//! service's rollout is done, still going or failed. Neither does I/O, so both are tested
//! without a cluster.
//!
//! [`DeployPlan`]: stackyard_core::runtime::DeployPlan

pub mod render;
pub mod rollout;

pub use render::{
    Compute, Endpoint, Peer, RenderConfig, Rendered, ServiceObjects, TierLimits, labels_selector,
    removed, render,
};
pub use rollout::{Rollout, rollout};
