//! CPU accounting for the router benchmark, from `/proc` (Linux; elsewhere every sample is
//! `None` and the report leaves the columns out).
//!
//! Throughput on a shared 2-core machine moves with whatever else runs; the CPU time each part
//! spends per request moves much less, and it is what decides the ratio: when the machine is
//! saturated, requests/s ≈ busy cores / (CPU per request of everything involved).

use std::collections::HashMap;

/// Kernel clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// Busy and total jiffies of all CPUs (`/proc/stat`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MachineTicks {
    busy: u64,
    total: u64,
}

pub(crate) fn machine() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some(MachineTicks {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// The share of the machine's CPU time that was busy between two samples.
pub(crate) fn busy_share(before: Option<MachineTicks>, after: Option<MachineTicks>) -> Option<f64> {
    let (b, a) = (before?, after?);
    let total = a.total.checked_sub(b.total).filter(|t| *t > 0)?;
    Some(a.busy.saturating_sub(b.busy) as f64 / total as f64)
}

/// `utime + stime` of a `/proc/.../stat` line, in seconds. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted from the last `)`.
fn stat_cpu_s(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid … utime(14) stime(15), i.e. indexes 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

fn stat_name(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// CPU seconds used so far by this process's threads, by role: threads named with a prefix
/// in `roles` count for that role, every other thread for `other`.
pub(crate) fn threads_by_role(
    roles: &[(&str, &'static str)],
    other: &'static str,
) -> HashMap<&'static str, f64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(name), Some(cpu)) = (stat_name(&stat), stat_cpu_s(&stat)) else {
            continue;
        };
        let role = roles
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map_or(other, |(_, role)| *role);
        *out.entry(role).or_insert(0.0) += cpu;
    }
    out
}

/// CPU seconds used so far by process `pid` (all its threads, live and exited).
pub(crate) fn process_s(pid: u32) -> Option<f64> {
    stat_cpu_s(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read() {
        let line =
            "2439 (tokio rt) worker) R 2433 2433 4319 0 -1 4194304 128 0 0 0 150 50 0 0 20 0 1";
        assert_eq!(stat_name(line), Some("tokio rt) worker"));
        assert_eq!(stat_cpu_s(line), Some(2.0));
        assert!(stat_cpu_s("garbage").is_none());
    }

    #[test]
    fn busy_share_is_a_fraction() {
        let t = |busy, total| Some(MachineTicks { busy, total });
        assert_eq!(busy_share(t(10, 100), t(60, 200)), Some(0.5));
        assert_eq!(busy_share(t(10, 100), t(10, 100)), None);
        assert_eq!(busy_share(None, t(1, 2)), None);
    }

    #[test]
    fn this_process_uses_some_cpu() {
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let roles = threads_by_role(&[], "all");
        assert!(roles.get("all").copied().unwrap_or(0.0) >= 0.0);
        assert!(process_s(std::process::id()).is_some());
    }
}
