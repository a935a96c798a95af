//! The sandbox every service runs in (`../shared/spec/isolation.md`): what a service may read,
//! write, connect to and signal, under which user, within which limits.
//!
//! The server never restricts itself. It starts each service through a launcher — its own
//! binary, `stackyard __sandbox-exec POLICY -- /bin/sh -c COMMAND` — which joins the service's
//! cgroups, sets its rlimits, drops to the stack's user, applies the Landlock ruleset to itself
//! and execs the command, which inherits all of it. Doing this in a fresh single-threaded
//! process rather than between fork and exec keeps the server free of `unsafe` pre-exec hooks
//! and makes every step an ordinary call that can fail with a message.
//!
//! Layers, each used when the kernel and our privileges offer it (`auto`):
//! - Landlock files: read + execute the system and the runtimes on `PATH`, read + write the
//!   service's own directory and its private `TMPDIR`; nothing of the data directory besides.
//! - Landlock TCP (ABI ≥ 4): bind `PORT` only; connect to the stack's own services and the
//!   egress ports only.
//! - Landlock scopes (ABI ≥ 6): signals and abstract Unix sockets stay inside the service.
//! - A Unix user per stack when the server runs as root (`uid_base` + the stack's id).
//! - cgroup v1 `memory` and `pids` controllers where writable, one cgroup per service.
//! - rlimits always: open files, no core dumps, processes per user under a stack user.

mod cgroup;
mod enter;

pub use enter::{LAUNCHER_ARG, exec_from_args};

use cgroup::CgroupRoots;
pub(crate) use cgroup::ServiceCgroup;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Everything the kernel offers, reported at start-up.
    #[default]
    Auto,
    /// Refuse to start without Landlock ABI ≥ 4 (files and TCP).
    Required,
    /// No sandbox: development only.
    Off,
}

/// How services are to be sandboxed (the server's flags).
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    /// The program that applies a policy and execs the service: the `stackyard` binary.
    pub launcher: PathBuf,
    /// Ports every service may connect to (DNS, HTTP, HTTPS by default).
    pub egress_ports: Vec<u16>,
    /// First uid of the per-stack users (the stack's id is added); 0: services run as the
    /// server's user.
    pub uid_base: u32,
    pub memory_bytes: u64,
    pub pids: u64,
    /// Behave as if the kernel had no Landlock (tests of `required`).
    pub ignore_landlock: bool,
}

/// The smallest Landlock ABI that restricts TCP ports, which `required` insists on.
const MIN_REQUIRED_ABI: u8 = 4;
/// Open files per service process.
const NOFILE: u64 = 4096;

/// Why the sandbox cannot be set up as asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(String);

/// Which layers are active: what the start-up log line and `/readyz` report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layers {
    /// The Landlock ABI the kernel offers (0: none, or ignored).
    pub landlock_abi: u8,
    pub users: bool,
    pub cgroup_memory: bool,
    pub cgroup_pids: bool,
    pub rlimits: bool,
}

impl Layers {
    /// Short names of the active layers, in a stable order.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.landlock_abi >= 1 {
            out.push(format!("landlock-files (abi {})", self.landlock_abi));
        }
        if self.landlock_abi >= 4 {
            out.push("landlock-tcp".into());
        }
        if self.landlock_abi >= 6 {
            out.push("landlock-scopes".into());
        }
        if self.users {
            out.push("stack-users".into());
        }
        if self.cgroup_memory {
            out.push("cgroup-memory".into());
        }
        if self.cgroup_pids {
            out.push("cgroup-pids".into());
        }
        if self.rlimits {
            out.push("rlimits".into());
        }
        out
    }
}

impl fmt::Display for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

/// The sandbox as set up on this machine; `Sandbox::off()` runs services unconfined.
#[derive(Debug)]
pub struct Sandbox {
    settings: Option<SandboxSettings>,
    layers: Layers,
    cgroups: Option<CgroupRoots>,
    /// Paths every service may read and execute (system directories and `PATH`).
    system: Vec<PathBuf>,
}

/// What one service needs to know about its sandbox.
pub(crate) struct ServiceBox {
    pub(crate) stack_id: i64,
    pub(crate) slug: String,
    pub(crate) release: i64,
    pub(crate) service: String,
    /// The service's own directory (read + write).
    pub(crate) root: PathBuf,
    /// Its private temporary directory (created here).
    pub(crate) tmp: PathBuf,
    pub(crate) port: u16,
    /// Ports of the stack's own services this release (connect).
    pub(crate) siblings: Vec<u16>,
}

/// How to start one sandboxed service: run `program` with `args` before the command, in these
/// cgroups.
#[derive(Debug)]
pub(crate) struct Launch {
    pub(crate) prefix: Option<(PathBuf, Vec<OsString>)>,
    pub(crate) cgroup: Option<ServiceCgroup>,
}

/// What the launcher applies (passed as JSON on its command line: no secrets in here).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) landlock: bool,
    /// Fail rather than run unconfined when Landlock cannot be enforced.
    pub(crate) require_landlock: bool,
    pub(crate) read: Vec<PathBuf>,
    pub(crate) write: Vec<PathBuf>,
    pub(crate) bind: Vec<u16>,
    pub(crate) connect: Vec<u16>,
    pub(crate) uid: Option<u32>,
    pub(crate) cgroup_procs: Vec<PathBuf>,
    pub(crate) nofile: u64,
    pub(crate) nproc: Option<u64>,
}

/// Read + execute for every service.
const SYSTEM_DIRS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/sys",
    "/dev/urandom",
    "/dev/random",
];
/// `/proc` as a whole only for a service under its own stack user: Landlock does not stop a
/// read of another process's `/proc/PID/environ` (measured: a confined process read an
/// unconfined one's), file modes do when the owners differ. Without a stack user a service
/// gets the machine-wide entries runtimes read (CPU count, memory), none of them per process.
const PROC_SHARED: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/sys",
];
/// Directories of the data directory that stack users pass through to reach their own.
const PASSABLE_DIRS: &[&str] = &["stacks", "builds"];
/// Read + write for every service.
const DEVICES_RW: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

impl Sandbox {
    /// No sandbox (`--sandbox off`, and the runtime's own tests).
    pub fn off() -> Self {
        Self {
            settings: None,
            layers: Layers::default(),
            cgroups: None,
            system: Vec::new(),
        }
    }

    /// Finds what this machine offers and sets it up for services whose files live under
    /// `data_dir`. `required` without Landlock ABI ≥ 4 is an error.
    pub fn detect(settings: SandboxSettings, data_dir: &Path) -> Result<Self, SandboxError> {
        if settings.mode == SandboxMode::Off {
            return Ok(Self::off());
        }
        let landlock_abi = if settings.ignore_landlock {
            0
        } else {
            enter::landlock_abi()
        };
        if settings.mode == SandboxMode::Required && landlock_abi < MIN_REQUIRED_ABI {
            return Err(SandboxError(format!(
                "--sandbox required: this kernel offers Landlock ABI {landlock_abi}, and \
                 restricting files and TCP ports needs at least {MIN_REQUIRED_ABI}"
            )));
        }
        let users = nix::unistd::geteuid().is_root() && settings.uid_base > 0;
        let cgroups = CgroupRoots::open();
        let layers = Layers {
            landlock_abi,
            users,
            cgroup_memory: cgroups.as_ref().is_some_and(|c| c.memory.is_some()),
            cgroup_pids: cgroups.as_ref().is_some_and(|c| c.pids.is_some()),
            rlimits: true,
        };
        if users {
            secure_data_dir(data_dir).map_err(|e| {
                SandboxError(format!(
                    "cannot set the permissions of {}: {e}",
                    data_dir.display()
                ))
            })?;
        }
        Ok(Self {
            system: system_paths(data_dir),
            settings: Some(settings),
            layers,
            cgroups,
        })
    }

    pub fn layers(&self) -> &Layers {
        &self.layers
    }

    /// The uid a stack's services run as, when the sandbox gives each stack its own user.
    pub(crate) fn stack_uid(&self, stack_id: i64) -> Option<u32> {
        let s = self.settings.as_ref()?;
        if !self.layers.users {
            return None;
        }
        u32::try_from(stack_id)
            .ok()
            .and_then(|id| s.uid_base.checked_add(id))
    }

    /// The variables a service with temporary directory `tmp` gets from its sandbox: `TMPDIR`,
    /// and `HOME` too when sandboxed (the server's own home is out of reach).
    pub(crate) fn base_env(&self, tmp: &Path) -> Vec<(String, String)> {
        let tmp = tmp.display().to_string();
        let mut env = vec![("TMPDIR".to_owned(), tmp.clone())];
        if self.settings.is_some() {
            env.push(("HOME".to_owned(), tmp));
        }
        env
    }

    /// Prepares one service: its temporary directory, its files' owner, its cgroups, and the
    /// launcher's command line. Blocking (file system work).
    pub(crate) fn prepare(&self, svc: &ServiceBox) -> std::io::Result<Launch> {
        std::fs::create_dir_all(&svc.tmp)?;
        let Some(settings) = &self.settings else {
            return Ok(Launch {
                prefix: None,
                cgroup: None,
            });
        };
        let uid = self.stack_uid(svc.stack_id);
        if let Some(uid) = uid {
            // The service owns its code and temp files; the directories above them stay the
            // server's (`secure_data_dir`).
            chown_tree(&svc.root, uid)?;
            chown_tree(&svc.tmp, uid)?;
        }
        let cgroup = match &self.cgroups {
            Some(roots) => roots.create(
                &format!("{}-r{}-{}", svc.slug, svc.release, svc.service),
                settings.memory_bytes,
                settings.pids,
            )?,
            None => None,
        };
        let mut connect: Vec<u16> = svc.siblings.clone();
        connect.extend(&settings.egress_ports);
        connect.sort_unstable();
        connect.dedup();
        let mut write: Vec<PathBuf> = vec![svc.root.clone(), svc.tmp.clone()];
        write.extend(DEVICES_RW.iter().map(PathBuf::from));
        let mut read = self.system.clone();
        match uid {
            Some(_) => read.push("/proc".into()),
            None => read.extend(PROC_SHARED.iter().map(PathBuf::from)),
        }
        let policy = Policy {
            landlock: self.layers.landlock_abi >= 1,
            require_landlock: settings.mode == SandboxMode::Required,
            read,
            write,
            bind: vec![svc.port],
            connect,
            uid,
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            nofile: NOFILE,
            nproc: uid.map(|_| settings.pids),
        };
        let json = serde_json::to_string(&policy).map_err(std::io::Error::other)?;
        let args = vec![OsString::from(LAUNCHER_ARG), json.into(), "--".into()];
        Ok(Launch {
            prefix: Some((settings.launcher.clone(), args)),
            cgroup,
        })
    }

    /// Removes cgroups a previous instance of this server left (start-up).
    pub fn sweep(&self) {
        if let Some(c) = &self.cgroups {
            c.sweep();
        }
    }
}

/// The system directories plus every `PATH` entry and, for `…/bin` and `…/shims` entries, the
/// installation above it (a language runtime's libraries). A directory that holds the data
/// directory is left out, with a warning: Landlock cannot carve a hole in what it grants.
fn system_paths(data_dir: &Path) -> Vec<PathBuf> {
    let data = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_owned());
    let mut out: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for entry in std::env::split_paths(&path) {
        let Ok(entry) = entry.canonicalize() else {
            continue;
        };
        let install = entry
            .file_name()
            .filter(|n| *n == "bin" || *n == "shims")
            .and_then(|_| entry.parent())
            .filter(|p| p.parent().is_some())
            .map(Path::to_owned);
        out.push(entry);
        out.extend(install);
    }
    out.retain(|p| {
        let holds_data = data.starts_with(p);
        if holds_data {
            tracing::warn!(path = %p.display(), "not letting services read a directory that holds the data directory");
        }
        !holds_data
    });
    out.sort();
    out.dedup();
    out
}

/// With a user per stack, other users must be able to pass through the data directory to
/// reach their own release and build directories, and nothing else: the directory becomes
/// `0711`, its files (database, admin token, keys) `0600`, its directories `0700` but
/// `stacks/` and `builds/` (`0711`).
fn secure_data_dir(data_dir: &Path) -> std::io::Result<()> {
    for dir in PASSABLE_DIRS {
        std::fs::create_dir_all(data_dir.join(dir))?;
    }
    set_mode(data_dir, 0o711)?;
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let mode = if kind.is_dir() {
            if PASSABLE_DIRS.iter().any(|d| entry.file_name() == *d) {
                0o711
            } else {
                0o700
            }
        } else if kind.is_file() {
            0o600
        } else {
            continue;
        };
        set_mode(&entry.path(), mode)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// `chown -R uid:uid`, not following symbolic links.
fn chown_tree(root: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(uid))?;
    if !std::fs::symlink_metadata(root)?.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(root)? {
        chown_tree(&entry?.path(), uid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_named_in_a_stable_order() {
        let l = Layers {
            landlock_abi: 7,
            users: true,
            cgroup_memory: true,
            cgroup_pids: false,
            rlimits: true,
        };
        assert_eq!(
            l.to_string(),
            "landlock-files (abi 7), landlock-tcp, landlock-scopes, stack-users, cgroup-memory, rlimits"
        );
        assert_eq!(Layers::default().to_string(), "none");
    }

    #[test]
    fn paths_holding_the_data_directory_are_not_granted() {
        let paths = system_paths(Path::new("/usr/local/share/stackyard-data"));
        assert!(!paths.iter().any(|p| p == Path::new("/usr")), "{paths:?}");
        assert!(paths.iter().any(|p| p == Path::new("/etc")));
        let paths = system_paths(Path::new("/var/lib/stackyard"));
        assert!(paths.iter().any(|p| p == Path::new("/usr")));
    }

    #[test]
    fn required_refuses_a_kernel_without_landlock() {
        let dir = tempfile::tempdir().unwrap();
        let settings = SandboxSettings {
            mode: SandboxMode::Required,
            launcher: "/bin/false".into(),
            egress_ports: vec![],
            uid_base: 200_000,
            memory_bytes: 1 << 29,
            pids: 256,
            ignore_landlock: true,
        };
        let err = Sandbox::detect(settings, dir.path()).unwrap_err();
        assert!(err.to_string().contains("Landlock ABI 0"), "{err}");
    }
}
