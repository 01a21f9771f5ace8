//! The daemon converges to the kernel's truth and its reports can be
//! trusted: hostile callers, failed hotplug steps, lost records, stalled
//! clients, and violations judged against the policy for every online set
//! of a hotplug step. Run with one test thread: hotplug and kthread masks
//! are machine-wide.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{
    fs,
    io::Write,
    os::unix::net::UnixStream,
    process::Command,
    time::{Duration, Instant},
};

use affinity::{
    daemon::kernel::{Kernel, SetAffinityError},
    kernel::{
        procfs::ProcKernel,
        rescan,
        sysfs::{Scan, scan_kthreads},
    },
    policy::CpuSet,
};
use affinity_tests::{
    CpuOffline, SYS_CPU, cpu_online, daemon::Daemon, kthreads, mask_of, movable_kthread,
    naming_callers, pid_of, rcu_gp_kthread, repeats, rule, set_mask, setup, wait_for, wait_mask,
};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);
/// The rules file of most tests: the movable kthread (khugepaged, or
/// khungtaskd where there is none) prefers cpu1.
fn movable_on_1() -> String {
    rule(movable_kthread(), "1")
}

fn of_type(events: &[Value], ty: &str) -> Vec<Value> {
    events.iter().filter(|e| e["type"] == ty).cloned().collect()
}

fn last_summary(d: &Daemon) -> Value {
    d.events()
        .into_iter()
        .rev()
        .find(|e| e["type"] == "summary")
        .expect("a summary")
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); rest[0] is field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as u64 }
}

/// Writes `state` into cpu1's hotplug fault injection; clears it on drop.
struct FailStep;

impl FailStep {
    fn arm(state: u32) -> FailStep {
        let path = format!("{SYS_CPU}/cpu1/hotplug/fail");
        fs::write(&path, state.to_string())
            .unwrap_or_else(|e| panic!("writing {state} to {path}: {e}"));
        FailStep
    }
}

impl Drop for FailStep {
    fn drop(&mut self) {
        let _ = fs::write(format!("{SYS_CPU}/cpu1/hotplug/fail"), "-1");
    }
}

/// The number of a hotplug state by its name, e.g. "perf:online".
fn hotplug_state(name: &str) -> u32 {
    let states = fs::read_to_string(format!("{SYS_CPU}/hotplug/states")).unwrap();
    states
        .lines()
        .find_map(|l| {
            let (n, s) = l.split_once(':')?;
            (s.trim() == name).then(|| n.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no hotplug state {name}: {states}"))
}

/// Takes cpu1 down with the step `state` made to fail; returns once the
/// kernel has refused.
fn failed_offline(state: u32) {
    let fail = FailStep::arm(state);
    let refused = fs::write(format!("{SYS_CPU}/cpu1/online"), "0");
    drop(fail);
    assert!(refused.is_err(), "the injected failure stops the teardown");
    assert!(cpu_online(1), "the kernel rolled cpu1 back");
}

/// No violation but, at most 3 times, the one kind that is real and out of
/// a late daemon's reach: when a kthread's mask ({1}) loses its last online
/// CPU, the kernel's fallback places it on any online CPU, isolated ones
/// included, if the daemon's new mask ({0}, set at the first teardown step)
/// has not landed by the time tasks are migrated off cpu1. A debug build
/// under TCG missed that window about once in 400 steps (5.10 and 6.12 VMs,
/// 2026-12-02). Only that shape passes: judged against the offline set
/// ("0") on a CPU that is neither cpu0 nor cpu1. The hotplug reaction
/// figure in the bench is where that latency is measured (issue 13).
fn only_late_fallback_runs(events: &[Value], summary: &Value, context: &dyn std::fmt::Debug) {
    let violations = of_type(events, "violation");
    let fallback = |v: &Value| v["allowed"] == "0" && v["cpu"].as_u64().is_some_and(|c| c >= 2);
    assert!(
        violations.iter().all(fallback) && violations.len() <= 3,
        "runs the old or the new online set allows are not violations: {summary}; {violations:#?}; {context:#?}"
    );
    let seen = summary["violations_seen"].as_u64().unwrap();
    assert!(
        seen <= 2 * violations.len() as u64,
        "every violation counted was a reported (or rate-limited) fallback run: {summary}; {context:#?}"
    );
}

#[test]
fn a_failed_teardown_puts_the_masks_back() {
    let Some(_masks) = setup("a_failed_teardown_puts_the_masks_back") else {
        return;
    };
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let mut d = Daemon::start_with_config(&movable_on_1(), &[]);
    wait_mask(pid, "1", 2 * SECOND);

    // The first teardown step refused: the kernel runs no undo callback,
    // so no bring-up step ever says cpu1 is back; only the failed step's
    // own return value does.
    let before = d.events().len();
    failed_offline(hotplug_state("sched:active"));
    // Bounds of 5 s, not figures: under TCG a step has taken over a second.
    let aborted = wait_for(5 * SECOND, || {
        d.events_since(before)
            .into_iter()
            .find(|e| e["type"] == "hotplug_aborted")
    })
    .unwrap_or_else(|| panic!("no hotplug_aborted: {:?}", d.events_since(before)));
    assert_eq!(aborted["cpu"], 1, "{aborted}");
    assert_eq!(aborted["online"], true, "{aborted}");
    assert!(aborted["ret"].as_i64().unwrap() < 0, "{aborted}");
    wait_mask(pid, "1", 5 * SECOND);

    // A later step refused (perf:online has a teardown callback on every
    // kernel we test): the first steps ran, the masks shrank, and the
    // kernel's rollback brings cpu1 back; so must the daemon.
    let before = d.events().len();
    failed_offline(hotplug_state("perf:online"));
    wait_mask(pid, "1", 5 * SECOND);
    let back = wait_for(5 * SECOND, || {
        d.events_since(before).into_iter().find(|e| {
            e["cpu"] == 1
                && e["online"] == true
                && (e["type"] == "hotplug_aborted" || e["type"] == "hotplug_handled")
        })
    });
    assert!(back.is_some(), "{:?}", d.events_since(before));
    // And the next real hotplug works as ever.
    {
        let _offline = CpuOffline::new(1);
        wait_mask(pid, "0", 5 * SECOND);
    }
    wait_mask(pid, "1", 5 * SECOND);
    assert!(d.stop().success());
    let s = last_summary(&d);
    only_late_fallback_runs(&d.events(), &s, &"");
    assert_eq!(
        s["resyncs"], 0,
        "the records alone told the whole story: {s}"
    );
}

#[test]
fn an_unprivileged_flood_cannot_crowd_out_hotplug() {
    let Some(_masks) = setup("an_unprivileged_flood_cannot_crowd_out_hotplug") else {
        return;
    };
    let pid = pid_of(movable_kthread());
    let reaper = pid_of("oom_reaper");
    set_mask(pid, "0-1");
    let config = format!("{}\n{}", movable_on_1(), rule("oom_reaper", "0"));
    // Callers named: the flood would be reported if refused calls counted.
    let mut d = Daemon::start_with_config(&config, &naming_callers());
    wait_mask(pid, "1", 2 * SECOND);
    let before = d.events().len();
    let ticks_before = cpu_ticks(d.pid());
    let started = Instant::now();
    // nobody, 2 threads, 10 s, on two registered kthreads: every call EPERM.
    let flood = Command::new(env!("CARGO_BIN_EXE_flood"))
        .args(["65534", "10", "2", &pid.to_string(), &reaper.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the flood");
    std::thread::sleep(SECOND);
    // 3 s per step: under TCG on a 2-core host a step itself has been
    // seen to take more than 1 s with the flood running (2026-12-02, also
    // with the code that passed CI before).
    for _ in 0..5 {
        let _offline = CpuOffline::new(1);
        wait_mask(pid, "0", 3 * SECOND);
        drop(_offline);
        wait_mask(pid, "1", 3 * SECOND);
    }
    let out = flood.wait_with_output().expect("the flood finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut n = text.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    let (calls, failed) = (n.next().unwrap(), n.next().unwrap());
    assert!(calls > 100_000, "a real flood: {calls} calls");
    assert_eq!(calls, failed, "nobody may not move a kthread");
    let elapsed = started.elapsed().as_secs_f64();
    // Let the last records arrive.
    d.wait_event(2 * SECOND, "the last online step handled", |e| {
        e["type"] == "hotplug_handled" && e["online"] == true
    });
    let ticks = cpu_ticks(d.pid()) - ticks_before;
    let events = d.events_since(before);
    let handled = of_type(&events, "hotplug_handled");
    assert_eq!(handled.len(), 10, "every step handled: {handled:?}");
    assert!(of_type(&events, "drops").is_empty(), "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "affinity_changed" && e["by_comm"] == "flood"),
        "a refused call is not a change"
    );
    // The daemon's CPU time while 2 threads flooded: at most 40 % of one
    // CPU, hotplug work included (~1 % on the host, 10-23 % seen under TCG
    // emulation, whose speed varies from day to day); it spent all of a CPU
    // draining records before, which this still catches.
    let cpu = ticks as f64 / ticks_per_second() as f64;
    assert!(
        cpu < 0.4 * elapsed,
        "daemon used {cpu:.2} s of CPU in {elapsed:.1} s of flood"
    );
    assert!(d.stop().success());
    let s = last_summary(&d);
    assert!(
        s["records"].as_u64().unwrap() < 1000,
        "the flood produced no records: {s}"
    );
    eprintln!("flood: {calls} refused calls in {elapsed:.1} s; daemon CPU {cpu:.2} s; {s}");
}

#[test]
fn hotplug_cycles_with_kthreads_preferring_cpu1_are_not_violations() {
    let Some(_masks) = setup("hotplug_cycles_with_kthreads_preferring_cpu1_are_not_violations")
    else {
        return;
    };
    // Every movable kthread prefers cpu1: each offline moves them all to
    // cpu0 and each online back, while they keep running. Except those a
    // 6.14+ kernel re-affines itself on every hotplug step (RCU's, DAMON's):
    // the kernel overriding a preference is a real violation of it.
    let config = "[[rule]]\nmatch = \"rcu*\"\nprefer = \"housekeeping\"\n\n\
                  [[rule]]\nmatch = \"kdamond*\"\nprefer = \"housekeeping\"\n\n\
                  [[rule]]\nmatch = \"*\"\nprefer = \"1\"\n";
    let mut d = Daemon::start_with_config(config, &[]);
    let pid = pid_of(movable_kthread());
    wait_mask(pid, "1", 2 * SECOND);
    let cycles = repeats(200);
    let steps = 2 * cycles;
    for _ in 0..cycles {
        let _offline = CpuOffline::new(1);
    }
    // The daemon may trail the kernel by a few hundred steps here: each
    // step sets every movable kthread's mask, which under TCG took more
    // than 30 s for the backlog on 6.1 (2026-12-02). A bound, not a figure.
    let handled = || {
        d.events()
            .iter()
            .filter(|e| e["type"] == "hotplug_handled")
            .count()
    };
    assert!(
        wait_for(120 * SECOND, || (handled() >= steps).then_some(())).is_some(),
        "{} of {steps} steps handled",
        handled()
    );
    wait_mask(pid, "1", 2 * SECOND);
    // The counters are read every second.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(d.stop().success());
    let s = last_summary(&d);
    assert_eq!(s["hotplug"], steps, "{s}");
    let odd: Vec<Value> = d
        .events()
        .into_iter()
        .filter(|e| {
            ["violation", "resync", "refused", "error"].contains(&e["type"].as_str().unwrap_or(""))
        })
        .collect();
    // Runs the old or the new online set allows are not violations.
    only_late_fallback_runs(&d.events(), &s, &odd);
}

#[test]
fn a_real_violation_is_reported_every_time_with_its_run_time() {
    let Some(_masks) = setup("a_real_violation_is_reported_every_time_with_its_run_time") else {
        return;
    };
    let pid = rcu_gp_kthread();
    set_mask(pid, "0");
    let mut d = Daemon::start(&["--observe", "--isolate", "1"]);
    for round in 0..5 {
        let seen = d.events().len();
        set_mask(pid, "1");
        let moved = Instant::now();
        // Wake it: a grace period.
        let _ = Command::new("true").status();
        let ran = |e: &Value| {
            e["type"] == "violation"
                && e["pid"] == pid
                && e["cpu"] == 1
                && e["run_us"].as_f64().is_some_and(|t| t > 0.0)
        };
        let v = wait_for(SECOND, || d.events_since(seen).into_iter().find(|e| ran(e)))
            .unwrap_or_else(|| {
                panic!(
                    "round {round}: no timed run on cpu1 within 1 s of the move ({:?}); events: {:?}",
                    moved.elapsed(),
                    d.events_since(seen)
                )
            });
        assert_eq!(v["allowed"], "0", "{v}");
        assert!(
            v["run_us"].as_f64().unwrap() > 0.0,
            "with its run time: {v}"
        );
        set_mask(pid, "0");
        // Past the per-pid rate limit (500 ms).
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(mask_of(pid), "0");
    // The last summary's figures come from one moment: everything reported
    // was seen by the kernel, and the rate-limited ones are among the seen.
    d.stop();
    let events = d.events();
    let s = events
        .iter()
        .rev()
        .find(|e| e["type"] == "summary")
        .expect("a summary on exit");
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    assert!(n("violations") >= 5, "{s}");
    assert!(
        n("violations_seen") >= n("violations") + n("suppressed"),
        "seen = reported + rate-limited + not yet reported: {s}"
    );
}

#[test]
fn lost_hotplug_records_converge_to_the_kernels_state() {
    let Some(_masks) = setup("lost_hotplug_records_converge_to_the_kernels_state") else {
        return;
    };
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    // A one-page hotplug ring holds ~85 records; a stopped daemon reads
    // none, so of 60 cycles (180 records) only the first ~28 arrive, and
    // the last of them may say cpu1 is offline. Then only reading sysfs
    // brings the movable kthread back to cpu1.
    let mut d = Daemon::start_with_config(&movable_on_1(), &["--hotplug-ring-bytes", "4096"]);
    wait_mask(pid, "1", 2 * SECOND);
    for round in 0..repeats(3) {
        let seen = d.events().len();
        d.signal(libc::SIGSTOP);
        for _ in 0..60 {
            let _offline = CpuOffline::new(1);
        }
        d.signal(libc::SIGCONT);
        // The counters are read every second, after the backlog the daemon
        // did get is handled: seconds under TCG emulation.
        let drops = wait_for(10 * SECOND, || {
            d.events_since(seen)
                .into_iter()
                .find(|e| e["type"] == "drops")
        })
        .unwrap_or_else(|| panic!("round {round}: no drops reported"));
        assert!(drops["count"].as_u64().unwrap() > 0, "{drops}");
        // cpu1 is online: whatever the last record it read said, the
        // daemon ends where the kernel is.
        wait_mask(pid, "1", 10 * SECOND);
        // If the last step it acted on said cpu1 was going offline, only
        // reading sysfs can have told it otherwise. (It may also act on
        // none: a loss acknowledges every step up to the kernel's, and
        // records older than that are stale.)
        // The report is written by the daemon's output thread and read by
        // ours: it may trail the mask it preceded by a moment.
        let explained = |events: &[Value]| {
            let corrected = events.iter().any(|e| e["type"] == "resync");
            let last_step = events
                .iter()
                .rev()
                .find(|e| e["type"] == "hotplug" || e["type"] == "hotplug_aborted")
                .cloned();
            (corrected || last_step.as_ref().is_none_or(|e| e["online"] == true))
                .then_some(())
                .ok_or(last_step)
        };
        if wait_for(5 * SECOND, || explained(&d.events_since(seen)).ok()).is_none() {
            let events = d.events_since(seen);
            let last_step = explained(&events).err().flatten();
            let tail: Vec<_> = events
                .iter()
                .rev()
                .take(12)
                .map(|e| e.to_string())
                .collect();
            panic!(
                "round {round}: the last step read was {last_step:?} and nothing was corrected; \
                 last events, newest first: {tail:?}"
            );
        }
    }
    // And it keeps working.
    {
        let _offline = CpuOffline::new(1);
        wait_mask(pid, "0", SECOND);
    }
    wait_mask(pid, "1", SECOND);
    assert!(d.is_alive());
}

#[test]
fn a_silent_control_client_delays_neither_hotplug_nor_prefer() {
    let Some(_masks) = setup("a_silent_control_client_delays_neither_hotplug_nor_prefer") else {
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pid = pid_of(movable_kthread());
    let reaper = pid_of("oom_reaper");
    set_mask(pid, "0-1");
    let mut d = Daemon::start_with_config(&movable_on_1(), &["--metrics", &addr.to_string()]);
    wait_mask(pid, "1", 2 * SECOND);
    // Connects and never writes, for the whole test.
    let _silent = UnixStream::connect(&d.socket).expect("connecting");
    {
        let _offline = CpuOffline::new(1);
        let t = Instant::now();
        wait_mask(pid, "0", SECOND);
        assert!(t.elapsed() < SECOND);
    }
    wait_mask(pid, "1", SECOND);
    // Hotplug and scrapes meanwhile, from other threads.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut cycles = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _offline = CpuOffline::new(1);
                if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
                }
                cycles += 1;
                // A breath between cycles: back to back, the hotplug lock
                // is never free, and the daemon's sched_setaffinity (which
                // waits for it) held a reply past 10 s under TCG, with or
                // without a silent client: not what this test is about.
                drop(_offline);
                std::thread::sleep(Duration::from_millis(100));
            }
            cycles
        })
    };
    let mut failures = Vec::new();
    // An even count: the last request (odd i) leaves oom_reaper on 0-1.
    for i in 0..2 * repeats(50) {
        let cpus = if i % 2 == 0 { "0" } else { "0-1" };
        let out = Command::new(affinity_tests::daemon::affinity_bin())
            .args(["prefer", "oom_reaper", cpus, "--update", "--socket"])
            .arg(&d.socket)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!("{i}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let cycles = noise.join().unwrap();
    assert!(failures.is_empty(), "prefer failed: {failures:?}");
    assert!(cycles > 0);
    wait_mask(reaper, "0-1", 2 * SECOND);
    assert!(d.is_alive());
}

/// The CPU masks' width on this machine: the last possible CPU + 1.
fn possible_width() -> u32 {
    fs::read_to_string(format!("{SYS_CPU}/possible"))
        .ok()
        .and_then(|p| CpuSet::parse(&p, 8192).ok())
        .and_then(|s| s.last())
        .unwrap()
        + 1
}

#[test]
fn proc_kernel_sets_reads_back_and_knows_an_exited_pid() {
    let Some(_masks) = setup("proc_kernel_sets_reads_back_and_knows_an_exited_pid") else {
        return;
    };
    let width = possible_width();
    let mut k = ProcKernel::new("/proc", "/sys", width);
    let name = movable_kthread();
    let pid = pid_of(name);
    let me = k
        .kthread(pid)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} is a kthread"));
    let got = k
        .set_affinity(pid, me.start_time, &CpuSet::parse("1", width).unwrap())
        .unwrap_or_else(|e| panic!("setting {name}'s mask: {e:?}"));
    assert_eq!(got.to_string(), "1", "the mask read back");
    assert_eq!(mask_of(pid), "1");
    // Another start time: a reused pid is never touched.
    assert!(matches!(
        k.set_affinity(pid, me.start_time + 1, &CpuSet::parse("0", width).unwrap()),
        Err(SetAffinityError::Gone(_))
    ));
    assert_eq!(mask_of(pid), "1");
    // A pinned kthread.
    let (pinned, _, _) = kthreads()
        .into_iter()
        .find(|(_, c, _)| c.starts_with("ksoftirqd/"))
        .expect("a ksoftirqd");
    let pk = k.kthread(pinned).unwrap().unwrap();
    assert!(matches!(
        k.set_affinity(pinned, pk.start_time, &CpuSet::parse("0-1", width).unwrap()),
        Err(SetAffinityError::Pinned(_))
    ));
    // A pid that exited: not a kthread, and gone.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    assert!(k.kthread(dead).unwrap().is_none());
    assert!(matches!(
        k.set_affinity(dead, 0, &CpuSet::parse("0", width).unwrap()),
        Err(SetAffinityError::Gone(_))
    ));
    let online = k.online_cpus().unwrap();
    assert_eq!(
        online.to_string(),
        fs::read_to_string(format!("{SYS_CPU}/online"))
            .unwrap()
            .trim()
    );
    assert!(k.cpu_settled(1));
}

/// The cheap periodic rescan (kernel/rescan.rs) on this kernel: what it
/// takes as believed is what a full read says, a mask changed behind the
/// daemon's back is read in full, and with cpu1 offline (where
/// sched_getaffinity answers the mask ∩ the active CPUs) a mask naming cpu1
/// is still taken for what it is.
#[test]
fn a_quick_rescan_agrees_with_a_full_one_and_sees_a_changed_mask() {
    let Some(_masks) = setup("a_quick_rescan_agrees_with_a_full_one_and_sees_a_changed_mask")
    else {
        return;
    };
    let width = possible_width();
    let cpus = |l: &str| CpuSet::parse(l, width).unwrap();
    let name = movable_kthread();
    let pid = pid_of(name);
    set_mask(pid, "0-1");
    let believe = |online: &str| {
        let full = scan_kthreads("/proc".as_ref(), width).unwrap();
        rescan::Believed {
            kthreads: full.kthreads.iter().map(|k| (k.pid, k.clone())).collect(),
            online: Some(cpus(online)),
        }
    };
    // Compares the kthreads both scans saw (kworkers come and go).
    let agree = |quick: &Scan, full: &Scan| {
        let both: Vec<_> = quick
            .kthreads
            .iter()
            .filter_map(|q| {
                full.kthreads
                    .iter()
                    .find(|f| f.pid == q.pid)
                    .map(|f| (q, f))
            })
            .collect();
        assert!(
            both.len() * 10 >= full.kthreads.len() * 9,
            "{} of {} kthreads in both scans",
            both.len(),
            full.kthreads.len()
        );
        for (q, f) in both {
            if q.start_time == f.start_time {
                // /proc names a kworker by the work it runs now
                // ("kworker/0:0-events", then "-mm_percpu_wq"): the quick
                // scan keeps the name it had; the worker is the same.
                let worker = |c: &str| match c.split_once('-') {
                    Some((w, _)) if c.starts_with("kworker/") && w.contains(':') => w.to_string(),
                    _ => c.to_string(),
                };
                assert_eq!(
                    (q.pid, worker(&q.comm), q.flags, &q.cpus_allowed),
                    (f.pid, worker(&f.comm), f.flags, &f.cpus_allowed),
                    "{q:?} against {f:?}"
                );
            }
        }
    };

    let believed = believe("0-1");
    let quick = rescan::quick_scan("/proc".as_ref(), width, &believed).unwrap();
    agree(&quick, &scan_kthreads("/proc".as_ref(), width).unwrap());

    // Changed behind its back: read in full, so the scan says so.
    set_mask(pid, "1");
    let quick = rescan::quick_scan("/proc".as_ref(), width, &believed).unwrap();
    let k = quick.kthreads.iter().find(|k| k.pid == pid).unwrap();
    assert_eq!(k.cpus_allowed.to_string(), "1", "{name} after taskset");

    // cpu1 offline: the kernel keeps the mask 0-1 and answers 0.
    set_mask(pid, "0-1");
    let _offline = CpuOffline::new(1);
    let believed = believe("0");
    assert_eq!(
        believed.kthreads[&pid].cpus_allowed,
        cpus("0-1"),
        "{name}'s mask with cpu1 offline"
    );
    let quick = rescan::quick_scan("/proc".as_ref(), width, &believed).unwrap();
    agree(&quick, &scan_kthreads("/proc".as_ref(), width).unwrap());
    // A stale belief that differs on an online CPU is still caught.
    let mut stale = believed.clone();
    stale.kthreads.get_mut(&pid).unwrap().cpus_allowed = cpus("1");
    let quick = rescan::quick_scan("/proc".as_ref(), width, &stale).unwrap();
    let k = quick.kthreads.iter().find(|k| k.pid == pid).unwrap();
    assert_eq!(
        k.cpus_allowed.to_string(),
        "0-1",
        "{name} with a stale belief"
    );
}

#[test]
fn a_caller_in_another_pid_namespace_is_not_taken_for_a_kthreads_mover() {
    let Some(_masks) = setup("a_caller_in_another_pid_namespace_is_not_taken_for_a_kthreads_mover")
    else {
        return;
    };
    let kthreadd = pid_of("kthreadd");
    assert_eq!(kthreadd, 2, "kthreadd is pid 2 in the initial namespace");
    // Callers named (fexit, or the tracepoints where it is refused).
    let d = Daemon::start(&naming_callers());
    let seen = d.events().len();
    // In a new pid namespace the shell is pid 1 and its first child pid 2:
    // `taskset -p 1 2` there moves the child, and succeeds. Its target pid
    // number is 2, kthreadd's global pid.
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg("sleep 5 & taskset -p 1 $! && kill $!")
        .output()
        .expect("running unshare");
    assert!(
        out.status.success(),
        "unshare: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pid 2's new affinity"),
        "the call really targeted pid 2 in its namespace: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(SECOND);
    let changed: Vec<Value> = d
        .events_since(seen)
        .into_iter()
        .filter(|e| e["type"] == "affinity_changed")
        .collect();
    assert!(changed.is_empty(), "no kthread was moved: {changed:?}");
}
