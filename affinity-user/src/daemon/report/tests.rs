use super::*;

fn json(r: &Report) -> serde_json::Value {
    let mut rep = Reporter::new(Vec::new(), Format::Json, false);
    rep.report(r);
    let mut v: serde_json::Value =
        serde_json::from_slice(&rep.into_inner()).expect("one JSON object");
    // Every record is stamped; the shapes below are compared without it.
    let ts = v.as_object_mut().unwrap().remove("ts").expect("a ts field");
    assert!(ts.as_u64().unwrap() > 1_600_000_000_000, "{ts}");
    if matches!(r, Report::Started { .. }) {
        assert_eq!(v["schema"], JSON_SCHEMA_VERSION);
    } else {
        assert!(v.get("schema").is_none(), "{v}");
    }
    v
}

#[test]
fn started_carries_the_schema_and_the_shared_words() {
    let v = json(&Report::Started {
        pid: 7,
        observe: false,
        registered: 3,
        pinned: 2,
        online: "0-1".into(),
        housekeeping: "0".into(),
    });
    assert_eq!(
        v,
        serde_json::json!({"type": "started", "pid": 7, "observe": false, "managed": 3,
            "pinned": 2, "online": "0-1", "housekeeping": "0",
            "schema": JSON_SCHEMA_VERSION})
    );
}

#[test]
fn json_shapes_match_the_readme() {
    assert_eq!(
        json(&Report::Hotplug {
            cpu: 1,
            online: false
        }),
        serde_json::json!({"type": "hotplug", "cpu": 1, "online": false})
    );
    assert_eq!(
        json(&Report::Applied {
            pid: 38,
            comm: "khugepaged".into(),
            mask: "0".into()
        }),
        serde_json::json!({"type": "applied", "pid": 38, "comm": "khugepaged", "mask": "0"})
    );
    assert_eq!(
        json(&Report::Violation {
            pid: 38,
            comm: "khugepaged".into(),
            cpu: 1,
            allowed: "0".into(),
            run_us: 180.0,
        }),
        serde_json::json!({"type": "violation", "pid": 38, "comm": "khugepaged", "cpu": 1, "allowed": "0", "run_us": 180.0})
    );
    assert_eq!(
        json(&Report::HotplugAborted {
            cpu: 1,
            online: true,
            step: 203,
            ret: -11
        }),
        serde_json::json!({"type": "hotplug_aborted", "cpu": 1, "online": true, "step": 203, "ret": -11})
    );
    assert_eq!(
        json(&Report::Resync {
            what: "online CPUs are 0-1, not 0".into()
        }),
        serde_json::json!({"type": "resync", "what": "online CPUs are 0-1, not 0"})
    );
    assert_eq!(
        json(&Report::AffinityChanged {
            pid: 38,
            comm: "khugepaged".into(),
            mask: "1".into(),
            by_pid: Some(4242),
            by_comm: Some("taskset".into())
        }),
        serde_json::json!({"type": "affinity_changed", "pid": 38, "comm": "khugepaged", "mask": "1", "by_pid": 4242, "by_comm": "taskset"})
    );
    assert_eq!(
        json(&Report::Pinned {
            pid: 14,
            comm: "ksoftirqd/0".into()
        }),
        serde_json::json!({"type": "pinned", "pid": 14, "comm": "ksoftirqd/0"})
    );
    assert_eq!(
        json(&Report::Drops { count: 3 }),
        serde_json::json!({"type": "drops", "count": 3})
    );
}

#[test]
fn the_summary_adds_up() {
    let line = human(
        &Report::Summary {
            violations: 11,
            suppressed: 9,
            applied: 3,
            hotplug: 2,
            drops: 0,
            records: 40,
            violations_seen: 24,
            registered: 5,
            pinned: 6,
            resyncs: 0,
            refused: 1,
            lines_dropped: 0,
        },
        false,
    );
    assert!(
        line.contains(
            "24 violations seen by the kernel: 11 reported, 9 rate-limited, 4 not (yet) reported; 3 masks applied, 1 refused"
        ),
        "{line}"
    );
}

#[test]
fn human_lines_have_no_colour_unless_asked() {
    let mut plain = Reporter::new(Vec::new(), Format::Human, false);
    plain.report(&Report::Violation {
        pid: 38,
        comm: "khugepaged".into(),
        cpu: 1,
        allowed: "0".into(),
        run_us: 12.5,
    });
    let line = String::from_utf8(plain.into_inner()).unwrap();
    assert!(
        !line.contains('\x1b') && line.contains("khugepaged") && line.contains("cpu1"),
        "{line}"
    );
    let mut colored = Reporter::new(Vec::new(), Format::Human, true);
    colored.report(&Report::Drops { count: 1 });
    assert!(
        String::from_utf8(colored.into_inner())
            .unwrap()
            .contains("\x1b[1;33m")
    );
}

#[test]
fn colour_follows_the_switch_no_color_and_term_dumb() {
    use super::ColorChoice::{Always, Auto, Never};
    assert!(Auto.decide(true, None, Some("xterm-256color")));
    assert!(Auto.decide(true, Some(""), None));
    assert!(!Auto.decide(false, None, Some("xterm")));
    assert!(!Auto.decide(true, Some("1"), Some("xterm")));
    assert!(!Auto.decide(true, None, Some("dumb")));
    assert!(Always.decide(false, Some("1"), Some("dumb")));
    assert!(!Never.decide(true, None, Some("xterm")));
}

#[test]
fn start_up_pinned_reports_fold_into_one_human_line() {
    let mut rep = Reporter::new(Vec::new(), Format::Human, false);
    for pid in [10, 11, 12] {
        rep.report(&Report::Pinned {
            pid,
            comm: format!("ksoftirqd/{}", pid - 10),
        });
    }
    rep.report(&Report::Hotplug {
        cpu: 1,
        online: false,
    });
    rep.report(&Report::Pinned {
        pid: 13,
        comm: "cpuhp/1".into(),
    });
    let out = String::from_utf8(rep.into_inner()).unwrap();
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].ends_with(
            "3 kthreads pinned by the kernel, left alone: ksoftirqd/0[10] ksoftirqd/1[11] ksoftirqd/2[12]"
        ),
        "{out}"
    );
    assert!(lines[2].contains("cpuhp/1"), "{out}");
}

#[test]
fn unbound_workqueue_workers_are_reported_as_following_the_workqueue_mask() {
    assert_eq!(
        json(&Report::FollowsWorkqueue {
            pid: 77,
            comm: "kworker/u8:2".into()
        }),
        serde_json::json!({"type": "follows_workqueue", "pid": 77, "comm": "kworker/u8:2"})
    );
    // At start-up, a line of their own beside the pinned one; later, one each.
    let mut rep = Reporter::new(Vec::new(), Format::Human, false);
    rep.report(&Report::Pinned {
        pid: 10,
        comm: "ksoftirqd/0".into(),
    });
    for (pid, comm) in [(77, "kworker/u8:2"), (78, "kworker/u8:3-events_unbound")] {
        rep.report(&Report::FollowsWorkqueue {
            pid,
            comm: comm.into(),
        });
    }
    rep.report(&Report::Hotplug {
        cpu: 1,
        online: false,
    });
    rep.report(&Report::FollowsWorkqueue {
        pid: 79,
        comm: "kworker/u8:4".into(),
    });
    let out = String::from_utf8(rep.into_inner()).unwrap();
    let lines: Vec<&str> = out.lines().map(|l| &l[13..]).collect();
    assert_eq!(
        lines,
        [
            "pinned 1 kthreads pinned by the kernel, left alone: ksoftirqd/0[10]",
            "follows_workqueue 2 unbound workqueue workers follow the workqueue cpumask: kworker/u8:2[77] kworker/u8:3-events_unbound[78]",
            "hotplug    cpu1 going offline",
            "follows_workqueue      79 kworker/u8:4     follows the workqueue cpumask (/sys/devices/virtual/workqueue/cpumask), its own mask is left alone",
        ]
    );
}

#[test]
fn irqbalance_conflicts_say_who_wins_and_what_to_ban() {
    use crate::policy::IrqOwner;
    let yielding = Report::IrqConflict {
        with: Balancer::Irqbalance,
        pid: 812,
        winner: IrqOwner::Irqbalance,
        banned_cpus: "2-3".into(),
    };
    assert_eq!(
        json(&yielding),
        serde_json::json!({"type": "irq_conflict", "with": "irqbalance", "pid": 812, "winner": "irqbalance", "banned_cpus": "2-3"})
    );
    let ended = Report::IrqConflictEnded {
        with: Balancer::Irqbalance,
        pid: 812,
    };
    assert_eq!(
        json(&ended),
        serde_json::json!({"type": "irq_conflict_ended", "with": "irqbalance", "pid": 812})
    );
    let overriding = Report::IrqConflict {
        with: Balancer::Irqbalance,
        pid: 812,
        winner: IrqOwner::Affinity,
        banned_cpus: String::new(),
    };
    let text: Vec<String> = [yielding, overriding, ended]
        .iter()
        .map(|r| human(r, false)[13..].to_string())
        .collect();
    assert_eq!(
        text,
        [
            "irq_conflict irqbalance (pid 812) is running: IRQ affinity is left to it (--irqs-over-irqbalance: steer anyway); to keep IRQs off CPUs 2-3, set IRQBALANCE_BANNED_CPULIST=2-3 in /etc/default/irqbalance (irqbalance before 1.8: IRQBALANCE_BANNED_CPUS=<hex mask>) and restart it",
            "irq_conflict irqbalance (pid 812) is running: --irqs-over-irqbalance: affinity steers IRQs anyway and puts back what irqbalance moves; no CPU is outside housekeeping, so there is nothing to ban",
            "irq_conflict_ended irqbalance (pid 812) is gone: affinity steers IRQs again",
        ]
    );
}
