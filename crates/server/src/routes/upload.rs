//! Code uploads shared by `POST /stacks/new` and `POST /stacks/:slug/redeploy`: reading the
//! multipart form, validating the manifest and every tarball before anything is written, and
//! storing the artifacts.

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::http::StatusCode;
use stackyard_core::dockerfile;
use stackyard_core::manifest::{Manifest, ServiceSpec};
use stackyard_core::model::ReleaseService;
use stackyard_core::needs::Need;
use stackyard_core::store::Store;
use stackyard_core::tarball::{self, TarballLimits};
use std::collections::BTreeMap;

/// The parts of a stack form, as received.
#[derive(Default)]
pub struct Form {
    pub manifest: Option<String>,
    pub name: Option<String>,
    pub env: Option<String>,
    pub files: BTreeMap<String, Bytes>,
}

/// A manifest and its tarballs that passed every check; nothing has been written yet.
pub struct Code {
    pub manifest_text: String,
    pub warnings: Vec<String>,
    /// Each service's `needs:` grants are empty here; `crate::needs::grant` fills them once
    /// the tokens are checked against the store.
    pub services: Vec<ReleaseService>,
    /// Each service's `needs:` entries, in the order of `services`.
    pub needs: Vec<Vec<Need>>,
    /// `(digest, bytes)` per distinct artifact.
    pub artifacts: BTreeMap<String, Bytes>,
}

impl Code {
    /// `(service, artifact digest)` pairs: with the manifest text, what identifies the code for
    /// idempotency (the tarball bytes themselves are covered by their digests).
    pub fn identity(&self) -> Vec<(&str, &str)> {
        self.services
            .iter()
            .map(|s| (s.name.as_str(), s.artifact.as_str()))
            .collect()
    }
}

pub fn invalid_form(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_form", message)
        .with_action("Send multipart/form-data with a `manifest` field, a `name` field and one gzipped tarball part per service named after the service.")
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        invalid_form(format!(
            "The multipart body could not be read: {}.",
            e.body_text()
        ))
    }
}

/// Reads the whole form (the body limit bounds it at 50 MiB).
pub async fn read_form(mp: Result<Multipart, MultipartRejection>) -> ApiResult<Form> {
    let mut mp = mp.map_err(|e| {
        invalid_form(format!(
            "Expected a multipart/form-data body: {}.",
            e.body_text()
        ))
    })?;
    let mut form = Form::default();
    while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
        let Some(name) = field.name().map(str::to_owned) else {
            return Err(invalid_form("A form part has no field name."));
        };
        let slot = match name.as_str() {
            "manifest" => Some(&mut form.manifest),
            "name" => Some(&mut form.name),
            "env" => Some(&mut form.env),
            _ => None,
        };
        let bytes = field.bytes().await.map_err(multipart_error)?;
        match slot {
            Some(slot) => {
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| invalid_form(format!("The `{name}` field is not UTF-8 text.")))?;
                if slot.replace(text).is_some() {
                    return Err(invalid_form(format!(
                        "The `{name}` field appears more than once."
                    )));
                }
            }
            None => {
                if form.files.insert(name.clone(), bytes).is_some() {
                    return Err(invalid_form(format!(
                        "The tarball part `{}` appears more than once.",
                        stackyard_core::ids::truncate_for_message(&name)
                    )));
                }
            }
        }
    }
    Ok(form)
}

/// The manifest field, required.
pub fn manifest_text(form: &mut Form) -> ApiResult<String> {
    form.manifest
        .take()
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_manifest",
                "The `manifest` field (the stack's YAML manifest) is required.",
            )
        })
}

/// Validates the manifest and every service's tarball and start command, structure first: every
/// service has its tarball part and no part names an unknown service before any tarball's
/// contents are judged. A service without a start command is refused only when the runtime
/// runs start commands itself (`needs_start_command`); otherwise its command stays empty and
/// the image's own starts it. CPU-heavy (tarball inspection): call it on the blocking pool
/// (`validate_code_blocking`).
pub fn validate_code(
    manifest_text: String,
    mut files: BTreeMap<String, Bytes>,
    needs_start_command: bool,
) -> ApiResult<Code> {
    let manifest = Manifest::parse(&manifest_text)
        .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    let mut parts = Vec::with_capacity(manifest.services.len());
    let mut images = Vec::new();
    for spec in &manifest.services {
        let svc = spec.name.as_str();
        if let Some(image) = &spec.image {
            // Runtimes that run start commands themselves run tarballs, never images.
            if needs_start_command {
                return Err(ApiError::bad_request(
                    "image_unsupported",
                    format!("Service `{svc}` names an `image`, but this server runs services from their tarballs (the local runtime)."),
                )
                .with_action(format!("Remove `image:` from service `{svc}` and send its tarball, or deploy to a server running `--runtime kubernetes`.")));
            }
            if files.remove(svc).is_some() {
                return Err(invalid_form(format!(
                    "Service `{svc}` runs the image `{}`: send no tarball part for it.",
                    stackyard_core::ids::truncate_for_message(image)
                )));
            }
            images.push(spec);
            continue;
        }
        let bytes = files.remove(svc).ok_or_else(|| {
            ApiError::bad_request("missing_tarball", format!("No tarball part named `{svc}` was sent for service `{svc}`."))
                .with_action(format!("Add a form part named `{svc}` holding a gzipped tar of the service's build directory."))
        })?;
        parts.push((spec, bytes));
    }
    if let Some(extra) = files.keys().next() {
        return Err(invalid_form(format!(
            "The form part `{}` does not name a service in the manifest.",
            stackyard_core::ids::truncate_for_message(extra)
        )));
    }
    let limits = TarballLimits::default();
    let mut services = Vec::with_capacity(parts.len());
    let mut artifacts = BTreeMap::new();
    let mut needs = Vec::with_capacity(parts.len());
    for (spec, bytes) in parts {
        let svc = spec.name.as_str();
        let info = tarball::inspect(&bytes, &limits).map_err(|e| {
            ApiError::bad_request("invalid_tarball", format!("Service `{svc}`: {e}"))
        })?;
        let (command, workdir) = match tarball::resolve_start(spec.command.as_deref(), &info) {
            Some(start) => (start.command, start.workdir),
            None if needs_start_command => return Err(ApiError::bad_request(
                "missing_start_command",
                format!("Service `{svc}` has no start command: no `command` in the manifest, no Procfile and no Dockerfile CMD/ENTRYPOINT in its tarball."),
            )
            .with_action(format!("Add `command: \"...\"` to service `{svc}` in the manifest, or a Procfile with a `web:` line at the tarball root."))),
            // The image's own command starts it.
            None => (String::new(), String::new()),
        };
        // A runtime that runs commands itself also builds the Dockerfile: one it cannot build
        // is refused now rather than failing the release later.
        if needs_start_command
            && dockerfile::is_built(info.procfile.is_some(), info.dockerfile.is_some())
            && let Some(text) = &info.dockerfile
        {
            dockerfile::build_plan(text, &BTreeMap::new()).map_err(|e| {
                ApiError::bad_request("invalid_dockerfile", format!("Service `{svc}`: {e}"))
            })?;
        }
        services.push(release_service(spec, info.digest.clone(), command, workdir));
        needs.push(spec.needs.clone());
        artifacts.insert(info.digest, bytes);
    }
    // A service run from an image has no tarball: the image's own command starts it unless
    // the manifest names one.
    for spec in images {
        let command = spec.command.clone().unwrap_or_default();
        services.push(release_service(spec, String::new(), command, String::new()));
        needs.push(spec.needs.clone());
    }
    // In the manifest's order, as every other list of a release's services.
    let order =
        |name: &stackyard_core::ServiceName| manifest.services.iter().position(|s| &s.name == name);
    let mut paired: Vec<(ReleaseService, Vec<Need>)> = services.into_iter().zip(needs).collect();
    paired.sort_by_key(|(svc, _)| order(&svc.name));
    let (services, needs): (Vec<ReleaseService>, Vec<Vec<Need>>) = paired.into_iter().unzip();
    Ok(Code {
        manifest_text,
        warnings: manifest.warnings,
        services,
        needs,
        artifacts,
    })
}

/// The release entry of `spec`: its tarball's digest (empty for one run from its `image`),
/// its resolved start command and working directory; grants are filled in later.
fn release_service(
    spec: &ServiceSpec,
    artifact: String,
    command: String,
    workdir: String,
) -> ReleaseService {
    ReleaseService {
        name: spec.name.clone(),
        artifact,
        image: spec.image.clone(),
        command,
        workdir,
        port: spec.port,
        expose: spec.expose,
        health: spec.health.clone(),
        env: spec.env.clone(),
        needs: Vec::new(),
    }
}

/// `validate_code` on the blocking pool.
pub async fn validate_code_blocking(
    manifest_text: String,
    files: BTreeMap<String, Bytes>,
    needs_start_command: bool,
) -> ApiResult<Code> {
    tokio::task::spawn_blocking(move || validate_code(manifest_text, files, needs_start_command))
        .await
        .map_err(|_| ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR))?
}

/// Stores the artifacts (files, and blobs when shared) before any row names them, and returns
/// `(digest, size)`s.
pub async fn save_artifacts<S: Store>(
    state: &AppState<S>,
    files: BTreeMap<String, Bytes>,
) -> ApiResult<Vec<(String, i64)>> {
    let sizes: Vec<(String, i64)> = files
        .iter()
        .map(|(d, b)| (d.clone(), b.len() as i64))
        .collect();
    state
        .artifacts
        .save_upload(&state.store, &files)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not store an artifact");
            ApiError::unavailable(
                "provision_failed",
                "The server could not store the service tarballs.",
                5,
            )
        })?;
    #[cfg(debug_assertions)]
    crate::artifacts::test_hang_after_write().await;
    Ok(sizes)
}
