//! The six measurements, each appending its section to BENCHMARKS.md.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;

use super::{
    daemon::Daemon,
    load::{BpfStats, ping_pong, set_cpu1},
    procfs::{cpu_ticks, kthread_comms, registered, status_kib},
};
use crate::{bootstrap::output, build};

/// What every measurement shares: the release binary and two registries.
pub struct Setup {
    pub bin: PathBuf,
    /// 10 and 50 kthreads registered by pid ([`super::procfs::config_for`]).
    pub cfg10: String,
    pub cfg50: String,
}

/// Pipe round trips per ping-pong run.
const TRIPS: u32 = 200_000;

/// Section 1, hot-path overhead: context switches without and with the
/// daemon, interleaved.
pub fn hot_path(md: &mut String, s: &Setup, rounds: usize) -> Result<()> {
    eprintln!("xtask: bench 1/7: context switches with and without the daemon");
    let trips = TRIPS;
    ping_pong(trips / 10); // warm up
    let (mut ratios, mut without, mut with) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let a = ping_pong(trips);
        let d = Daemon::start(&s.bin, Some(&s.cfg50), &[])?;
        let b = ping_pong(trips);
        d.stop()?;
        without.push(a);
        with.push(b);
        ratios.push(b / a);
    }
    let (rmin, rmax) = (
        ratios.iter().cloned().fold(f64::MAX, f64::min),
        ratios.iter().cloned().fold(0.0, f64::max),
    );
    let rmed = median(&mut ratios);
    let _ = writeln!(
        md,
        "## 1. Hot-path overhead (target ≤ 1.03)\n\n{trips} pipe round trips between two threads pinned to CPU 0 \
         (two context switches each), {} interleaved rounds without / with the daemon attached \
         (all programs, {} kthreads registered).\n\n\
         | | ns per round trip (median) |\n|---|---|\n| without | {:.0} |\n| with | {:.0} |\n\n\
         **Ratio with/without: {rmed:.3}** (pairwise, min {rmin:.3}, max {rmax:.3}).\n",
        rounds,
        registered(&s.cfg50),
        median(&mut without),
        median(&mut with),
    );
    Ok(())
}

/// Section 2, per-program cost, from the kernel's BPF statistics.
pub fn per_program(md: &mut String, s: &Setup) -> Result<()> {
    let trips = TRIPS;
    eprintln!("xtask: bench 2/7: per-program run time");
    let per_prog = {
        let stats = BpfStats::enable()?;
        let d = Daemon::start(&s.bin, Some(&s.cfg50), &[])?;
        ping_pong(trips);
        for _ in 0..10 {
            set_cpu1(false)?;
            set_cpu1(true)?;
        }
        let json = output(Command::new("bpftool").args(["prog", "show", "--json"]))?;
        d.stop()?;
        drop(stats);
        let progs: Value = serde_json::from_str(&json).context("parsing bpftool's JSON")?;
        let ours = kernel_program_names();
        let mut rows = Vec::new();
        for p in progs.as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or("");
            if !ours.iter().any(|o| o == name) {
                continue;
            }
            let (cnt, ns) = (
                p["run_cnt"].as_u64().unwrap_or(0),
                p["run_time_ns"].as_u64().unwrap_or(0),
            );
            rows.push((
                name.to_string(),
                cnt,
                if cnt > 0 {
                    ns as f64 / cnt as f64
                } else {
                    f64::NAN
                },
            ));
        }
        rows
    };
    let _ = writeln!(
        md,
        "## 2. Per-program cost (target: sched_switch ≤ 100 ns)\n\nKernel BPF statistics (`kernel.bpf_stats_enabled=1` only during \
         this step) over the ping-pong load plus 10 hotplug cycles of cpu1. Names are the kernel's 15-character program names.\n\n\
         | program | runs | ns per run |\n|---|---|---|"
    );
    for (name, cnt, avg) in &per_prog {
        let _ = writeln!(md, "| `{name}` | {cnt} | {avg:.0} |");
    }
    md.push('\n');
    Ok(())
}

/// The kernel keeps 15 bytes of a program's name (BPF_OBJ_NAME_LEN 16,
/// with the NUL).
const KERNEL_NAME_LEN: usize = 15;

/// Every program affinity can load, as `bpftool prog show` names them: the
/// tp_btf, fexit and syscall-tracepoint ones from affinity-common.
fn kernel_program_names() -> Vec<String> {
    use affinity_common::programs::{BTF_TRACEPOINTS, FEXITS, SYSCALL_TRACEPOINTS};
    BTF_TRACEPOINTS
        .iter()
        .map(|(p, _)| *p)
        .chain(FEXITS.iter().map(|(p, _)| *p))
        .chain(SYSCALL_TRACEPOINTS.iter().map(|(p, _, _)| *p))
        .map(|p| p.chars().take(KERNEL_NAME_LEN).collect())
        .collect()
}

/// Section 3, hotplug reaction: cpuhp tracepoint to the last mask applied.
pub fn hotplug_reaction(md: &mut String, s: &Setup, cycles: usize) -> Result<()> {
    eprintln!(
        "xtask: bench 3/7: hotplug reaction, {} cycles × 2 registries × 2 priorities",
        cycles
    );
    let _ = writeln!(
        md,
        "## 3. Hotplug reaction (target p99 ≤ 1 ms)\n\n{} offline/online cycles of cpu1, 50 ms between steps, per registry \
         and with the daemon's event loop at normal priority (`--rt-priority 0`) or under SCHED_FIFO 1 (the default when enforcing). *From the event*: \
         from the kernel's timestamp of the cpuhp tracepoint (`bpf_ktime_get_ns`) to the last mask applied for that step \
         (`hotplug_handled.latency_us`). *After the operation*: from the moment the write to \
         `/sys/devices/system/cpu/cpu1/online` returned to the same point (`hotplug_handled.done_ns`, CLOCK_MONOTONIC; \
         0 when the masks were in place before it returned).\n\n\
         | registry | priority | step | masks set per step | from the event p50 / p99 / max µs | after the operation p50 / p99 / max µs |\n\
         |---|---|---|---|---|---|",
        cycles
    );
    for (label, cfg) in [
        (
            format!("{} kthreads", registered(&s.cfg10)),
            Some(s.cfg10.as_str()),
        ),
        ("all movable (default policy)".to_string(), None),
    ] {
        for (prio, extra) in [
            ("normal (`--rt-priority 0`)", &["--rt-priority", "0"][..]),
            ("FIFO 1 (the default)", &[][..]),
        ] {
            let d = Daemon::start(&s.bin, cfg, extra)?;
            std::thread::sleep(Duration::from_millis(500));
            // When each write returned, per direction, in step order.
            let mut returned: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
            // A pause after each step: the daemon's sched_setaffinity calls
            // wait for the hotplug lock, so back-to-back steps would measure
            // the kernel's next hotplug operation, not the reaction to this one.
            for _ in 0..cycles {
                for online in [false, true] {
                    set_cpu1(online)?;
                    returned[usize::from(online)].push(monotonic_ns());
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            let events = d.stop()?;
            for online in [false, true] {
                let handled: Vec<&Value> = events
                    .iter()
                    .filter(|e| e["type"] == "hotplug_handled" && e["online"] == online)
                    .collect();
                let mut lat: Vec<f64> = handled
                    .iter()
                    .filter_map(|e| e["latency_us"].as_f64())
                    .collect();
                lat.sort_by(|a, b| a.total_cmp(b));
                // Matched in order: one handled record per step.
                let mut after: Vec<f64> = handled
                    .iter()
                    .zip(&returned[usize::from(online)])
                    .filter_map(|(e, &ret)| {
                        let done = e["done_ns"].as_u64()?;
                        Some(done.saturating_sub(ret) as f64 / 1000.0)
                    })
                    .collect();
                after.sort_by(|a, b| a.total_cmp(b));
                let applied = handled
                    .iter()
                    .filter_map(|e| e["applied"].as_u64())
                    .max()
                    .unwrap_or(0);
                let three = |v: &[f64]| {
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        percentile(v, 0.5),
                        percentile(v, 0.99),
                        v.last().copied().unwrap_or(f64::NAN)
                    )
                };
                let _ = writeln!(
                    md,
                    "| {label} | {prio} | {} | up to {applied} | {} | {} |",
                    if online { "online" } else { "offline" },
                    three(&lat),
                    three(&after)
                );
            }
        }
    }
    md.push('\n');
    Ok(())
}

/// CLOCK_MONOTONIC, the clock of the daemon's `done_ns` and of
/// `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Section 4, the violation window over 200 hotplug cycles.
pub fn violation_window(md: &mut String, s: &Setup) -> Result<()> {
    eprintln!("xtask: bench 4/7: violations over 200 hotplug cycles");
    let d = Daemon::start(&s.bin, Some(&s.cfg10), &[])?;
    for _ in 0..200 {
        set_cpu1(false)?;
        set_cpu1(true)?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let events = d.stop()?;
    let violations = events.iter().filter(|e| e["type"] == "violation").count();
    let summary = last_summary(&events);
    let _ = writeln!(
        md,
        "## 4. Violation window on offline (target 0)\n\n200 offline/online cycles of cpu1 with {} kthreads registered \
         (half of them preferring cpu1 only): **{} runs outside the allowed set counted by the kernel**, of which {violations} \
         were reported ({} rate-limited in the kernel, the rest no longer outside the set by the time userspace read them), \
         {} ring-buffer drops.\n",
        registered(&s.cfg10),
        summary["violations_seen"].as_u64().unwrap_or(0),
        summary["suppressed"].as_u64().unwrap_or(0),
        summary["drops"].as_u64().unwrap_or(0),
    );
    let (caught, mut ms, comm) = inject_violations(s)?;
    ms.sort_by(f64::total_cmp);
    let max = ms.last().copied().unwrap_or(0.0);
    let _ = writeln!(
        md,
        "Injected real ones: {INJECTED} times an observing daemon (`--observe --isolate 1`) saw {comm} moved to \
         cpu1 behind its back and woken there (a grace period): **{caught} of {INJECTED} reported**, each as a \
         `violation` on cpu1 with its run time, {:.1} ms median and {max:.1} ms at most after the move.\n",
        percentile(&ms, 0.5),
    );
    Ok(())
}

/// How many real violations section 4 injects.
const INJECTED: usize = 5;

/// Moves the RCU grace-period kthread to cpu1 under an observing daemon
/// told cpu1 is isolated, wakes it, and waits for the report; as the
/// kernel test `a_real_violation_is_reported_every_time_with_its_run_time`
/// does. Returns how many were reported, after how many ms each, and whom.
fn inject_violations(s: &Setup) -> Result<(usize, Vec<f64>, String)> {
    let (pid, comm, _) = kthread_comms()
        .into_iter()
        .find(|(_, c, f)| (c == "rcu_preempt" || c == "rcu_sched") && f & 0x0400_0000 == 0)
        .context("no movable rcu_preempt or rcu_sched kthread to move")?;
    let original = mask_of(pid)?;
    let result = (|| {
        taskset(pid, "0")?;
        let mut d = Daemon::start(&s.bin, None, &["--observe", "--isolate", "1"])?;
        let mut caught = 0;
        let mut ms = Vec::new();
        for _ in 0..INJECTED {
            let seen = d.event_count();
            taskset(pid, "1")?;
            let moved = Instant::now();
            let _ = Command::new("true").status();
            let ran = |e: &Value| e["type"] == "violation" && e["pid"] == pid && e["cpu"] == 1;
            if d.wait_since(seen, Duration::from_secs(1), ran).is_some() {
                caught += 1;
                ms.push(moved.elapsed().as_secs_f64() * 1e3);
            }
            taskset(pid, "0")?;
            // Past the programs' per-pid rate limit (500 ms).
            std::thread::sleep(Duration::from_millis(700));
        }
        d.stop()?;
        Ok((caught, ms, comm))
    })();
    taskset(pid, &original)?;
    result
}

fn taskset(pid: u32, list: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-pc", list, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    anyhow::ensure!(status.success(), "taskset -pc {list} {pid} failed");
    Ok(())
}

fn mask_of(pid: u32) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|l| l.trim().to_string())
        .with_context(|| format!("no Cpus_allowed_list in /proc/{pid}/status"))
}

/// Section 5, idle cost: CPU time and peak RSS on the default policy.
pub fn idle_cost(md: &mut String, s: &Setup, idle_secs: u64) -> Result<()> {
    eprintln!("xtask: bench 5/7: idle cost over {} s", idle_secs);
    let d = Daemon::start(&s.bin, None, &[])?;
    std::thread::sleep(Duration::from_secs(3));
    let t0 = cpu_ticks(d.pid())?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let ticks = cpu_ticks(d.pid())? - t0;
    let wall = start.elapsed().as_secs_f64();
    let mb = |field: &str| status_kib(d.pid(), field).map(|k| k as f64 / 1024.0);
    let (hwm, rss, anon, file) = (mb("VmHWM")?, mb("VmRSS")?, mb("RssAnon")?, mb("RssFile")?);
    d.stop()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_s = ticks as f64 / hz;
    let _ = writeln!(
        md,
        "## 5. Idle cost (targets < 0.1 % of one CPU, < 30 MB)\n\nThe daemon on the default policy, no hotplug, {wall:.0} s: \
         **{cpu_s:.2} CPU seconds = {:.3} % of one CPU** (resolution {:.2} s), **peak RSS {hwm:.1} MB** (VmHWM, set \
         while loading), **{rss:.1} MB resident at the end** ({anon:.1} MB anonymous, {file:.1} MB file-backed: the \
         binary's pages and the 4 MiB events ring, which the kernel maps twice).\n",
        100.0 * cpu_s / wall,
        1.0 / hz,
    );
    Ok(())
}

/// Section 6, scale: the engine's criterion benchmark and a ring-buffer burst.
pub fn scale(md: &mut String, s: &Setup) -> Result<()> {
    eprintln!("xtask: bench 6/7: engine at scale, ring-buffer burst");
    let plan = output(
        build::cargo(&[
            "bench",
            "--package",
            "affinity-user",
            "--bench",
            "plan",
            "--",
            "--noplot",
        ])
        .env("AFFINITY_SKIP_EBPF", "0"),
    )
    .context("running the planning benchmark")?;
    let plan_lines: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains("time:") || l.contains("plan"))
        .collect();
    let burst = ring_burst(&s.bin, 1_000_000)?;
    let _ = writeln!(
        md,
        "## 6. Scale\n\nPolicy engine, criterion (`cargo bench -p affinity-user --bench plan`):\n\n```\n{}\n```\n\n\
         Ring buffer: {} sched_setaffinity calls on a registered kthread as fast as one thread can make them, \
         each one a record through the kernel filter: **{} received, {} dropped**, in {:.2} s ({:.0} k records/s).\n",
        plan_lines.join("\n"),
        burst.sent,
        burst.received,
        burst.dropped,
        burst.secs,
        burst.sent as f64 / burst.secs / 1000.0
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(v, 0.5)
}

struct Burst {
    sent: u64,
    received: u64,
    dropped: u64,
    secs: f64,
}

/// Floods the ring buffer: sched_setaffinity on a registered kthread from a
/// tight loop (the daemon coalesces them, so userspace keeps up if the
/// drain does).
fn ring_burst(bin: &Path, n: u64) -> Result<Burst> {
    let (pid, _, _) = kthread_comms()
        .into_iter()
        .find(|(_, c, _)| c == "khugepaged")
        .context("no khugepaged kthread to aim the burst at")?;
    let cfg = "[[rule]]\nmatch = \"khugepaged\"\nprefer = \"0-1\"\n";
    // Callers are named (so recorded) only with fexit or, where the kernel
    // refuses fexit, the syscall tracepoints: ask for them.
    let d = Daemon::start(bin, Some(cfg), &["--observe", "--attribute", "syscalls"])?;
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let words: [u64; 1] = [0b11];
    for _ in 0..n {
        // SAFETY: a valid one-word mask for a live kthread's pid.
        unsafe {
            libc::syscall(
                libc::SYS_sched_setaffinity,
                pid as libc::pid_t,
                8usize,
                words.as_ptr(),
            )
        };
    }
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let events = d.stop()?;
    let summary = last_summary(&events);
    Ok(Burst {
        sent: n,
        received: summary["records"].as_u64().unwrap_or(0),
        dropped: summary["drops"].as_u64().unwrap_or(0),
        secs,
    })
}

/// The daemon's last `summary` event (null if it printed none).
fn last_summary(events: &[Value]) -> Value {
    events
        .iter()
        .rev()
        .find(|e| e["type"] == "summary")
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_as_the_kernel_shows_them() {
        let names = kernel_program_names();
        for n in [
            "cpuhp_enter",
            "cpuhp_multi_ent",
            "cpuhp_exit",
            "sched_switch",
            "sched_migrate_t",
            "sched_process_f",
            "task_rename",
            "sched_process_e",
            "sched_setaffini",
            "sys_enter_sched",
            "sys_exit_sched_",
        ] {
            assert!(names.iter().any(|m| m == n), "{n} in {names:?}");
        }
        assert!(names.iter().all(|n| n.len() <= KERNEL_NAME_LEN));
    }
}
