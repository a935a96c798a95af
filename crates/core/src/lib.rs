//! Stackyard's domain: the validated types every other crate passes around, the manifest and
//! tarball rules, the env merge, and the `Store` / `Runtime` traits the outer crates implement.
//!
//! Nothing here does I/O; every function is deterministic given its inputs (randomness comes
//! from the OS through `getrandom` only when a caller asks for a new slug or token).

pub mod artifact_url;
pub mod crypto;
pub mod dockerfile;
pub mod domain;
pub mod env;
pub mod envlog;
pub mod ids;
pub mod lifecycle;
pub mod manifest;
pub mod model;
pub mod needs;
pub mod resource;
pub mod runtime;
pub mod store;
pub mod tarball;
pub mod time;
pub mod vault;

pub use env::{EnvChange, EnvError, EnvMap, EnvPatch};
pub use ids::{
    ApiToken, EnvKey, EnvironmentName, ParseError, ResourceName, ResourceToken, ServiceName,
    StackName, StackSlug, TeamName, TokenDigest, VaultKey,
};
pub use manifest::{Manifest, ManifestError, ServiceSpec};
pub use tarball::{StartCommand, StartSource, TarballError, TarballInfo, TarballLimits};
pub use time::Millis;
