//! Living beside irqbalance. It rewrites every IRQ's affinity on its own
//! schedule (every 10 s); with `--irqs` the daemon would put its mask back
//! on every rescan, a tug of war nobody sees. So, by default, while an
//! irqbalance runs the daemon leaves IRQ affinity to it (the default IRQ
//! affinity and the workqueue cpumasks, which irqbalance does not write,
//! stay the daemon's) and says once which CPUs to ban in irqbalance's own
//! configuration; `--irqs-over-irqbalance` makes the daemon steer anyway,
//! and that too is said once. Pure: the scan says whether irqbalance runs.

use crate::policy::CpuSet;

/// What the daemon does about IRQ affinity while irqbalance runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IrqbalancePolicy {
    /// Leave it to irqbalance: write no `/proc/irq/N` file.
    #[default]
    Yield,
    /// Steer anyway (`--irqs-over-irqbalance`): irqbalance's writes are put
    /// back at the next rescan.
    Override,
}

/// Which side sets IRQ affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IrqOwner {
    Irqbalance,
    Affinity,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqbalanceNote {
    /// irqbalance (`pid`) runs and `winner` sets IRQ affinity; `banned`:
    /// the CPUs outside housekeeping, which irqbalance should be told to
    /// avoid (its IRQBALANCE_BANNED_CPULIST).
    Conflict {
        pid: u32,
        winner: IrqOwner,
        banned: CpuSet,
    },
    /// It no longer runs: IRQ affinity is the daemon's again.
    Gone { pid: u32 },
}

/// What is known of irqbalance, and what was said about it.
#[derive(Clone, Debug, Default)]
pub struct IrqbalanceWatch {
    policy: IrqbalancePolicy,
    /// The pid running and the banned CPUs last reported with it.
    seen: Option<(u32, CpuSet)>,
}

impl IrqbalanceWatch {
    pub fn new(policy: IrqbalancePolicy) -> IrqbalanceWatch {
        IrqbalanceWatch { policy, seen: None }
    }

    /// Whether IRQ files are left alone now.
    pub fn yielding(&self) -> bool {
        self.seen.is_some() && self.policy == IrqbalancePolicy::Yield
    }

    pub fn pid(&self) -> Option<u32> {
        self.seen.as_ref().map(|(pid, _)| *pid)
    }

    /// irqbalance as found now (None: not running), with the CPUs it
    /// should avoid. Something to say only when that changes: it appears,
    /// restarts (another pid), goes away, or housekeeping moves the CPUs to
    /// ban; never on a rescan that finds the same.
    pub fn observe(&mut self, pid: Option<u32>, banned: &CpuSet) -> Option<IrqbalanceNote> {
        match (pid, &self.seen) {
            (None, None) => None,
            (None, Some((old, _))) => {
                let pid = *old;
                self.seen = None;
                Some(IrqbalanceNote::Gone { pid })
            }
            (Some(p), Some((old, b))) if p == *old && b == banned => None,
            (Some(pid), _) => {
                self.seen = Some((pid, banned.clone()));
                Some(IrqbalanceNote::Conflict {
                    pid,
                    winner: match self.policy {
                        IrqbalancePolicy::Yield => IrqOwner::Irqbalance,
                        IrqbalancePolicy::Override => IrqOwner::Affinity,
                    },
                    banned: banned.clone(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(list: &str) -> CpuSet {
        CpuSet::parse(list, 4).unwrap()
    }

    #[test]
    fn said_once_per_appearance_and_once_when_gone() {
        let mut w = IrqbalanceWatch::new(IrqbalancePolicy::Yield);
        assert_eq!(w.observe(None, &s("1")), None);
        assert!(!w.yielding());
        let conflict = |pid, banned: &str| {
            Some(IrqbalanceNote::Conflict {
                pid,
                winner: IrqOwner::Irqbalance,
                banned: s(banned),
            })
        };
        assert_eq!(w.observe(Some(700), &s("1")), conflict(700, "1"));
        assert!(w.yielding());
        // Every rescan that finds the same: nothing.
        assert_eq!(w.observe(Some(700), &s("1")), None);
        // Housekeeping changed: the CPUs to ban are others.
        assert_eq!(w.observe(Some(700), &s("1-2")), conflict(700, "1-2"));
        // Restarted.
        assert_eq!(w.observe(Some(812), &s("1-2")), conflict(812, "1-2"));
        assert_eq!(w.pid(), Some(812));
        assert_eq!(
            w.observe(None, &s("1-2")),
            Some(IrqbalanceNote::Gone { pid: 812 })
        );
        assert!(!w.yielding());
        assert_eq!(w.observe(None, &s("1-2")), None);
    }

    #[test]
    fn overriding_says_the_daemon_wins_and_never_yields() {
        let mut w = IrqbalanceWatch::new(IrqbalancePolicy::Override);
        assert_eq!(
            w.observe(Some(700), &s("3")),
            Some(IrqbalanceNote::Conflict {
                pid: 700,
                winner: IrqOwner::Affinity,
                banned: s("3")
            })
        );
        assert!(!w.yielding());
        assert_eq!(w.observe(Some(700), &s("3")), None);
    }
}
