//! Steering what `sched_setaffinity()` cannot move: IRQs (their threads
//! follow them) through `/proc/irq/N/smp_affinity_list`, new IRQs through
//! `/proc/irq/default_smp_affinity`, unbound kworkers through the workqueue
//! cpumask. Pure, like [`super::Engine`]: events in, writes and reports out,
//! and the outcome of every write comes back as an event.
//!
//! An IRQ's mask is P∩H∩O, else H∩O, else O, with P from the first
//! `[[irq]]` rule that matches (none: H∩O, else O); the default affinity
//! and the workqueue mask are H∩O, else O.

use std::collections::BTreeMap;

use super::{CpuSet, IrqRule, Preference, Topology, WorkqueueRule};

mod irqbalance;
#[cfg(test)]
mod tests;
mod wq;

pub use irqbalance::{IrqOwner, IrqbalanceNote, IrqbalancePolicy, IrqbalanceWatch};
pub use wq::{WqName, workqueue_effective};

/// One IRQ as the kernel shows it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    pub number: u32,
    /// Its handlers' names (`nvme0q1`, `virtio1-req.0`): what rules match.
    pub actions: Vec<String>,
    /// The node of its device, if the kernel knows one.
    pub node: Option<u32>,
    /// `smp_affinity_list`: where it may be delivered.
    pub affinity: CpuSet,
    /// `effective_affinity_list`, where the kernel has one: where it is
    /// delivered now (a single CPU on x86).
    pub effective: Option<CpuSet>,
}

/// The kernel file a mask is written to. The order is the order of
/// writes: the default first, so an IRQ that appears meanwhile gets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MaskFile {
    /// `/proc/irq/default_smp_affinity`.
    IrqDefault,
    /// `/proc/irq/N/smp_affinity_list`.
    Irq(u32),
    /// `/sys/devices/virtual/workqueue/cpumask`.
    Workqueue,
    /// `/sys/devices/virtual/workqueue/<name>/cpumask` of a `WQ_SYSFS`
    /// workqueue a `[[workqueue]]` rule names; after the global mask, which
    /// the kernel ANDs it with.
    NamedWorkqueue(WqName),
}

/// Why the kernel would not take a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRefusal {
    /// EIO (EPERM on 6.18) on an IRQ: its affinity is managed by the
    /// kernel (multi-queue devices spread their vectors themselves). Final.
    Managed,
    /// EINVAL: the mask (or the IRQ's chip) is not acceptable now.
    Invalid,
    /// Anything else, by errno.
    Other(i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SteerState {
    /// A write was asked for and not answered (or, observing, never is).
    Pending,
    /// The kernel has the desired mask (and delivers it inside it).
    Steered,
    /// The kernel took the write but delivers elsewhere, or set another
    /// mask: reported once per desired mask.
    Mismatch,
    /// The kernel manages this IRQ's affinity: reported once, never written.
    KernelManaged,
    /// The kernel refused the desired mask: reported once, tried again when
    /// the desired mask changes.
    Refused,
}

impl SteerState {
    /// The word on the wire and in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SteerState::Pending => "pending",
            SteerState::Steered => "steered",
            SteerState::Mismatch => "mismatch",
            SteerState::KernelManaged => "kernel_managed",
            SteerState::Refused => "refused",
        }
    }
}

/// One mask the engine keeps in place: an IRQ, the default IRQ affinity or
/// the workqueue cpumask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteerEntry {
    pub file: MaskFile,
    /// Empty for the default affinity and the workqueue mask.
    pub actions: Vec<String>,
    pub node: Option<u32>,
    /// The matching rule's `match`; None: the default (housekeeping).
    pub rule: Option<String>,
    pub preference: Option<Preference>,
    /// The mask when first seen: what `--restore-on-exit` puts back.
    pub original: CpuSet,
    pub desired: CpuSet,
    /// As last read back.
    pub current: CpuSet,
    pub effective: Option<CpuSet>,
    pub state: SteerState,
    /// Whether the daemon has written this file (restore only those).
    pub written: bool,
    requested: Option<CpuSet>,
    /// The last write the kernel took, and what it read back as: a kernel
    /// that narrows a mask itself (the workqueue mask ∩ its own isolated
    /// CPUs) is not asked again and again.
    accepted: Option<(CpuSet, CpuSet)>,
    /// The desired mask a mismatch or refusal was last reported for.
    reported: Option<CpuSet>,
}

impl SteerEntry {
    /// Whether the kernel has what the policy wants (the effective
    /// affinity is judged apart: the kernel may move it later).
    fn in_place(&self) -> bool {
        self.current == self.desired
            || self.accepted.as_ref() == Some(&(self.desired.clone(), self.current.clone()))
    }

    /// Delivered where the policy wants it: the effective affinity, where
    /// the kernel shows one, inside the desired mask.
    fn delivered(&self) -> bool {
        self.effective
            .as_ref()
            .unwrap_or(&self.current)
            .is_subset(&self.desired)
    }
}

/// Everything read from the kernel in one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SteerScan {
    pub irqs: Vec<IrqInfo>,
    /// IRQs that are there but could not be read: neither new nor gone.
    pub unreadable: Vec<u32>,
    /// None: the file is not there (or could not be read).
    pub default_affinity: Option<CpuSet>,
    pub workqueue: Option<CpuSet>,
    /// The `WQ_SYSFS` workqueues with a cpumask (unbound ones), by name.
    pub workqueues: Vec<(WqName, CpuSet)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SteerEvent {
    /// The state read now (start-up, every rescan, after a hotplug step).
    Scan(SteerScan),
    /// Whether an irqbalance runs (its pid), looked for at start-up
    /// (before the first scan) and on every rescan.
    Irqbalance(Option<u32>),
    /// The online CPUs or the nodes changed.
    Topology(Topology),
    Housekeeping(CpuSet),
    /// A write was taken; `current`/`effective` are read back after it.
    Written {
        file: MaskFile,
        requested: CpuSet,
        current: CpuSet,
        effective: Option<CpuSet>,
    },
    Refused {
        file: MaskFile,
        mask: CpuSet,
        why: WriteRefusal,
        message: String,
    },
}

/// What the daemon says about a mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SteerNote {
    /// The desired mask is in place; `mask`/`effective` as read back.
    Set {
        mask: CpuSet,
        effective: Option<CpuSet>,
    },
    KernelManaged,
    /// Written, but read back as `mask`/`effective` outside `desired`.
    Mismatch {
        desired: CpuSet,
        mask: CpuSet,
        effective: Option<CpuSet>,
    },
    Refused {
        mask: CpuSet,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SteerAction {
    Write {
        file: MaskFile,
        actions: Vec<String>,
        mask: CpuSet,
    },
    Report {
        file: MaskFile,
        actions: Vec<String>,
        note: SteerNote,
    },
    /// About irqbalance, not about one file.
    Irqbalance(IrqbalanceNote),
}

/// P∩H∩O, else H∩O, else O: the kthread policy, for masks that are not
/// a thread's.
pub fn placement(preferred: Option<&CpuSet>, housekeeping: &CpuSet, online: &CpuSet) -> CpuSet {
    let ho = housekeeping.and(online);
    if let Some(pho) = preferred.map(|p| p.and(&ho)).filter(|s| !s.is_empty()) {
        return pho;
    }
    if ho.is_empty() { online.clone() } else { ho }
}

/// Rules that match none of `irqs`: a warning, not an error (a device may
/// come later).
pub fn unmatched_rules<'a>(rules: &'a [IrqRule], irqs: &[IrqInfo]) -> Vec<&'a IrqRule> {
    rules
        .iter()
        .filter(|r| !irqs.iter().any(|i| r.target.matches(i.number, &i.actions)))
        .collect()
}

pub struct SteerEngine {
    topology: Topology,
    housekeeping: CpuSet,
    rules: Vec<IrqRule>,
    wq_rules: Vec<WorkqueueRule>,
    /// The named workqueues of the last scan: a reload's new rules may
    /// name one that no rule named before.
    workqueues: Vec<(WqName, CpuSet)>,
    entries: BTreeMap<MaskFile, SteerEntry>,
    irqbalance: IrqbalanceWatch,
}

impl SteerEngine {
    pub fn new(topology: Topology, housekeeping: CpuSet, rules: Vec<IrqRule>) -> SteerEngine {
        SteerEngine {
            topology,
            housekeeping,
            rules,
            wq_rules: Vec::new(),
            workqueues: Vec::new(),
            entries: BTreeMap::new(),
            irqbalance: IrqbalanceWatch::default(),
        }
    }

    /// What to do about IRQ affinity while an irqbalance runs (before the
    /// first event: what was seen of irqbalance is forgotten).
    pub fn set_irqbalance_policy(&mut self, policy: IrqbalancePolicy) {
        self.irqbalance = IrqbalanceWatch::new(policy);
    }

    /// Whether IRQ affinity is left to a running irqbalance now.
    pub fn yielding_to_irqbalance(&self) -> bool {
        self.irqbalance.yielding()
    }

    /// The CPUs irqbalance should not put IRQs on: every one outside
    /// housekeeping.
    fn banned(&self) -> CpuSet {
        self.topology.possible.and_not(&self.housekeeping)
    }

    /// Tells the watch what is known now; when IRQ affinity changes hands
    /// back, every IRQ not in place is written.
    fn irqbalance_seen(&mut self, pid: Option<u32>, actions: &mut Vec<SteerAction>) {
        let banned = self.banned();
        let Some(note) = self.irqbalance.observe(pid, &banned) else {
            return;
        };
        actions.push(SteerAction::Irqbalance(note));
        self.sync_all(actions);
    }

    fn sync_all(&mut self, actions: &mut Vec<SteerAction>) {
        let yielding = self.irqbalance.yielding();
        for e in self.entries.values_mut() {
            sync(e, yielding, actions);
        }
    }

    /// `[[workqueue]]` rules: only the workqueues they name are steered
    /// (the global mask already covers the rest).
    pub fn with_workqueue_rules(mut self, rules: Vec<WorkqueueRule>) -> SteerEngine {
        self.wq_rules = rules;
        self
    }

    fn wq_rule(&self, name: &WqName) -> Option<&WorkqueueRule> {
        self.wq_rules
            .iter()
            .find(|r| r.target.matches(name.as_str()))
    }

    /// Where the kernel runs a named workqueue's workers with `own` as its
    /// cpumask, given the global mask as last seen.
    fn wq_effective(&self, own: &CpuSet) -> Option<CpuSet> {
        self.entries
            .get(&MaskFile::Workqueue)
            .map(|g| workqueue_effective(own, &g.current))
    }

    pub fn entries(&self) -> impl Iterator<Item = &SteerEntry> {
        self.entries.values()
    }

    pub fn entry(&self, file: MaskFile) -> Option<&SteerEntry> {
        self.entries.get(&file)
    }

    /// What to write to put every mask the daemon changed back as it was.
    /// While irqbalance has the IRQs they are its own: writing them back
    /// would be one more round of the tug of war.
    pub fn restore(&self) -> Vec<(MaskFile, CpuSet)> {
        let yielding = self.irqbalance.yielding();
        self.entries
            .values()
            .filter(|e| !(yielding && matches!(e.file, MaskFile::Irq(_))))
            .filter(|e| e.written && e.current != e.original)
            .map(|e| (e.file, e.original.clone()))
            .collect()
    }

    fn preferred(&self, pref: Option<&Preference>, node: Option<u32>) -> Option<CpuSet> {
        match pref? {
            Preference::Cpus(s) => Some(s.clone()),
            Preference::Housekeeping => Some(self.housekeeping.clone()),
            Preference::Node(n) => self.topology.nodes.get(n).cloned(),
            Preference::OwnNode => self.topology.nodes.get(&node?).cloned(),
        }
    }

    fn desired(&self, e: &SteerEntry) -> CpuSet {
        let preferred = self.preferred(e.preference.as_ref(), e.node);
        placement(
            preferred.as_ref(),
            &self.housekeeping,
            &self.topology.online,
        )
    }

    pub fn handle(&mut self, event: SteerEvent) -> Vec<SteerAction> {
        let mut actions = Vec::new();
        match event {
            SteerEvent::Scan(scan) => self.scan(scan, &mut actions),
            SteerEvent::Topology(t) => {
                self.topology = t;
                self.recompute_all(&mut actions);
            }
            SteerEvent::Housekeeping(h) => {
                self.housekeeping = h;
                self.recompute_all(&mut actions);
                // The CPUs to tell irqbalance to avoid are others now.
                if let Some(pid) = self.irqbalance.pid() {
                    self.irqbalance_seen(Some(pid), &mut actions);
                }
            }
            SteerEvent::Irqbalance(pid) => self.irqbalance_seen(pid, &mut actions),
            SteerEvent::Written {
                file,
                requested,
                current,
                effective,
            } => {
                let effective = match file {
                    MaskFile::NamedWorkqueue(_) => self.wq_effective(&current),
                    _ => effective,
                };
                let Some(e) = self.entries.get_mut(&file) else {
                    return actions;
                };
                if e.requested.as_ref() == Some(&requested) {
                    e.requested = None;
                }
                e.written = true;
                e.current = current.clone();
                e.effective = effective.clone();
                if requested != e.desired {
                    // Overtaken by a newer policy: its own write follows.
                    return actions;
                }
                e.accepted = Some((requested, current.clone()));
                // The kernel may narrow a mask (the workqueue mask ∩ its own
                // isolated CPUs), never widen or move it.
                let taken = !current.is_empty() && current.is_subset(&e.desired);
                if taken && e.delivered() {
                    e.state = SteerState::Steered;
                    e.reported = None;
                    actions.push(report(
                        e,
                        SteerNote::Set {
                            mask: current,
                            effective,
                        },
                    ));
                } else {
                    e.state = SteerState::Mismatch;
                    if e.reported.as_ref() != Some(&e.desired) {
                        e.reported = Some(e.desired.clone());
                        let desired = e.desired.clone();
                        actions.push(report(
                            e,
                            SteerNote::Mismatch {
                                desired,
                                mask: current,
                                effective,
                            },
                        ));
                    }
                }
            }
            SteerEvent::Refused {
                file,
                mask,
                why,
                message,
            } => {
                let Some(e) = self.entries.get_mut(&file) else {
                    return actions;
                };
                if e.requested.as_ref() == Some(&mask) {
                    e.requested = None;
                }
                if mask != e.desired {
                    return actions;
                }
                if why == WriteRefusal::Managed && matches!(file, MaskFile::Irq(_)) {
                    e.state = SteerState::KernelManaged;
                    actions.push(report(e, SteerNote::KernelManaged));
                    return actions;
                }
                e.state = SteerState::Refused;
                if e.reported.as_ref() != Some(&mask) {
                    e.reported = Some(mask.clone());
                    actions.push(report(e, SteerNote::Refused { mask, message }));
                }
            }
        }
        actions
    }

    fn scan(&mut self, scan: SteerScan, actions: &mut Vec<SteerAction>) {
        let present: std::collections::HashSet<u32> = scan
            .irqs
            .iter()
            .map(|i| i.number)
            .chain(scan.unreadable.iter().copied())
            .collect();
        let named: std::collections::HashSet<WqName> =
            scan.workqueues.iter().map(|(n, _)| *n).collect();
        self.entries.retain(|f, _| match f {
            MaskFile::Irq(n) => present.contains(n),
            MaskFile::NamedWorkqueue(n) => named.contains(n),
            MaskFile::IrqDefault | MaskFile::Workqueue => true,
        });
        // Only the workqueues a rule names are steered; the kernel runs
        // their workers on their own mask ∩ the global one.
        let global = scan.workqueue.clone();
        let workqueues: Vec<_> = scan
            .workqueues
            .iter()
            .filter(|(n, _)| {
                self.entries.contains_key(&MaskFile::NamedWorkqueue(*n))
                    || self.wq_rule(n).is_some()
            })
            .map(|(n, m)| {
                let effective = global.as_ref().map(|g| workqueue_effective(m, g));
                (
                    MaskFile::NamedWorkqueue(*n),
                    Some(m.clone()),
                    effective,
                    Vec::new(),
                    None,
                )
            })
            .collect();
        self.workqueues = scan.workqueues;
        let singles = [
            (MaskFile::IrqDefault, scan.default_affinity),
            (MaskFile::Workqueue, scan.workqueue),
        ];
        let irqs = scan.irqs.into_iter().map(|i| {
            (
                MaskFile::Irq(i.number),
                Some(i.affinity),
                i.effective,
                i.actions,
                i.node,
            )
        });
        let all = singles
            .into_iter()
            .map(|(f, m)| (f, m, None, Vec::new(), None))
            .chain(irqs)
            .chain(workqueues);
        for (file, mask, effective, names, node) in all {
            let Some(mask) = mask else { continue };
            if let Some(e) = self.entries.get_mut(&file) {
                e.current = mask;
                e.effective = effective;
                if e.state == SteerState::Mismatch && e.in_place() && e.delivered() {
                    // A move the kernel makes at the IRQ's next interrupt.
                    e.state = SteerState::Steered;
                }
                if e.actions != names || e.node != node {
                    // Another driver behind the same number: the rules may
                    // say otherwise now. Its original mask stays the first.
                    e.actions = names;
                    e.node = node;
                    self.classify(file);
                }
                continue;
            }
            self.add(file, mask, effective, names, node);
        }
        self.sync_all(actions);
    }

    /// A mask seen for the first time: its original is what it is now.
    fn add(
        &mut self,
        file: MaskFile,
        mask: CpuSet,
        effective: Option<CpuSet>,
        names: Vec<String>,
        node: Option<u32>,
    ) {
        let mut e = SteerEntry {
            file,
            actions: names,
            node,
            rule: None,
            preference: None,
            original: mask.clone(),
            desired: mask.clone(),
            current: mask,
            effective,
            state: SteerState::Pending,
            written: false,
            requested: None,
            accepted: None,
            reported: None,
        };
        if e.in_place() && e.delivered() {
            e.state = SteerState::Steered;
        }
        self.entries.insert(file, e);
        self.classify(file);
    }

    /// Finds `file`'s rule and its desired mask from it.
    fn classify(&mut self, file: MaskFile) {
        let Some(e) = self.entries.get(&file) else {
            return;
        };
        let (rule, preference) = match file {
            MaskFile::Irq(n) => self
                .rules
                .iter()
                .find(|r| r.target.matches(n, &e.actions))
                .map(|r| (r.target.to_string(), r.prefer.clone()))
                .unzip(),
            MaskFile::NamedWorkqueue(n) => self
                .wq_rule(&n)
                .map(|r| (r.target.as_str().to_string(), r.prefer.clone()))
                .unzip(),
            MaskFile::IrqDefault | MaskFile::Workqueue => (None, None),
        };
        let preferred = self.preferred(preference.as_ref(), e.node);
        let desired = placement(
            preferred.as_ref(),
            &self.housekeeping,
            &self.topology.online,
        );
        let Some(e) = self.entries.get_mut(&file) else {
            return;
        };
        e.rule = rule;
        e.preference = preference;
        if e.desired != desired {
            e.desired = desired;
            if e.state == SteerState::Refused {
                e.state = SteerState::Pending;
            }
        }
        if e.state != SteerState::KernelManaged && e.state != SteerState::Refused {
            e.state = match (e.in_place(), e.delivered()) {
                (true, true) => SteerState::Steered,
                // Nothing to write, but delivered outside it.
                (true, false) => SteerState::Mismatch,
                (false, _) => SteerState::Pending,
            };
        }
    }

    /// New `[[irq]]` and `[[workqueue]]` rules (a reload), applied as a
    /// diff: only masks whose rule or desired mask changes are written; a
    /// workqueue newly named is adopted, one no longer named handed back.
    /// Returns the actions and how many masks changed rule or mask.
    pub fn replace_rules(
        &mut self,
        rules: Vec<IrqRule>,
        wq_rules: Vec<WorkqueueRule>,
    ) -> (Vec<SteerAction>, usize) {
        self.rules = rules;
        self.wq_rules = wq_rules;
        let before: BTreeMap<MaskFile, (Option<String>, CpuSet)> = self
            .entries
            .iter()
            .map(|(f, e)| (*f, (e.rule.clone(), e.desired.clone())))
            .collect();
        let mut actions = Vec::new();
        let mut changed = 0;
        // A workqueue no rule names any more is handed back and forgotten
        // (the outcome of that write finds no entry and is dropped).
        let released: Vec<MaskFile> = self
            .entries
            .keys()
            .filter(|f| matches!(f, MaskFile::NamedWorkqueue(n) if self.wq_rule(n).is_none()))
            .copied()
            .collect();
        for f in released {
            if let Some(e) = self.entries.remove(&f) {
                changed += 1;
                if e.written && e.current != e.original {
                    actions.push(SteerAction::Write {
                        file: f,
                        actions: Vec::new(),
                        mask: e.original,
                    });
                }
            }
        }
        let adopt: Vec<(WqName, CpuSet)> = self
            .workqueues
            .iter()
            .filter(|(n, _)| {
                !self.entries.contains_key(&MaskFile::NamedWorkqueue(*n))
                    && self.wq_rule(n).is_some()
            })
            .cloned()
            .collect();
        for (n, mask) in adopt {
            let effective = self.wq_effective(&mask);
            self.add(
                MaskFile::NamedWorkqueue(n),
                mask,
                effective,
                Vec::new(),
                None,
            );
        }
        let files: Vec<MaskFile> = self.entries.keys().copied().collect();
        for f in &files {
            self.classify(*f);
        }
        let yielding = self.irqbalance.yielding();
        for f in files {
            let Some(e) = self.entries.get_mut(&f) else {
                continue;
            };
            if before.get(&f) != Some(&(e.rule.clone(), e.desired.clone())) {
                changed += 1;
            }
            sync(e, yielding, &mut actions);
        }
        (actions, changed)
    }

    fn recompute_all(&mut self, actions: &mut Vec<SteerAction>) {
        let yielding = self.irqbalance.yielding();
        let files: Vec<MaskFile> = self.entries.keys().copied().collect();
        for f in files {
            let Some(desired) = self.entries.get(&f).map(|e| self.desired(e)) else {
                continue;
            };
            let Some(e) = self.entries.get_mut(&f) else {
                continue;
            };
            if e.desired != desired {
                e.desired = desired;
                if e.state == SteerState::Refused {
                    // A new mask may be taken where the old one was not.
                    e.state = SteerState::Pending;
                }
            }
            sync(e, yielding, actions);
        }
    }
}

fn report(e: &SteerEntry, note: SteerNote) -> SteerAction {
    SteerAction::Report {
        file: e.file,
        actions: e.actions.clone(),
        note,
    }
}

/// Asks for the desired mask where the kernel does not have it, unless it
/// was asked for already, the kernel manages it, or refused it.
/// `yielding`: IRQ affinity is irqbalance's now, so no IRQ is written.
fn sync(e: &mut SteerEntry, yielding: bool, actions: &mut Vec<SteerAction>) {
    if yielding && matches!(e.file, MaskFile::Irq(_)) {
        return;
    }
    if e.state == SteerState::KernelManaged || e.in_place() {
        if e.requested.as_ref() != Some(&e.desired) {
            e.requested = None;
        }
        return;
    }
    if e.requested.as_ref() == Some(&e.desired)
        || (e.state == SteerState::Refused && e.reported.as_ref() == Some(&e.desired))
    {
        return;
    }
    e.state = SteerState::Pending;
    e.requested = Some(e.desired.clone());
    actions.push(SteerAction::Write {
        file: e.file,
        actions: e.actions.clone(),
        mask: e.desired.clone(),
    });
}
