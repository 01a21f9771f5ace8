//! A cgroup v2 isolated partition made and removed at run time, in the
//! vm-test guest (4 vCPUs, isolcpus=2,3: housekeeping 0-1). The daemon
//! re-reads the root's `cpuset.cpus.isolated` every second: the managed
//! kthreads leave the partition's CPU within 2 s and come back after it is
//! removed. Kernels without `cpuset.cpus.isolated` (before 6.8: Debian's
//! 5.10 and 6.1) cannot show a partition to the daemon at all; there the
//! test says so, with the kernel's version, and passes.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use affinity_tests::{
    daemon::{Daemon, affinity_bin},
    in_vm, placed_mask, setup, wait_for,
};
use serde_json::Value;

const CGROUP: &str = "/sys/fs/cgroup";

/// The partition's directory; put back to a plain member and removed on drop.
struct Partition(PathBuf);

impl Partition {
    fn isolate(cpus: &str) -> Partition {
        let dir = Path::new(CGROUP).join("affinity-test-isolated");
        let _ = fs::create_dir(&dir);
        let p = Partition(dir);
        fs::write(p.0.join("cpuset.cpus"), cpus).unwrap();
        fs::write(p.0.join("cpuset.cpus.partition"), "isolated").unwrap();
        let state = fs::read_to_string(p.0.join("cpuset.cpus.partition")).unwrap();
        assert_eq!(state.trim(), "isolated", "the partition is valid");
        p
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cpuset.cpus.partition"), "member");
        let _ = fs::remove_dir(&self.0);
    }
}

/// cgroup v2 at /sys/fs/cgroup with the cpuset controller on for children.
fn cgroup2_with_cpuset() {
    let root = Path::new(CGROUP);
    if !root.join("cgroup.controllers").exists() {
        let status = Command::new("mount")
            .args(["-t", "cgroup2", "none", CGROUP])
            .status()
            .unwrap();
        assert!(status.success(), "mounting cgroup2 at {CGROUP}");
    }
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap();
    assert!(
        controllers.split_whitespace().any(|c| c == "cpuset"),
        "no cpuset controller in cgroup v2: {controllers}"
    );
    fs::write(root.join("cgroup.subtree_control"), "+cpuset").unwrap();
}

/// The kthreads the running daemon manages (its policy, or the kernel's
/// own where they agree), with its housekeeping.
fn managed(d: &Daemon) -> (String, Vec<(u32, String)>) {
    let out = Command::new(affinity_bin())
        .args(["status", "--format", "json", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["kthreads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| ["affinity", "kernel_preferred"].contains(&r["managed_by"].as_str().unwrap()))
        .map(|r| {
            (
                r["pid"].as_u64().unwrap() as u32,
                r["comm"].as_str().unwrap().to_string(),
            )
        })
        .filter(|(p, _)| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    (v["housekeeping"].as_str().unwrap().to_string(), rows)
}

/// No kthread's mask set twice since event `seen` (the kernel's own move
/// and the daemon's must not fight); how many were set.
fn set_at_most_once(d: &Daemon, seen: usize, what: &str) -> usize {
    std::thread::sleep(Duration::from_millis(500));
    let mut per_pid = std::collections::BTreeMap::<u64, usize>::new();
    for e in d.events_since(seen) {
        if e["type"] == "applied" {
            *per_pid.entry(e["pid"].as_u64().unwrap()).or_default() += 1;
        }
    }
    assert!(
        per_pid.values().all(|&n| n == 1),
        "{what}: a kthread set more than once (pid: times): {per_pid:?}"
    );
    per_pid.len()
}

/// Waits (2 s at most) until the daemon's housekeeping is `want`.
fn housekeeping_becomes(d: &Daemon, want: &str) -> Duration {
    let start = Instant::now();
    if wait_for(Duration::from_secs(2), || {
        (managed(d).0 == want).then_some(())
    })
    .is_none()
    {
        panic!(
            "the daemon's housekeeping is {} after 2 s, not {want}",
            managed(d).0
        );
    }
    start.elapsed()
}

/// A line in the guest log even when the test passes (libtest captures
/// only the print macros).
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Waits until every managed kthread is placed on `want`; the time it took.
fn all_placed(d: &Daemon, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let done = wait_for(within, || {
        let (_, rows) = managed(d);
        rows.iter()
            .all(|(p, _)| placed_mask(*p) == want)
            .then_some(())
    });
    if done.is_none() {
        let (hk, rows) = managed(d);
        let off: Vec<String> = rows
            .iter()
            .filter(|(p, _)| placed_mask(*p) != want)
            .map(|(p, c)| format!("{c}[{p}] on {}", placed_mask(*p)))
            .collect();
        panic!("after {within:?}, housekeeping {hk}, not on {want}: {off:?}");
    }
    start.elapsed()
}

#[test]
fn an_isolated_partition_made_at_run_time_moves_managed_kthreads_off_and_back() {
    let name = "an_isolated_partition_made_at_run_time_moves_managed_kthreads_off_and_back";
    let Some(_masks) = setup(name) else {
        return;
    };
    if !in_vm() {
        let why = "needs the vm-test guest (AFFINITY_VM=1): it makes a cgroup v2 partition";
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{name}: {why}");
        }
        eprintln!("SKIPPED {name}: {why}");
        return;
    }
    cgroup2_with_cpuset();
    if !Path::new(CGROUP).join("cpuset.cpus.isolated").exists() {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        say(&format!(
            "NOT APPLICABLE {name}: kernel {} has no {CGROUP}/cpuset.cpus.isolated (added in 6.8), \
             so no partition is visible to the daemon",
            release.trim()
        ));
        return;
    }
    let mut d = Daemon::start(&[]);
    let (hk, rows) = managed(&d);
    assert_eq!(hk, "0-1");
    assert!(!rows.is_empty(), "the default policy manages kthreads");
    all_placed(&d, "0-1", Duration::from_secs(2));

    // On 7.x the kernel moves the kthreads it manages itself, at once; the
    // daemon's housekeeping follows within its 1 s re-read either way.
    let seen = d.events().len();
    let partition = Partition::isolate("1");
    let took = all_placed(&d, "0", Duration::from_secs(2));
    let hk = housekeeping_becomes(&d, "0");
    let made = set_at_most_once(&d, seen, "the partition made");
    say(&format!(
        "{name}: off cpu1 after {took:?}, housekeeping 0 after {hk:?}, {made} masks set"
    ));

    let seen = d.events().len();
    drop(partition);
    let took = all_placed(&d, "0-1", Duration::from_secs(2));
    let hk = housekeeping_becomes(&d, "0-1");
    let removed = set_at_most_once(&d, seen, "the partition removed");
    say(&format!(
        "{name}: back on cpu1 after {took:?}, housekeeping 0-1 after {hk:?}, {removed} masks set"
    ));
    assert!(d.stop().success(), "the daemon exits 0 on SIGTERM");
}
