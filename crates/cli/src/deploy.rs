//! `deploy` and `redeploy`: read the manifest, pack each service's build directory, upload
//! with an `Idempotency-Key` (so the upload may be retried), then follow the release to live.
//!
//! Build directories: a service's `build` path, relative to DIR. A service without `build`
//! uses the directory named after the service (`DIR/<service>`) when there is one; otherwise
//! it is an error whose hint shows the line to add (`build: .` packs DIR itself).

use crate::api::{Api, Request, Upload, UploadFile, unexpected_answer};
use crate::error::{CliError, Exit, Result};
use crate::follow::{self, Goal, Outcome};
use crate::output::{Cell, Out, clean, human_bytes, table};
use crate::pack::{self, Packed};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use stackyard_api::StackDetail;
use stackyard_core::manifest::Manifest;
use stackyard_core::{EnvironmentName, StackName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Manifest file names, in order of preference.
pub const MANIFEST_FILES: [&str; 2] = ["stackyard.yaml", "instant.yaml"];
/// The server caps a request body at 50 MiB (api.md); a larger upload is refused here rather
/// than cut off mid-stream by the server.
pub const MAX_UPLOAD_BYTES: u64 = 50 * 1024 * 1024;

/// How long to follow, shared by every command that waits for a release.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Return once the server accepted the release, without following it.
    #[arg(long)]
    pub detach: bool,
    /// Stop following after this long (e.g. `90s`, `15m`); the deploy goes on on the server.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// Directory with `stackyard.yaml` (or `instant.yaml`) [default: .]
    pub dir: Option<PathBuf>,
    /// Stack name [default: DIR's name, with characters a name cannot hold replaced by `-`]
    #[arg(long)]
    pub name: Option<String>,
    /// Deployment environment label (`development`, `prod`, …) [default: development]
    #[arg(long = "env", value_name = "ENV")]
    pub environment: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, clap::Args)]
pub struct RedeployArgs {
    /// The stack id (`stk-…`).
    pub slug: String,
    /// Deploy new code from this directory; without it, the current code with the current env.
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// A manifest read from DIR (its warnings already shown).
struct LoadedManifest {
    text: String,
    manifest: Manifest,
}

fn load_manifest(dir: &Path, out: &Out) -> Result<LoadedManifest> {
    if !dir.is_dir() {
        return Err(CliError::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let found: Vec<PathBuf> = MANIFEST_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect();
    let Some(path) = found.first() else {
        return Err(CliError::other(format!(
            "no stackyard.yaml (or instant.yaml) in {}",
            dir.display()
        ))
        .with_hint("create one, for example:  services: { web: { build: ., expose: true } }"));
    };
    if found.len() > 1 {
        out.warn(&format!(
            "both stackyard.yaml and instant.yaml are in {}; using stackyard.yaml",
            dir.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::other(format!("cannot read {}: {e}", path.display())))?;
    let manifest = Manifest::parse(&text)
        .map_err(|e| CliError::other(format!("{}: {e}", path.display())).with_code(e.code()))?;
    for w in &manifest.warnings {
        out.warn(&format!("manifest: {w}"));
    }
    Ok(LoadedManifest { text, manifest })
}

fn build_dir(dir: &Path, service: &str, build: Option<&str>) -> Result<PathBuf> {
    match build {
        Some(b) => {
            let p = dir.join(b);
            if p.is_dir() {
                Ok(p)
            } else {
                Err(CliError::other(format!(
                    "service {service}: the build directory {} does not exist or is not a directory",
                    p.display()
                )))
            }
        }
        None => {
            let p = dir.join(service);
            if p.is_dir() {
                Ok(p)
            } else {
                Err(CliError::other(format!(
                    "service {service} has no `build` directory, and there is no directory named {service} in {}",
                    dir.display()
                ))
                .with_hint(format!(
                    "add `build: .` under services.{service} in the manifest to pack {} itself, or `build: ./<path>`",
                    dir.display()
                )))
            }
        }
    }
}

/// Packs every service of the manifest (one at a time: each holds only a few buffers, and the
/// archives wait on disk). Returns the archives in manifest order.
async fn pack_services(dir: &Path, m: &Manifest, out: &Out) -> Result<Vec<(String, Packed)>> {
    let mut packed = Vec::with_capacity(m.services.len());
    for s in &m.services {
        // A service run from a prebuilt image sends no tarball.
        if s.image.is_some() {
            continue;
        }
        let name = s.name.as_str().to_owned();
        let src = build_dir(dir, &name, s.build.as_deref())?;
        // As the manifest names it: DIR may be `.`, and `././web` helps nobody.
        let shown = s.build.clone().unwrap_or_else(|| format!("./{name}"));
        let p = tokio::task::spawn_blocking(move || pack::pack_dir(&src))
            .await
            .map_err(|e| CliError::other(format!("packing {name} stopped: {e}")))?
            .map_err(|e| CliError {
                message: format!("service {name}: {}", e.message),
                ..e
            })?;
        for w in &p.warnings {
            out.warn(&format!("{name}: {w}"));
        }
        if out.json {
            out.json_line(&json!({ "kind": "deploy.packed", "data": {
                "service": name, "dir": shown, "files": p.files, "entries": p.entries,
                "bytes": p.len, "content_bytes": p.content_bytes, "warnings": p.warnings,
            }}));
        } else {
            out.note(&format!(
                "Packed {name} ({shown}): {} file{}, {} → {} compressed",
                p.files,
                if p.files == 1 { "" } else { "s" },
                human_bytes(p.content_bytes),
                human_bytes(p.len)
            ));
        }
        packed.push((name, p));
    }
    let total: u64 = packed.iter().map(|(_, p)| p.len).sum();
    if total > MAX_UPLOAD_BYTES {
        return Err(CliError::other(format!(
            "the packed services take {}, more than the server's 50 MiB request limit",
            human_bytes(total)
        ))
        .with_hint(format!(
            "leave out what the services do not need at run time with a {}",
            pack::IGNORE_FILE
        )));
    }
    Ok(packed)
}

fn upload_of(fields: Vec<(String, String)>, packed: &[(String, Packed)]) -> Upload {
    Upload {
        fields,
        files: packed
            .iter()
            .map(|(name, p)| UploadFile {
                field: name.clone(),
                file_name: format!("{name}.tar.gz"),
                path: p.path().to_path_buf(),
                len: p.len,
            })
            .collect(),
    }
}

/// A valid stack name from a directory name: characters a name cannot hold become `-`, it
/// starts with a letter or digit, and is at most 64 characters.
pub fn name_from_dir(dir: &Path) -> String {
    let base = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let replaced: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ' ' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed: String = replaced
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(64)
        .collect();
    if StackName::parse(&trimmed).is_ok() {
        trimmed
    } else {
        "stack".to_owned()
    }
}

/// `stackyard deploy [DIR]`.
pub async fn deploy(api: &Api, out: &Out, args: DeployArgs) -> Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let name = match &args.name {
        Some(n) => StackName::parse(n)
            .map_err(|e| CliError::usage(format!("--name: {e}")))?
            .into_string(),
        None => name_from_dir(&dir),
    };
    let environment = match &args.environment {
        Some(e) => Some(
            EnvironmentName::parse(e)
                .map_err(|e| CliError::usage(format!("--env: {e}")))?
                .into_string(),
        ),
        None => None,
    };
    let loaded = load_manifest(&dir, out)?;
    let packed = pack_services(&dir, &loaded.manifest, out).await?;
    let mut fields = vec![
        ("manifest".to_owned(), loaded.text.clone()),
        ("name".to_owned(), name.clone()),
    ];
    if let Some(e) = environment {
        fields.push(("env".to_owned(), e));
    }
    let upload = Arc::new(upload_of(fields, &packed));
    out.note(&format!(
        "Uploading {} service{} ({}) to {}…",
        packed.len(),
        if packed.len() == 1 { "" } else { "s" },
        human_bytes(upload.total_len()),
        api.base()
    ));
    let (doc, answer) = send_accepted(
        api,
        &Request::new(Method::POST, "/stacks/new")
            .form(upload)
            .idempotent(),
    )
    .await?;
    drop(packed);
    let slug = answer.stack_id;
    let release = answer.release.version;
    let services: Vec<String> = answer.services.into_iter().map(|s| s.name).collect();
    accepted(
        out,
        &slug,
        &doc,
        &answer.note,
        &format!("Created {slug} ({}), release v{release}", clean(&name)),
    );
    if args.wait.detach {
        if !out.json && !out.quiet {
            out.println(&slug);
        }
        return Ok(());
    }
    follow_release(api, out, &slug, release, &services, args.wait.timeout).await
}

/// What the client acts on in a 202 that accepted a release: `stackyard_api::CreatedStack`
/// (`POST /stacks/new`) or `stackyard_api::Redeployed` (`POST /stacks/:slug/redeploy`). Only
/// these fields are required: the server has made the stack or release by now, so a difference
/// elsewhere in the answer must not cost the user its id; and `--json` reports the answer as
/// sent, not as this client reads it.
#[derive(Debug, Deserialize)]
pub struct Accepted {
    pub stack_id: String,
    pub release: AcceptedRelease,
    /// `POST /stacks/new` only.
    #[serde(default)]
    pub services: Vec<AcceptedService>,
    /// Manifest warnings, or `""`.
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Deserialize)]
pub struct AcceptedRelease {
    pub version: i64,
}

#[derive(Debug, Deserialize)]
pub struct AcceptedService {
    pub name: String,
}

/// Sends a request whose 202 accepts a release. Returns the answer twice: as sent (the
/// `deploy.accepted` line passes it on verbatim) and as the client reads it.
pub async fn send_accepted(api: &Api, req: &Request) -> Result<(Value, Accepted)> {
    let doc: Value = api.send_json(req).await?;
    let answer = Accepted::deserialize(&doc).map_err(|e| unexpected_answer(&e))?;
    Ok((doc, answer))
}

/// `--json`: the accepted answer, as the server sent it.
pub fn accepted_line(out: &Out, doc: &Value) {
    out.json_line(&json!({ "kind": "deploy.accepted", "data": doc }));
}

/// Reports an accepted upload: the slug on stdout with `--quiet` (so scripts can capture it
/// even if the deploy then fails), a JSON line with `--json`, a note otherwise; the server's
/// note as a warning.
fn accepted(out: &Out, slug: &str, doc: &Value, server_note: &str, note: &str) {
    if out.json {
        accepted_line(out, doc);
    } else if out.quiet {
        out.println(slug);
    } else {
        out.note(note);
    }
    if !server_note.is_empty() {
        out.warn(&format!("server: {}", clean(server_note)));
    }
}

/// `stackyard redeploy SLUG [DIR]`.
pub async fn redeploy(api: &Api, out: &Out, args: RedeployArgs) -> Result<()> {
    let slug = crate::args::parse_slug(&args.slug)?;
    let mut req = Request::new(Method::POST, format!("/stacks/{slug}/redeploy")).idempotent();
    let mut names = Vec::new();
    let mut _packed = Vec::new();
    if let Some(dir) = &args.dir {
        let loaded = load_manifest(dir, out)?;
        let packed = pack_services(dir, &loaded.manifest, out).await?;
        names = packed.iter().map(|(n, _)| n.clone()).collect();
        let upload = Arc::new(upload_of(
            vec![("manifest".to_owned(), loaded.text.clone())],
            &packed,
        ));
        out.note(&format!(
            "Uploading {} ({})…",
            names.join(", "),
            human_bytes(upload.total_len())
        ));
        req = req.form(upload);
        // The archives must outlive every retry of the request.
        _packed = packed;
    }
    let (doc, answer) = send_accepted(api, &req).await?;
    let release = answer.release.version;
    accepted(
        out,
        &slug,
        &doc,
        &answer.note,
        &format!("Accepted release v{release} of {slug}"),
    );
    if args.wait.detach {
        if !out.json && !out.quiet {
            out.println(&format!("{slug} release v{release}"));
        }
        return Ok(());
    }
    if names.is_empty() {
        // Best effort: only the display's first lines depend on it.
        if let Ok(detail) = api.get::<StackDetail>(&format!("/stacks/{slug}")).await {
            names = follow::services_of(&detail)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
        }
    }
    follow_release(api, out, &slug, release, &names, args.wait.timeout).await
}

/// Follows release `release` of `slug` to its end and reports it: exit 0 and the services'
/// URLs when it is live, exit 5 with the error when it failed.
pub async fn follow_release(
    api: &Api,
    out: &Out,
    slug: &str,
    release: i64,
    services: &[String],
    timeout: Duration,
) -> Result<()> {
    let result = follow::follow(api, out, slug, Goal::Release(release), services, timeout).await;
    let followed = match result {
        Ok(f) => f,
        Err(e) => {
            if out.json {
                out.json_line(&follow::result_line(slug, release, false, None, Some(&e)));
            }
            return Err(e);
        }
    };
    // The final state from the server: URLs and errors as stored, not as streamed.
    let detail: Option<StackDetail> = api.get(&format!("/stacks/{slug}")).await.ok();
    match followed.outcome {
        Outcome::Live | Outcome::Deleted => {
            if out.json {
                out.json_line(&follow::result_line(
                    slug,
                    release,
                    true,
                    detail.as_ref(),
                    None,
                ));
            } else if !out.quiet {
                summary(out, slug, release, detail.as_ref());
            }
            Ok(())
        }
        Outcome::Failed { error } => {
            let prefix = format!("release v{release} failed");
            let message = match &error {
                // The server's error may already say which release failed.
                Some(e) if e.starts_with(&prefix) => e.clone(),
                Some(e) => format!("{prefix}: {e}"),
                None => prefix,
            };
            let failed: Vec<String> = followed
                .services
                .iter()
                .filter(|(_, s)| s.status == "failed")
                .map(|(n, _)| n.clone())
                .collect();
            let hint = match failed.first() {
                Some(svc) => {
                    format!("`stackyard logs {slug} {svc}` shows what the service printed")
                }
                None => format!("`stackyard status {slug}` shows the stack's state"),
            };
            let e = CliError::new(Exit::Server, message)
                .with_code("release_failed")
                .with_hint(hint);
            if out.json {
                out.json_line(&follow::result_line(
                    slug,
                    release,
                    false,
                    detail.as_ref(),
                    Some(&e),
                ));
            } else if let Some(d) = &detail {
                out.println(&services_table(out, d));
            }
            Err(e)
        }
    }
}

fn summary(out: &Out, slug: &str, release: i64, detail: Option<&StackDetail>) {
    out.println(&format!("{slug} is live (release v{release})"));
    if let Some(d) = detail {
        out.println(&services_table(out, d));
    }
}

/// SERVICE / STATUS / URL (/ ERROR, when any service has one) table of a stack detail.
pub fn services_table(out: &Out, detail: &StackDetail) -> String {
    let services = follow::services_of(detail);
    let any_error = services.iter().any(|(_, s)| s.error.is_some());
    let rows: Vec<Vec<Cell>> = services
        .into_iter()
        .map(|(name, s)| {
            let mut row = vec![
                Cell::plain(name),
                Cell::status(&s.status),
                Cell::plain(s.url.unwrap_or_else(|| "-".into())),
            ];
            if any_error {
                row.push(Cell::plain(s.error.unwrap_or_default()));
            }
            row
        })
        .collect();
    let headers: &[&str] = if any_error {
        &["SERVICE", "STATUS", "URL", "ERROR"]
    } else {
        &["SERVICE", "STATUS", "URL"]
    };
    table(out, headers, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_names_come_from_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("My App.v2!");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(name_from_dir(&sub), "My App-v2-");
        let sub = d.path().join("..hidden");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(name_from_dir(&sub), "hidden");
        let sub = d.path().join("x".repeat(100));
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(name_from_dir(&sub).len(), 64);
        let sub = d.path().join("___");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(name_from_dir(&sub), "stack");
    }

    #[test]
    fn a_service_without_build_uses_its_own_directory_or_explains() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("web")).unwrap();
        assert_eq!(
            build_dir(d.path(), "web", None).unwrap(),
            d.path().join("web")
        );
        let e = build_dir(d.path(), "api", None).unwrap_err();
        assert!(e.hint.unwrap().contains("build: ."));
        assert_eq!(
            build_dir(d.path(), "api", Some(".")).unwrap(),
            d.path().join(".")
        );
        assert!(build_dir(d.path(), "api", Some("./missing")).is_err());
    }

    #[test]
    fn manifests_are_found_and_checked_locally() {
        let d = tempfile::tempdir().unwrap();
        let out = Out::new(true, true);
        assert!(load_manifest(d.path(), &out).is_err());
        std::fs::write(d.path().join("instant.yaml"), "services:\n  web: {}\n").unwrap();
        let m = load_manifest(d.path(), &out).unwrap();
        assert_eq!(m.manifest.services[0].name.as_str(), "web");
        std::fs::write(d.path().join("stackyard.yaml"), "services: 3\n").unwrap();
        let e = load_manifest(d.path(), &out).err().unwrap();
        assert_eq!(e.code.as_deref(), Some("invalid_manifest"));
    }
}
