//! Least privilege on the real kernel: the daemon runs as a user that is
//! not root with only CAP_BPF, CAP_PERFMON and CAP_SYS_NICE (and
//! CAP_SYS_RESOURCE before 5.11), and is refused by name when root lacks them.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{process::Command, time::Duration};

use affinity_tests::{
    daemon::{Daemon, affinity_bin},
    mask_of, movable_kthread, pid_of, rule, set_mask, setup, wait_mask,
};

const NOBODY: u32 = 65534;

/// The capabilities granted, as setpriv takes them, and as CapEff shows them:
/// CAP_SYS_NICE (23), CAP_PERFMON (38), CAP_BPF (39), and before 5.11, where
/// BPF memory is charged to RLIMIT_MEMLOCK, CAP_SYS_RESOURCE (24) to raise it.
fn granted() -> (&'static str, u64) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = v.next().unwrap().parse().unwrap();
    let minor: u32 = v.next().unwrap().parse().unwrap();
    let three = (1 << 23) | (1 << 38) | (1 << 39);
    if (major, minor) < (5, 11) {
        ("+bpf,+perfmon,+sys_nice,+sys_resource", three | (1 << 24))
    } else {
        ("+bpf,+perfmon,+sys_nice", three)
    }
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// What the daemon keeps once its programs are attached: CAP_SYS_NICE (23)
/// and CAP_BPF (39).
const KEPT: u64 = (1 << 23) | (1 << 39);

fn status_field_of(pid: u32, tid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/task/{tid}/status"))
}

#[test]
fn a_user_with_only_three_capabilities_enforces_and_reports() {
    let Some(_masks) = setup("a_user_with_only_three_capabilities_enforces_and_reports") else {
        return;
    };
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let uid = NOBODY.to_string();
    let (caps, cap_eff) = granted();
    let prefix = [
        "setpriv",
        "--reuid",
        &uid,
        "--regid",
        &uid,
        "--clear-groups",
        "--inh-caps",
        caps,
        "--ambient-caps",
        caps,
    ];
    let rules = rule(movable_kthread(), "1");
    let mut d = Daemon::start_as(&prefix, NOBODY, &rules, &[]);
    d.wait_event(
        Duration::from_secs(5),
        "the movable kthread applied to 1",
        |e| e["type"] == "applied" && e["pid"] == pid && e["mask"] == "1",
    );
    wait_mask(pid, "1", Duration::from_secs(1));
    // Really not root, and holding exactly what was granted.
    assert_eq!(
        status_field(d.pid(), "Uid:").split_whitespace().nth(1),
        Some(uid.as_str()),
        "effective uid"
    );
    // Granted `cap_eff`, it kept only what a loaded daemon uses, in every
    // thread: CAP_BPF for the maps and CAP_SYS_NICE for the masks.
    assert_ne!(cap_eff, KEPT, "the test grants more than is kept");
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap() {
        let tid: u32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        for field in ["CapEff:", "CapPrm:"] {
            let caps = u64::from_str_radix(&status_field_of(d.pid(), tid, field), 16).unwrap();
            assert_eq!(caps, KEPT, "thread {tid} {field} {caps:#x}");
        }
        let inh = u64::from_str_radix(&status_field_of(d.pid(), tid, "CapInh:"), 16).unwrap();
        assert_eq!(inh, 0, "thread {tid} CapInh {inh:#x}");
    }
    let status = d.stop();
    assert!(status.success(), "{status:?}: {:?}", d.stderr());
}

#[test]
fn root_without_the_capabilities_is_refused_by_name_before_anything_changes() {
    let Some(_masks) =
        setup("root_without_the_capabilities_is_refused_by_name_before_anything_changes")
    else {
        return;
    };
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-bpf,-perfmon", "--"])
        .arg(affinity_bin())
        .args(["run", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`affinity run` needs CAP_BPF, CAP_PERFMON: missing"),
        "names exactly the missing ones: {err}"
    );
    assert_eq!(err.lines().count(), 1, "said once: {err}");
    assert!(!socket.exists(), "no socket bound");
    assert_eq!(mask_of(pid), "0-1", "nothing set");
}
