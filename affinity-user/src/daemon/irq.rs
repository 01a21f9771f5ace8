//! Driving the [`SteerEngine`] (IRQs, the default IRQ affinity, the
//! workqueue cpumask) next to the kthread engine: the same online CPUs,
//! nodes and housekeeping, a fresh read of the files at start-up, after
//! every hotplug step and on every rescan, and every write's outcome fed
//! back to the engine. `commands::run` calls [`Steering::start`] before
//! READY, then hands the [`Steering`] to its own thread ([`worker`]), which
//! does the rest; nothing in [`super::Core`] depends on it.

use std::{collections::VecDeque, io::Write};

use super::{
    Core, Stats,
    kernel::Kernel,
    report::{Balancer, Report, Reporter, SteerKind, SteerReport},
};
use crate::{
    kernel::irq::{IrqFs, WriteError},
    policy::{
        CpuSet, IrqRule, IrqbalanceNote, MaskFile, SteerAction, SteerEngine, SteerEvent, SteerNote,
        SteerScan, Topology, WorkqueueRule, WriteRefusal, unmatched_rules,
        unmatched_workqueue_rules,
    },
};

/// The files, behind a trait so the tests run against memory.
pub trait SteerKernel {
    fn scan(&self) -> std::io::Result<SteerScan>;
    fn write(&mut self, file: MaskFile, mask: &CpuSet) -> Result<(), WriteError>;
    /// The mask and, for an IRQ, its effective affinity, read back now.
    fn read_back(&self, file: MaskFile) -> std::io::Result<(CpuSet, Option<CpuSet>)>;
    /// The pid of a running irqbalance, if one runs.
    fn irqbalance(&self) -> Option<u32>;
}

impl SteerKernel for IrqFs {
    fn scan(&self) -> std::io::Result<SteerScan> {
        IrqFs::scan(self)
    }
    fn write(&mut self, file: MaskFile, mask: &CpuSet) -> Result<(), WriteError> {
        IrqFs::write(self, file, mask)
    }
    fn read_back(&self, file: MaskFile) -> std::io::Result<(CpuSet, Option<CpuSet>)> {
        IrqFs::read_back(self, file)
    }
    fn irqbalance(&self) -> Option<u32> {
        IrqFs::irqbalance(self)
    }
}

pub struct Steering<S: SteerKernel> {
    pub engine: SteerEngine,
    kernel: S,
    observe: bool,
    restore_on_exit: bool,
    /// What the engine was last told, so only changes are passed on.
    topology: Topology,
    housekeeping: CpuSet,
}

impl<S: SteerKernel> Steering<S> {
    pub fn new(
        topology: Topology,
        housekeeping: CpuSet,
        rules: Vec<IrqRule>,
        wq_rules: Vec<WorkqueueRule>,
        kernel: S,
        opts: &super::Options,
    ) -> Self {
        Steering {
            engine: SteerEngine::new(topology.clone(), housekeeping.clone(), rules)
                .with_workqueue_rules(wq_rules),
            kernel,
            observe: opts.observe,
            restore_on_exit: opts.restore_on_exit,
            topology,
            housekeeping,
        }
    }

    /// The first scan and its writes, after the kthreads' (so start-up
    /// reports come in the same order every time); a rule that matches no
    /// IRQ or workqueue is a warning on stderr, since its device (or
    /// module) may come later.
    pub fn start<K: Kernel, W: Write>(
        &mut self,
        rules: &[IrqRule],
        wq_rules: &[WorkqueueRule],
        core: &mut Core<K, W>,
    ) {
        for warning in self.first_scan(rules, wq_rules, &mut core.reporter, &mut core.stats) {
            eprintln!("affinity: warning: {warning}");
        }
    }

    /// Whether irqbalance runs (the periodic rescan, not every hotplug
    /// step, which reads every /proc/PID/comm).
    fn look_for_irqbalance<W: Write>(&mut self, reporter: &mut Reporter<W>, stats: &mut Stats) {
        let pid = self.kernel.irqbalance();
        let actions = self.engine.handle(SteerEvent::Irqbalance(pid));
        self.execute(actions, reporter, stats);
    }

    /// The first scan and its writes; returns a warning for each rule that
    /// matches no IRQ or workqueue.
    fn first_scan<W: Write>(
        &mut self,
        rules: &[IrqRule],
        wq_rules: &[WorkqueueRule],
        reporter: &mut Reporter<W>,
        stats: &mut Stats,
    ) -> Vec<String> {
        // Before any write: an irqbalance running already has the IRQs.
        self.look_for_irqbalance(reporter, stats);
        match self.kernel.scan() {
            Ok(scan) => {
                let names: Vec<String> =
                    scan.workqueues.iter().map(|(n, _)| n.to_string()).collect();
                let irq = unmatched_rules(rules, &scan.irqs).into_iter().map(|r| {
                    format!(
                        "the [[irq]] rule at line {} ({}) matches no IRQ now; it applies to matching IRQs that appear later",
                        r.line, r.target
                    )
                });
                let wq = unmatched_workqueue_rules(wq_rules, &names).into_iter().map(|r| {
                    format!(
                        "the [[workqueue]] rule at line {} ({}) matches no workqueue with a cpumask in /sys/devices/virtual/workqueue now; it applies to matching ones that appear later",
                        r.line,
                        r.target.as_str()
                    )
                });
                let unmatched = irq.chain(wq).collect();
                let actions = self.engine.handle(SteerEvent::Scan(scan));
                self.execute(actions, reporter, stats);
                unmatched
            }
            Err(e) => {
                error(reporter, stats, format!("reading /proc/irq: {e:#}"));
                Vec::new()
            }
        }
    }

    /// Brings the engine up to date with the CPUs and housekeeping the
    /// kthread engine has now, then with the files as they are now.
    pub fn sync<W: Write>(
        &mut self,
        topology: &Topology,
        housekeeping: &CpuSet,
        reporter: &mut Reporter<W>,
        stats: &mut Stats,
    ) {
        if *topology != self.topology {
            self.topology = topology.clone();
            let actions = self.engine.handle(SteerEvent::Topology(topology.clone()));
            self.execute(actions, reporter, stats);
        }
        if *housekeeping != self.housekeeping {
            self.housekeeping = housekeeping.clone();
            let actions = self
                .engine
                .handle(SteerEvent::Housekeeping(housekeeping.clone()));
            self.execute(actions, reporter, stats);
        }
        match self.kernel.scan() {
            Ok(scan) => {
                let actions = self.engine.handle(SteerEvent::Scan(scan));
                self.execute(actions, reporter, stats);
            }
            Err(e) => error(reporter, stats, format!("reading /proc/irq: {e:#}")),
        }
    }

    /// A reload's `[[irq]]` and `[[workqueue]]` rules, applied as a diff;
    /// returns how many IRQs and workqueues changed rule or mask.
    pub fn replace_rules<W: Write>(
        &mut self,
        rules: Vec<IrqRule>,
        wq_rules: Vec<WorkqueueRule>,
        reporter: &mut Reporter<W>,
        stats: &mut Stats,
    ) -> usize {
        let (actions, changed) = self.engine.replace_rules(rules, wq_rules);
        self.execute(actions, reporter, stats);
        changed
    }

    /// `--restore-on-exit`: every mask the daemon wrote back to what it
    /// was when first seen. Returns how many were.
    pub fn restore(&mut self) -> usize {
        if !self.restore_on_exit || self.observe {
            return 0;
        }
        self.engine
            .restore()
            .into_iter()
            .filter(|(file, mask)| self.kernel.write(*file, mask).is_ok())
            .count()
    }

    fn execute<W: Write>(
        &mut self,
        actions: Vec<SteerAction>,
        reporter: &mut Reporter<W>,
        stats: &mut Stats,
    ) {
        let mut queue: VecDeque<SteerAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                SteerAction::Write {
                    file,
                    actions,
                    mask,
                } => {
                    if self.observe {
                        // Never answered: not asked again until the policy changes.
                        reporter.report(&steer_report(
                            file,
                            actions,
                            SteerKind::WouldSet {
                                mask: mask.to_string(),
                            },
                        ));
                        continue;
                    }
                    let outcome = self.write(file, mask);
                    queue.extend(self.engine.handle(outcome));
                }
                SteerAction::Report {
                    file,
                    actions,
                    note,
                } => {
                    if matches!(note, SteerNote::Refused { .. } | SteerNote::Mismatch { .. }) {
                        stats.refused += 1;
                    }
                    reporter.report(&steer_report(file, actions, kind_of(note)));
                }
                SteerAction::Irqbalance(note) => reporter.report(&irqbalance_report(note)),
            }
        }
    }

    /// One write and what the kernel says after it, as the engine's event.
    fn write(&mut self, file: MaskFile, mask: CpuSet) -> SteerEvent {
        if let Err(e) = self.kernel.write(file, &mask) {
            return SteerEvent::Refused {
                file,
                why: e.refusal(),
                mask,
                message: format!("{e:#}"),
            };
        }
        match self.kernel.read_back(file) {
            Ok((current, effective)) => SteerEvent::Written {
                file,
                requested: mask,
                current,
                effective,
            },
            Err(e) => SteerEvent::Refused {
                file,
                mask,
                why: WriteRefusal::Other(e.raw_os_error().unwrap_or(0)),
                message: format!("written, but not readable afterwards: {e:#}"),
            },
        }
    }
}

fn error<W: Write>(reporter: &mut Reporter<W>, stats: &mut Stats, message: String) {
    stats.errors += 1;
    reporter.report(&Report::Error { message });
}

fn steer_report(file: MaskFile, actions: Vec<String>, kind: SteerKind) -> Report {
    Report::Steer(SteerReport {
        file,
        actions,
        kind,
    })
}

fn irqbalance_report(note: IrqbalanceNote) -> Report {
    match note {
        IrqbalanceNote::Conflict {
            pid,
            winner,
            banned,
        } => Report::IrqConflict {
            with: Balancer::Irqbalance,
            pid,
            winner,
            banned_cpus: banned.to_string(),
        },
        IrqbalanceNote::Gone { pid } => Report::IrqConflictEnded {
            with: Balancer::Irqbalance,
            pid,
        },
    }
}

fn kind_of(note: SteerNote) -> SteerKind {
    let list = |s: Option<CpuSet>| s.map(|s| s.to_string());
    match note {
        SteerNote::Set { mask, effective } => SteerKind::Set {
            mask: mask.to_string(),
            effective: list(effective),
        },
        SteerNote::KernelManaged => SteerKind::KernelManaged,
        SteerNote::Mismatch {
            desired,
            mask,
            effective,
        } => SteerKind::Mismatch {
            desired: desired.to_string(),
            mask: mask.to_string(),
            effective: list(effective),
        },
        SteerNote::Refused { mask, message } => SteerKind::Refused {
            mask: mask.to_string(),
            message,
        },
    }
}

pub mod worker;

#[cfg(test)]
mod tests;
