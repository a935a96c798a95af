//! One cgroup per service in the `memory` and `pids` controllers of cgroup v1 (what this
//! project's machines mount), under `<controller>/<the server's own cgroup>/stackyard-<pid>/`.
//! The per-server directory keeps two servers on one machine apart and lets the next start
//! remove what a killed one left.
//!
//! cgroup v2 needs the parent to delegate controllers to an empty subtree, which a server
//! started inside a busy cgroup cannot arrange by itself; there the layer is reported absent.

use std::path::{Path, PathBuf};

/// The per-server cgroup directory of each writable controller.
#[derive(Debug)]
pub(crate) struct CgroupRoots {
    pub(crate) memory: Option<PathBuf>,
    pub(crate) pids: Option<PathBuf>,
}

/// The cgroups of one service; removed with [`ServiceCgroup::remove`] once its processes are
/// gone.
#[derive(Debug, Clone)]
pub(crate) struct ServiceCgroup {
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

const MOUNT: &str = "/sys/fs/cgroup";
const PREFIX: &str = "stackyard-";

impl CgroupRoots {
    /// The writable v1 controllers, each with a fresh directory for this server; `None` when
    /// neither is usable.
    pub(crate) fn open() -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let root = |controller: &str| -> Option<PathBuf> {
            let path = own_path(&own, controller)?;
            let base = Path::new(MOUNT)
                .join(controller)
                .join(path.trim_start_matches('/'));
            let dir = base.join(format!("{PREFIX}{}", std::process::id()));
            match std::fs::create_dir_all(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    tracing::debug!(controller, error = %e, "cgroup controller not writable");
                    None
                }
            }
        };
        let roots = Self {
            memory: root("memory"),
            pids: root("pids"),
        };
        (roots.memory.is_some() || roots.pids.is_some()).then_some(roots)
    }

    /// Creates the cgroups of one service with its limits. `name` must be unique among the
    /// server's live services.
    pub(crate) fn create(
        &self,
        name: &str,
        memory_bytes: u64,
        pids: u64,
    ) -> std::io::Result<Option<ServiceCgroup>> {
        let make = |root: &Option<PathBuf>, file: &str, value: u64| -> std::io::Result<_> {
            let Some(root) = root else { return Ok(None) };
            let dir = root.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            std::fs::write(dir.join(file), value.to_string())?;
            Ok(Some(dir))
        };
        let cg = ServiceCgroup {
            memory: make(&self.memory, "memory.limit_in_bytes", memory_bytes)?,
            pids: make(&self.pids, "pids.max", pids)?,
        };
        Ok((cg.memory.is_some() || cg.pids.is_some()).then_some(cg))
    }

    /// Removes the empty cgroups of servers that are gone (a kill -9 leaves them).
    pub(crate) fn sweep(&self) {
        for root in [&self.memory, &self.pids].into_iter().flatten() {
            let Some(parent) = root.parent() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(PREFIX))
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if Path::new(&format!("/proc/{pid}")).exists() {
                    continue;
                }
                remove_tree(&entry.path());
            }
        }
    }
}

impl ServiceCgroup {
    /// The files the launcher writes its pid into to join.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        [&self.memory, &self.pids]
            .into_iter()
            .flatten()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Whether the kernel killed a process of this service for exceeding its memory limit.
    pub(crate) fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        std::fs::read_to_string(dir.join("memory.oom_control"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    /// Removes the (empty) cgroups.
    pub(crate) fn remove(&self) {
        for dir in [&self.memory, &self.pids].into_iter().flatten() {
            if let Err(e) = std::fs::remove_dir(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove a service cgroup");
            }
        }
    }
}

/// The path of our cgroup in a v1 hierarchy (`N:controller[,…]:/path` in `/proc/self/cgroup`).
fn own_path<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })
}

/// Removes a cgroup directory and its child cgroups, deepest first (only empty ones go).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_paths_are_read_per_controller() {
        let text =
            "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/f38\n1:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(own_path(text, "memory"), Some("/process_api/f38"));
        assert_eq!(own_path(text, "pids"), Some("/"));
        assert_eq!(own_path(text, "cpuacct"), Some("/x"));
        assert_eq!(own_path(text, "blkio"), None);
    }
}
