//! Process groups: starting a service as `sh -c <command>` in a group of its own, reaping it,
//! pumping its output into its logs, and stopping the whole group (SIGTERM, a grace period,
//! SIGKILL), so whatever the service forked dies with it.
//!
//! Every started group is also written down in a run record on disk (pgid and the leader's
//! start time from `/proc/<pid>/stat`), so that after a crash the next server can find and stop
//! the orphans, and can tell them from an unrelated process that got the same pid since.
//!
//! Signals go to a pgid only while we know it is still ours: while the leader is our unreaped
//! child its pid cannot be reused; after that, a group id stays reserved by the kernel as long
//! as any member lives, so a group with live members whose leader slot is empty or still shows
//! our start time is ours. A pid reused after the whole group died shows another start time.

use crate::lock;
use crate::logs::{LineSplitter, ServiceLogs, now};
use crate::sandbox::{Launch, ServiceCgroup};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use stackyard_core::ServiceName;
use stackyard_core::runtime::{LogLine, LogStream};
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Log lines of one run kept (per stream) and shown in its failure message.
const TAIL_LINES: usize = 20;
/// A line in a failure message is cut to this many characters.
const TAIL_LINE_CHARS: usize = 300;
/// How long to wait for a group to vanish after SIGKILL before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stopping group is looked at.
const POLL: Duration = Duration::from_millis(20);

/// What is on disk for one started process group: `<data dir>/run/<slug>/<release>-<service>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub(crate) slug: String,
    pub(crate) service: String,
    pub(crate) release: i64,
    pub(crate) pgid: i32,
    /// The leader's start time, in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub(crate) start_time: u64,
    pub(crate) port: u16,
}

/// How to start one service.
pub(crate) struct SpawnSpec<'a> {
    pub(crate) service: ServiceName,
    pub(crate) slug: &'a str,
    pub(crate) release: i64,
    pub(crate) port: u16,
    pub(crate) command: &'a str,
    pub(crate) cwd: &'a Path,
    /// The whole environment: nothing of the server's own is added.
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) record_path: PathBuf,
    /// The sandbox launcher to start through, and the service's cgroups.
    pub(crate) launch: Launch,
}

/// One running (or exited) service process group.
///
/// Invariant: `stopped` is only set once the group has no live member and the run record is
/// gone; its async mutex also serialises concurrent `stop` calls (teardown racing a cancelled
/// deploy's cleanup), which is why it is a tokio mutex: it is held across the wait.
pub(crate) struct Proc {
    pub(crate) service: ServiceName,
    pub(crate) release: i64,
    pub(crate) port: u16,
    pub(crate) pgid: i32,
    pub(crate) start_time: u64,
    record_path: PathBuf,
    /// `Some(description)` once the leader has been reaped.
    exit: watch::Receiver<Option<String>>,
    /// How many of stdout and stderr are still open.
    output_open: watch::Receiver<usize>,
    tail: Mutex<Tail>,
    stopped: tokio::sync::Mutex<bool>,
    /// Set when `stop` begins: an exit after that is not a crash.
    stopping: AtomicBool,
    cgroup: Option<ServiceCgroup>,
}

/// The last lines of each stream, numbered in arrival order. Kept per stream because the two
/// pipes are read independently: a burst of stdout read late must not push out the stderr
/// line that explains a crash.
#[derive(Default)]
struct Tail {
    next: u64,
    stdout: VecDeque<(u64, String)>,
    stderr: VecDeque<(u64, String)>,
}

impl Tail {
    fn push(&mut self, stream: LogStream, text: &str) {
        let lines = match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        };
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back((self.next, text.chars().take(TAIL_LINE_CHARS).collect()));
        self.next += 1;
    }

    /// Up to [`TAIL_LINES`] lines in arrival order: every kept stderr line, then the newest
    /// stdout lines in the room left.
    fn lines(&self) -> Vec<String> {
        let room = TAIL_LINES.saturating_sub(self.stderr.len());
        let skip = self.stdout.len().saturating_sub(room);
        let mut lines: Vec<&(u64, String)> = self
            .stderr
            .iter()
            .chain(self.stdout.iter().skip(skip))
            .collect();
        lines.sort_by_key(|(n, _)| *n);
        lines.into_iter().map(|(_, t)| t.clone()).collect()
    }
}

impl Proc {
    /// Starts the service and its reaper and output pumps, and writes its run record.
    pub(crate) fn spawn(spec: SpawnSpec<'_>, logs: Arc<ServiceLogs>) -> std::io::Result<Arc<Proc>> {
        let launch = spec.launch;
        let mut cmd = match &launch.prefix {
            Some((launcher, args)) => {
                let mut c = tokio::process::Command::new(launcher);
                c.args(args).arg("/bin/sh");
                c
            }
            None => tokio::process::Command::new("/bin/sh"),
        };
        cmd.arg("-c")
            .arg(spec.command)
            .current_dir(spec.cwd)
            .env_clear()
            .envs(spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // We stop groups ourselves; a dropped handle must not kill only the leader.
            .kill_on_drop(false);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &launch.cgroup {
                    cg.remove();
                }
                return Err(e);
            }
        };
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| std::io::Error::other("the started process has no pid"))?;
        // The child is unreaped, so its /proc entry is there and is this process.
        let start_time = proc_stat(pid).map(|s| s.start_time).unwrap_or(0);

        let (exit_tx, exit) = watch::channel(None);
        let cgroup = launch.cgroup;
        let memory = cgroup.clone();
        tokio::spawn(async move {
            let description = match child.wait().await {
                Ok(_) if memory.as_ref().is_some_and(ServiceCgroup::oom_killed) => {
                    "was killed for going over its memory limit".to_owned()
                }
                Ok(status) => describe_exit(status),
                Err(e) => format!("could not be waited for ({e})"),
            };
            let _ = exit_tx.send(Some(description));
        });

        let (open_tx, output_open) = watch::channel(2usize);
        let proc = Arc::new(Proc {
            service: spec.service,
            release: spec.release,
            port: spec.port,
            pgid: pid,
            start_time,
            record_path: spec.record_path,
            exit,
            output_open,
            tail: Mutex::new(Tail::default()),
            stopped: tokio::sync::Mutex::new(false),
            stopping: AtomicBool::new(false),
            cgroup,
        });
        let open_tx = Arc::new(open_tx);
        match stdout {
            Some(out) => spawn_pump(out, LogStream::Stdout, &proc, &logs, &open_tx),
            None => open_tx.send_modify(|n| *n -= 1),
        }
        match stderr {
            Some(err) => spawn_pump(err, LogStream::Stderr, &proc, &logs, &open_tx),
            None => open_tx.send_modify(|n| *n -= 1),
        }

        let record = RunRecord {
            slug: spec.slug.to_owned(),
            service: proc.service.to_string(),
            release: spec.release,
            pgid: pid,
            start_time,
            port: spec.port,
        };
        if let Err(e) = write_record(&proc.record_path, &record) {
            // Without a record a crash could orphan it; don't run what we can't find again.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(e);
        }
        Ok(proc)
    }

    /// How the leader ended, once it has.
    pub(crate) fn exit_description(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Resolves when the leader has exited.
    pub(crate) async fn exited(&self) {
        let mut rx = self.exit.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Waits (at most `limit`) until stdout and stderr are closed, so that the last lines a
    /// failed service printed are in its tail. A forked child holding the pipes open only
    /// costs the wait.
    pub(crate) async fn output_closed(&self, limit: Duration) {
        let mut rx = self.output_open.clone();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
    }

    /// The last lines this run printed, oldest first, favouring stderr (see [`Tail`]).
    pub(crate) fn tail(&self) -> Vec<String> {
        lock(&self.tail).lines()
    }

    /// Whether `stop` has been called: the process is (being) stopped on purpose.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops the whole group (idempotent) and removes the run record.
    pub(crate) async fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut stopped = self.stopped.lock().await;
        if *stopped {
            return;
        }
        let leader = self.exit.clone();
        stop_group(self.pgid, self.start_time, Some(leader), grace).await;
        remove_record(&self.record_path);
        if let Some(cg) = &self.cgroup {
            cg.remove();
        }
        *stopped = true;
    }

    fn remember(&self, stream: LogStream, text: &str) {
        lock(&self.tail).push(stream, text);
    }
}

fn spawn_pump<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    stream: LogStream,
    proc: &Arc<Proc>,
    logs: &Arc<ServiceLogs>,
    open: &Arc<watch::Sender<usize>>,
) {
    let (proc, logs, open) = (proc.clone(), logs.clone(), open.clone());
    tokio::spawn(async move {
        pump(reader, stream, &proc, &logs).await;
        open.send_modify(|n| *n = n.saturating_sub(1));
    });
}

/// Reads one output stream to its end, line by line, into the run's tail and the logs.
async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: LogStream,
    proc: &Proc,
    logs: &ServiceLogs,
) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut lines = Vec::new();
    let mut open = true;
    while open {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                lines.extend(splitter.finish());
                open = false;
            }
            Ok(n) => splitter.feed(&buf[..n], &mut lines),
        }
        for text in lines.drain(..) {
            proc.remember(stream, &text);
            logs.record(LogLine {
                at: now(),
                stream,
                text,
            })
            .await;
        }
    }
}

/// Whether an exit `describe_exit` described is a success (status 0).
pub(crate) fn succeeded(description: &str) -> bool {
    description == "exited with status 0"
}

fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(s) => format!("was killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("was killed by signal {sig}"),
        },
        None => "exited".into(),
    }
}

/// Stops a process group: SIGTERM, up to `grace` for it to go, then SIGKILL. `leader` is the
/// exit watch when the leader is our own child (its pid is then certainly ours until reaped).
pub(crate) async fn stop_group(
    pgid: i32,
    start_time: u64,
    leader: Option<watch::Receiver<Option<String>>>,
    grace: Duration,
) {
    let alive = |leader: &Option<watch::Receiver<Option<String>>>| match leader {
        Some(rx) if rx.borrow().is_none() => true,
        _ => group_has_live_members(pgid, start_time),
    };
    if !alive(&leader) {
        return;
    }
    signal_group(pgid, Signal::SIGTERM);
    if wait_gone(&leader, &alive, grace).await {
        return;
    }
    if alive(&leader) {
        signal_group(pgid, Signal::SIGKILL);
    }
    if !wait_gone(&leader, &alive, KILL_WAIT).await {
        tracing::warn!(pgid, "a process group survived SIGKILL");
    }
}

/// Polls until the group is gone or `limit` passes; true if gone.
async fn wait_gone(
    leader: &Option<watch::Receiver<Option<String>>>,
    alive: &impl Fn(&Option<watch::Receiver<Option<String>>>) -> bool,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !alive(leader) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn signal_group(pgid: i32, sig: Signal) {
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => {
            tracing::warn!(pgid, signal = sig.as_str(), error = %e, "cannot signal a process group")
        }
    }
}

/// Whether group `pgid`, started with a leader whose start time was `start_time`, still has a
/// member that is not dead (zombies awaiting their reaper don't count: they hold nothing).
pub(crate) fn group_has_live_members(pgid: i32, start_time: u64) -> bool {
    if pgid <= 1 {
        return false;
    }
    if let Err(Errno::ESRCH) = killpg(Pid::from_raw(pgid), None) {
        return false;
    }
    if let Some(leader) = proc_stat(pgid)
        && leader.start_time != start_time
    {
        // The pid was reused, which the kernel only allows once our group is empty.
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .any(|s| {
            s.pgrp == pgid && !matches!(s.state, 'Z' | 'X' | 'x') && s.start_time >= start_time
        })
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) state: char,
    pub(crate) pgrp: i32,
    pub(crate) start_time: u64,
}

pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a `stat` line. The command name (field 2) may hold spaces and parentheses, so the
/// fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `fields[0]` is field 3 (state), so field N is `fields[N - 3]`.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Writes a run record next to its final name, then renames it, so a reader never sees half
/// of one. No fsync: a record only matters while its processes can still be running, and a
/// power loss ends those too.
fn write_record(path: &Path, record: &RunRecord) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

fn remove_record(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a run record"),
    }
}

/// Every run record under `dir` (`run/` or `run/<slug>/`, searched two levels deep). Records
/// that cannot be read are logged and skipped; half-written `.tmp` files are ignored.
pub(crate) fn read_records(dir: &Path) -> Vec<RunRecord> {
    let mut out = Vec::new();
    for sub in scan_records(dir, &mut out) {
        scan_records(&sub, &mut out);
    }
    out
}

/// Reads the records directly in `dir` into `out`; returns its subdirectories.
fn scan_records(dir: &Path, out: &mut Vec<RunRecord>) -> Vec<PathBuf> {
    let mut subdirs = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return subdirs;
    };
    for entry in entries.filter_map(Result::ok) {
        let p = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            subdirs.push(p);
        } else if kind.is_file() && p.extension().is_some_and(|e| e == "json") {
            let parsed = std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<RunRecord>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "skipping an unreadable run record")
                }
            }
        }
    }
    subdirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "1234 (my (odd) app) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615\n";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                pgrp: 1234,
                start_time: 98765
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn our_own_stat_is_readable() {
        let me = std::process::id() as i32;
        let s = proc_stat(me).unwrap();
        assert!(s.start_time > 0);
        assert!(matches!(s.state, 'R' | 'S'), "{s:?}");
        assert_eq!(s.pgrp, nix::unistd::getpgrp().as_raw());
    }

    #[test]
    fn the_tail_keeps_stderr_lines_a_stdout_burst_would_push_out() {
        let mut t = Tail::default();
        t.push(LogStream::Stderr, "fatal");
        for i in 0..30 {
            t.push(LogStream::Stdout, &format!("out {i}"));
        }
        let lines = t.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "fatal");
        assert_eq!(lines[1], "out 11");
        assert_eq!(lines[TAIL_LINES - 1], "out 29");
        t.push(LogStream::Stderr, &"x".repeat(1000));
        assert_eq!(t.lines().last().map(|l| l.len()), Some(TAIL_LINE_CHARS));
    }

    #[test]
    fn exits_are_described() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "was killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let r = RunRecord {
            slug: "stk-x".into(),
            service: "web".into(),
            release: 3,
            pgid: 42,
            start_time: 7,
            port: 4000,
        };
        let path = dir.path().join("stk-x").join("3-web.json");
        write_record(&path, &r).unwrap();
        std::fs::write(dir.path().join("stk-x").join("bad.json"), b"{").unwrap();
        std::fs::write(dir.path().join("stk-x").join("4-web.json.tmp"), b"{").unwrap();
        assert_eq!(read_records(dir.path()), vec![r.clone()]);
        assert_eq!(read_records(&dir.path().join("stk-x")), vec![r]);
        remove_record(&path);
        remove_record(&path);
        assert!(read_records(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn stop_group_kills_forked_children_too() {
        // A leader that forks a sleeper and ignores SIGTERM: only the group SIGKILL ends both.
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("trap '' TERM; sleep 1000 & sleep 1000; wait")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id().unwrap() as i32;
        let start = proc_stat(pgid).unwrap().start_time;
        let reaper = tokio::spawn(async move { child.wait().await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while count_members(pgid) < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(count_members(pgid), 3, "the shell and its two sleepers");
        assert!(group_has_live_members(pgid, start));
        // A different start time means another process: hands off.
        assert!(!group_has_live_members(pgid, start + 1));

        stop_group(pgid, start, None, Duration::from_millis(300)).await;
        assert!(!group_has_live_members(pgid, start));
        assert_eq!(count_members(pgid), 0);
        reaper.await.unwrap().unwrap();
    }

    fn count_members(pgid: i32) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(proc_stat)
            .filter(|s| s.pgrp == pgid && s.state != 'Z')
            .count()
    }
}
