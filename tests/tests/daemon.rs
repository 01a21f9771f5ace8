//! The daemon on the real kernel: real kthreads, real hotplug of cpu1, the
//! real `affinity` binary. Run with one test thread: hotplug and kthread
//! masks are machine-wide.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{process::Command, time::Duration};

use affinity_tests::{
    CpuOffline,
    daemon::{Daemon, affinity_bin},
    fexit_allowed, kthreads, mask_of, movable_kthread, naming_callers, pid_of, rcu_gp_kthread,
    repeats, rule, set_mask, setup, wait_for, wait_mask,
};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);

fn is(v: &Value, ty: &str, pid: u32) -> bool {
    v["type"] == ty && v["pid"] == pid
}

/// The rules file of most tests: the movable kthread (khugepaged, or
/// khungtaskd where there is none) prefers cpu1.
fn movable_on_1() -> String {
    rule(movable_kthread(), "1")
}

#[test]
fn rule_follows_cpu1_offline_and_online() {
    let Some(_masks) = setup("rule_follows_cpu1_offline_and_online") else {
        return;
    };
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let mut d = Daemon::start_with_config(&movable_on_1(), &[]);
    d.wait_event(5 * SECOND, "the movable kthread applied to 1", |e| {
        is(e, "applied", pid) && e["mask"] == "1"
    });
    wait_mask(pid, "1", SECOND);

    let before = d.events().len();
    {
        let _offline = CpuOffline::new(1);
        wait_mask(pid, "0", SECOND);
        d.wait_event(SECOND, "hotplug offline", |e| {
            e["type"] == "hotplug" && e["cpu"] == 1 && e["online"] == false
        });
        d.wait_event(SECOND, "applied 0", |e| {
            is(e, "applied", pid) && e["mask"] == "0"
        });
    }
    wait_mask(pid, "1", SECOND);
    d.wait_event(SECOND, "hotplug online", |e| {
        e["type"] == "hotplug" && e["cpu"] == 1 && e["online"] == true
    });
    // The mask is in place before its report is read: wait for the report,
    // then check nothing more came.
    d.wait_event(SECOND, "the online step handled", |e| {
        e["type"] == "hotplug_handled" && e["cpu"] == 1 && e["online"] == true
    });
    let after: Vec<_> = d
        .events_since(before)
        .into_iter()
        .filter(|e| is(e, "applied", pid))
        .map(|e| e["mask"].clone())
        .collect();
    assert_eq!(
        after,
        ["0", "1"],
        "{}: one apply per transition",
        movable_kthread()
    );
    assert!(d.stop().success(), "the daemon exits 0 on SIGTERM");
}

fn taskset_moves(observe: bool) {
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let config = rule(movable_kthread(), "0");
    // Named by fexit, or where it is refused (this host) by the tracepoints.
    let mut args = naming_callers().to_vec();
    if observe {
        args.push("--observe");
    }
    let mut d = Daemon::start_with_config(&config, &args);
    if !observe {
        wait_mask(pid, "0", 2 * SECOND);
    }
    let mut taskset = Command::new("taskset")
        .args(["-pc", "1", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let taskset_pid = taskset.id();
    assert!(taskset.wait().unwrap().success());
    let ev = d.wait_event(2 * SECOND, "affinity_changed naming taskset", |e| {
        is(e, "affinity_changed", pid)
    });
    assert_eq!(ev["by_comm"], "taskset", "{ev}");
    assert_eq!(ev["by_pid"], taskset_pid, "{ev}");
    assert_eq!(ev["mask"], "1", "{ev}");
    if observe {
        std::thread::sleep(SECOND);
        assert_eq!(mask_of(pid), "1", "--observe changes nothing");
    } else {
        wait_mask(pid, "0", SECOND);
    }
}

#[test]
fn taskset_on_a_registered_kthread_is_named_and_undone() {
    let Some(_masks) = setup("taskset_on_a_registered_kthread_is_named_and_undone") else {
        return;
    };
    taskset_moves(false);
}

#[test]
fn observe_reports_taskset_but_changes_nothing() {
    let Some(_masks) = setup("observe_reports_taskset_but_changes_nothing") else {
        return;
    };
    taskset_moves(true);
}

#[test]
fn isolate_moves_every_movable_kthread_off_cpu1() {
    let Some(_masks) = setup("isolate_moves_every_movable_kthread_off_cpu1") else {
        return;
    };
    // IRQ threads follow their IRQ (steered with --irqs): left alone, and
    // said so.
    let (irq_threads, movable): (Vec<_>, Vec<_>) = kthreads()
        .into_iter()
        .filter(|(_, _, f)| f & affinity_common::PF_NO_SETAFFINITY == 0)
        .partition(|(_, c, _)| c.starts_with("irq/"));
    let alive = |p: u32| std::path::Path::new(&format!("/proc/{p}")).exists();
    // Spread them over both CPUs first, so the restore below is visible.
    for (p, _, _) in &movable {
        set_mask(*p, "0-1");
    }
    let before: Vec<(u32, String)> = movable.iter().map(|(p, _, _)| (*p, mask_of(*p))).collect();
    let mut d = Daemon::start(&["--isolate", "1", "--restore-on-exit"]);
    assert!(!movable.is_empty());
    let stuck = wait_for(3 * SECOND, || {
        let on1: Vec<_> = movable
            .iter()
            .filter(|(p, _, _)| std::path::Path::new(&format!("/proc/{p}")).exists())
            .filter(|(p, _, _)| mask_of(*p) != "0")
            .map(|(p, c, _)| format!("{c}({p})={}", mask_of(*p)))
            .collect();
        on1.is_empty().then_some(()).or(None)
    });
    if stuck.is_none() {
        let on1: Vec<_> = movable
            .iter()
            .map(|(p, c, _)| format!("{c}({p})={}", mask_of(*p)))
            .collect();
        panic!("movable kthreads still allowed on cpu1: {on1:?}");
    }
    let events = d.events();
    for (p, c, _) in &irq_threads {
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "follows_irq" && e["pid"] == *p && e["comm"] == *c),
            "{c} ({p}) reported as following its IRQ"
        );
    }
    let mut pinned: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "pinned")
        .map(|e| e["pid"].as_u64().unwrap())
        .collect();
    assert!(
        !pinned.is_empty(),
        "per-CPU kthreads are reported as pinned"
    );
    let n = pinned.len();
    pinned.sort();
    pinned.dedup();
    assert_eq!(n, pinned.len(), "each pinned kthread is reported once");
    assert!(d.stop().success());
    // --restore-on-exit put every mask back as it was.
    let after: Vec<(u32, String)> = before
        .iter()
        .filter(|(p, _)| alive(*p))
        .map(|(p, _)| (*p, mask_of(*p)))
        .collect();
    let before: Vec<(u32, String)> = before.into_iter().filter(|(p, _)| alive(*p)).collect();
    assert_eq!(
        after, before,
        "--restore-on-exit restores the original masks"
    );
}

#[test]
fn kthread_running_on_an_isolated_cpu_is_a_violation() {
    let Some(_masks) = setup("kthread_running_on_an_isolated_cpu_is_a_violation") else {
        return;
    };
    // Keep the RCU kthread on cpu1, which we declare isolated but (observe)
    // do not enforce: every time it runs is a violation.
    let pid = rcu_gp_kthread();
    set_mask(pid, "1");
    let mut d = Daemon::start(&["--observe", "--isolate", "1"]);
    let v = d.wait_event(10 * SECOND, "a violation by the RCU kthread on cpu1", |e| {
        is(e, "violation", pid)
    });
    assert_eq!(v["cpu"], 1, "{v}");
    assert_eq!(v["allowed"], "0", "{v}");
    assert_eq!(mask_of(pid), "1", "--observe changed nothing");
    // Rate-limited in the kernel: far fewer reports than runs.
    std::thread::sleep(SECOND);
    let reports = d
        .events()
        .iter()
        .filter(|e| is(e, "violation", pid))
        .count();
    assert!(
        reports <= 4,
        "at most one report per pid per 500 ms, got {reports} in ~1 s"
    );
}

#[test]
fn rule_matching_a_userspace_process_leaves_it_alone() {
    let Some(_masks) = setup("rule_matching_a_userspace_process_leaves_it_alone") else {
        return;
    };
    let mut bash = Command::new("bash")
        .args(["-c", "sleep 60"])
        .spawn()
        .unwrap();
    let bash_pid = bash.id();
    let before = mask_of(bash_pid);
    let config = format!(
        "[[rule]]\nmatch = \"bash\"\nprefer = \"1\"\n\n[[rule]]\nmatch = \"sleep\"\nprefer = \"1\"\n\n{}",
        movable_on_1()
    );
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let mut d = Daemon::start_with_config(&config, &[]);
    d.wait_event(5 * SECOND, "the movable kthread applied", |e| {
        is(e, "applied", pid)
    });
    std::thread::sleep(Duration::from_millis(2500)); // past one rescan
    assert_eq!(
        mask_of(bash_pid),
        before,
        "a userspace process is never touched"
    );
    assert!(
        !d.events().iter().any(|e| e["pid"] == bash_pid),
        "nothing reported about bash"
    );
    let _ = bash.kill();
    let _ = bash.wait();
}

fn prefer(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(affinity_bin())
        .arg("prefer")
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap()
}

#[test]
fn prefer_twice_needs_update_and_root() {
    let Some(_masks) = setup("prefer_twice_needs_update_and_root") else {
        return;
    };
    let pid = pid_of("oom_reaper");
    set_mask(pid, "0-1");
    let d = Daemon::start_with_config(&movable_on_1(), &[]);
    let first = prefer(&d, &["oom_reaper", "0"]);
    assert!(
        first.status.success(),
        "first prefer: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    wait_mask(pid, "0", SECOND);
    let again = prefer(&d, &["oom_reaper", "1"]);
    assert!(
        !again.status.success(),
        "registering twice without --update must fail"
    );
    let msg = String::from_utf8_lossy(&again.stderr);
    assert!(
        msg.contains("already") && msg.contains("--update"),
        "clear message: {msg}"
    );
    assert_eq!(mask_of(pid), "0", "a refused registration changes nothing");
    let update = prefer(&d, &["oom_reaper", "1", "--update"]);
    assert!(
        update.status.success(),
        "update: {}",
        String::from_utf8_lossy(&update.stderr)
    );
    wait_mask(pid, "1", SECOND);

    // A non-root client (nobody) is refused, whatever it asks.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(affinity_bin())
        .args(["prefer", "oom_reaper", "0", "--update", "--socket"])
        .arg(&d.socket)
        .output()
        .expect("running setpriv");
    assert!(!out.status.success(), "non-root client must be refused");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("only root") || msg.contains("ermission denied"),
        "{msg}"
    );
    assert_eq!(mask_of(pid), "1");
}

fn affinity(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(affinity_bin())
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_and_verify_ask_the_running_daemon() {
    let Some(_masks) = setup("status_and_verify_ask_the_running_daemon") else {
        return;
    };
    let name = movable_kthread();
    let movable = pid_of(name);
    let oom = pid_of("oom_reaper");
    set_mask(oom, "0-1");
    let mut d = Daemon::start_with_config(&movable_on_1(), &[]);
    wait_mask(movable, "1", SECOND);
    let first = prefer(&d, &["oom*", "0"]);
    assert!(first.status.success(), "{first:?}");
    wait_mask(oom, "0", SECOND);

    // The live registry: the rules file's rule and the runtime registration,
    // with who made it, which a rules file alone cannot show.
    let (ok, out, err) = affinity(&d, &["status", "--format", "json"]);
    assert!(ok, "status: {err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["source"], "daemon");
    assert_eq!(s["daemon_running"], true);
    let row = |pid: u32| {
        s["kthreads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["pid"] == pid)
            .cloned()
            .unwrap_or_else(|| panic!("pid {pid} not in {s}"))
    };
    let k = row(movable);
    assert_eq!(
        (&k["rule"], &k["applied"], &k["current"], &k["drift"]),
        (&name.into(), &"1".into(), &"1".into(), &false.into())
    );
    let o = row(oom);
    assert_eq!(
        (&o["rule"], &o["applied"]),
        (&"runtime".into(), &"0".into())
    );
    // 7.0+ manages every unbound kthread itself: the daemon sets only where
    // the policy differs, and status names the kernel as the manager.
    assert!(
        ["affinity", "kernel_preferred"].contains(&o["managed_by"].as_str().unwrap()),
        "{o}"
    );
    let regs = s["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 1, "{s}");
    assert_eq!(
        (&regs[0]["target"], &regs[0]["prefer"]),
        (&"oom*".into(), &"0".into())
    );
    assert_eq!(regs[0]["pids"], serde_json::json!([oom]));
    assert!(
        regs[0]["by"].as_str().unwrap().starts_with("uid 0, pid "),
        "{}",
        regs[0]
    );

    let (ok, out, _) = affinity(&d, &["prefer", "--list"]);
    assert!(
        ok && out.contains("oom*") && out.contains(&oom.to_string()),
        "{out}"
    );
    // unprefer by the kthread's name names the glob that holds it.
    let (ok, _, err) = affinity(&d, &["unprefer", "oom_reaper"]);
    assert!(!ok && err.contains("affinity unprefer 'oom*'"), "{err}");

    let (ok, out, err) = affinity(&d, &["verify"]);
    assert!(ok, "verify with everything in place: {out}{err}");
    d.stop();
    let (ok, out, err) = affinity(&d, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("no daemon is running"), "{out}");

    // A daemon that only observes leaves the movable kthread where it is:
    // its live view says that is drift, and verify fails naming it.
    set_mask(movable, "0-1");
    let d = Daemon::start_with_config(&movable_on_1(), &["--observe"]);
    let (ok, out, err) = affinity(&d, &["verify"]);
    assert!(!ok, "verify must fail: {out}{err}");
    assert!(
        out.contains(name) && out.contains("--observe") && out.contains("drift: 1 "),
        "{out}"
    );
    assert_eq!(mask_of(movable), "0-1");
}

#[test]
fn apply_sets_the_policy_once_and_refuses_to_run_beside_a_daemon() {
    let Some(_masks) = setup("apply_sets_the_policy_once_and_refuses_to_run_beside_a_daemon")
    else {
        return;
    };
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, movable_on_1()).unwrap();
    let apply = |socket: &std::path::Path| {
        Command::new(affinity_bin())
            .arg("apply")
            .arg("-c")
            .arg(&rules)
            .args(["--format", "json", "--socket"])
            .arg(socket)
            .output()
            .unwrap()
    };
    let out = apply(&dir.path().join("control.sock"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mask_of(pid), "1");
    let done: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(done["type"], "apply_done");
    assert_eq!(
        ["managed", "set", "in_place", "refused", "errors"].map(|k| done[k].as_u64()),
        [Some(1), Some(1), Some(1), Some(0), Some(0)]
    );
    assert!(
        !dir.path().join("control.sock").exists(),
        "apply leaves no socket behind"
    );

    // Beside a daemon (which enforces and would fight it): refused, nothing set.
    set_mask(pid, "0-1");
    let mut d = Daemon::start(&["--observe"]);
    let out = apply(&d.socket);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "apply beside a daemon must fail");
    assert!(err.contains("does not run beside a daemon"), "{err}");
    assert_eq!(mask_of(pid), "0-1", "nothing set");
    d.stop();
}

#[test]
fn sighup_and_reload_apply_a_good_config_once_and_refuse_a_bad_one_whole() {
    let Some(_masks) =
        setup("sighup_and_reload_apply_a_good_config_once_and_refuse_a_bad_one_whole")
    else {
        return;
    };
    let movable = pid_of(movable_kthread());
    let oom = pid_of("oom_reaper");
    set_mask(movable, "0-1");
    set_mask(oom, "0-1");
    let mut d = Daemon::start_with_config(&movable_on_1(), &[]);
    wait_mask(movable, "1", SECOND);
    let rules = d.dir().join("rules.toml");

    // A bad file: its first rule would move the movable kthread, its second
    // is wrong. Nothing of it is applied, and the error has its position
    // (line 7, column 10: the second rule's prefer value, whatever the
    // first rule's name).
    std::fs::write(
        &rules,
        format!(
            "{}\n[[rule]]\nmatch = \"oom_reaper\"\nprefer = \"0-x\"\n",
            rule(movable_kthread(), "0")
        ),
    )
    .unwrap();
    let seen = d.events().len();
    d.signal(libc::SIGHUP);
    let refused = d.wait_event(5 * SECOND, "the refused reload", |e| {
        e["type"] == "reload_refused"
    });
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("rules.toml:7:10"),
        "{refused}"
    );
    let (ok, _, err) = affinity(&d, &["reload"]);
    assert!(!ok && err.contains("running policy is unchanged"), "{err}");
    std::thread::sleep(SECOND / 2);
    assert_eq!((mask_of(movable), mask_of(oom)), ("1".into(), "0-1".into()));

    // A good one, through the control socket this time, with cpu1 going
    // away and back meanwhile: applied once, as a diff of two kthreads.
    std::fs::write(
        &rules,
        format!(
            "{}\n{}",
            rule(movable_kthread(), "0"),
            rule("oom_reaper", "0")
        ),
    )
    .unwrap();
    {
        let _offline = CpuOffline::new(1);
        let (ok, out, err) = affinity(&d, &["reload"]);
        assert!(ok, "{err}");
        assert!(out.contains("2 kthreads changed"), "{out}");
    }
    wait_mask(movable, "0", SECOND);
    wait_mask(oom, "0", SECOND);
    let reloads: Vec<_> = d
        .events_since(seen)
        .into_iter()
        .filter(|e| e["type"] == "reloaded")
        .collect();
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert_eq!(reloads[0]["changed"], 2);
    assert!(d.is_alive(), "SIGHUP must not end the daemon");
}

fn all_masks() -> Vec<(u32, String, String)> {
    kthreads()
        .into_iter()
        .filter(|(p, _, _)| std::path::Path::new(&format!("/proc/{p}")).exists())
        .map(|(p, c, _)| (p, c, mask_of(p)))
        .collect()
}

#[test]
fn sigkill_and_restart_converge_to_the_same_masks() {
    let Some(_masks) = setup("sigkill_and_restart_converge_to_the_same_masks") else {
        return;
    };
    let pid = pid_of(movable_kthread());
    let config = format!("{}\n{}", movable_on_1(), rule("oom_reaper", "0"));
    set_mask(pid, "0-1");
    let mut d = Daemon::start_with_config(&config, &[]);
    d.wait_event(5 * SECOND, "the movable kthread applied", |e| {
        is(e, "applied", pid)
    });
    std::thread::sleep(SECOND);
    let first = all_masks();
    let status = d.stop_with(libc::SIGKILL);
    drop(d);
    assert!(!status.success());
    // Someone moves things while no daemon runs.
    set_mask(pid, "0-1");
    let d2 = Daemon::start_with_config(&config, &[]);
    wait_mask(pid, "1", 2 * SECOND);
    std::thread::sleep(SECOND);
    let second = all_masks();
    let first: std::collections::BTreeMap<_, _> =
        first.into_iter().map(|(p, c, m)| ((p, c), m)).collect();
    for (p, c, m) in second {
        if let Some(m1) = first.get(&(p, c.clone())) {
            assert_eq!(&m, m1, "{c} ({p}) converged to another mask after restart");
        }
    }
    drop(d2);
}

/// Our programs loaded now (id, name), from the one list of program names
/// (the kernel keeps 15 characters of a name).
fn our_programs(preexisting: &[u32]) -> Vec<(u32, String)> {
    let names: Vec<String> = affinity_common::programs::ALL
        .iter()
        .map(|n| n.chars().take(15).collect())
        .collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| !preexisting.contains(&p.id()))
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_string())))
        .filter(|(_, n)| names.contains(n))
        .collect()
}

/// Links attached to any of `programs`.
fn links_to(programs: &[u32]) -> Vec<u32> {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| programs.contains(&l.program_id()))
        .map(|l| l.program_id())
        .collect()
}

#[test]
fn ctrl_c_exits_zero_and_detaches_every_program() {
    let Some(_masks) = setup("ctrl_c_exits_zero_and_detaches_every_program") else {
        return;
    };
    use affinity_common::programs as p;
    let preexisting: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let [flag, how] = naming_callers();
    let mut d = Daemon::start(&["--observe", flag, how]);
    let alive = our_programs(&preexisting);
    let mut names: Vec<&str> = alive.iter().map(|(_, n)| n.as_str()).collect();
    names.sort();
    let short = |n: &str| n.chars().take(15).collect::<String>();
    let mut want: Vec<String> = p::BTF_TRACEPOINTS.iter().map(|(n, _)| short(n)).collect();
    // Who moved a kthread: fexit where the kernel allows it, else (asked
    // for) both syscall tracepoints.
    if how == "fexit" {
        want.extend(p::FEXITS.iter().map(|(n, _)| short(n)));
    } else {
        want.push(short(p::SETAFFINITY_ENTER));
        want.push(short(p::SETAFFINITY_EXIT));
    }
    want.sort();
    assert_eq!(names, want, "every program loaded while the daemon runs");
    let ids: Vec<u32> = alive.iter().map(|(id, _)| *id).collect();
    let mut linked = links_to(&ids);
    linked.sort();
    let mut expect = ids.clone();
    expect.sort();
    assert_eq!(linked, expect, "each program attached through one link");

    let status = d.stop_with(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "Ctrl-C exits 0");
    assert!(
        wait_for(2 * SECOND, || (our_programs(&preexisting).is_empty()
            && links_to(&ids).is_empty())
        .then_some(()))
        .is_some(),
        "left behind: programs {:?}, links to {:?}",
        our_programs(&preexisting),
        links_to(&ids)
    );
}

#[test]
fn attribute_loads_exactly_the_programs_it_names_or_refuses_to_start() {
    let Some(_masks) = setup("attribute_loads_exactly_the_programs_it_names_or_refuses_to_start")
    else {
        return;
    };
    use affinity_common::programs as p;
    let preexisting: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let short = |n: &str| n.chars().take(15).collect::<String>();
    let loaded = || {
        let mut names: Vec<String> = our_programs(&preexisting)
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        names.sort();
        names
    };
    let mut tracepoints: Vec<String> = p::BTF_TRACEPOINTS.iter().map(|(n, _)| short(n)).collect();
    tracepoints.sort();
    // off: nothing names callers, and nothing taxes syscalls.
    let mut d = Daemon::start(&["--observe", "--attribute", "off"]);
    assert_eq!(loaded(), tracepoints, "--attribute off");
    assert!(d.stop().success());
    // fexit: where the kernel refuses it, the daemon says so and exits 1
    // before it changes a mask.
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("affinity.toml");
    let on_0 = rule(movable_kthread(), "0");
    std::fs::write(&config, &on_0).unwrap();
    if fexit_allowed() {
        let mut d = Daemon::start_with_config(&on_0, &["--attribute", "fexit"]);
        let mut want = tracepoints.clone();
        want.extend(p::FEXITS.iter().map(|(n, _)| short(n)));
        want.sort();
        assert_eq!(loaded(), want, "--attribute fexit");
        wait_mask(pid, "0", 2 * SECOND);
        assert!(d.stop().success());
    } else {
        let out = Command::new(affinity_bin())
            .args(["run", "--attribute", "fexit", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(dir.path().join("control.sock"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("--attribute fexit: the kernel refused fexit"),
            "names what was asked and refused: {err}"
        );
        assert_eq!(mask_of(pid), "0-1", "nothing set: {err}");
        // The kernel frees a dead process's programs a moment later.
        assert!(
            wait_for(5 * SECOND, || loaded().is_empty().then_some(())).is_some(),
            "left loaded: {:?}",
            loaded()
        );
    }
}

#[test]
fn two_hundred_hotplug_cycles_end_consistent() {
    let Some(_masks) = setup("two_hundred_hotplug_cycles_end_consistent") else {
        return;
    };
    let pid = pid_of(movable_kthread());
    let reaper = pid_of("oom_reaper");
    let config = format!("{}\n{}", movable_on_1(), rule("oom_reaper", "0-1"));
    set_mask(pid, "0-1");
    let mut d = Daemon::start_with_config(&config, &[]);
    d.wait_event(5 * SECOND, "the movable kthread applied", |e| {
        is(e, "applied", pid)
    });
    let cycles = repeats(200);
    for _ in 0..cycles {
        let _offline = CpuOffline::new(1);
    }
    wait_mask(pid, "1", 2 * SECOND);
    wait_mask(reaper, "0-1", 2 * SECOND);
    assert!(d.is_alive(), "the daemon survived {cycles} cycles");
    assert!(d.stop().success());
    let events = d.events();
    let summary = events
        .iter()
        .rev()
        .find(|e| e["type"] == "summary")
        .expect("a final summary");
    let drops = summary["drops"]
        .as_u64()
        .unwrap_or_else(|| panic!("drops is a number: {summary}"));
    let hotplug = summary["hotplug"].as_u64().unwrap();
    if drops == 0 {
        assert_eq!(
            hotplug,
            2 * cycles as u64,
            "every transition seen when nothing was dropped: {summary}"
        );
    } else {
        assert!(
            events.iter().any(|e| e["type"] == "drops"),
            "drops are reported as they happen"
        );
    }
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let Some(_masks) = setup("metrics_endpoint_serves_prometheus_text") else {
        return;
    };
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let mut d = Daemon::start_with_config(&movable_on_1(), &["--metrics", &addr.to_string()]);
    d.wait_event(5 * SECOND, "the movable kthread applied", |e| {
        is(e, "applied", pid)
    });
    {
        let _offline = CpuOffline::new(1);
        wait_mask(pid, "0", SECOND);
    }
    wait_mask(pid, "1", SECOND);
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(body.contains("affinity_hotplug_events_total 2"), "{body}");
    assert!(
        body.contains("affinity_reapplies_total 3"),
        "start, offline, online: {body}"
    );
    assert!(body.contains("affinity_registered_kthreads 1"), "{body}");
    assert!(body.contains("affinity_drops_total 0"), "{body}");
    // Both steps timed from the kernel's event, and the kernel named.
    assert!(
        body.contains("\naffinity_hotplug_reaction_seconds_count 2\n"),
        "{body}"
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        body.contains(&format!(
            "affinity_build_info{{version=\"{}\",kernel=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            release.trim()
        )),
        "{body}"
    );
}

#[test]
fn doctor_checks_this_kernel_and_exits_by_what_the_default_policy_needs() {
    let Some(_masks) =
        setup("doctor_checks_this_kernel_and_exits_by_what_the_default_policy_needs")
    else {
        return;
    };
    use affinity_common::programs as p;
    let preexisting: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let doctor = |prefix: &[&str]| {
        let mut cmd = if prefix.is_empty() {
            Command::new(affinity_bin())
        } else {
            let mut c = Command::new(prefix[0]);
            c.args(&prefix[1..]).arg(affinity_bin());
            c
        };
        let out = cmd.args(["doctor", "--format", "json"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor's JSON: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), v)
    };
    let (code, v) = doctor(&[]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["ready"], true, "{v:#}");
    assert_eq!(v["missing"], serde_json::json!([]), "{v:#}");
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "kernel",
            "btf",
            "capabilities",
            "programs",
            "attribution",
            "lockdown",
            "pid_namespace",
            "hotplug",
            "isolation",
            "cgroup_cpuset",
            "irqs",
            "workqueue"
        ]
    );
    let of = |name: &str| checks.iter().find(|c| c["check"] == name).unwrap().clone();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        of("kernel")["detail"]
            .as_str()
            .unwrap()
            .starts_with(release.trim()),
        "{v:#}"
    );
    let fexit = fexit_allowed();
    let attached = p::BTF_TRACEPOINTS.len() + if fexit { p::FEXITS.len() } else { 0 };
    assert_eq!(of("programs")["status"], "ok", "{v:#}");
    assert_eq!(
        of("programs")["detail"],
        format!("{attached} programs loaded and attached, then detached")
    );
    assert_eq!(
        of("attribution")["status"],
        if fexit { "ok" } else { "limited" },
        "{v:#}"
    );
    assert_eq!(of("hotplug")["status"], "ok", "cpu1 can go offline: {v:#}");
    if std::env::var("AFFINITY_VM").as_deref() == Ok("1") {
        assert_eq!(
            of("isolation")["status"],
            "ok",
            "the VM isolates 2-3: {v:#}"
        );
    }
    // The kernel frees a dead process's programs a moment later.
    assert!(
        wait_for(5 * SECOND, || our_programs(&preexisting)
            .is_empty()
            .then_some(()))
        .is_some(),
        "the trial load left programs behind: {:?}",
        our_programs(&preexisting)
    );
    // Without CAP_BPF the programs cannot even be tried: exit 1, and both
    // are named.
    let (code, v) = doctor(&["setpriv", "--bounding-set", "-bpf", "--"]);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["ready"], false);
    assert_eq!(
        v["missing"],
        serde_json::json!(["capabilities", "programs"]),
        "{v:#}"
    );
    assert_eq!(
        of_in(&v, "capabilities")["detail"],
        "missing from CapEff: CAP_BPF"
    );
}

fn of_in(v: &Value, name: &str) -> Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap()
        .clone()
}

#[test]
fn restore_gives_the_masks_a_stopped_daemon_left_back_to_the_kernel() {
    let Some(_masks) = setup("restore_gives_the_masks_a_stopped_daemon_left_back_to_the_kernel")
    else {
        return;
    };
    // The kernel's own mask for an unbound kthread, as it gave kthreadd
    // (the guard put back every mask a test changed): HK_TYPE_KTHREAD
    // before 7.0 (0-3 on the 5.10 guest, which has no nohz_full; 0-1 where
    // nohz_full is 2-3), HK_TYPE_DOMAIN from 7.0.
    let own = mask_of(pid_of("kthreadd"));
    let own = own.as_str();
    let name = movable_kthread();
    let pid = pid_of(name);
    let reaper = pid_of("oom_reaper");
    set_mask(pid, own);
    set_mask(reaper, own);
    let config = format!("{}\n{}", rule(name, "0"), rule("oom_reaper", "0"));
    let mut d = Daemon::start_with_config(&config, &[]);
    wait_mask(pid, "0", 2 * SECOND);
    wait_mask(reaper, "0", 2 * SECOND);
    assert!(d.stop().success());
    let record_path = d.dir().join("masks.json");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(record["kernel"], release.trim());
    let left: Vec<(String, String)> = record["kthreads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["comm"].as_str().unwrap().into(),
                k["set"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(left.contains(&(name.into(), "0".into())), "{record:#}");
    assert!(
        left.contains(&("oom_reaper".into(), "0".into())),
        "{record:#}"
    );
    assert_eq!(mask_of(pid), "0", "left in place by default");
    // Someone moves oom_reaper after the daemon stopped: not ours to undo.
    set_mask(reaper, "1");
    let restore = |extra: &[&str]| {
        let out = Command::new(affinity_bin())
            .arg("restore")
            .args(extra)
            .arg("--socket")
            .arg(&d.socket)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = restore(&["--format", "json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let row = |v: &Value, comm: &str| {
        v["kthreads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["comm"] == comm)
            .cloned()
            .unwrap_or_else(|| panic!("{comm} in {v:#}"))
    };
    let k = row(&v, name);
    assert_eq!(
        (&k["outcome"], &k["from"], &k["to"]),
        (&"set".into(), &"0".into(), &own.into()),
        "{v:#}"
    );
    assert_eq!(row(&v, "oom_reaper")["outcome"], "changed", "{v:#}");
    assert_eq!(v["restored"], 1, "{v:#}");
    assert_eq!(mask_of(pid), own, "given back to the kernel's policy");
    assert_eq!(mask_of(reaper), "1", "someone else's mask stays");
    assert!(!record_path.exists(), "a restored record is removed");
    let (code, _, err) = restore(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no record of masks left by the daemon"),
        "{err}"
    );
    // --all covers what no record names; --dry-run changes nothing.
    let (code, out, err) = restore(&["--all", "--dry-run", "--format", "json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let r = row(&v, "oom_reaper");
    assert_eq!(
        (&r["outcome"], &r["to"]),
        (&"would_set".into(), &own.into()),
        "{v:#}"
    );
    assert_eq!(mask_of(reaper), "1");
    // Never beside a running daemon.
    let d2 = Daemon::start_with_config(&config, &[]);
    wait_mask(pid, "0", 2 * SECOND);
    let out = Command::new(affinity_bin())
        .args(["restore", "--all", "--socket"])
        .arg(&d2.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("does not run beside a daemon"), "{err}");
    assert_eq!(mask_of(pid), "0", "nothing changed under the daemon");
}

#[test]
fn systemd_hears_ready_after_the_first_masks_and_stopping_at_the_end() {
    let Some(_masks) = setup("systemd_hears_ready_after_the_first_masks_and_stopping_at_the_end")
    else {
        return;
    };
    use std::os::unix::net::UnixDatagram;
    let pid = pid_of(movable_kthread());
    set_mask(pid, "0-1");
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd.set_read_timeout(Some(20 * SECOND)).unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, movable_on_1()).unwrap();
    let mut child = Command::new(affinity_bin())
        .args(["run", "--config"])
        .arg(&rules)
        .arg("--socket")
        .arg(dir.path().join("control.sock"))
        .env("NOTIFY_SOCKET", &notify)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = systemd.recv(&mut buf).expect("READY=1 within 20 s");
    // Read at once: the first masks are set before READY=1 is sent.
    let mask = mask_of(pid);
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        ready.starts_with("READY=1\nSTATUS=enforcing: ") && ready.contains(" kthreads managed, "),
        "{ready:?}"
    );
    assert_eq!(mask, "1", "{} set before READY=1", movable_kthread());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = systemd.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=stopping");
    assert!(child.wait().unwrap().success());
}
