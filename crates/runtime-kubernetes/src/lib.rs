//! Stackyard's Kubernetes runtime: a stack is a namespace `sy-<slug>` holding one Secret,
//! Deployment and Service per service (and an Ingress per exposed one), applied server-side.
//!
//! [`render`] turns a [`DeployPlan`] into the typed objects to apply, and [`rollout`] decides
//! from what the API server reports whether a service's rollout is done, still going or
//! failed; neither does I/O, so both are tested without a cluster. [`KubernetesRuntime`]
//! drives an API server with them (tested against `stackyard_testkit::fakekube`).
//!
//! [`DeployPlan`]: stackyard_core::runtime::DeployPlan

pub mod render;
pub mod rollout;
pub mod runtime;

pub use render::{
    Compute, Endpoint, Peer, RenderConfig, Rendered, ServiceObjects, TierLimits, labels_selector,
    removed, render,
};
pub use rollout::{Rollout, rollout};
pub use runtime::{ArtifactUrls, Backoff, KubeSettings, KubernetesRuntime, StackExists};
