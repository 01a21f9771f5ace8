//! Noise on the watched CPUs: the programs' running totals (kernel/bpf.rs,
//! `Observer::noise`) turned into what each interval added, per CPU and
//! source, for the `noise` records, `status` and the metrics.
//!
//! Pure: the samples and the names come in as data, so the arithmetic
//! (deltas across LRU evictions, zero records for quiet CPUs) is tested
//! here without a kernel.

use std::collections::{BTreeMap, HashMap};

use affinity_common::{NoiseKind, SOFTIRQ_NAMES};
use serde::{Deserialize, Serialize};

use crate::{
    kernel::wire::{NoiseSample, NoiseSource},
    policy::CpuSet,
};

/// What one source took on one CPU in one interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseEntry {
    pub kind: SourceKind,
    /// kthread: its pid; hardirq: the IRQ number; softirq: the vector number.
    pub id: u32,
    /// kthread: its comm; hardirq: the IRQ's actions; softirq: the kernel's
    /// name for the vector (`NET_RX`, `TIMER`…). Empty when unknown (a
    /// kthread that has exited since).
    pub name: String,
    pub count: u64,
    pub total_us: f64,
}

/// The bounded `source_kind` label of the metrics, and `kind` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Kthread,
    Hardirq,
    Softirq,
}

impl SourceKind {
    pub const ALL: [SourceKind; 3] = [
        SourceKind::Kthread,
        SourceKind::Hardirq,
        SourceKind::Softirq,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Kthread => "kthread",
            SourceKind::Hardirq => "hardirq",
            SourceKind::Softirq => "softirq",
        }
    }
}

impl From<NoiseKind> for SourceKind {
    fn from(k: NoiseKind) -> Self {
        match k {
            NoiseKind::Kthread => SourceKind::Kthread,
            NoiseKind::HardIrq => SourceKind::Hardirq,
            NoiseKind::SoftIrq => SourceKind::Softirq,
        }
    }
}

/// One watched CPU's interval: every source that took time, largest
/// first; none for a quiet CPU, which still gets its record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuNoise {
    pub cpu: u32,
    pub interval_ms: u64,
    pub total_us: f64,
    pub sources: Vec<NoiseEntry>,
}

/// Names for the sources, looked up only for what an interval shows.
pub trait NoiseNames {
    fn comm(&self, pid: u32) -> Option<String>;
    /// The IRQ's action names, comma-separated as /sys/kernel/irq/N/actions has them.
    fn irq_actions(&self, irq: u32) -> Option<String>;
}

type Key = (u32, NoiseSource);

#[derive(Debug, Default)]
pub struct NoiseTracker {
    /// The programs' totals at the last interval.
    seen: HashMap<Key, (u64, u64)>,
    /// The last interval, for `status`.
    pub last: Vec<CpuNoise>,
}

impl NoiseTracker {
    /// Takes the programs' totals now; returns, for every CPU in `watched`,
    /// what the `interval_ms` since the last call added. A total below the
    /// one seen before is an entry the LRU evicted and made again: all of
    /// it is new. `totals` (nanoseconds per CPU and kind, the metrics'
    /// counters) only grows, whatever the LRU map evicts.
    pub fn interval(
        &mut self,
        samples: &[NoiseSample],
        watched: &CpuSet,
        interval_ms: u64,
        names: &dyn NoiseNames,
        totals: &mut BTreeMap<(u32, SourceKind), u64>,
    ) -> Vec<CpuNoise> {
        let mut per_cpu: BTreeMap<u32, (Vec<NoiseEntry>, u64)> =
            watched.iter().map(|cpu| (cpu, (Vec::new(), 0))).collect();
        let mut seen = HashMap::with_capacity(samples.len());
        for s in samples {
            let key = (s.cpu, s.source);
            let (count, ns) = match self.seen.get(&key) {
                Some(&(c, n)) if s.count >= c && s.total_ns >= n => (s.count - c, s.total_ns - n),
                _ => (s.count, s.total_ns),
            };
            seen.insert(key, (s.count, s.total_ns));
            if count == 0 {
                continue;
            }
            let kind = SourceKind::from(s.source.kind());
            *totals.entry((s.cpu, kind)).or_default() += ns;
            // Counted in the kernel while the CPU was watched; shown only
            // for the CPUs watched now.
            let Some((entries, cpu_ns)) = per_cpu.get_mut(&s.cpu) else {
                continue;
            };
            *cpu_ns += ns;
            let (id, name) = match s.source {
                NoiseSource::Kthread { pid } => (pid, names.comm(pid)),
                NoiseSource::HardIrq { irq } => (irq, names.irq_actions(irq)),
                NoiseSource::SoftIrq { vector } => (
                    vector,
                    SOFTIRQ_NAMES.get(vector as usize).map(|n| n.to_string()),
                ),
            };
            entries.push(NoiseEntry {
                kind,
                id,
                name: name.unwrap_or_default(),
                count,
                total_us: us(ns),
            });
        }
        self.seen = seen;
        let out: Vec<CpuNoise> = per_cpu
            .into_iter()
            .map(|(cpu, (mut sources, total_ns))| {
                sources.sort_by(|a, b| {
                    b.total_us
                        .total_cmp(&a.total_us)
                        .then((a.kind, a.id).cmp(&(b.kind, b.id)))
                });
                CpuNoise {
                    cpu,
                    interval_ms,
                    total_us: us(total_ns),
                    sources,
                }
            })
            .collect();
        self.last = out.clone();
        out
    }
}

/// Sources shown on a human line; JSON has them all.
const HUMAN_SOURCES: usize = 4;

impl CpuNoise {
    pub fn human(&self) -> String {
        let mut line = format!(
            "cpu{} {}: {} in {} ms",
            self.cpu,
            if self.sources.is_empty() {
                "quiet"
            } else {
                "noise"
            },
            duration(self.total_us),
            self.interval_ms
        );
        for (i, e) in self.sources.iter().take(HUMAN_SOURCES).enumerate() {
            line.push_str(if i == 0 { ": " } else { ", " });
            let who = match e.kind {
                SourceKind::Kthread => format!("{}[{}]", e.name, e.id),
                SourceKind::Hardirq => format!("IRQ {} {}", e.id, e.name),
                SourceKind::Softirq => e.name.clone(),
            };
            line.push_str(&format!(
                "{} {who} {}x {}",
                e.kind.name(),
                e.count,
                duration(e.total_us)
            ));
        }
        if self.sources.len() > HUMAN_SOURCES {
            line.push_str(&format!(", {} more", self.sources.len() - HUMAN_SOURCES));
        }
        line
    }
}

fn duration(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} us")
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(list: &str) -> CpuSet {
        CpuSet::parse(list, 8).unwrap()
    }

    struct Names;
    impl NoiseNames for Names {
        fn comm(&self, pid: u32) -> Option<String> {
            (pid == 77).then(|| "kworker/3:1".to_string())
        }
        fn irq_actions(&self, irq: u32) -> Option<String> {
            (irq == 24).then(|| "virtio0-input.0".to_string())
        }
    }

    fn sample(cpu: u32, source: NoiseSource, count: u64, total_ns: u64) -> NoiseSample {
        NoiseSample {
            cpu,
            source,
            count,
            total_ns,
        }
    }

    const IRQ: NoiseSource = NoiseSource::HardIrq { irq: 24 };
    const RX: NoiseSource = NoiseSource::SoftIrq { vector: 3 };
    const KW: NoiseSource = NoiseSource::Kthread { pid: 77 };

    #[test]
    fn each_interval_reports_what_it_added_and_quiet_cpus_report_zero() {
        let watched = cpus("2-3");
        let mut t = NoiseTracker::default();
        let mut totals = BTreeMap::new();
        let first = t.interval(
            &[sample(3, IRQ, 2, 4_000), sample(3, KW, 1, 10_000)],
            &watched,
            1000,
            &Names,
            &mut totals,
        );
        assert_eq!(
            first,
            vec![
                CpuNoise {
                    cpu: 2,
                    interval_ms: 1000,
                    total_us: 0.0,
                    sources: vec![]
                },
                CpuNoise {
                    cpu: 3,
                    interval_ms: 1000,
                    total_us: 14.0,
                    sources: vec![
                        NoiseEntry {
                            kind: SourceKind::Kthread,
                            id: 77,
                            name: "kworker/3:1".into(),
                            count: 1,
                            total_us: 10.0
                        },
                        NoiseEntry {
                            kind: SourceKind::Hardirq,
                            id: 24,
                            name: "virtio0-input.0".into(),
                            count: 2,
                            total_us: 4.0
                        },
                    ]
                },
            ]
        );
        // Only the IRQ again, and a softirq: the kthread added nothing.
        let second = t.interval(
            &[
                sample(3, IRQ, 5, 10_000),
                sample(3, KW, 1, 10_000),
                sample(3, RX, 4, 1_500),
            ],
            &watched,
            1000,
            &Names,
            &mut totals,
        );
        assert_eq!(second[0].sources, vec![]);
        assert_eq!(
            second[1].sources,
            vec![
                NoiseEntry {
                    kind: SourceKind::Hardirq,
                    id: 24,
                    name: "virtio0-input.0".into(),
                    count: 3,
                    total_us: 6.0
                },
                NoiseEntry {
                    kind: SourceKind::Softirq,
                    id: 3,
                    name: "NET_RX".into(),
                    count: 4,
                    total_us: 1.5
                },
            ]
        );
        assert_eq!(second[1].total_us, 7.5);
        assert_eq!(t.last, second);
        assert_eq!(totals[&(3, SourceKind::Hardirq)], 10_000);
        assert_eq!(totals[&(3, SourceKind::Kthread)], 10_000);
        assert_eq!(totals[&(3, SourceKind::Softirq)], 1_500);
    }

    #[test]
    fn records_and_lines() {
        let n = CpuNoise {
            cpu: 3,
            interval_ms: 1000,
            total_us: 1504.0,
            sources: vec![
                NoiseEntry {
                    kind: SourceKind::Hardirq,
                    id: 24,
                    name: "virtio0-input.0".into(),
                    count: 3,
                    total_us: 1500.0,
                },
                NoiseEntry {
                    kind: SourceKind::Kthread,
                    id: 77,
                    name: "kworker/3:1".into(),
                    count: 1,
                    total_us: 4.0,
                },
            ],
        };
        assert_eq!(
            n.human(),
            "cpu3 noise: 1.50 ms in 1000 ms: hardirq IRQ 24 virtio0-input.0 3x 1.50 ms, kthread kworker/3:1[77] 1x 4.0 us"
        );
        let quiet = CpuNoise {
            cpu: 2,
            interval_ms: 1000,
            total_us: 0.0,
            sources: vec![],
        };
        assert_eq!(quiet.human(), "cpu2 quiet: 0.0 us in 1000 ms");
        let v: serde_json::Value = serde_json::from_str(&crate::daemon::report::json_record(
            &crate::daemon::report::Report::Noise(n),
        ))
        .unwrap();
        assert_eq!(v["type"], "noise");
        assert_eq!(v["cpu"], 3);
        assert_eq!(v["interval_ms"], 1000);
        assert_eq!(v["total_us"], 1504.0);
        assert_eq!(
            v["sources"][0],
            serde_json::json!({"kind": "hardirq", "id": 24, "name": "virtio0-input.0", "count": 3, "total_us": 1500.0})
        );
        assert_eq!(v["sources"][1]["kind"], "kthread");
    }

    #[test]
    fn an_entry_evicted_and_made_again_counts_whole() {
        let watched = cpus("3");
        let mut t = NoiseTracker::default();
        let mut totals = BTreeMap::new();
        t.interval(
            &[sample(3, IRQ, 10, 50_000)],
            &watched,
            1000,
            &Names,
            &mut totals,
        );
        let again = t.interval(
            &[sample(3, IRQ, 2, 3_000)],
            &watched,
            1000,
            &Names,
            &mut totals,
        );
        assert_eq!(again[0].sources[0].count, 2);
        assert_eq!(again[0].sources[0].total_us, 3.0);
        assert_eq!(totals[&(3, SourceKind::Hardirq)], 53_000);
    }

    #[test]
    fn cpus_no_longer_watched_count_in_the_totals_but_get_no_record() {
        let mut t = NoiseTracker::default();
        let mut totals = BTreeMap::new();
        let out = t.interval(
            &[sample(1, RX, 1, 2_000), sample(5, KW, 1, 1_000)],
            &cpus("1"),
            500,
            &Names,
            &mut totals,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].cpu, 1);
        assert_eq!(out[0].sources[0].name, "NET_RX");
        assert_eq!(totals[&(5, SourceKind::Kthread)], 1_000);
        // A pid whose comm is not known any more: no name, still counted.
        let out = t.interval(
            &[sample(1, NoiseSource::Kthread { pid: 9 }, 1, 1_000)],
            &cpus("1"),
            500,
            &Names,
            &mut totals,
        );
        assert_eq!(out[0].sources[0].name, "");
        assert_eq!(out[0].sources[0].kind, SourceKind::Kthread);
    }
}
