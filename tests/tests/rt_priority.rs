//! `--rt-priority`: the event loop under SCHED_FIFO (priority 1 by default
//! when enforcing), every other thread of the daemon at normal priority. Run with one test thread.

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

/// The daemon's threads as (is the main thread, policy, priority).
fn started_with(args: &[&str]) -> Vec<(bool, u32, u32)> {
    let mut d = Daemon::start(args);
    let pid = d.pid();
    let all = threads(pid)
        .into_iter()
        .map(|(tid, policy, prio)| (tid == pid, policy, prio))
        .collect();
    assert!(d.stop().success(), "the daemon exits 0 on SIGTERM");
    all
}

#[test]
fn rt_priority_puts_only_the_event_loop_under_sched_fifo() {
    let Some(_masks) = setup("rt_priority_puts_only_the_event_loop_under_sched_fifo") else {
        return;
    };
    const SCHED_FIFO: u32 = 1;
    for (args, main) in [
        (&["--rt-priority", "10"][..], (SCHED_FIFO, 10)),
        // The default when enforcing: the lowest real-time priority.
        (&[][..], (SCHED_FIFO, 1)),
        (&["--rt-priority", "0"][..], (0, 0)),
        // Observing reacts to nothing: normal priority unless asked.
        (&["--observe"][..], (0, 0)),
    ] {
        let all = started_with(args);
        assert!(
            all.len() > 1,
            "{args:?}: more than the main thread: {all:?}"
        );
        for (is_main, policy, prio) in &all {
            let want = if *is_main { main } else { (0, 0) };
            assert_eq!((*policy, *prio), want, "{args:?}: {all:?}");
        }
    }

    // Out of range: refused before anything starts, exit 2.
    for bad in ["100", "x"] {
        let out = Command::new(affinity_bin())
            .args(["run", "--rt-priority", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--rt-priority {bad}: {err}");
        assert!(err.contains("--rt-priority"), "{err}");
    }
}
