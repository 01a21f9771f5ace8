//! New kthreads on the host kernel: rules apply to kthreads created while
//! the daemon runs, and their exit is reported.
//!
//! Host only (`host_*` test targets are not run in the vm-test guests): the
//! test makes the kernel create a kthread by mounting an ext4 image through
//! a loop device, which virtme-ng guests refuse (EPERM).

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{process::Command, time::Duration};

use affinity_tests::{daemon::Daemon, mask_of, setup};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);

fn is(v: &Value, ty: &str, pid: u32) -> bool {
    v["type"] == ty && v["pid"] == pid
}

/// Unmounts and detaches on drop, whatever happened.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn rules_apply_to_kthreads_created_later_and_exits_are_forgotten() {
    let Some(_masks) = setup("rules_apply_to_kthreads_created_later_and_exits_are_forgotten")
    else {
        return;
    };
    // Mounting ext4 makes the kernel create a journal kthread, jbd2/loopN-8.
    // The image lives on a tmpfs of our own: in the VM guest /tmp is an
    // overlay that loop devices cannot back.
    let ok = |c: &mut Command| {
        let out = c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"));
        assert!(
            out.status.success(),
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "affinity-test"])
        .arg(&scratch));
    let _scratch = Mounted(scratch.clone());
    let img = scratch.join("fs.img");
    ok(Command::new("truncate").args(["-s", "16M"]).arg(&img));
    ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    // loop is a module on Debian's kernels; built in elsewhere.
    let _ = Command::new("modprobe")
        .arg("loop")
        .stderr(std::process::Stdio::null())
        .status();
    let mut d = Daemon::start_with_config("[[rule]]\nmatch = \"jbd2/*\"\nprefer = \"1\"\n", &[]);
    ok(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    let mounted = Mounted(mnt.clone());
    let applied = d.wait_event(
        5 * SECOND,
        "the new jbd2 kthread registered and applied",
        |e| {
            e["type"] == "applied"
                && e["comm"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("jbd2/loop"))
                && e["mask"] == "1"
        },
    );
    let pid = applied["pid"].as_u64().unwrap() as u32;
    assert_eq!(mask_of(pid), "1");
    drop(mounted);
    d.wait_event(5 * SECOND, "the jbd2 kthread's exit", |e| {
        is(e, "exited", pid)
    });
    assert!(d.stop().success());
}
