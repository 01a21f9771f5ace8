//! The daemon's core: turns decoded kernel events into policy engine events,
//! carries out the engine's actions through [`Kernel`] and [`PolicyMaps`]
//! (see `executor.rs`), feeds their outcome back to the engine, and reports.
//! Synchronous and free of BPF, so it runs against fakes in unit tests;
//! `commands::run` wraps it in the async event loop.
//!
//! The daemon's view never depends on having seen every event: the online
//! set and each CPU's node are read from sysfs at hotplug records, on every
//! rescan and after any lost record ([`Core::converge`]), and every
//! kthread's mask on every rescan ([`Core::reconcile`]).

pub mod control;
mod executor;
pub mod irq;
pub mod kernel;
pub mod left;
pub mod metrics;
pub mod noise;
pub mod output;
pub mod report;
mod stats;
#[cfg(test)]
mod tests;

use std::io::Write;

use kernel::Kernel;
use report::{Report, Reporter};
pub use stats::{Histogram, REACTION_BUCKETS, Stats};

use crate::{
    kernel::sysfs::Scan,
    kernel::wire::{HotplugPhase, WireEvent},
    policy::{CpuSet, Engine, Event, Preference, RegistryError, Target},
};

/// What the eBPF programs read: the policy per pid, and their view of the
/// online CPUs with the hotplug steps userspace has acted on.
pub trait PolicyMaps {
    fn set_policy(
        &mut self,
        pid: u32,
        applied: &CpuSet,
        preferred: Option<&CpuSet>,
    ) -> anyhow::Result<()>;
    fn clear_policy(&mut self, pid: u32) -> anyhow::Result<()>;
    /// The masks for every hotplug step up to `seq` are in place.
    fn acknowledge(&mut self, seq: u64) -> anyhow::Result<()>;
    /// The programs' view: (last step, online CPUs).
    fn hotplug_view(&self) -> anyhow::Result<(u64, Vec<u64>)>;
    /// Replaces the programs' online CPUs and acknowledges every step.
    fn correct_online(&mut self, online: &CpuSet) -> anyhow::Result<u64>;
}

/// No programs to tell: `affinity apply` sets the masks once and exits.
pub struct NoPrograms;

impl PolicyMaps for NoPrograms {
    fn set_policy(&mut self, _: u32, _: &CpuSet, _: Option<&CpuSet>) -> anyhow::Result<()> {
        Ok(())
    }
    fn clear_policy(&mut self, _: u32) -> anyhow::Result<()> {
        Ok(())
    }
    fn acknowledge(&mut self, _: u64) -> anyhow::Result<()> {
        Ok(())
    }
    fn hotplug_view(&self) -> anyhow::Result<(u64, Vec<u64>)> {
        Ok((0, Vec::new()))
    }
    fn correct_online(&mut self, _: &CpuSet) -> anyhow::Result<u64> {
        Ok(0)
    }
}

impl PolicyMaps for crate::kernel::bpf::Observer {
    fn set_policy(
        &mut self,
        pid: u32,
        applied: &CpuSet,
        preferred: Option<&CpuSet>,
    ) -> anyhow::Result<()> {
        let none: &[u64] = &[];
        Ok(crate::kernel::bpf::Observer::set_policy(
            self,
            pid,
            applied.words(),
            preferred.map_or(none, |p| p.words()),
        )?)
    }
    fn clear_policy(&mut self, pid: u32) -> anyhow::Result<()> {
        Ok(crate::kernel::bpf::Observer::remove_allowed(self, pid)?)
    }
    fn acknowledge(&mut self, seq: u64) -> anyhow::Result<()> {
        Ok(crate::kernel::bpf::Observer::acknowledge(self, seq)?)
    }
    fn hotplug_view(&self) -> anyhow::Result<(u64, Vec<u64>)> {
        Ok(crate::kernel::bpf::Observer::hotplug_view(self)?)
    }
    fn correct_online(&mut self, online: &CpuSet) -> anyhow::Result<u64> {
        Ok(crate::kernel::bpf::Observer::correct_online(
            self,
            online.words(),
        )?)
    }
}

pub struct Options {
    /// Change nothing: report what would be done.
    pub observe: bool,
    /// Put each kthread's mask from before our first change back on exit.
    pub restore_on_exit: bool,
}

pub struct Core<K: Kernel, W: Write> {
    pub engine: Engine,
    pub kernel: K,
    pub reporter: Reporter<W>,
    pub stats: Stats,
    /// Noise on the watched CPUs, fed by `commands::run` every interval.
    pub noise: noise::NoiseTracker,
    opts: Options,
    /// The last hotplug step acknowledged to the programs.
    acked: u64,
    /// A disagreement with the kernel first seen at (CLOCK_MONOTONIC ns,
    /// programs' step, sysfs online set, the programs' online set): acted on
    /// only if it is still the same a while later (see [`Core::converge`]).
    disagreement: Option<(u64, u64, CpuSet, CpuSet)>,
    /// Bumped by everything that may change a kthread's record or mask: a
    /// /proc scan started before a bump is stale (see [`Core::epoch`]).
    epoch: u64,
}

impl<K: Kernel, W: Write> Core<K, W> {
    pub fn new(engine: Engine, kernel: K, reporter: Reporter<W>, opts: Options) -> Self {
        Core {
            engine,
            kernel,
            reporter,
            stats: Stats::default(),
            noise: noise::NoiseTracker::default(),
            opts,
            acked: 0,
            disagreement: None,
            epoch: 0,
        }
    }

    /// A scan made while this stays the same saw what the engine believes;
    /// one that straddles a change may show masks from before it, which
    /// must not be taken for someone else's doing.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn pinned_count(&self) -> usize {
        self.engine.entries().filter(|e| e.pinned()).count()
    }

    /// Whether a managed kthread's mask is refused (or narrowed) now.
    pub fn any_refused(&self) -> bool {
        self.engine
            .entries()
            .any(|e| e.managed() && e.refused.is_some())
    }

    pub fn managed_count(&self) -> usize {
        self.engine.entries().filter(|e| e.managed()).count()
    }

    /// Feeds every kthread alive now into the engine and sets their masks:
    /// the start-up scan, also after a SIGKILL.
    pub fn start(&mut self, maps: &mut impl PolicyMaps) -> std::io::Result<()> {
        let scan = self.kernel.kthreads()?;
        for k in scan.kthreads {
            let actions = self.engine.handle(Event::KthreadNew(k));
            self.execute(actions, maps);
        }
        Ok(())
    }

    /// A new kthread, read from /proc once its creator is done with it.
    pub fn kthread_created(&mut self, pid: u32, maps: &mut impl PolicyMaps) {
        match self.kernel.kthread(pid) {
            // The engine ignores a fork and a rename of one kthread seen
            // twice, and replaces a renamed or reused one.
            Ok(Some(k)) => {
                let actions = self.engine.handle(Event::KthreadNew(k));
                self.execute(actions, maps);
            }
            // Gone already, or it was never a kthread: the rescan agrees.
            Ok(None) => {}
            // Not readable now: the next rescan picks it up.
            Err(_) => {}
        }
    }

    /// Handles one decoded record. Returns the pid of a kthread that was just
    /// created: the caller reads it from /proc a little later, once its
    /// creator has finished binding and naming it.
    pub fn on_wire(&mut self, event: WireEvent, maps: &mut impl PolicyMaps) -> Option<u32> {
        let actions = match event {
            WireEvent::Hotplug {
                ts_ns,
                cpu,
                phase,
                state,
                ret,
                seq,
            } => {
                // Older than what a convergence read from the kernel after a
                // loss (or the teardown's second record, which changes
                // nothing): acting on it would undo the truth.
                if seq <= self.acked && self.acked > 0 {
                    return None;
                }
                self.on_hotplug(ts_ns, cpu, phase, state, ret, maps);
                self.acknowledge(seq, maps);
                return None;
            }
            WireEvent::Violation {
                task, cpu, run_ns, ..
            } => self.engine.handle(Event::Ran {
                pid: task.pid,
                comm: task.comm,
                cpu,
                run_ns,
            }),
            WireEvent::Migrate {
                task,
                dest_cpu: cpu,
                ..
            } => self.engine.handle(Event::Ran {
                pid: task.pid,
                comm: task.comm,
                cpu,
                run_ns: 0,
            }),
            WireEvent::KthreadNew { task, .. } => return Some(task.pid),
            WireEvent::KthreadExit { task, .. } => {
                self.engine.handle(Event::KthreadExit { pid: task.pid })
            }
            WireEvent::SetAffinity {
                target_pid,
                caller_tgid,
                caller_comm,
                by_kernel,
                ..
            } => {
                // The programs report successful calls only; the mask is
                // read now (later calls in the same batch were coalesced).
                let Ok(Some(k)) = self.kernel.kthread(target_pid) else {
                    return None;
                };
                if self
                    .engine
                    .entry(target_pid)
                    .is_none_or(|e| e.start_time != k.start_time)
                {
                    return None;
                }
                // The kernel moving a kthread onto a CPU the daemon has not
                // heard come online yet (kcompactd at CPUHP_AP_ONLINE_DYN,
                // before the step's record): the kernel is ahead, not wrong.
                // Taken as is; the hotplug record that follows judges it.
                if by_kernel && !k.cpus_allowed.and_not(self.engine.online()).is_empty() {
                    self.engine.observed(target_pid, k.cpus_allowed);
                    return None;
                }
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

    fn on_hotplug(
        &mut self,
        ts_ns: u64,
        cpu: u32,
        phase: HotplugPhase,
        step: i32,
        ret: i32,
        maps: &mut impl PolicyMaps,
    ) {
        self.epoch += 1;
        let (event, online) = match phase {
            HotplugPhase::OfflineBegin => (Event::CpuOfflineBegin { cpu }, false),
            HotplugPhase::OfflineDone => {
                let actions = self.engine.handle(Event::CpuOfflineDone { cpu });
                self.execute(actions, maps);
                return;
            }
            // Rolled back from a teardown: the CPU is where it was before.
            HotplugPhase::OnlineDone | HotplugPhase::OfflineAborted => (
                Event::CpuOnline {
                    cpu,
                    node: self.node_of(cpu),
                },
                true,
            ),
            HotplugPhase::OnlineAborted => (Event::CpuOfflineDone { cpu }, false),
        };
        self.stats.hotplug += 1;
        if matches!(
            phase,
            HotplugPhase::OfflineAborted | HotplugPhase::OnlineAborted
        ) {
            self.reporter.report(&Report::HotplugAborted {
                cpu,
                online,
                step,
                ret,
            });
        } else {
            self.reporter.report(&Report::Hotplug { cpu, online });
        }
        let applied_before = self.stats.applied;
        let actions = self.engine.handle(event);
        self.execute(actions, maps);
        // From the kernel's timestamp of the hotplug step to the last mask
        // in place: the window in which a thread could run on a CPU it
        // should have left.
        let done_ns = monotonic_ns();
        let latency_ns = done_ns.saturating_sub(ts_ns);
        self.stats.reaction.observe(latency_ns);
        let latency_us = latency_ns as f64 / 1000.0;
        self.reporter.report(&Report::HotplugHandled {
            cpu,
            online,
            applied: self.stats.applied - applied_before,
            latency_us: (latency_us * 10.0).round() / 10.0,
            done_ns,
        });
    }

    /// The masks for the hotplug steps up to `seq` are in place: from now
    /// on the programs judge runs against the online set of now only.
    fn acknowledge(&mut self, seq: u64, maps: &mut impl PolicyMaps) {
        if seq <= self.acked {
            return;
        }
        match maps.acknowledge(seq) {
            Ok(()) => self.acked = seq,
            Err(e) => self.error(format!("acknowledging hotplug step {seq}: {e:#}")),
        }
    }

    /// The node of a CPU, read from sysfs now (a CPU hot-added after start
    /// has no place in the start-up topology), else as known.
    fn node_of(&self, cpu: u32) -> Option<u32> {
        self.kernel
            .cpu_node(cpu)
            .or_else(|| self.engine.topology().node_of(cpu))
    }

    /// Makes the engine's and the programs' view of the CPUs the kernel's:
    /// the online set (for CPUs no hotplug operation is under way on; those
    /// are settled by their own records) and every online CPU's node.
    ///
    /// Unless `after_loss`, nothing is corrected while the programs report
    /// steps not yet acknowledged (their records are on the way), nor before
    /// the same disagreement has lasted [`SETTLE_NS`].
    pub fn converge(&mut self, maps: &mut impl PolicyMaps, after_loss: bool) {
        let view = match maps.hotplug_view() {
            Ok(v) => v,
            Err(e) => {
                self.error(format!("reading the programs' view: {e:#}"));
                return;
            }
        };
        if !after_loss && view.0 > self.acked {
            return;
        }
        let online = match self.kernel.online_cpus() {
            Ok(o) => o,
            Err(e) => {
                self.error(format!("reading the online CPUs: {e:#}"));
                return;
            }
        };
        let mut believed = self.engine.online().clone();
        let differ = online.and_not(&believed).or(&believed.and_not(&online));
        if differ.iter().any(|cpu| !self.kernel.cpu_settled(cpu)) {
            // A hotplug operation is under way: its records will come.
            return;
        }
        // A whole hotplug operation may have run since the view was read:
        // then its records are on the way, and sysfs is newer than both.
        if !after_loss && maps.hotplug_view().is_ok_and(|(seq, _)| seq != view.0) {
            return;
        }
        let width = online.width();
        let theirs = CpuSet::from_words(width, &view.1);
        if !self.persistent(after_loss, view.0, &online, &theirs) {
            return;
        }
        for cpu in differ.iter() {
            if online.contains(cpu) {
                believed.insert(cpu);
            } else {
                believed.remove(cpu);
            }
        }
        let nodes = self.kernel.online_nodes(&online);
        let actions = self.engine.handle(Event::Resync {
            online: believed,
            nodes,
        });
        self.execute(actions, maps);

        // The programs' view, which a hotplug between start-up and attach
        // leaves wrong.
        let seq = view.0;
        let ours = self.engine.online().clone();
        if theirs != ours {
            let differ = theirs.and_not(&ours).or(&ours.and_not(&theirs));
            if differ.iter().any(|cpu| !self.kernel.cpu_settled(cpu)) {
                return;
            }
            self.stats.resyncs += 1;
            self.reporter.report(&Report::Resync {
                what: format!("the eBPF programs' online CPUs are {ours}, not {theirs}"),
            });
            match maps.correct_online(&ours) {
                Ok(seq) => self.acked = self.acked.max(seq),
                Err(e) => self.error(format!("correcting the programs' view: {e:#}")),
            }
        } else if seq > self.acked {
            // A step whose record was lost: its masks are in place now.
            self.acknowledge(seq, maps);
        }
    }

    /// Whether the kernel's online set and the programs' view disagree with
    /// ours in the same way as at least [`SETTLE_NS`] ago, with no hotplug
    /// step in between: a disagreement that lasts is the truth, one that
    /// passes was a race with records on their way. After a loss there is
    /// nothing to wait for.
    fn persistent(&mut self, after_loss: bool, seq: u64, online: &CpuSet, theirs: &CpuSet) -> bool {
        let ours = self.engine.online();
        if online == ours && theirs == ours {
            self.disagreement = None;
            // Node changes need no waiting: nothing races with them.
            return true;
        }
        if after_loss {
            self.disagreement = None;
            return true;
        }
        let now = monotonic_ns();
        match &self.disagreement {
            Some((since, s, o, t))
                if *s == seq && o == online && t == theirs && now - since >= SETTLE_NS =>
            {
                self.disagreement = None;
                true
            }
            Some((_, s, o, t)) if *s == seq && o == online && t == theirs => false,
            _ => {
                self.disagreement = Some((now, seq, online.clone(), theirs.clone()));
                false
            }
        }
    }

    /// Compares a fresh /proc scan with what we believe: new and vanished
    /// kthreads (events lost to a full ring buffer), reused pids, masks
    /// changed behind our back by something that is not a syscall (cpusets,
    /// the kernel itself). Pids that could not be read are left as they are.
    pub fn reconcile(&mut self, scan: std::io::Result<Scan>, maps: &mut impl PolicyMaps) {
        let scan = match scan {
            Ok(s) => s,
            Err(e) => {
                // Not "every kthread exited": nothing is forgotten.
                self.error(format!("scanning /proc: {e:#}"));
                return;
            }
        };
        let mut seen: std::collections::HashSet<u32> = scan.unreadable.iter().copied().collect();
        seen.extend(scan.kthreads.iter().map(|k| k.pid));
        let gone: Vec<u32> = self
            .engine
            .entries()
            .map(|e| e.pid)
            .filter(|p| !seen.contains(p))
            .collect();
        for pid in gone {
            let actions = self.engine.handle(Event::KthreadExit { pid });
            self.execute(actions, maps);
        }
        for k in scan.kthreads {
            let actions = match self.engine.entry(k.pid) {
                Some(e)
                    if e.start_time == k.start_time
                        && e.comm == k.comm
                        && !e.pinned()
                        && e.current != k.cpus_allowed =>
                {
                    self.engine.handle(Event::AffinityChanged {
                        pid: k.pid,
                        mask: k.cpus_allowed,
                        by_pid: None,
                        by_comm: None,
                    })
                }
                Some(e) if e.start_time == k.start_time && e.comm == k.comm => continue,
                _ => self.engine.handle(Event::KthreadNew(k)),
            };
            self.execute(actions, maps);
        }
        let actions = self.engine.handle(Event::Tick);
        self.execute(actions, maps);
    }

    /// [`reconcile`](Self::reconcile) with a scan made here, on this thread.
    pub fn rescan(&mut self, maps: &mut impl PolicyMaps) {
        let scan = self.kernel.kthreads();
        self.reconcile(scan, maps);
    }

    pub fn housekeeping_changed(&mut self, housekeeping: CpuSet, maps: &mut impl PolicyMaps) {
        // An isolated partition made or removed: the kernel re-affines the
        // kthreads it manages itself (7.0), usually before the daemon reads
        // the new housekeeping. Their masks are read first, so that it does
        // not set what the kernel already set, leaving a user mask that
        // clips the kernel's next re-affine, which it would then fight.
        let theirs: Vec<(u32, u64)> = self
            .engine
            .entries()
            .filter(|e| e.kernel_managed && e.managed())
            .map(|e| (e.pid, e.start_time))
            .collect();
        for (pid, start_time) in theirs {
            if let Ok(Some(k)) = self.kernel.kthread(pid)
                && k.start_time == start_time
            {
                self.engine.observed(pid, k.cpus_allowed);
            }
        }
        let actions = self.engine.handle(Event::HousekeepingChanged(housekeeping));
        self.execute(actions, maps);
    }

    /// Runtime registration from `affinity prefer`.
    pub fn register(
        &mut self,
        target: Target,
        prefer: Preference,
        update: bool,
        by: &str,
        maps: &mut impl PolicyMaps,
    ) -> Result<(), RegistryError> {
        let actions = self.engine.register(target, prefer, update, by)?;
        self.execute(actions, maps);
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

    /// A new rules file's rules (SIGHUP, `affinity reload`), applied as a
    /// diff; returns how many kthreads changed.
    pub fn replace_rules(
        &mut self,
        rules: Vec<crate::policy::Rule>,
        maps: &mut impl PolicyMaps,
    ) -> usize {
        self.epoch += 1;
        let (actions, changed) = self.engine.replace_rules(rules);
        self.execute(actions, maps);
        changed
    }

    /// The live registry for `affinity status`.
    pub fn view(&self) -> control::LiveView {
        let mut view = control::LiveView::of(&self.engine, self.opts.observe);
        view.noise = self.noise.last.clone();
        view
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
        let changed: Vec<(u32, u64, CpuSet)> = self
            .engine
            .handed_back()
            .map(|(e, mask)| (e.pid, e.start_time, mask))
            .collect();
        changed
            .into_iter()
            .filter(|(pid, start_time, mask)| {
                self.kernel.set_affinity(*pid, *start_time, mask).is_ok()
            })
            .count()
    }

    /// The masks we set and leave in place, for `affinity restore`: none
    /// when observing or when `--restore-on-exit` puts them back.
    pub fn masks_left(&self) -> Vec<left::LeftMask> {
        if self.opts.observe || self.opts.restore_on_exit {
            return Vec::new();
        }
        self.engine
            .handed_back()
            .map(|(e, _)| left::LeftMask {
                pid: e.pid,
                start_time: e.start_time,
                comm: e.comm.clone(),
                set: e.current.to_string(),
            })
            .collect()
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
            resyncs: self.stats.resyncs,
            refused: self.stats.refused,
            lines_dropped: self.stats.lines_dropped,
        }
    }
}

/// How long a disagreement with the kernel must last before it is corrected.
const SETTLE_NS: u64 = 1_000_000_000;

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
/// nothing more, and a flood of calls must not slow the drain. Failed calls
/// never get here (the programs drop them), so the one kept names a caller
/// that did move the kthread.
pub fn coalesce(batch: &mut Vec<Result<WireEvent, crate::kernel::wire::WireError>>) {
    let mut seen = std::collections::HashSet::new();
    let mut keep = vec![true; batch.len()];
    for (i, ev) in batch.iter().enumerate().rev() {
        if let Ok(WireEvent::SetAffinity {
            target_pid, ret, ..
        }) = ev
        {
            keep[i] = *ret == 0 && seen.insert(*target_pid);
        }
    }
    let mut i = 0;
    batch.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}
