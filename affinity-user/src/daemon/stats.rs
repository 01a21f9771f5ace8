//! Running totals, for the summary line and the metrics endpoint.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Violations reported, by comm (the metrics may show a bounded top).
    pub violations_by_comm: BTreeMap<String, u64>,
    pub applied: u64,
    /// Masks the kernel refused or changed (each reported once per mask).
    pub refused: u64,
    pub hotplug: u64,
    /// Records lost to full rings (both rings).
    pub drops: u64,
    pub suppressed: u64,
    pub errors: u64,
    /// Times the daemon's view (online CPUs, nodes, the programs' view of
    /// the online CPUs) was corrected from the kernel's.
    pub resyncs: u64,
    /// Records received from the eBPF programs.
    pub records: u64,
    /// Runs outside the allowed set as the kernel counted them, reported or
    /// not (the per-pid rate limit).
    pub violations_seen: u64,
    /// Report lines dropped because stdout did not keep up.
    pub lines_dropped: u64,
}

impl Stats {
    pub fn violations(&self) -> u64 {
        self.violations_by_comm.values().sum()
    }
}
