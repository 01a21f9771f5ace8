//! The daemon's core: turns decoded kernel events into policy engine events,
//! carries out the engine's actions through [`Kernel`] and [`PolicyMaps`],
//! and reports. Synchronous and free of BPF, so it runs against fakes in
//! unit tests; `commands::run` wraps it in the async event loop.

pub mod control;
pub mod kernel;
pub mod metrics;
pub mod report;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Write,
};

use kernel::{Kernel, SetAffinityError};
use report::{Report, Reporter};

use crate::{
    policy::{Action, CpuSet, Engine, Event, Kthread, Preference, RegistryError, Target},
    wire::{HotplugPhase, WireEvent},
};

/// Where the programs read their policy: pid → allowed mask.
pub trait PolicyMaps {
    fn set_allowed(&mut self, pid: u32, mask: &CpuSet) -> anyhow::Result<()>;
    fn remove_allowed(&mut self, pid: u32) -> anyhow::Result<()>;
}

impl PolicyMaps for crate::bpf::Observer {
    fn set_allowed(&mut self, pid: u32, mask: &CpuSet) -> anyhow::Result<()> {
        Ok(crate::bpf::Observer::set_allowed(self, pid, mask.words())?)
    }
    fn remove_allowed(&mut self, pid: u32) -> anyhow::Result<()> {
        Ok(crate::bpf::Observer::remove_allowed(self, pid)?)
    }
}

/// Running totals, for the summary line and the metrics endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub violations_by_comm: BTreeMap<String, u64>,
    pub applied: u64,
    pub hotplug: u64,
    pub drops: u64,
    pub suppressed: u64,
    pub errors: u64,
    /// Records received from the eBPF programs.
    pub records: u64,
    /// Runs outside the allowed set as the kernel counted them, reported or
    /// not (rate limit, or the mask changed again before we read the record).
    pub violations_seen: u64,
}

impl Stats {
    pub fn violations(&self) -> u64 {
        self.violations_by_comm.values().sum()
    }
}

pub struct Options {
    /// Change nothing: report what would be done.
    pub observe: bool,
    /// Keep each kthread's mask from before our first change, to put back on exit.
    pub restore_on_exit: bool,
    /// The kernel re-affines some kthreads itself (6.14+): say so, per pid, once.
    pub kernel_manages: Box<dyn Fn(&Kthread) -> bool>,
}

pub struct Core<K: Kernel, W: Write> {
    pub engine: Engine,
    pub kernel: K,
    pub reporter: Reporter<W>,
    pub stats: Stats,
    opts: Options,
    /// Reported once per pid, never again (DESIGN: no retry loops on pinned threads).
    pinned_reported: HashSet<u32>,
    kernel_managed_reported: HashSet<u32>,
    originals: HashMap<u32, (u64, CpuSet)>,
    comms: HashMap<u32, String>,
}

impl<K: Kernel, W: Write> Core<K, W> {
    pub fn new(engine: Engine, kernel: K, reporter: Reporter<W>, opts: Options) -> Self {
        Core {
            engine,
            kernel,
            reporter,
            stats: Stats::default(),
            opts,
            pinned_reported: HashSet::new(),
            kernel_managed_reported: HashSet::new(),
            originals: HashMap::new(),
            comms: HashMap::new(),
        }
    }

    pub fn observe(&self) -> bool {
        self.opts.observe
    }

    pub fn pinned_count(&self) -> usize {
        self.engine.entries().filter(|e| e.pinned).count()
    }

    pub fn managed_count(&self) -> usize {
        self.engine
            .entries()
            .filter(|e| !e.pinned && e.preference.is_some())
            .count()
    }

    /// Feeds every kthread alive now into the engine and writes the policy
    /// maps for all of them: the start-up scan, also after a SIGKILL.
    pub fn start(&mut self, maps: &mut impl PolicyMaps) {
        for k in self.kernel.kthreads() {
            self.new_kthread(k, maps);
        }
        self.sync_maps(maps);
    }

    /// Writes every managed kthread's applied mask to the policy map.
    pub fn sync_maps(&mut self, maps: &mut impl PolicyMaps) {
        let managed: Vec<(u32, CpuSet)> = self
            .engine
            .entries()
            .filter(|e| !e.pinned && e.preference.is_some())
            .map(|e| (e.pid, e.applied.clone()))
            .collect();
        for (pid, mask) in managed {
            if let Err(e) = maps.set_allowed(pid, &mask) {
                self.error(format!("writing the policy map for pid {pid}: {e:#}"));
            }
        }
    }

    fn new_kthread(&mut self, k: Kthread, maps: &mut impl PolicyMaps) {
        if self.opts.restore_on_exit {
            self.originals
                .entry(k.pid)
                .or_insert((k.start_time, k.cpus_allowed.clone()));
        }
        if !k.is_pinned()
            && (self.opts.kernel_manages)(&k)
            && self.kernel_managed_reported.insert(k.pid)
        {
            self.reporter.report(&Report::KernelManaged {
                pid: k.pid,
                comm: k.comm.clone(),
            });
        }
        let (pid, comm) = (k.pid, k.comm.clone());
        let actions = self.engine.handle(Event::KthreadNew(k));
        // Exits are reported for the kthreads we manage, by name.
        if self.engine.entry(pid).is_some_and(|e| e.managed()) {
            self.comms.insert(pid, comm);
        }
        self.execute(actions, maps);
    }

    /// A new kthread, read from /proc once its creator is done with it.
    pub fn kthread_created(&mut self, pid: u32, maps: &mut impl PolicyMaps) {
        if let Some(k) = self.kernel.kthread(pid) {
            if let Some(e) = self.engine.entry(pid) {
                if e.start_time == k.start_time && e.comm == k.comm {
                    // Fork and rename of one kthread, both seen: nothing new.
                    return;
                }
                // A renamed kthread (a rule may match its new name), or a
                // reused pid: the old entry goes first, without an exit report.
                self.comms.remove(&pid);
                let actions = self.engine.handle(Event::KthreadExit { pid });
                self.execute(actions, maps);
            }
            self.new_kthread(k, maps);
        }
    }

    /// Handles one decoded record. Returns the pid of a kthread that was just
    /// created: the caller reads it from /proc a little later, once its
    /// creator has finished binding and naming it.
    pub fn on_wire(&mut self, event: WireEvent, maps: &mut impl PolicyMaps) -> Option<u32> {
        let actions = match event {
            WireEvent::Hotplug {
                ts_ns, cpu, phase, ..
            } => {
                let (event, online) = match phase {
                    HotplugPhase::OfflineBegin => (Event::CpuOfflineBegin { cpu }, false),
                    HotplugPhase::OfflineDone => {
                        let actions = self.engine.handle(Event::CpuOfflineDone { cpu });
                        self.execute(actions, maps);
                        return None;
                    }
                    HotplugPhase::OnlineDone => (
                        Event::CpuOnline {
                            cpu,
                            node: self.node_of(cpu),
                        },
                        true,
                    ),
                };
                self.stats.hotplug += 1;
                self.reporter.report(&Report::Hotplug { cpu, online });
                let applied_before = self.stats.applied;
                let actions = self.engine.handle(event);
                self.execute(actions, maps);
                // From the kernel's timestamp of the hotplug step to the last
                // mask in place: the window in which a thread could run on a
                // CPU it should have left.
                let latency_us = monotonic_ns().saturating_sub(ts_ns) as f64 / 1000.0;
                self.reporter.report(&Report::HotplugHandled {
                    cpu,
                    online,
                    applied: self.stats.applied - applied_before,
                    latency_us: (latency_us * 10.0).round() / 10.0,
                });
                return None;
            }
            WireEvent::Violation { task, cpu, .. }
            | WireEvent::Migrate {
                task,
                dest_cpu: cpu,
                ..
            } => {
                let actions = self.engine.handle(Event::Ran { pid: task.pid, cpu });
                if actions.is_empty() && self.engine.entry(task.pid).is_none() {
                    // A kthread we have not met yet ran on a non-housekeeping
                    // CPU: the default policy judged it in the kernel.
                    vec![Action::ReportViolation {
                        pid: task.pid,
                        comm: task.comm,
                        cpu,
                        allowed: self.engine.housekeeping().clone(),
                    }]
                } else {
                    actions
                }
            }
            WireEvent::KthreadNew { task, .. } => return Some(task.pid),
            WireEvent::KthreadExit { task, .. } => {
                // comms stays until Forget, which reports the exit by name.
                self.originals.remove(&task.pid);
                self.pinned_reported.remove(&task.pid);
                self.kernel_managed_reported.remove(&task.pid);
                self.engine.handle(Event::KthreadExit { pid: task.pid })
            }
            WireEvent::SetAffinity {
                target_pid,
                caller_tgid,
                caller_comm,
                ret,
                ..
            } => {
                if ret != 0 {
                    return None;
                }
                let k = self.kernel.kthread(target_pid)?;
                self.engine.handle(Event::AffinityChanged {
                    pid: target_pid,
                    mask: k.cpus_allowed,
                    by_pid: Some(caller_tgid),
                    by_comm: Some(caller_comm),
                })
            }
        };
        self.execute(actions, maps);
        None
    }

    fn node_of(&self, cpu: u32) -> Option<u32> {
        self.engine
            .topology()
            .nodes
            .iter()
            .find(|(_, cpus)| cpus.contains(cpu))
            .map(|(n, _)| *n)
    }

    /// Compares the kernel with what we believe: new and vanished kthreads
    /// (events lost to a full ring buffer), reused pids, masks changed
    /// behind our back by something that is not a syscall (cpusets, the
    /// kernel itself).
    pub fn rescan(&mut self, maps: &mut impl PolicyMaps) {
        let now = self.kernel.kthreads();
        let alive: HashSet<u32> = now.iter().map(|k| k.pid).collect();
        let gone: Vec<u32> = self
            .engine
            .entries()
            .map(|e| e.pid)
            .filter(|p| !alive.contains(p))
            .collect();
        for pid in gone {
            let actions = self.engine.handle(Event::KthreadExit { pid });
            self.execute(actions, maps);
        }
        for k in now {
            match self.engine.entry(k.pid) {
                None => self.new_kthread(k, maps),
                Some(e) if e.start_time != k.start_time => {
                    let actions = self.engine.handle(Event::KthreadExit { pid: k.pid });
                    self.execute(actions, maps);
                    self.new_kthread(k, maps);
                }
                // In observe mode we never set, so actual and applied differ by design.
                Some(e)
                    if !self.opts.observe
                        && !e.pinned
                        && e.preference.is_some()
                        && e.current != k.cpus_allowed =>
                {
                    let actions = self.engine.handle(Event::AffinityChanged {
                        pid: k.pid,
                        mask: k.cpus_allowed,
                        by_pid: None,
                        by_comm: None,
                    });
                    self.execute(actions, maps);
                }
                Some(_) => {}
            }
        }
    }

    pub fn housekeeping_changed(&mut self, housekeeping: CpuSet, maps: &mut impl PolicyMaps) {
        let actions = self.engine.handle(Event::HousekeepingChanged(housekeeping));
        self.execute(actions, maps);
    }

    /// Runtime registration from `affinity prefer`.
    pub fn register(
        &mut self,
        target: Target,
        prefer: Preference,
        update: bool,
        maps: &mut impl PolicyMaps,
    ) -> Result<(), RegistryError> {
        let actions = self.engine.register(target, prefer, update)?;
        self.execute(actions, maps);
        self.sync_maps(maps);
        Ok(())
    }

    pub fn unregister(
        &mut self,
        target: &Target,
        maps: &mut impl PolicyMaps,
    ) -> Result<(), RegistryError> {
        let actions = self.engine.unregister(target)?;
        self.execute(actions, maps);
        Ok(())
    }

    pub fn execute(&mut self, actions: Vec<Action>, maps: &mut impl PolicyMaps) {
        for action in actions {
            match action {
                Action::SetAffinity {
                    pid,
                    start_time,
                    comm,
                    mask,
                } => self.set_affinity(pid, start_time, comm, mask, maps),
                Action::ReportViolation {
                    pid,
                    comm,
                    cpu,
                    allowed,
                } => {
                    *self
                        .stats
                        .violations_by_comm
                        .entry(comm.clone())
                        .or_default() += 1;
                    self.reporter.report(&Report::Violation {
                        pid,
                        comm,
                        cpu,
                        allowed: allowed.to_string(),
                    });
                }
                Action::ReportPinned { pid, comm } => {
                    if self.pinned_reported.insert(pid) {
                        self.reporter.report(&Report::Pinned { pid, comm });
                    }
                }
                Action::ReportAffinityChanged {
                    pid,
                    comm,
                    mask,
                    by_pid,
                    by_comm,
                } => {
                    self.reporter.report(&Report::AffinityChanged {
                        pid,
                        comm,
                        mask: mask.to_string(),
                        by_pid,
                        by_comm,
                    });
                }
                Action::Forget { pid } => {
                    if let Some(comm) = self.comms.remove(&pid) {
                        self.reporter.report(&Report::Exited { pid, comm });
                    }
                    if let Err(e) = maps.remove_allowed(pid) {
                        self.error(format!("clearing the policy map for pid {pid}: {e:#}"));
                    }
                }
            }
        }
    }

    fn set_affinity(
        &mut self,
        pid: u32,
        start_time: u64,
        comm: String,
        mask: CpuSet,
        maps: &mut impl PolicyMaps,
    ) {
        // The map first: from here on the programs judge the thread by the
        // new mask, also while the syscall is under way.
        if let Err(e) = maps.set_allowed(pid, &mask) {
            self.error(format!("writing the policy map for pid {pid}: {e:#}"));
        }
        if self.opts.observe {
            self.reporter.report(&Report::WouldApply {
                pid,
                comm,
                mask: mask.to_string(),
            });
            return;
        }
        match self.kernel.set_affinity(pid, start_time, &mask) {
            Ok(()) => {
                self.stats.applied += 1;
                self.reporter.report(&Report::Applied {
                    pid,
                    comm,
                    mask: mask.to_string(),
                });
            }
            Err(SetAffinityError::Gone(_)) => {
                let actions = self.engine.handle(Event::KthreadExit { pid });
                self.execute(actions, maps);
            }
            Err(SetAffinityError::Pinned(_)) => {
                let _ = maps.remove_allowed(pid);
                if self.pinned_reported.insert(pid) {
                    self.reporter.report(&Report::Pinned { pid, comm });
                }
            }
            Err(e) => self.error(e.to_string()),
        }
    }

    fn error(&mut self, message: String) {
        self.stats.errors += 1;
        self.reporter.report(&Report::Error { message });
    }

    /// Puts back the masks we changed (`--restore-on-exit`); returns how many.
    pub fn restore_originals(&mut self) -> usize {
        if !self.opts.restore_on_exit || self.opts.observe {
            return 0;
        }
        let mut restored = 0;
        for (pid, (start_time, mask)) in std::mem::take(&mut self.originals) {
            let changed = self.engine.entry(pid).is_some_and(|e| e.current != mask);
            if changed && self.kernel.set_affinity(pid, start_time, &mask).is_ok() {
                restored += 1;
            }
        }
        restored
    }

    pub fn summary(&self) -> Report {
        Report::Summary {
            violations: self.stats.violations(),
            suppressed: self.stats.suppressed,
            applied: self.stats.applied,
            hotplug: self.stats.hotplug,
            drops: self.stats.drops,
            records: self.stats.records,
            violations_seen: self.stats.violations_seen,
            registered: self.managed_count(),
            pinned: self.pinned_count(),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Keeps only the last sched_setaffinity record per target in a batch: the
/// daemon reads the resulting mask from /proc anyway, so earlier ones carry
/// nothing more, and a flood of calls must not slow the drain.
pub fn coalesce(batch: &mut Vec<Result<WireEvent, crate::wire::WireError>>) {
    let mut seen = HashSet::new();
    let mut keep = vec![true; batch.len()];
    for (i, ev) in batch.iter().enumerate().rev() {
        if let Ok(WireEvent::SetAffinity { target_pid, .. }) = ev {
            keep[i] = seen.insert(*target_pid);
        }
    }
    let mut i = 0;
    batch.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        policy::{PF_KTHREAD, PF_NO_SETAFFINITY, Rule, Topology},
        wire::TaskRecord,
    };

    const W: u32 = 4;

    fn set(list: &str) -> CpuSet {
        CpuSet::parse(list, W).unwrap()
    }

    fn kt(pid: u32, comm: &str, flags: u32, mask: &str) -> Kthread {
        Kthread {
            pid,
            comm: comm.into(),
            flags: PF_KTHREAD | flags,
            start_time: 1000 + pid as u64,
            cpus_allowed: set(mask),
        }
    }

    /// The kernel as a table; records every call.
    #[derive(Default)]
    struct FakeKernel {
        tasks: BTreeMap<u32, Kthread>,
        sets: Vec<(u32, String)>,
    }

    impl Kernel for FakeKernel {
        fn set_affinity(
            &mut self,
            pid: u32,
            start_time: u64,
            mask: &CpuSet,
        ) -> Result<(), SetAffinityError> {
            let Some(k) = self
                .tasks
                .get_mut(&pid)
                .filter(|k| k.start_time == start_time)
            else {
                return Err(SetAffinityError::Gone(pid));
            };
            if k.is_pinned() {
                return Err(SetAffinityError::Pinned(pid));
            }
            k.cpus_allowed = mask.clone();
            self.sets.push((pid, mask.to_string()));
            Ok(())
        }
        fn kthread(&self, pid: u32) -> Option<Kthread> {
            self.tasks.get(&pid).cloned()
        }
        fn kthreads(&self) -> Vec<Kthread> {
            self.tasks.values().cloned().collect()
        }
    }

    #[derive(Default)]
    struct FakeMaps(BTreeMap<u32, String>);

    impl PolicyMaps for FakeMaps {
        fn set_allowed(&mut self, pid: u32, mask: &CpuSet) -> anyhow::Result<()> {
            self.0.insert(pid, mask.to_string());
            Ok(())
        }
        fn remove_allowed(&mut self, pid: u32) -> anyhow::Result<()> {
            self.0.remove(&pid);
            Ok(())
        }
    }

    fn core(observe: bool, rules: Vec<Rule>, tasks: &[Kthread]) -> Core<FakeKernel, Vec<u8>> {
        let topology = Topology {
            width: W,
            possible: set("0-3"),
            online: set("0-3"),
            nodes: BTreeMap::from([(0, set("0-3"))]),
        };
        let engine = Engine::new(topology, set("0-3"), rules);
        let kernel = FakeKernel {
            tasks: tasks.iter().map(|k| (k.pid, k.clone())).collect(),
            sets: Vec::new(),
        };
        let opts = Options {
            observe,
            restore_on_exit: true,
            kernel_manages: Box::new(|_| false),
        };
        Core::new(
            engine,
            kernel,
            Reporter::new(Vec::new(), report::Format::Json, false),
            opts,
        )
    }

    fn rule(comm: &str, cpus: &str) -> Rule {
        Rule {
            target: Target::Comm(comm.into()),
            prefer: Preference::Cpus(set(cpus)),
        }
    }

    fn reports(c: &mut Core<FakeKernel, Vec<u8>>) -> Vec<serde_json::Value> {
        let out = std::mem::take(c.reporter.out_mut());
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn hotplug(cpu: u32, phase: HotplugPhase) -> WireEvent {
        WireEvent::Hotplug {
            ts_ns: monotonic_ns(),
            cpu,
            phase,
            state: 0,
        }
    }

    #[test]
    fn start_applies_rules_and_fills_the_map() {
        let mut c = core(
            false,
            vec![rule("khugepaged", "1")],
            &[kt(38, "khugepaged", 0, "0-3")],
        );
        let mut maps = FakeMaps::default();
        c.start(&mut maps);
        assert_eq!(c.kernel.sets, [(38, "1".to_string())]);
        assert_eq!(maps.0.get(&38).map(String::as_str), Some("1"));
        let r = reports(&mut c);
        assert!(
            r.iter()
                .any(|e| e["type"] == "applied" && e["pid"] == 38 && e["mask"] == "1"),
            "{r:?}"
        );
    }

    #[test]
    fn observe_sets_nothing_but_says_what_it_would_do() {
        let mut c = core(
            true,
            vec![rule("khugepaged", "1")],
            &[kt(38, "khugepaged", 0, "0-3")],
        );
        let mut maps = FakeMaps::default();
        c.start(&mut maps);
        assert!(c.kernel.sets.is_empty());
        assert_eq!(
            maps.0.get(&38).map(String::as_str),
            Some("1"),
            "violations are still judged by the policy"
        );
        assert!(
            reports(&mut c)
                .iter()
                .any(|e| e["type"] == "would_apply" && e["mask"] == "1")
        );
    }

    #[test]
    fn offline_begin_shrinks_masks_and_online_restores_them() {
        let mut c = core(
            false,
            vec![rule("khugepaged", "1-2")],
            &[kt(38, "khugepaged", 0, "0-3")],
        );
        let mut maps = FakeMaps::default();
        c.start(&mut maps);
        c.on_wire(hotplug(1, HotplugPhase::OfflineBegin), &mut maps);
        assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "2");
        c.on_wire(hotplug(1, HotplugPhase::OfflineDone), &mut maps);
        c.on_wire(hotplug(1, HotplugPhase::OnlineDone), &mut maps);
        assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "1-2");
        assert_eq!(maps.0[&38], "1-2");
        let r = reports(&mut c);
        let handled: Vec<_> = r
            .iter()
            .filter(|e| e["type"] == "hotplug_handled")
            .map(|e| (e["online"].clone(), e["applied"].clone()))
            .collect();
        assert_eq!(handled, [(false.into(), 1.into()), (true.into(), 1.into())]);
        assert_eq!(c.stats.hotplug, 2);
    }

    #[test]
    fn a_reused_pid_is_never_touched() {
        let mut c = core(
            false,
            vec![rule("khugepaged", "1")],
            &[kt(38, "khugepaged", 0, "1")],
        );
        let mut maps = FakeMaps::default();
        c.start(&mut maps);
        // pid 38 exits and a new task gets its number.
        let mut other = kt(38, "khugepaged", 0, "0-3");
        other.start_time = 99_999;
        c.kernel.tasks.insert(38, other);
        c.on_wire(hotplug(1, HotplugPhase::OfflineBegin), &mut maps);
        assert!(
            c.kernel.sets.is_empty(),
            "the new owner of pid 38 was not touched"
        );
        assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "0-3");
    }

    #[test]
    fn pinned_kthreads_are_reported_once_and_never_retried() {
        let mut c = core(
            false,
            vec![rule("ksoftirqd/*", "1")],
            &[kt(14, "ksoftirqd/0", PF_NO_SETAFFINITY, "0")],
        );
        let mut maps = FakeMaps::default();
        c.start(&mut maps);
        c.on_wire(hotplug(1, HotplugPhase::OfflineBegin), &mut maps);
        c.on_wire(hotplug(1, HotplugPhase::OnlineDone), &mut maps);
        c.rescan(&mut maps);
        let pinned = reports(&mut c)
            .iter()
            .filter(|e| e["type"] == "pinned")
            .count();
        assert_eq!(pinned, 1);
        assert!(c.kernel.sets.is_empty());
    }

    #[test]
    fn a_foreign_setaffinity_is_named_and_undone() {
        let mut c = core(
            false,
            vec![rule("khugepaged", "0")],
            &[kt(38, "khugepaged", 0, "0-3")],
        );
        let mut maps = FakeMaps::default();
        c.start(&mut maps);
        c.kernel.tasks.get_mut(&38).unwrap().cpus_allowed = set("3");
        c.on_wire(
            WireEvent::SetAffinity {
                ts_ns: 0,
                target_pid: 38,
                caller_pid: 4242,
                caller_tgid: 4242,
                caller_comm: "taskset".into(),
                ret: 0,
            },
            &mut maps,
        );
        assert_eq!(
            c.kernel.tasks[&38].cpus_allowed.to_string(),
            "0",
            "restored"
        );
        let r = reports(&mut c);
        let changed = r
            .iter()
            .find(|e| e["type"] == "affinity_changed")
            .expect("reported");
        assert_eq!(
            (
                changed["by_pid"].clone(),
                changed["by_comm"].clone(),
                changed["mask"].clone()
            ),
            (4242.into(), "taskset".into(), "3".into())
        );
    }

    #[test]
    fn an_exiting_kthread_is_reported_and_leaves_the_map() {
        let mut c = core(
            false,
            vec![rule("khugepaged", "1")],
            &[kt(38, "khugepaged", 0, "0-3")],
        );
        let mut maps = FakeMaps::default();
        c.start(&mut maps);
        let task = TaskRecord {
            pid: 38,
            tgid: 38,
            flags: PF_KTHREAD,
            comm: "khugepaged".into(),
        };
        c.on_wire(WireEvent::KthreadExit { ts_ns: 0, task }, &mut maps);
        assert!(!maps.0.contains_key(&38));
        assert!(c.engine.entry(38).is_none());
        assert!(
            reports(&mut c)
                .iter()
                .any(|e| e["type"] == "exited" && e["pid"] == 38 && e["comm"] == "khugepaged")
        );
    }

    #[test]
    fn restore_on_exit_puts_original_masks_back() {
        let mut c = core(
            false,
            vec![rule("khugepaged", "1")],
            &[kt(38, "khugepaged", 0, "0-3")],
        );
        let mut maps = FakeMaps::default();
        c.start(&mut maps);
        assert_eq!(c.restore_originals(), 1);
        assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "0-3");
    }

    #[test]
    fn coalesce_keeps_the_last_setaffinity_per_target() {
        let sa = |target_pid, caller_pid| {
            Ok(WireEvent::SetAffinity {
                ts_ns: 0,
                target_pid,
                caller_pid,
                caller_tgid: caller_pid,
                caller_comm: String::new(),
                ret: 0,
            })
        };
        let exit = Ok(WireEvent::KthreadExit {
            ts_ns: 0,
            task: TaskRecord {
                pid: 9,
                tgid: 9,
                flags: 0,
                comm: String::new(),
            },
        });
        let mut batch = vec![sa(1, 10), sa(2, 20), exit.clone(), sa(1, 11)];
        coalesce(&mut batch);
        assert_eq!(batch, vec![sa(2, 20), exit, sa(1, 11)]);
    }
}
