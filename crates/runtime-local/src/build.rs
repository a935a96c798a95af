//! The build phase (`isolation.md`, "Builds"): a service with a root `Dockerfile` and no
//! `Procfile` is built from its Dockerfile before it starts, and a Procfile's `release:` command
//! runs once per release before the processes start.
//!
//! A build works in `<data dir>/builds/<slug>/<service>/<key>.partial/`: the image root `root/`
//! starts as a copy of the build context (there is no base image), the context itself sits in
//! the build's private `tmp/` for `COPY` to read, and every step — `RUN` and `COPY` alike — is a
//! process in the service's sandbox (its Unix user, Landlock, cgroups), with the egress ports
//! open, its output in the service's logs and a `build.step` event before and after it. `COPY`
//! runs sandboxed too, so a symbolic link planted in the context cannot make the server copy
//! something it should not. A finished build is renamed to `<key>/` (the key hashes the artifact
//! and the resolved steps, build args included) and its root copied into the release directory;
//! a later deploy with the same key copies it again without running a step. The newest
//! [`KEPT_BUILDS`] builds of a service are kept; teardown removes them all.

use crate::lock;
use crate::logs::{ServiceLogs, now};
use crate::procs::{Proc, SpawnSpec, succeeded};
use crate::runtime::{Attempt, Shared, human_duration, push_tail, with_files, working_dir};
use crate::sandbox::ServiceBox;
use crate::supervisor::ServiceStart;
use stackyard_core::ServiceName;
use stackyard_core::dockerfile::{self, BuildAction, BuildStep};
use stackyard_core::model::{NewEvent, ReleaseService};
use stackyard_core::runtime::{DeployPlan, LogLine, LogStream, StatusSink};
use stackyard_core::tarball::{procfile_release, shell_quote};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Builds kept per service, newest first (the current one and the one before, so a rollback
/// or a redeploy of the previous code is a cache hit too).
const KEPT_BUILDS: usize = 2;
/// How long a finished step's process gets to flush its last lines.
const FLUSH_WAIT: Duration = Duration::from_secs(1);
/// The environment every build step starts from, on top of the sandbox's `PATH`, `HOME` and
/// `TMPDIR`: package managers install into the image root as the stack's user, without
/// prompts or calls home. `PYTHONUSERBASE` and `PATH` are added with the root's path.
const BUILD_ENV: &[(&str, &str)] = &[
    ("PIP_USER", "1"),
    ("PIP_BREAK_SYSTEM_PACKAGES", "1"),
    ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    ("PIP_NO_INPUT", "1"),
    ("npm_config_update_notifier", "false"),
    ("npm_config_fund", "false"),
    ("npm_config_audit", "false"),
    ("CI", "true"),
];

/// What the deploy needs to know about a service once its directory is ready.
pub(crate) struct Prepared {
    /// Built from a Dockerfile: packages may have been installed under `<root>/.local`.
    pub(crate) built: bool,
    /// The image's `ENV` (empty for a service that is not built).
    pub(crate) image_env: BTreeMap<String, String>,
    /// The Procfile's `release:` command.
    pub(crate) release_command: Option<String>,
}

/// Why a service could not be made ready.
pub(crate) enum BuildError {
    /// The service's own fault (a failing step, an unbuildable Dockerfile): fails the release.
    Failed(String),
    /// Worth retrying the operation (disk, sandbox set-up).
    Transient(String),
}

/// A command run to its end in a service's sandbox: a build step or a `release:` command.
pub(crate) struct OneShot<'a> {
    pub(crate) service: &'a ServiceName,
    /// `build` or `release`: names its cgroup and run record.
    pub(crate) purpose: &'static str,
    pub(crate) root: &'a Path,
    pub(crate) tmp: &'a Path,
    pub(crate) cwd: &'a Path,
    /// The port it may bind (0: none of its own).
    pub(crate) port: u16,
    pub(crate) siblings: Vec<u16>,
    pub(crate) command: &'a str,
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) deadline: Instant,
    pub(crate) logs: &'a Arc<ServiceLogs>,
}

impl Shared {
    /// Readies the unpacked service in `dest`: builds it when it has a `Dockerfile` and no
    /// `Procfile` (see the module docs), and reads its `release:` command.
    pub(crate) async fn prepare_service(
        self: &Arc<Self>,
        attempt: &mut Attempt,
        plan: &DeployPlan,
        svc: &ReleaseService,
        dest: &Path,
        sink: &dyn StatusSink,
    ) -> Result<Prepared, BuildError> {
        let files = {
            let dest = dest.to_owned();
            with_files(&attempt.slot, move || {
                let read = |name: &str| match std::fs::read_to_string(dest.join(name)) {
                    Ok(text) => Ok(Some(text)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    // Not UTF-8, a directory: not a file the runtime can use.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(None),
                    Err(e) if e.raw_os_error() == Some(nix::libc::EISDIR) => Ok(None),
                    Err(e) => Err(e),
                };
                Ok((read("Procfile")?, read("Dockerfile")?))
            })
            .await
        };
        let (procfile, dockerfile) = files.map_err(|e| {
            BuildError::Transient(format!("cannot read the files of `{}`: {e}", svc.name))
        })?;
        let release_command = procfile.as_deref().and_then(procfile_release);
        let text = match dockerfile {
            Some(text) if dockerfile::is_built(procfile.is_some(), true) => text,
            _ => {
                return Ok(Prepared {
                    built: false,
                    image_env: BTreeMap::new(),
                    release_command,
                });
            }
        };
        let build = dockerfile::build_plan(&text, &build_args(plan, svc))
            .map_err(|e| BuildError::Failed(e.to_string()))?;
        if !build.steps.is_empty() {
            self.build(
                attempt,
                plan,
                svc,
                dest,
                &build.cache_key(&svc.artifact),
                &build.steps,
                sink,
            )
            .await?;
        }
        Ok(Prepared {
            built: true,
            image_env: build.env,
            release_command: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn build(
        self: &Arc<Self>,
        attempt: &mut Attempt,
        plan: &DeployPlan,
        svc: &ReleaseService,
        dest: &Path,
        key: &str,
        steps: &[BuildStep],
        sink: &dyn StatusSink,
    ) -> Result<(), BuildError> {
        let name = &svc.name;
        let transient = |what: &str, e: std::io::Error| {
            BuildError::Transient(format!("cannot {what} of `{name}`: {e}"))
        };
        let logs = self
            .service_logs(&plan.slug, name)
            .await
            .map_err(|e| transient("open the logs", e))?;
        let dir = self.dir("builds", &plan.slug).join(name.as_str());
        let done = dir.join(key);
        let total = steps.len();
        let step_event = |i: usize, step: &BuildStep, status: &str, exit: Option<&str>| {
            NewEvent::build_step(name.as_str(), i + 1, total, &step.text, status, exit)
        };

        let hit = {
            let done = done.clone();
            with_files(&attempt.slot, move || Ok(done.join("root").is_dir())).await
        }
        .map_err(|e| transient("read the build cache", e))?;
        if hit {
            for (i, step) in steps.iter().enumerate() {
                note(
                    &logs,
                    format!("Step {}/{total} : {} (cached)", i + 1, step.text),
                )
                .await;
                sink.event(step_event(i, step, "cached", None)).await;
            }
            let (done, dest) = (done.clone(), dest.to_owned());
            return with_files(&attempt.slot, move || {
                touch(&done)?;
                replace_with_copy(&done.join("root"), &dest)
            })
            .await
            .map_err(|e| transient("copy the cached build", e));
        }

        let work = dir.join(format!("{key}.partial"));
        let (root, tmp) = (work.join("root"), work.join("tmp"));
        let context = tmp.join(".context");
        {
            let (work, root, context, dest) =
                (work.clone(), root.clone(), context.clone(), dest.to_owned());
            with_files(&attempt.slot, move || {
                remove_if_exists(&work)?;
                std::fs::create_dir_all(context.parent().unwrap_or(&work))?;
                std::fs::rename(&dest, &context)?;
                copy_tree(&context, &root)
            })
            .await
            .map_err(|e| transient("set up the build", e))?;
        }

        let started = Instant::now();
        let deadline = started + self.cfg.build_timeout;
        let mut base: BTreeMap<String, String> = self.inherited.iter().cloned().collect();
        base.extend(self.cfg.sandbox.base_env(&tmp));
        base.extend(
            BUILD_ENV
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let local = root.join(".local");
        let path = base.get("PATH").cloned().unwrap_or_default();
        base.insert(
            "PATH".into(),
            format!("{}:{path}", local.join("bin").display()),
        );
        base.insert("PYTHONUSERBASE".into(), local.display().to_string());

        for (i, step) in steps.iter().enumerate() {
            note(&logs, format!("Step {}/{total} : {}", i + 1, step.text)).await;
            sink.event(step_event(i, step, "running", None)).await;
            let mut env = base.clone();
            let command = match &step.action {
                BuildAction::Run { command, env: vars } => {
                    env.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
                    run_script(&root, &step.workdir, command)
                }
                BuildAction::Copy {
                    sources,
                    dest,
                    into_dir,
                } => copy_script(&context, sources, &under(&root, dest), *into_dir),
            };
            let run = OneShot {
                service: name,
                purpose: "build",
                root: &root,
                tmp: &tmp,
                cwd: &root,
                port: 0,
                siblings: Vec::new(),
                command: &command,
                env: &env,
                deadline,
                logs: &logs,
            };
            let outcome = self.run_to_end(attempt, plan, run).await;
            let failure = match outcome {
                Ok(None) => {
                    sink.event(step_event(i, step, "done", None)).await;
                    continue;
                }
                Ok(Some((exit, message))) => {
                    sink.event(step_event(i, step, "failed", Some(&exit))).await;
                    BuildError::Failed(format!(
                        "build step {}/{total} `{}` {message}",
                        i + 1,
                        step.text
                    ))
                }
                Err(message) => BuildError::Transient(message),
            };
            let work = work.clone();
            if let Err(e) = with_files(&attempt.slot, move || remove_if_exists(&work)).await {
                tracing::warn!(error = %e, "cannot remove a failed build");
            }
            return Err(failure);
        }

        let took = human_duration(Duration::from_millis(
            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ));
        note(&logs, format!("Built in {took}")).await;
        let (dest, key) = (dest.to_owned(), key.to_owned());
        with_files(&attempt.slot, move || {
            remove_if_exists(&tmp)?;
            remove_if_exists(&done)?;
            std::fs::rename(&work, &done)?;
            prune(&dir, &key);
            replace_with_copy(&done.join("root"), &dest)
        })
        .await
        .map_err(|e| transient("keep the build", e))
    }

    /// Runs the Procfile's `release:` command of a service about to start: its environment,
    /// working directory and sandbox, the build timeout. `Ok(Some(message))`: it failed.
    pub(crate) async fn release_command(
        &self,
        attempt: &mut Attempt,
        plan: &DeployPlan,
        start: &ServiceStart,
        command: &str,
        deadline: Instant,
    ) -> Result<Option<String>, String> {
        let name = &start.service.name;
        let logs = self
            .service_logs(&start.slug, name)
            .await
            .map_err(|e| format!("cannot open the logs of `{name}`: {e}"))?;
        note(&logs, format!("Release command: {command}")).await;
        let cwd = working_dir(&start.root, &start.service.workdir);
        let run = OneShot {
            service: name,
            purpose: "release",
            root: &start.root,
            tmp: &start.tmp,
            cwd: &cwd,
            port: start.port,
            siblings: start.siblings.clone(),
            command,
            env: &start.env,
            deadline,
            logs: &logs,
        };
        let failed = self.run_to_end(attempt, plan, run).await?;
        Ok(failed.map(|(_, message)| format!("release command `{command}` {message}")))
    }

    /// Runs `run.command` to its end in the service's sandbox (a process group tracked by the
    /// attempt, so a cancelled deploy or a teardown stops it). `Ok(None)`: it exited with
    /// status 0; `Ok(Some((exit, message)))`: how it ended and a message with its last log
    /// lines; `Err`: the sandbox could not be set up (worth retrying).
    pub(crate) async fn run_to_end(
        &self,
        attempt: &mut Attempt,
        plan: &DeployPlan,
        run: OneShot<'_>,
    ) -> Result<Option<(String, String)>, String> {
        let name = run.service;
        let sandboxed = ServiceBox {
            stack_id: plan.stack_id.0,
            slug: plan.slug.to_string(),
            release: plan.release,
            service: format!("{name}.{}", run.purpose),
            root: run.root.to_owned(),
            tmp: run.tmp.to_owned(),
            port: run.port,
            siblings: run.siblings,
        };
        let sandbox = self.cfg.sandbox.clone();
        let launch = with_files(&attempt.slot, move || sandbox.prepare(&sandboxed))
            .await
            .map_err(|e| format!("cannot prepare the sandbox of `{name}`: {e}"))?;
        let spec = SpawnSpec {
            service: name.clone(),
            slug: plan.slug.as_str(),
            release: plan.release,
            // Not a service port: nothing to free when it is stopped.
            port: 0,
            command: run.command,
            cwd: run.cwd,
            env: run.env,
            record_path: self
                .dir("run", &plan.slug)
                .join(format!("{}-{name}.{}.json", plan.release, run.purpose)),
            launch,
        };
        let p = match Proc::spawn(spec, run.logs.clone()) {
            Ok(p) => p,
            Err(e) => {
                let exit = format!("could not be started: {e}");
                return Ok(Some((exit.clone(), exit)));
            }
        };
        lock(&attempt.slot.state).procs.push(p.clone());
        attempt.procs.push(p.clone());
        let finished = tokio::time::timeout_at(run.deadline, p.exited())
            .await
            .is_ok();
        p.output_closed(FLUSH_WAIT).await;
        let exit = if finished {
            p.exit_description().filter(|d| !succeeded(d))
        } else {
            Some(format!(
                "did not finish within {} (--build-timeout)",
                human_duration(self.cfg.build_timeout)
            ))
        };
        // Whatever it left running in its group goes with it.
        self.stop_procs(&attempt.slot, vec![p.clone()]).await;
        attempt.procs.retain(|q| !Arc::ptr_eq(q, &p));
        Ok(exit.map(|exit| {
            let mut message = format!("{exit}.");
            push_tail(&mut message, &p.tail());
            (exit, message)
        }))
    }
}

/// Build args: the manifest's `env:` for the service, then the stack env (an `ARG` takes its
/// value from here when it has the name).
fn build_args(plan: &DeployPlan, svc: &ReleaseService) -> BTreeMap<String, String> {
    let mut args = svc.env.clone();
    args.extend(plan.env.iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
    args
}

/// A line of the build's own in the service's logs.
async fn note(logs: &ServiceLogs, text: String) {
    logs.record(LogLine {
        at: now(),
        stream: LogStream::Stdout,
        text,
    })
    .await;
}

/// `rel` (`/`-separated, relative to the image root) under `root`.
fn under(root: &Path, rel: &str) -> PathBuf {
    rel.split('/')
        .filter(|p| !p.is_empty())
        .fold(root.to_owned(), |path, part| path.join(part))
}

/// A `RUN` step: its command in its working directory, created first as in an image build.
fn run_script(root: &Path, workdir: &str, command: &str) -> String {
    let dir = shell_quote(&under(root, workdir).display().to_string());
    format!("mkdir -p {dir} && cd {dir} || exit 1\n{command}")
}

/// A `COPY`: each source (wildcards expanded by the shell) copied from `context` to `dest` the
/// way an image build does it: a directory's contents go into `dest`; a file goes into `dest`
/// when `into_dir`, else becomes `dest`. A source matching nothing fails the step.
fn copy_script(context: &Path, sources: &[String], dest: &Path, into_dir: bool) -> String {
    let dest = shell_quote(&dest.display().to_string());
    let mut script = format!(
        "set -e\ncd {}\n",
        shell_quote(&context.display().to_string())
    );
    for source in sources {
        let source = if source.is_empty() { "." } else { source };
        let file = if into_dir {
            format!("mkdir -p {dest}; cp -a \"$src\" {dest}/")
        } else {
            format!("mkdir -p \"$(dirname {dest})\"; cp -a \"$src\" {dest}")
        };
        script.push_str(&format!(
            "for src in {pattern}; do\n\
             \x20 if [ ! -e \"$src\" ] && [ ! -L \"$src\" ]; then echo {missing} >&2; exit 1; fi\n\
             \x20 if [ -d \"$src\" ] && [ ! -L \"$src\" ]; then mkdir -p {dest}; cp -a \"$src\"/. {dest}/\n\
             \x20 else {file}; fi\n\
             done\n",
            pattern = glob_pattern(source),
            missing = shell_quote(&format!("no file in the build context matches `{source}`")),
        ));
    }
    script
}

/// `pattern` for the shell with its wildcards (`*`, `?`, `[...]`) live and everything else
/// quoted.
fn glob_pattern(pattern: &str) -> String {
    let mut out = String::new();
    let mut literal = String::new();
    for c in pattern.chars() {
        if matches!(c, '*' | '?' | '[' | ']') {
            if !literal.is_empty() {
                out.push_str(&shell_quote(&literal));
                literal.clear();
            }
            out.push(c);
        } else {
            literal.push(c);
        }
    }
    if !literal.is_empty() {
        out.push_str(&shell_quote(&literal));
    }
    out
}

/// Replaces `dest` with a copy of `src`.
fn replace_with_copy(src: &Path, dest: &Path) -> std::io::Result<()> {
    remove_if_exists(dest)?;
    copy_tree(src, dest)
}

/// Copies a tree keeping file modes and symbolic links as links (never following one: the
/// tree is the stack's). Other kinds of file (FIFOs, sockets) are left out.
pub(crate) fn copy_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dest)
    } else if kind.is_dir() {
        std::fs::create_dir(dest)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()))?;
        }
        std::fs::set_permissions(dest, meta.permissions())
    } else if kind.is_file() {
        std::fs::copy(src, dest).map(|_| ())
    } else {
        Ok(())
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Marks a build as just used (pruning keeps the most recently used).
fn touch(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.set_modified(std::time::SystemTime::now())
}

/// Removes every build of the service in `dir` but `keep` and the most recently used others,
/// [`KEPT_BUILDS`] in all, and any partial build left by an interrupted one. Best effort.
fn prune(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut builds: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == keep {
            continue;
        }
        let path = entry.path();
        if name.ends_with(".partial") {
            let _ = remove_if_exists(&path);
            continue;
        }
        let used = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        builds.push((used, path));
    }
    builds.sort_by_key(|b| std::cmp::Reverse(b.0));
    for (_, path) in builds.into_iter().skip(KEPT_BUILDS - 1) {
        let _ = remove_if_exists(&path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sh(script: &str) -> std::process::Output {
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn copy_steps_copy_the_way_an_image_build_does() {
        let t = tempfile::tempdir().unwrap();
        let (ctx, root) = (t.path().join("ctx"), t.path().join("root"));
        write(&ctx.join("package.json"), "{}");
        write(&ctx.join("package-lock.json"), "{}");
        write(&ctx.join("src/a b.js"), "a");
        write(&ctx.join("src/lib/c.js"), "c");
        let copy = |sources: &[&str], dest: &str, into_dir: bool| {
            let sources: Vec<String> = sources.iter().map(|s| (*s).to_owned()).collect();
            let out = sh(&copy_script(&ctx, &sources, &under(&root, dest), into_dir));
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        // A directory's contents, not the directory.
        assert!(copy(&["src"], "app/code", false).0);
        assert!(root.join("app/code/a b.js").is_file());
        assert!(root.join("app/code/lib/c.js").is_file());
        // Wildcards into a directory.
        assert!(copy(&["package*.json"], "app", true).0);
        assert!(root.join("app/package.json").is_file());
        assert!(root.join("app/package-lock.json").is_file());
        // A file renamed.
        assert!(copy(&["package.json"], "app/p.json", false).0);
        assert!(root.join("app/p.json").is_file());
        // The whole context.
        assert!(copy(&[""], "all", true).0);
        assert!(root.join("all/src/lib/c.js").is_file());
        // Nothing matches: the step fails and says which source.
        let (ok, err) = copy(&["missing*.txt"], "x", true);
        assert!(!ok);
        assert!(err.contains("`missing*.txt`"), "{err}");
    }

    #[test]
    fn run_steps_start_in_their_working_directory() {
        let t = tempfile::tempdir().unwrap();
        let out = sh(&run_script(t.path(), "app/sub", "pwd"));
        assert!(out.status.success());
        let pwd = String::from_utf8_lossy(&out.stdout);
        assert_eq!(pwd.trim(), t.path().join("app/sub").display().to_string());
    }

    #[test]
    fn copies_keep_links_as_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write(&src.join("bin/run"), "#!/bin/sh\n");
        std::fs::set_permissions(src.join("bin/run"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("escape")).unwrap();
        copy_tree(&src, &t.path().join("dest")).unwrap();
        let dest = t.path().join("dest");
        let mode = std::fs::metadata(dest.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let link = std::fs::symlink_metadata(dest.join("escape")).unwrap();
        assert!(link.file_type().is_symlink());
    }

    #[test]
    fn pruning_keeps_the_current_build_and_the_last_used_other() {
        let t = tempfile::tempdir().unwrap();
        for (i, name) in ["old", "previous", "current"].iter().enumerate() {
            let dir = t.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            let at = std::time::UNIX_EPOCH + Duration::from_secs(1_000 + i as u64);
            std::fs::File::open(&dir).unwrap().set_modified(at).unwrap();
        }
        std::fs::create_dir(t.path().join("x.partial")).unwrap();
        prune(t.path(), "current");
        let mut left: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["current", "previous"]);
    }
}
