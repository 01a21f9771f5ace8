//! What the benchmarks read from /proc: the kthreads (to build configs),
//! a process's CPU time and its peak RSS.

use std::{fmt::Write as _, fs};

use anyhow::{Context, Result};

pub fn kthread_comms() -> Vec<(u32, String, u32)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(o), Some(c)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let flags: u32 = stat[c + 1..]
            .split_whitespace()
            .nth(6)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        if flags & 0x0020_0000 != 0 {
            out.push((pid, stat[o + 1..c].to_string(), flags));
        }
    }
    out.sort();
    out
}

/// A config registering `n` movable kthreads by pid, each preferring CPU 0
/// or both CPUs in turn (so hotplug of cpu1 changes half of them).
pub fn config_for(n: usize) -> String {
    let mut cfg = String::new();
    for (i, (pid, _, _)) in kthread_comms()
        .into_iter()
        .filter(|(_, _, f)| f & 0x0400_0000 == 0)
        .take(n)
        .enumerate()
    {
        let prefer = if i % 2 == 0 { "1" } else { "0-1" };
        let _ = writeln!(cfg, "[[rule]]\npid = {pid}\nprefer = \"{prefer}\"\n");
    }
    cfg
}

pub fn registered(cfg: &str) -> usize {
    cfg.matches("[[rule]]").count()
}

pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; rest[0] is field 3.
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// A `kB` field of /proc/PID/status: `VmHWM`, `VmRSS`, `RssAnon`…
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
