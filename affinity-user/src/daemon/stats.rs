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
    /// Hotplug reaction: from the kernel's event to the last mask in place.
    pub reaction: Histogram,
    /// Noise on the watched CPUs: nanoseconds per (CPU, source kind).
    pub noise_ns: BTreeMap<(u32, super::noise::SourceKind), u64>,
}

/// Upper bounds of the reaction histogram's buckets, in seconds: the
/// target is 1 ms (BENCHMARKS.md), so most resolution sits around it.
pub const REACTION_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A Prometheus-style histogram of durations, kept in whole nanoseconds so
/// that it compares exactly (the metrics are re-rendered only on change).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations at or below each of [`REACTION_BUCKETS`], not cumulative.
    pub buckets: [u64; REACTION_BUCKETS.len()],
    pub count: u64,
    pub sum_ns: u64,
}

impl Histogram {
    pub fn observe(&mut self, ns: u64) {
        let secs = ns as f64 / 1e9;
        if let Some(i) = REACTION_BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    /// (upper bound, cumulative count) per bucket, as the exposition format wants.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        REACTION_BUCKETS
            .iter()
            .zip(self.buckets.iter().scan(0, |acc, n| {
                *acc += n;
                Some(*acc)
            }))
            .map(|(&le, n)| (le, n))
    }
}

impl Stats {
    pub fn violations(&self) -> u64 {
        self.violations_by_comm.values().sum()
    }
}
