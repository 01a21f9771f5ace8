use std::collections::BTreeMap;

use super::*;
use crate::policy::{IrqTarget, Preference, WorkqueueRule};

fn s(list: &str) -> CpuSet {
    CpuSet::parse(list, 4).unwrap()
}

/// Two nodes (0-1, 2-3), all online.
fn topo(online: &str) -> Topology {
    Topology {
        width: 4,
        possible: s("0-3"),
        online: s(online),
        nodes: BTreeMap::from([(0, s("0-1")), (1, s("2-3"))]),
    }
}

fn irq(number: u32, action: &str, mask: &str, effective: &str) -> IrqInfo {
    IrqInfo {
        number,
        actions: vec![action.to_string()],
        node: Some(1),
        affinity: s(mask),
        effective: Some(s(effective)),
    }
}

fn scan(irqs: Vec<IrqInfo>) -> SteerEvent {
    SteerEvent::Scan(SteerScan {
        irqs,
        unreadable: Vec::new(),
        default_affinity: Some(s("0-3")),
        workqueue: Some(s("0-3")),
        workqueues: Vec::new(),
    })
}

fn write(file: MaskFile, action: &str, mask: &str) -> SteerAction {
    SteerAction::Write {
        file,
        actions: if action.is_empty() {
            Vec::new()
        } else {
            vec![action.into()]
        },
        mask: s(mask),
    }
}

fn note(file: MaskFile, action: &str, note: SteerNote) -> SteerAction {
    SteerAction::Report {
        file,
        actions: if action.is_empty() {
            Vec::new()
        } else {
            vec![action.into()]
        },
        note,
    }
}

fn written(file: MaskFile, mask: &str, effective: Option<&str>) -> SteerEvent {
    SteerEvent::Written {
        file,
        requested: s(mask),
        current: s(mask),
        effective: effective.map(s),
    }
}

fn set(mask: &str, effective: Option<&str>) -> SteerNote {
    SteerNote::Set {
        mask: s(mask),
        effective: effective.map(s),
    }
}

const NVME: MaskFile = MaskFile::Irq(40);
const ETH: MaskFile = MaskFile::Irq(41);
const SERIAL: MaskFile = MaskFile::Irq(4);

/// H = 0-1; nvme* prefers its node (1: CPUs 2-3), irq 4 prefers CPU 3.
fn engine() -> SteerEngine {
    let rules = vec![
        IrqRule {
            target: IrqTarget::Action("nvme*".into()),
            prefer: Preference::OwnNode,
            line: 2,
        },
        IrqRule {
            target: IrqTarget::Number(4),
            prefer: Preference::Cpus(s("3")),
            line: 6,
        },
    ];
    SteerEngine::new(topo("0-3"), s("0-1"), rules)
}

fn started() -> SteerEngine {
    let mut e = engine();
    let actions = e.handle(scan(vec![
        irq(4, "ttyS0", "0-3", "2"),
        irq(40, "nvme0q1", "0-3", "3"),
        irq(41, "eth0", "0-1", "1"),
    ]));
    // nvme0q1 prefers node 1, which is not housekeeping: H∩O; irq 4
    // likewise; eth0 is where the default puts it already.
    assert_eq!(
        actions,
        [
            write(MaskFile::IrqDefault, "", "0-1"),
            write(SERIAL, "ttyS0", "0-1"),
            write(NVME, "nvme0q1", "0-1"),
            write(MaskFile::Workqueue, "", "0-1"),
        ]
    );
    e
}

#[test]
fn start_up_writes_what_is_not_in_place_in_file_order() {
    let e = started();
    let eth = e.entry(ETH).unwrap();
    assert_eq!(
        (eth.state, eth.rule.as_deref(), eth.written),
        (SteerState::Steered, None, false)
    );
    let nvme = e.entry(NVME).unwrap();
    assert_eq!(
        (nvme.state, nvme.rule.as_deref(), &nvme.original),
        (SteerState::Pending, Some("nvme*"), &s("0-3"))
    );
}

#[test]
fn a_write_is_asked_once_until_answered() {
    let mut e = started();
    // A rescan while the writes are under way (or, observing, never
    // answered): nothing asked twice.
    assert_eq!(
        e.handle(scan(vec![
            irq(4, "ttyS0", "0-3", "2"),
            irq(40, "nvme0q1", "0-3", "3"),
            irq(41, "eth0", "0-1", "1"),
        ])),
        []
    );
}

#[test]
fn written_and_delivered_inside_is_set_outside_a_mismatch_said_once() {
    let mut e = started();
    assert_eq!(
        e.handle(written(NVME, "0-1", Some("0"))),
        [note(NVME, "nvme0q1", set("0-1", Some("0")))]
    );
    assert_eq!(e.entry(NVME).unwrap().state, SteerState::Steered);
    // The kernel took the mask but still delivers on 2 (a move pending
    // until the next interrupt).
    assert_eq!(
        e.handle(written(SERIAL, "0-1", Some("2"))),
        [note(
            SERIAL,
            "ttyS0",
            SteerNote::Mismatch {
                desired: s("0-1"),
                mask: s("0-1"),
                effective: Some(s("2"))
            }
        )]
    );
    // Not written again on the next scan; once delivered inside, steered.
    assert_eq!(
        e.handle(scan(vec![
            irq(4, "ttyS0", "0-1", "2"),
            irq(40, "nvme0q1", "0-1", "0"),
            irq(41, "eth0", "0-1", "1"),
        ])),
        []
    );
    assert_eq!(e.entry(SERIAL).unwrap().state, SteerState::Mismatch);
    assert_eq!(
        e.handle(scan(vec![
            irq(4, "ttyS0", "0-1", "1"),
            irq(40, "nvme0q1", "0-1", "0"),
            irq(41, "eth0", "0-1", "1"),
        ])),
        []
    );
    assert_eq!(e.entry(SERIAL).unwrap().state, SteerState::Steered);
}

#[test]
fn a_managed_irq_is_reported_once_and_never_written_again() {
    let mut e = started();
    let refused = SteerEvent::Refused {
        file: NVME,
        mask: s("0-1"),
        why: WriteRefusal::Managed,
        message: "EIO".into(),
    };
    assert_eq!(
        e.handle(refused),
        [note(NVME, "nvme0q1", SteerNote::KernelManaged)]
    );
    // Neither a rescan nor a hotplug step nor a housekeeping change tries it.
    assert_eq!(
        e.handle(scan(vec![
            irq(4, "ttyS0", "0-3", "2"),
            irq(40, "nvme0q1", "0-3", "3"),
            irq(41, "eth0", "0-1", "1"),
        ])),
        []
    );
    let actions = e.handle(SteerEvent::Topology(topo("0,2-3")));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, SteerAction::Write { file, .. } if *file == NVME)),
        "{actions:?}"
    );
    assert_eq!(e.entry(NVME).unwrap().state, SteerState::KernelManaged);
    assert!(
        e.restore().iter().all(|(f, _)| *f != NVME),
        "never written: nothing to restore"
    );
}

#[test]
fn a_refused_mask_is_said_once_and_tried_again_only_for_a_new_mask() {
    let mut e = started();
    let refused = || SteerEvent::Refused {
        file: MaskFile::Workqueue,
        mask: s("0-1"),
        why: WriteRefusal::Invalid,
        message: "Invalid argument".into(),
    };
    assert_eq!(
        e.handle(refused()),
        [note(
            MaskFile::Workqueue,
            "",
            SteerNote::Refused {
                mask: s("0-1"),
                message: "Invalid argument".into()
            }
        )]
    );
    assert_eq!(
        e.handle(scan(vec![
            irq(4, "ttyS0", "0-3", "2"),
            irq(40, "nvme0q1", "0-3", "3"),
            irq(41, "eth0", "0-1", "1"),
        ])),
        []
    );
    // Housekeeping grows: a new mask, asked for.
    assert_eq!(
        e.handle(SteerEvent::Housekeeping(s("0-2"))),
        [
            write(MaskFile::IrqDefault, "", "0-2"),
            write(SERIAL, "ttyS0", "0-2"),
            // nvme0q1 prefers 2-3: P∩H∩O is 2 now.
            write(NVME, "nvme0q1", "2"),
            write(ETH, "eth0", "0-2"),
            write(MaskFile::Workqueue, "", "0-2"),
        ]
    );
}

/// Everything written and delivered as asked, from `started()`.
fn settled() -> SteerEngine {
    let mut e = started();
    for f in [MaskFile::IrqDefault, SERIAL, NVME, MaskFile::Workqueue] {
        let eff = matches!(f, MaskFile::Irq(_)).then_some("0");
        assert_eq!(e.handle(written(f, "0-1", eff)).len(), 1);
    }
    e
}

#[test]
fn hotplug_offline_and_online_move_every_mask_with_the_online_cpus() {
    let mut e = settled();
    // cpu1 goes: H∩O = 0 for everything.
    assert_eq!(
        e.handle(SteerEvent::Topology(topo("0,2-3"))),
        [
            write(MaskFile::IrqDefault, "", "0"),
            write(SERIAL, "ttyS0", "0"),
            write(NVME, "nvme0q1", "0"),
            write(ETH, "eth0", "0"),
            write(MaskFile::Workqueue, "", "0"),
        ]
    );
    for f in [MaskFile::IrqDefault, SERIAL, NVME, ETH, MaskFile::Workqueue] {
        e.handle(written(f, "0", None));
    }
    // cpu1 back: 0-1 again.
    assert_eq!(
        e.handle(SteerEvent::Topology(topo("0-3"))),
        [
            write(MaskFile::IrqDefault, "", "0-1"),
            write(SERIAL, "ttyS0", "0-1"),
            write(NVME, "nvme0q1", "0-1"),
            write(ETH, "eth0", "0-1"),
            write(MaskFile::Workqueue, "", "0-1"),
        ]
    );
    // Offline of a CPU no mask has: nothing.
    for f in [MaskFile::IrqDefault, SERIAL, NVME, ETH, MaskFile::Workqueue] {
        e.handle(written(f, "0-1", None));
    }
    assert_eq!(e.handle(SteerEvent::Topology(topo("0-2"))), []);
}

#[test]
fn every_housekeeping_cpu_offline_falls_back_to_the_online_ones() {
    let mut e = settled();
    let actions = e.handle(SteerEvent::Topology(topo("2-3")));
    assert_eq!(
        actions,
        [
            write(MaskFile::IrqDefault, "", "2-3"),
            // No housekeeping CPU online: every online one, whatever the
            // preference (as for kthreads).
            write(SERIAL, "ttyS0", "2-3"),
            write(NVME, "nvme0q1", "2-3"),
            write(ETH, "eth0", "2-3"),
            write(MaskFile::Workqueue, "", "2-3"),
        ]
    );
}

#[test]
fn a_kernel_that_narrows_a_mask_itself_is_not_asked_again() {
    let mut e = started();
    // The workqueue mask comes back as 0 (the kernel's own isolated CPUs).
    let actions = e.handle(SteerEvent::Written {
        file: MaskFile::Workqueue,
        requested: s("0-1"),
        current: s("0"),
        effective: None,
    });
    assert_eq!(actions, [note(MaskFile::Workqueue, "", set("0", None))]);
    let mut sc = SteerScan {
        default_affinity: Some(s("0-3")),
        workqueue: Some(s("0")),
        workqueues: Vec::new(),
        ..SteerScan::default()
    };
    assert_eq!(
        e.handle(SteerEvent::Scan(sc.clone())),
        [],
        "as accepted: no write"
    );
    // Someone writes it: put back.
    sc.workqueue = Some(s("0-3"));
    assert_eq!(
        e.handle(SteerEvent::Scan(sc)),
        [write(MaskFile::Workqueue, "", "0-1")]
    );
}

#[test]
fn irqs_changed_by_others_are_put_back_and_new_ones_steered() {
    let mut e = settled();
    let actions = e.handle(scan(vec![
        irq(4, "ttyS0", "0-1", "0"),
        // irqbalance or a user moved it.
        irq(40, "nvme0q1", "2-3", "3"),
        irq(41, "eth0", "0-1", "1"),
        // A device that came later, with the new default affinity.
        irq(50, "nvme1q1", "0-1", "0"),
        irq(51, "xhci_hcd", "0-3", "3"),
    ]));
    assert_eq!(
        actions,
        [
            // Written once already: the rescan's default 0-3 is a change by
            // someone else, as is the workqueue's.
            write(MaskFile::IrqDefault, "", "0-1"),
            write(NVME, "nvme0q1", "0-1"),
            write(MaskFile::Irq(51), "xhci_hcd", "0-1"),
            write(MaskFile::Workqueue, "", "0-1"),
        ]
    );
    assert_eq!(
        e.entry(MaskFile::Irq(51)).unwrap().original,
        s("0-3"),
        "a new IRQ's original is its mask when found"
    );
}

#[test]
fn vanished_irqs_are_forgotten_unreadable_ones_kept() {
    let mut e = settled();
    let actions = e.handle(SteerEvent::Scan(SteerScan {
        irqs: vec![irq(41, "eth0", "0-1", "1")],
        unreadable: vec![40],
        default_affinity: Some(s("0-1")),
        workqueue: Some(s("0-1")),
        workqueues: Vec::new(),
    }));
    assert_eq!(actions, []);
    assert!(e.entry(SERIAL).is_none());
    assert_eq!(e.entry(NVME).unwrap().original, s("0-3"));
}

#[test]
fn restore_lists_every_written_mask_that_differs_from_its_original() {
    let e = settled();
    assert_eq!(
        e.restore(),
        [
            (MaskFile::IrqDefault, s("0-3")),
            (SERIAL, s("0-3")),
            (NVME, s("0-3")),
            (MaskFile::Workqueue, s("0-3")),
        ]
    );
}

#[test]
fn a_write_overtaken_by_a_newer_policy_is_not_judged() {
    let mut e = started();
    let actions = e.handle(SteerEvent::Topology(topo("0,2-3")));
    assert!(
        actions.contains(&write(NVME, "nvme0q1", "0")),
        "{actions:?}"
    );
    // The answer to the first write arrives after the second was asked.
    assert_eq!(e.handle(written(NVME, "0-1", Some("1"))), []);
    assert_eq!(
        e.handle(written(NVME, "0", Some("0"))),
        [note(NVME, "nvme0q1", set("0", Some("0")))]
    );
}

#[test]
fn another_driver_on_a_number_takes_its_rule_and_keeps_the_original() {
    let mut e = settled();
    let actions = e.handle(scan(vec![
        irq(4, "ttyS0", "0-1", "0"),
        irq(40, "eth1", "0-1", "0"),
        irq(41, "nvme2q1", "0-1", "1"),
    ]));
    // nvme2q1 prefers node 1 (2-3), not housekeeping: still H∩O = 0-1; no
    // write, but its rule is nvme* now.
    assert_eq!(
        actions,
        [
            write(MaskFile::IrqDefault, "", "0-1"),
            write(MaskFile::Workqueue, "", "0-1")
        ]
    );
    assert_eq!(e.entry(ETH).unwrap().rule.as_deref(), Some("nvme*"));
    assert_eq!(e.entry(NVME).unwrap().rule, None);
    assert_eq!(e.entry(NVME).unwrap().original, s("0-3"));
}

#[test]
fn rules_matching_no_irq_are_listed() {
    let e = engine();
    let irqs = [irq(4, "ttyS0", "0-3", "0")];
    let unmatched = unmatched_rules(&e.rules, &irqs);
    assert_eq!(
        unmatched.iter().map(|r| r.line).collect::<Vec<_>>(),
        [2],
        "nvme* matches nothing here; irq 4 does"
    );
}

#[test]
fn placement_is_the_kthread_policy() {
    assert_eq!(placement(Some(&s("1-2")), &s("0-1"), &s("0-3")), s("1"));
    assert_eq!(placement(Some(&s("2-3")), &s("0-1"), &s("0-3")), s("0-1"));
    assert_eq!(placement(None, &s("0-1"), &s("2-3")), s("2-3"));
}

#[test]
fn new_rules_write_only_the_irqs_whose_mask_changes() {
    let mut e = started();
    for (file, mask) in [
        (MaskFile::IrqDefault, "0-1"),
        (SERIAL, "0-1"),
        (NVME, "0-1"),
        (MaskFile::Workqueue, "0-1"),
    ] {
        e.handle(written(file, mask, None));
    }
    // eth* now prefers CPU 0; irq 4's rule is gone (its mask stays H∩O);
    // nvme*'s is unchanged.
    let (actions, changed) = e.replace_rules(
        vec![
            IrqRule {
                target: IrqTarget::Action("nvme*".into()),
                prefer: Preference::OwnNode,
                line: 2,
            },
            IrqRule {
                target: IrqTarget::Action("eth*".into()),
                prefer: Preference::Cpus(s("0")),
                line: 6,
            },
        ],
        vec![],
    );
    assert_eq!(actions, [write(ETH, "eth0", "0")]);
    assert_eq!(changed, 2, "eth0 (mask) and irq 4 (rule)");
    assert_eq!(e.entry(SERIAL).unwrap().rule, None);
    assert_eq!(e.entry(ETH).unwrap().rule.as_deref(), Some("eth*"));
    let (actions, changed) = e.replace_rules(e.rules.clone(), vec![]);
    assert_eq!(
        (actions, changed),
        (vec![], 0),
        "the same rules again: nothing"
    );
}

fn wq(name: &str) -> MaskFile {
    MaskFile::NamedWorkqueue(WqName::new(name).unwrap())
}

/// No IRQs; the global workqueue mask at `global`, writeback and
/// blkcg_punt_bio at 0-3.
fn wq_scan(global: &str, writeback: &str) -> SteerEvent {
    SteerEvent::Scan(SteerScan {
        irqs: Vec::new(),
        unreadable: Vec::new(),
        default_affinity: Some(s("0-1")),
        workqueue: Some(s(global)),
        workqueues: vec![
            (WqName::new("blkcg_punt_bio").unwrap(), s("0-3")),
            (WqName::new("writeback").unwrap(), s(writeback)),
        ],
    })
}

fn wq_rule(glob: &str, prefer: Preference) -> WorkqueueRule {
    WorkqueueRule {
        target: glob.into(),
        prefer,
        line: 1,
    }
}

/// H = 0-1 of 0-3; writeback prefers CPU 1, blkcg_punt_bio no rule.
fn wq_engine() -> SteerEngine {
    SteerEngine::new(topo("0-3"), s("0-1"), Vec::new())
        .with_workqueue_rules(vec![wq_rule("write*", Preference::Cpus(s("1")))])
}

#[test]
fn a_named_workqueue_is_steered_after_the_global_mask_and_restored() {
    let mut e = wq_engine();
    // Only the one a rule names; the global mask first, since the kernel
    // ANDs the two.
    assert_eq!(
        e.handle(wq_scan("0-3", "0-3")),
        [
            write(MaskFile::Workqueue, "", "0-1"),
            write(wq("writeback"), "", "1")
        ]
    );
    assert_eq!(e.entry(wq("blkcg_punt_bio")), None);
    assert_eq!(
        e.handle(written(MaskFile::Workqueue, "0-1", None)),
        [note(MaskFile::Workqueue, "", set("0-1", None))]
    );
    // Its workers run on its mask ∩ the global one: 1.
    assert_eq!(
        e.handle(written(wq("writeback"), "1", None)),
        [note(wq("writeback"), "", set("1", Some("1")))]
    );
    let entry = e.entry(wq("writeback")).unwrap();
    assert_eq!(
        (entry.rule.as_deref(), entry.state, &entry.original),
        (Some("write*"), SteerState::Steered, &s("0-3"))
    );
    // cpu1 goes offline: P∩H∩O is empty, H∩O is 0.
    assert_eq!(
        e.handle(SteerEvent::Topology(topo("0,2-3"))),
        [
            write(MaskFile::IrqDefault, "", "0"),
            write(MaskFile::Workqueue, "", "0"),
            write(wq("writeback"), "", "0")
        ]
    );
    for f in [MaskFile::IrqDefault, MaskFile::Workqueue, wq("writeback")] {
        e.handle(written(f, "0", None));
    }
    // cpu1 back: P∩H∩O is 1 again.
    assert_eq!(
        e.handle(SteerEvent::Topology(topo("0-3"))),
        [
            write(MaskFile::IrqDefault, "", "0-1"),
            write(MaskFile::Workqueue, "", "0-1"),
            write(wq("writeback"), "", "1")
        ]
    );
    for (f, m) in [
        (MaskFile::IrqDefault, "0-1"),
        (MaskFile::Workqueue, "0-1"),
        (wq("writeback"), "1"),
    ] {
        e.handle(written(f, m, None));
    }
    // Housekeeping grows to 0-3: writeback's preference is inside it still.
    assert_eq!(
        e.handle(SteerEvent::Housekeeping(s("0-3"))),
        [
            write(MaskFile::IrqDefault, "", "0-3"),
            write(MaskFile::Workqueue, "", "0-3"),
        ]
    );
    for f in [MaskFile::IrqDefault, MaskFile::Workqueue] {
        e.handle(written(f, "0-3", None));
    }
    // Every mask written that is not its original, the named one last.
    assert_eq!(
        e.restore(),
        [
            (MaskFile::IrqDefault, s("0-1")),
            (wq("writeback"), s("0-3"))
        ]
    );
}

#[test]
fn a_named_workqueue_outside_the_global_mask_runs_on_the_global_one_a_mismatch() {
    // The global mask is not the daemon's to write here (refused, say) and
    // stays 2-3: the kernel runs writeback's workers on 2-3, not 1.
    let mut e = wq_engine();
    e.handle(wq_scan("2-3", "0-3"));
    e.handle(SteerEvent::Refused {
        file: MaskFile::Workqueue,
        mask: s("0-1"),
        why: WriteRefusal::Invalid,
        message: "EINVAL".into(),
    });
    assert_eq!(
        e.handle(written(wq("writeback"), "1", None)),
        [note(
            wq("writeback"),
            "",
            SteerNote::Mismatch {
                desired: s("1"),
                mask: s("1"),
                effective: Some(s("2-3"))
            }
        )]
    );
    // Said once: a rescan that finds the same says nothing more; once the
    // global mask covers 1, it is steered without a write.
    assert_eq!(e.handle(wq_scan("2-3", "1")), []);
    assert_eq!(
        e.entry(wq("writeback")).unwrap().state,
        SteerState::Mismatch
    );
    e.handle(wq_scan("0-3", "1"));
    assert_eq!(e.entry(wq("writeback")).unwrap().state, SteerState::Steered);
    assert_eq!(e.entry(wq("writeback")).unwrap().effective, Some(s("1")));
}

#[test]
fn a_reload_adopts_newly_named_workqueues_and_hands_back_released_ones() {
    let mut e = wq_engine();
    e.handle(wq_scan("0-3", "0-3"));
    e.handle(written(MaskFile::Workqueue, "0-1", None));
    e.handle(written(wq("writeback"), "1", None));
    let (actions, changed) = e.replace_rules(
        Vec::new(),
        vec![wq_rule("blkcg_punt_bio", Preference::Housekeeping)],
    );
    assert_eq!(
        actions,
        [
            write(wq("writeback"), "", "0-3"),
            write(wq("blkcg_punt_bio"), "", "0-1")
        ]
    );
    assert_eq!(changed, 2);
    assert_eq!(e.entry(wq("writeback")), None);
    // A workqueue that goes away (its module unloaded) is forgotten.
    let gone = SteerEvent::Scan(SteerScan {
        workqueue: Some(s("0-1")),
        default_affinity: Some(s("0-1")),
        ..SteerScan::default()
    });
    e.handle(gone);
    assert_eq!(e.entry(wq("blkcg_punt_bio")), None);
}

#[test]
fn observing_a_named_workqueue_asks_once() {
    let mut e = wq_engine();
    e.handle(wq_scan("0-3", "0-3"));
    // Never answered: the next scan asks for nothing again.
    assert_eq!(e.handle(wq_scan("0-3", "0-3")), []);
}

#[test]
fn a_workqueue_name_holds_what_any_kernel_makes_one() {
    let n = WqName::new("blkcg_punt_bio").unwrap();
    assert_eq!(
        (n.as_str(), format!("{n}"), format!("{n:?}")),
        (
            "blkcg_punt_bio",
            "blkcg_punt_bio".into(),
            "\"blkcg_punt_bio\"".into()
        )
    );
    assert_eq!(WqName::new(&"w".repeat(64)).unwrap().as_str().len(), 64);
    assert_eq!(WqName::new(&"w".repeat(65)), None);
    assert!(
        WqName::new("zz") > WqName::new("aaa"),
        "by name, not length"
    );
}

mod irqbalance;
