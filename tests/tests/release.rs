//! Handing kthreads back to the kernel. From 6.2 every sched_setaffinity()
//! is also kept as the task's `user_cpus_ptr`, and the kernel's own
//! re-affines (kcompactd on every CPU online before 6.14, the preferred
//! affinity of 6.14, every unbound kthread on 7.0) are intersected with it.
//! A mask the daemon leaves behind when it lets a kthread go must not clip
//! what the kernel does next. kcompactd0 is the kthread every kernel here
//! re-affines itself on CPU online; on 5.10 and 6.1 (no user_cpus_ptr) the
//! same tests show the hand-back gives the kernel's own mask.
//! Run with one test thread.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{process::Command, time::Duration};

use affinity_tests::{
    CpuOffline,
    daemon::{Daemon, affinity_bin},
    mask_of, pid_of, rule, setup, wait_mask,
};

const SECOND: Duration = Duration::from_secs(1);

fn affinity(d: &Daemon, args: &[&str]) -> String {
    let out = Command::new(affinity_bin())
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "affinity {args:?}: {stdout}{stderr}");
    stdout.into_owned()
}

/// The CPUs of a cpulist such as "0-1,3".
fn cpus(list: &str) -> Vec<u32> {
    list.split(',')
        .flat_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            a.trim().parse::<u32>().unwrap()..=b.trim().parse::<u32>().unwrap()
        })
        .collect()
}

/// Offlines and onlines cpu1: the kernel re-affines kcompactd0 itself.
fn kernel_reaffines() {
    let _offline = CpuOffline::new(1);
    std::thread::sleep(SECOND / 5);
}

#[test]
fn a_kthread_the_daemon_lets_go_follows_the_kernels_own_reaffine_again() {
    let Some(_masks) = setup("a_kthread_the_daemon_lets_go_follows_the_kernels_own_reaffine_again")
    else {
        return;
    };
    let pid = pid_of("kcompactd0");
    // The kernel's own mask, every CPU online.
    let own = mask_of(pid);
    let mut d = Daemon::start_with_config(&rule("kcompactd0", "0"), &[]);
    wait_mask(pid, "0", SECOND);

    // Its rule goes (a reload): handed back, the kernel's mask at once.
    std::fs::write(
        d.dir().join("rules.toml"),
        "[housekeeping]\ncpus = \"auto\"\n",
    )
    .unwrap();
    assert!(affinity(&d, &["reload"]).contains("1 kthreads changed"));
    wait_mask(pid, &own, SECOND);

    // A runtime preference, then `unprefer`: the same.
    affinity(&d, &["prefer", "kcompactd0", "0"]);
    wait_mask(pid, "0", SECOND);
    affinity(&d, &["unprefer", "kcompactd0"]);
    wait_mask(pid, &own, SECOND);
    assert!(d.stop().success(), "the daemon exits 0 on SIGTERM");

    // The daemon is gone; the kernel re-affines it on the next CPU online,
    // unclipped by anything the daemon set.
    kernel_reaffines();
    wait_mask(pid, &own, SECOND);
}

#[test]
fn restore_with_a_cpu_offline_leaves_no_clip_on_the_kernels_next_reaffine() {
    let Some(_masks) =
        setup("restore_with_a_cpu_offline_leaves_no_clip_on_the_kernels_next_reaffine")
    else {
        return;
    };
    let pid = pid_of("kcompactd0");
    let own = mask_of(pid);
    let mut d = Daemon::start_with_config(&rule("kcompactd0", "0"), &[]);
    wait_mask(pid, "0", SECOND);
    // Stopped, it leaves kcompactd0 on 0 and says so in masks.json.
    assert!(d.stop().success(), "the daemon exits 0 on SIGTERM");
    {
        let _offline = CpuOffline::new(1);
        let out = affinity(&d, &["restore", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["restored"], 1, "{v}");
        // Written with cpu1 out: the kernel's policy with cpu1 in (an
        // offline CPU in a mask is not run on; before 6.2 the cpuset takes
        // it out).
        let without_1 = |l: &str| cpus(l).into_iter().filter(|&c| c != 1).collect::<Vec<_>>();
        assert_eq!(without_1(&mask_of(pid)), without_1(&own), "{v}");
    }
    // Had restore written the kernel's mask of that moment (0), cpu1's
    // return would be clipped to it on 6.2+.
    wait_mask(pid, &own, SECOND);
    kernel_reaffines();
    wait_mask(pid, &own, SECOND);
}
