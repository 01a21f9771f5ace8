//! Shared helpers for the kernel integration tests.
//!
//! These tests need root, BPF, tracefs and a hot-pluggable cpu1. Outside CI a
//! machine without them skips the tests loudly; under CI (`CI=true`) it fails
//! them, so a green run always means the kernel tests ran.

#![allow(
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub const SYS_CPU: &str = "/sys/devices/system/cpu";

/// Why kernel tests cannot run here, if they cannot.
fn missing_requirement() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("no kernel BTF at /sys/kernel/btf/vmlinux".into());
    }
    if !Path::new(SYS_CPU).join("cpu1/online").exists() {
        return Some("cpu1 cannot be hot-plugged (no /sys/devices/system/cpu/cpu1/online)".into());
    }
    None
}

/// True when the kernel tests can run. Under CI a missing requirement
/// panics instead: CI must never pass by skipping them.
pub fn kernel_tests_can_run(test: &str) -> bool {
    match missing_requirement() {
        None => true,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("{test}: kernel test cannot run under CI: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (set CI=true to make this a failure)");
            false
        }
    }
}

/// True inside a `cargo xtask vm-test` guest.
pub fn in_vm() -> bool {
    std::env::var("AFFINITY_VM").is_ok_and(|v| v == "1")
}

/// `--attribute` for tests that need callers of sched_setaffinity()
/// named: fexit where the kernel allows function tracing (the VMs; a
/// refusal there fails the test), else the syscall tracepoints (this host
/// refuses function tracing even to root, VM.md).
pub fn naming_callers() -> [&'static str; 2] {
    if fexit_allowed() {
        ["--attribute", "fexit"]
    } else {
        ["--attribute", "syscalls"]
    }
}

/// Whether BPF trampolines can attach here: they need function tracing,
/// which this host refuses (`available_filter_functions` is EPERM).
pub fn fexit_allowed() -> bool {
    in_vm() || fs::File::open("/sys/kernel/tracing/available_filter_functions").is_ok()
}

/// How many times a stress test repeats its step: `full` on the host,
/// where a hotplug step takes milliseconds, a quarter (at least one) in a
/// vm-test guest, where under TCG one takes ~0.3 s and the whole VM matrix
/// has CI's budget (README). The host run keeps the statistical weight; the
/// VMs check each kernel's behaviour, which a quarter still exercises.
pub fn repeats(full: usize) -> usize {
    if in_vm() { (full / 4).max(1) } else { full }
}

/// The common start of a kernel test: None when it cannot run here (see
/// [`kernel_tests_can_run`]); otherwise every CPU online and every kthread
/// mask saved, restored when the returned guard drops.
pub fn setup(test: &str) -> Option<MasksGuard> {
    if !kernel_tests_can_run(test) {
        return None;
    }
    all_cpus_online();
    Some(MasksGuard::save())
}

fn online_path(cpu: u32) -> PathBuf {
    Path::new(SYS_CPU).join(format!("cpu{cpu}/online"))
}

pub fn set_cpu_online(cpu: u32, online: bool) {
    let path = online_path(cpu);
    fs::write(&path, if online { "1" } else { "0" })
        .unwrap_or_else(|e| panic!("writing {} to {}: {e}", online as u8, path.display()));
}

pub fn cpu_online(cpu: u32) -> bool {
    let path = online_path(cpu);
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        == "1"
}

/// Takes a CPU offline and brings it back online when dropped, also when
/// the test panics: hotplug is machine-wide state.
pub struct CpuOffline {
    cpu: u32,
}

impl CpuOffline {
    pub fn new(cpu: u32) -> Self {
        let guard = CpuOffline { cpu };
        set_cpu_online(cpu, false);
        guard
    }
}

impl Drop for CpuOffline {
    fn drop(&mut self) {
        // Retry: a write can fail with EBUSY while another hotplug operation
        // is in flight.
        for _ in 0..50 {
            if fs::write(online_path(self.cpu), "1").is_ok() && cpu_online(self.cpu) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("FAILED to bring cpu{} back online", self.cpu);
    }
}

/// Makes sure every CPU the test may touch is online before it starts.
pub fn all_cpus_online() {
    for entry in fs::read_dir(SYS_CPU)
        .expect("reading /sys/devices/system/cpu")
        .flatten()
    {
        let online = entry.path().join("online");
        if online.exists() && fs::read_to_string(&online).is_ok_and(|s| s.trim() == "0") {
            fs::write(&online, "1")
                .unwrap_or_else(|e| panic!("onlining {}: {e}", online.display()));
        }
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub mod daemon;
pub mod irq;

/// Kthreads by comm, from /proc: (pid, flags).
pub fn kthreads() -> Vec<(u32, String, u32)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let flags: u32 = stat[close + 1..]
            .split_whitespace()
            .nth(6)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        if flags & affinity_common::PF_KTHREAD != 0 {
            out.push((pid, comm, flags));
        }
    }
    out.sort();
    out
}

pub fn pid_of(comm: &str) -> u32 {
    kthreads()
        .into_iter()
        .find(|(_, c, _)| c == comm)
        .map(|(p, _, _)| p)
        .unwrap_or_else(|| panic!("no kthread named {comm} on this kernel"))
}

/// The kthread the tests that move "a kthread" move: `khugepaged` where
/// this kernel has one, else `khungtaskd`. Use it (and [`rule`]) instead of
/// naming either, so one place says which.
///
/// khugepaged is what the suite has always moved: a plain `kthread_run`
/// kthread (unbound, no `PF_NO_SETAFFINITY`), started at boot, never
/// exiting, that wakes on its own (every `scan_sleep_millisecs`, 10 s).
/// PREEMPT_RT kernels (the 7-rt VM) have none: `TRANSPARENT_HUGEPAGE`
/// depends on `!PREEMPT_RT`. khungtaskd is the same kind of kthread there:
/// `CONFIG_DETECT_HUNG_TASK=y` on every Debian kernel, rt included, created
/// once by `kthread_run` at boot, and it wakes on its own every
/// `hung_task_check_interval_secs` (120 s by default) and whenever
/// `hung_task_timeout_secs` is written. What the tests ask of it (its mask
/// set, read back, reported and restored) does not depend on how often it
/// runs. Not kcompactd0 or kswapd0 (kernel-registered: 6.14+ re-affines
/// them to their node itself, and the NUMA tests move them), not
/// `oom_reaper` (the second kthread of the tests that move two; it exists
/// on every kernel with an MMU, rt included), not kthreadd (every new
/// kthread starts with its mask).
pub fn movable_kthread() -> &'static str {
    static NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let all = kthreads();
        let (name, pid, flags) = ["khugepaged", "khungtaskd"]
            .into_iter()
            .find_map(|n| {
                let (p, _, f) = all.iter().find(|(_, c, _)| c == n)?;
                Some((n, *p, *f))
            })
            .expect("neither khugepaged nor khungtaskd on this kernel");
        assert_eq!(
            flags & affinity_common::PF_NO_SETAFFINITY,
            0,
            "{name} ({pid}) must be movable: flags {flags:#x}"
        );
        name
    })
}

/// A rules file of one rule: `match = "matching"`, `prefer = "prefer"`.
pub fn rule(matching: &str, prefer: &str) -> String {
    format!("[[rule]]\nmatch = \"{matching}\"\nprefer = \"{prefer}\"\n")
}

/// A task's Cpus_allowed_list, e.g. "0-1".
pub fn mask_of(pid: u32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no Cpus_allowed_list for pid {pid}"))
}

pub fn set_mask(pid: u32, list: &str) {
    let status = std::process::Command::new("taskset")
        .args(["-pc", list, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running taskset");
    assert!(status.success(), "taskset -pc {list} {pid} failed");
}

/// Restores every kthread's mask on drop: the tests move real kthreads.
/// Every daemon steers IRQs and the workqueue mask too: those come back as
/// well.
pub struct MasksGuard(
    Vec<(u32, String)>,
    #[expect(dead_code, reason = "held for its Drop only")] irq::IrqGuard,
);

impl MasksGuard {
    pub fn save() -> Self {
        MasksGuard(
            kthreads()
                .into_iter()
                .filter(|(_, _, f)| f & affinity_common::PF_NO_SETAFFINITY == 0)
                .filter_map(|(p, _, _)| {
                    Some((p, fs::read_to_string(format!("/proc/{p}/status")).ok()?))
                })
                .filter_map(|(p, s)| {
                    Some((
                        p,
                        s.lines()
                            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
                            .trim()
                            .to_string(),
                    ))
                })
                .collect(),
            irq::IrqGuard::save(),
        )
    }
}

impl Drop for MasksGuard {
    fn drop(&mut self) {
        for (pid, mask) in &self.0 {
            let _ = std::process::Command::new("taskset")
                .args(["-pc", mask, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Waits until `pid`'s mask is `want`; panics with what it is otherwise.
pub fn wait_mask(pid: u32, want: &str, within: Duration) {
    if wait_for(within, || (mask_of(pid) == want).then_some(())).is_none() {
        panic!(
            "pid {pid} mask is {} after {within:?}, expected {want}",
            mask_of(pid)
        );
    }
}

/// The RCU grace-period kthread: it runs whenever anything needs a grace
/// period, several times a second.
pub fn rcu_gp_kthread() -> u32 {
    kthreads()
        .into_iter()
        .find(|(_, c, f)| {
            (c == "rcu_preempt" || c == "rcu_sched") && f & affinity_common::PF_NO_SETAFFINITY == 0
        })
        .map(|(p, _, _)| p)
        .expect("an rcu_preempt or rcu_sched kthread")
}

/// Where a kthread can run now, as the policy sees it: its mask, except
/// that for a kthread the running kernel manages itself (6.14+ registered
/// ones, every unbound one on 7.0+) the daemon leaves offline CPUs in the
/// mask (the kernel keeps it across offline and re-affines on online), so
/// the CPUs that count are mask ∩ online.
pub fn placed_mask(pid: u32) -> String {
    let width = affinity::policy::MAX_CPUS;
    let proc = Path::new("/proc");
    let Ok(Some(k)) = affinity::kernel::sysfs::kthread_of(proc, pid, width) else {
        return mask_of(pid);
    };
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if !affinity::policy::kernel_manages_affinity(release.trim(), &k) {
        return mask_of(pid);
    }
    let online = affinity::kernel::sysfs::online_cpus(Path::new("/sys"), width)
        .expect("reading the online CPUs");
    k.cpus_allowed.and(&online).to_string()
}
