//! `--rt-priority`: the event loop under SCHED_FIFO, every other thread of
//! the daemon at normal priority. Run with one test thread.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{fs, process::Command};

use affinity_tests::{
    daemon::{Daemon, affinity_bin},
    setup,
};

/// (policy, rt_priority) of each thread: /proc/PID/task/TID/stat fields 41
/// and 40, counted after the comm's closing parenthesis.
fn threads(pid: u32) -> Vec<(u32, u32, u32)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: u32 = t.unwrap().file_name().to_string_lossy().parse().unwrap();
        let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        // rest[0] is field 3.
        out.push((
            tid,
            rest[41 - 3].parse().unwrap(),
            rest[40 - 3].parse().unwrap(),
        ));
    }
    out.sort();
    out
}

#[test]
fn rt_priority_puts_only_the_event_loop_under_sched_fifo() {
    let Some(_masks) = setup("rt_priority_puts_only_the_event_loop_under_sched_fifo") else {
        return;
    };
    let mut d = Daemon::start(&["--rt-priority", "10"]);
    let pid = d.pid();
    let all = threads(pid);
    const SCHED_FIFO: u32 = 1;
    assert!(
        all.len() > 1,
        "the daemon has more than its main thread: {all:?}"
    );
    for (tid, policy, prio) in &all {
        if *tid == pid {
            assert_eq!(
                (*policy, *prio),
                (SCHED_FIFO, 10),
                "the event loop: {all:?}"
            );
        } else {
            assert_eq!(
                (*policy, *prio),
                (0, 0),
                "thread {tid} runs at normal priority: {all:?}"
            );
        }
    }
    assert!(d.stop().success(), "the daemon exits 0 on SIGTERM");

    // Out of range: refused before anything starts, exit 2.
    for bad in ["0", "100", "x"] {
        let out = Command::new(affinity_bin())
            .args(["run", "--rt-priority", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--rt-priority {bad}: {err}");
        assert!(err.contains("--rt-priority"), "{err}");
    }
}
