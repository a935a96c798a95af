//! The launcher's side: `stackyard __sandbox-exec POLICY -- PROGRAM ARGS…` applies `POLICY` to
//! its own (fresh, single-threaded) process and execs `PROGRAM`, which inherits every layer.
//! Order matters: cgroups and rlimits need the server's privileges, so they come before the
//! user is dropped; the Landlock paths are opened before that too (a stack user may not be
//! able to open `/root/.pyenv`, but what it is granted it may then use if permissions allow).

use super::Policy;
use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, NetPort,
    PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;

/// The launcher's first argument.
pub const LAUNCHER_ARG: &str = "__sandbox-exec";
/// The newest ABI whose rights we ask for; older kernels get what they have (best effort).
const ABI_WANTED: ABI = ABI::V7;

/// Runs the launcher: `args` is everything after `LAUNCHER_ARG`. Returns only on failure,
/// with the message the service's log should show.
pub fn exec_from_args(args: Vec<OsString>) -> String {
    let mut args = args.into_iter();
    let Some(policy) = args.next().and_then(|p| p.into_string().ok()) else {
        return "the sandbox launcher got no policy".into();
    };
    let policy: Policy = match serde_json::from_str(&policy) {
        Ok(p) => p,
        Err(e) => return format!("the sandbox launcher got a bad policy: {e}"),
    };
    if args.next().is_none_or(|a| a != "--") {
        return "the sandbox launcher expects `--` before the command".into();
    }
    let Some(program) = args.next() else {
        return "the sandbox launcher got no command".into();
    };
    if let Err(e) = apply(&policy) {
        return format!("stackyard sandbox: {e}");
    }
    let err = std::process::Command::new(&program).args(args).exec();
    format!(
        "stackyard sandbox: cannot run {}: {err}",
        program.to_string_lossy()
    )
}

fn apply(policy: &Policy) -> Result<(), String> {
    let pid = std::process::id().to_string();
    for procs in &policy.cgroup_procs {
        std::fs::write(procs, &pid)
            .map_err(|e| format!("cannot join cgroup {}: {e}", procs.display()))?;
    }
    limit(Resource::RLIMIT_NOFILE, policy.nofile)?;
    limit(Resource::RLIMIT_CORE, 0)?;
    if let Some(n) = policy.nproc {
        limit(Resource::RLIMIT_NPROC, n)?;
    }
    // Opened while still privileged; the rules hold the descriptors.
    let ruleset = if policy.landlock {
        Some(ruleset(policy).map_err(|e| format!("cannot build the Landlock ruleset: {e}"))?)
    } else {
        None
    };
    if let Some(uid) = policy.uid {
        let (u, g) = (Uid::from_raw(uid), Gid::from_raw(uid));
        setgroups(&[]).map_err(|e| format!("cannot drop supplementary groups: {e}"))?;
        setgid(g).map_err(|e| format!("cannot switch to group {uid}: {e}"))?;
        setuid(u).map_err(|e| format!("cannot switch to user {uid}: {e}"))?;
    }
    if let Some(ruleset) = ruleset {
        let status = ruleset
            .restrict_self()
            .map_err(|e| format!("cannot apply the Landlock ruleset: {e}"))?;
        if policy.require_landlock && status.ruleset == RulesetStatus::NotEnforced {
            return Err("Landlock is required but could not be enforced".into());
        }
    }
    Ok(())
}

fn limit(resource: Resource, value: u64) -> Result<(), String> {
    setrlimit(resource, value, value).map_err(|e| format!("cannot set {resource:?}: {e}"))
}

type Created = landlock::RulesetCreated;

fn ruleset(policy: &Policy) -> Result<Created, landlock::RulesetError> {
    let read = AccessFs::from_read(ABI_WANTED);
    let all = AccessFs::from_all(ABI_WANTED);
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .handle_access(AccessNet::from_all(ABI_WANTED))?
        .scope(Scope::from_all(ABI_WANTED))?
        .create()?;
    // Paths that do not exist on this machine (`/lib32`, a `PATH` entry) are skipped.
    for (paths, access) in [(&policy.read, read), (&policy.write, all)] {
        for path in paths {
            if let Ok(fd) = PathFd::new(path) {
                created = created.add_rule(PathBeneath::new(fd, access))?;
            }
        }
    }
    for &port in &policy.bind {
        created = created.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
    }
    for &port in &policy.connect {
        created = created.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
    }
    Ok(created)
}

/// The Landlock ABI this kernel offers (0: none), learnt by restricting a short-lived thread
/// of our own (a ruleset binds only the thread that applies it, and this one then ends).
pub(crate) fn landlock_abi() -> u8 {
    let probe = std::thread::spawn(|| {
        Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::Execute)
            .and_then(|r| r.create())
            .and_then(|r| r.restrict_self())
            .map(|status| status.landlock)
    });
    match probe.join() {
        Ok(Ok(LandlockStatus::Available { effective_abi, .. })) => effective_abi as u8,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_launcher_arguments_are_explained_not_run() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(exec_from_args(args(&[])).contains("no policy"));
        assert!(exec_from_args(args(&["{"])).contains("bad policy"));
        let policy = serde_json::to_string(&Policy::default()).unwrap();
        assert!(exec_from_args(args(&[&policy, "x"])).contains("expects `--`"));
        assert!(exec_from_args(args(&[&policy, "--"])).contains("no command"));
    }
}
