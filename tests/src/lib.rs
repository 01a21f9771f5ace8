//! Shared helpers for the kernel integration tests.
//!
//! These tests need root, BPF, tracefs and a hot-pluggable cpu1. Outside CI a
//! machine without them skips the tests loudly; under CI (`CI=true`) it fails
//! them, so a green run always means the kernel tests ran.

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
