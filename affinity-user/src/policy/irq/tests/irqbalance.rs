//! The engine beside a running irqbalance.

use super::*;

const PID: u32 = 4242;
const DEFAULT: MaskFile = MaskFile::IrqDefault;
const WQ: MaskFile = MaskFile::Workqueue;

fn conflict(winner: IrqOwner, banned: &str) -> SteerAction {
    SteerAction::Irqbalance(IrqbalanceNote::Conflict {
        pid: PID,
        winner,
        banned: s(banned),
    })
}

/// The three IRQs of [`started`], irq 4 at `serial`; nvme0q1, the default
/// affinity and the workqueue mask at `files`.
fn at(files: &str, serial: &str) -> SteerEvent {
    SteerEvent::Scan(SteerScan {
        irqs: vec![
            irq(4, "ttyS0", serial, "2"),
            irq(40, "nvme0q1", files, "0"),
            irq(41, "eth0", "0-1", "1"),
        ],
        unreadable: Vec::new(),
        default_affinity: Some(s(files)),
        workqueue: Some(s(files)),
        workqueues: Vec::new(),
    })
}

fn ack(e: &mut SteerEngine, files: &[MaskFile], mask: &str) {
    for f in files {
        e.handle(written(*f, mask, None));
    }
}

#[test]
fn while_irqbalance_runs_no_irq_is_written_and_it_is_said_once() {
    let mut e = engine();
    // Looked for before the first scan: H = 0-1 of 0-3, so 2-3 to ban.
    assert_eq!(
        e.handle(SteerEvent::Irqbalance(Some(PID))),
        [conflict(IrqOwner::Irqbalance, "2-3")]
    );
    assert!(e.yielding_to_irqbalance());
    // The default affinity and the workqueue mask stay the daemon's.
    assert_eq!(
        e.handle(at("0-3", "0-3")),
        [write(DEFAULT, "", "0-1"), write(WQ, "", "0-1")]
    );
    ack(&mut e, &[DEFAULT, WQ], "0-1");
    // irqbalance moves irq 4 onto 2-3; rescans finding it there and the
    // same irqbalance say and write nothing.
    assert_eq!(e.handle(SteerEvent::Irqbalance(Some(PID))), []);
    assert_eq!(e.handle(at("0-1", "2-3")), []);
    // A hotplug step moves the two files, no IRQ.
    assert_eq!(
        e.handle(SteerEvent::Topology(topo("0,2-3"))),
        [write(DEFAULT, "", "0"), write(WQ, "", "0")]
    );
    ack(&mut e, &[DEFAULT, WQ], "0");
    assert_eq!(
        e.handle(SteerEvent::Topology(topo("0-3"))),
        [write(DEFAULT, "", "0-1"), write(WQ, "", "0-1")]
    );
    ack(&mut e, &[DEFAULT, WQ], "0-1");
    // Restoring on exit leaves irqbalance's IRQs alone.
    assert_eq!(e.restore(), [(DEFAULT, s("0-3")), (WQ, s("0-3"))]);
    // Housekeeping grows to 0-2: only 3 to ban now, said again.
    assert_eq!(
        e.handle(SteerEvent::Housekeeping(s("0-2"))),
        [
            write(DEFAULT, "", "0-2"),
            write(WQ, "", "0-2"),
            conflict(IrqOwner::Irqbalance, "3"),
        ]
    );
    ack(&mut e, &[DEFAULT, WQ], "0-2");
    // irqbalance stops: said once, and every IRQ not where the policy puts
    // it is written (nvme0q1 prefers node 1: 2-3 ∩ H = 2).
    assert_eq!(
        e.handle(SteerEvent::Irqbalance(None)),
        [
            SteerAction::Irqbalance(IrqbalanceNote::Gone { pid: PID }),
            write(SERIAL, "ttyS0", "0-2"),
            write(NVME, "nvme0q1", "2"),
            write(ETH, "eth0", "0-2"),
        ]
    );
    assert!(!e.yielding_to_irqbalance());
    assert_eq!(e.handle(SteerEvent::Irqbalance(None)), []);
}

#[test]
fn over_irqbalance_the_daemon_steers_and_says_once_that_it_wins() {
    let mut e = engine();
    e.set_irqbalance_policy(IrqbalancePolicy::Override);
    assert_eq!(
        e.handle(SteerEvent::Irqbalance(Some(PID))),
        [conflict(IrqOwner::Affinity, "2-3")]
    );
    assert_eq!(
        e.handle(at("0-3", "0-3")),
        [
            write(DEFAULT, "", "0-1"),
            write(SERIAL, "ttyS0", "0-1"),
            write(NVME, "nvme0q1", "0-1"),
            write(WQ, "", "0-1"),
        ]
    );
    ack(&mut e, &[DEFAULT, SERIAL, NVME, WQ], "0-1");
    // irqbalance moves irq 4 away: put back at the next rescan, without a
    // second conflict record.
    assert_eq!(e.handle(SteerEvent::Irqbalance(Some(PID))), []);
    assert_eq!(e.handle(at("0-1", "2-3")), [write(SERIAL, "ttyS0", "0-1")]);
}

#[test]
fn irqs_written_before_irqbalance_came_are_not_restored_while_it_runs() {
    // settled(): every mask written, irq 4 and nvme0q1 from 0-3 to 0-1.
    let mut e = settled();
    let irqs = |e: &SteerEngine| -> Vec<MaskFile> {
        e.restore()
            .into_iter()
            .map(|(f, _)| f)
            .filter(|f| matches!(f, MaskFile::Irq(_)))
            .collect()
    };
    assert_eq!(irqs(&e), [SERIAL, NVME]);
    e.handle(SteerEvent::Irqbalance(Some(PID)));
    // They are irqbalance's now: putting them back is one more round.
    assert_eq!(irqs(&e), []);
    assert_eq!(
        e.restore(),
        [(DEFAULT, s("0-3")), (WQ, s("0-3"))],
        "the files irqbalance does not write still are"
    );
    e.handle(SteerEvent::Irqbalance(None));
    assert_eq!(irqs(&e), [SERIAL, NVME]);
}
