use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::*;
use crate::{
    daemon::{Options, report::Format},
    policy::{IrqInfo, IrqTarget, Preference, WorkqueueRule},
};

pub(super) fn s(list: &str) -> CpuSet {
    CpuSet::parse(list, 2).unwrap()
}

/// The files in memory: IRQ 36 is managed (EIO), the kernel delivers an
/// IRQ on the first CPU of its mask.
pub(super) struct FakeFiles {
    masks: BTreeMap<MaskFile, CpuSet>,
    managed: BTreeSet<u32>,
    pub(super) writes: Vec<(MaskFile, String)>,
    /// The pid of a running irqbalance.
    irqbalance: Option<u32>,
}

impl FakeFiles {
    pub(super) fn new() -> Self {
        FakeFiles {
            masks: BTreeMap::from([
                (MaskFile::IrqDefault, s("0-1")),
                (MaskFile::Irq(24), s("0-1")),
                (MaskFile::Irq(36), s("0-1")),
                (MaskFile::Workqueue, s("0-1")),
            ]),
            managed: BTreeSet::from([36]),
            writes: Vec::new(),
            irqbalance: None,
        }
    }
}

fn effective(mask: &CpuSet) -> CpuSet {
    let mut e = CpuSet::empty(2);
    e.insert(mask.first().unwrap_or(0));
    e
}

impl SteerKernel for FakeFiles {
    fn scan(&self) -> std::io::Result<SteerScan> {
        let irq = |n: u32, action: &str| IrqInfo {
            number: n,
            actions: vec![action.into()],
            node: None,
            affinity: self.masks[&MaskFile::Irq(n)].clone(),
            effective: Some(effective(&self.masks[&MaskFile::Irq(n)])),
        };
        Ok(SteerScan {
            irqs: vec![irq(24, "ACPI:Ged"), irq(36, "nvme0q0")],
            unreadable: vec![],
            default_affinity: Some(self.masks[&MaskFile::IrqDefault].clone()),
            workqueue: Some(self.masks[&MaskFile::Workqueue].clone()),
            workqueues: self
                .masks
                .iter()
                .filter_map(|(f, m)| match f {
                    MaskFile::NamedWorkqueue(n) => Some((*n, m.clone())),
                    _ => None,
                })
                .collect(),
        })
    }

    fn write(&mut self, file: MaskFile, mask: &CpuSet) -> Result<(), WriteError> {
        if matches!(file, MaskFile::Irq(n) if self.managed.contains(&n)) {
            return Err(WriteError::Managed {
                path: format!("/proc/irq/{file:?}"),
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        self.writes.push((file, mask.to_string()));
        self.masks.insert(file, mask.clone());
        Ok(())
    }

    fn irqbalance(&self) -> Option<u32> {
        self.irqbalance
    }

    fn read_back(&self, file: MaskFile) -> std::io::Result<(CpuSet, Option<CpuSet>)> {
        let m = self.masks[&file].clone();
        let eff = matches!(file, MaskFile::Irq(_)).then(|| effective(&m));
        Ok((m, eff))
    }
}

pub(super) fn topo(online: &str) -> Topology {
    Topology::single_node(s("0-1"), s(online))
}

fn steering(observe: bool) -> (Steering<FakeFiles>, Reporter<Vec<u8>>, Stats) {
    let opts = Options {
        observe,
        restore_on_exit: true,
    };
    (
        Steering::new(
            topo("0-1"),
            s("0"),
            rules(),
            vec![],
            FakeFiles::new(),
            &opts,
        ),
        Reporter::new(Vec::new(), Format::Json, false),
        Stats::default(),
    )
}

pub(super) fn records(reporter: &mut Reporter<Vec<u8>>) -> Vec<Value> {
    let out = std::mem::take(reporter.out_mut());
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("ts");
            v
        })
        .collect()
}

#[test]
fn start_steers_reports_and_restore_puts_every_original_back() {
    let (mut st, mut rep, mut stats) = steering(false);
    let rules = rules();
    let unmatched = st.first_scan(&rules, &[], &mut rep, &mut stats);
    assert!(unmatched.is_empty(), "nvme* matches irq 36");
    assert_eq!(
        records(&mut rep),
        [
            json!({"type": "irq_default_set", "mask": "0"}),
            json!({"type": "irq_set", "irq": 24, "actions": ["ACPI:Ged"], "mask": "0", "effective": "0"}),
            json!({"type": "irq_kernel_managed", "irq": 36, "actions": ["nvme0q0"]}),
            json!({"type": "workqueue_set", "mask": "0"}),
        ]
    );
    // A rescan with nothing changed writes nothing, says nothing, and
    // the managed IRQ is not tried again.
    st.sync(&topo("0-1"), &s("0"), &mut rep, &mut stats);
    assert_eq!(records(&mut rep), Vec::<Value>::new());
    assert_eq!(st.restore(), 3);
    assert_eq!(
        st.kernel.writes,
        [
            (MaskFile::IrqDefault, "0".to_string()),
            (MaskFile::Irq(24), "0".into()),
            (MaskFile::Workqueue, "0".into()),
            (MaskFile::IrqDefault, "0-1".into()),
            (MaskFile::Irq(24), "0-1".into()),
            (MaskFile::Workqueue, "0-1".into()),
        ]
    );
}

#[test]
fn observe_writes_nothing_and_says_what_it_would_once() {
    let (mut st, mut rep, mut stats) = steering(true);
    let rules = rules();
    st.first_scan(&rules, &[], &mut rep, &mut stats);
    assert_eq!(
        records(&mut rep),
        [
            json!({"type": "irq_default_would_set", "mask": "0"}),
            json!({"type": "irq_would_set", "irq": 24, "actions": ["ACPI:Ged"], "mask": "0"}),
            json!({"type": "irq_would_set", "irq": 36, "actions": ["nvme0q0"], "mask": "0"}),
            json!({"type": "workqueue_would_set", "mask": "0"}),
        ]
    );
    st.sync(&topo("0-1"), &s("0"), &mut rep, &mut stats);
    assert_eq!(records(&mut rep), Vec::<Value>::new());
    assert_eq!(st.restore(), 0);
    assert!(st.kernel.writes.is_empty());
}

#[test]
fn hotplug_and_housekeeping_changes_are_followed() {
    let (mut st, mut rep, mut stats) = steering(false);
    let rules = rules();
    st.first_scan(&rules, &[], &mut rep, &mut stats);
    st.kernel.writes.clear();
    // Housekeeping grows to 0-1, then cpu1 goes offline.
    st.sync(&topo("0-1"), &s("0-1"), &mut rep, &mut stats);
    st.sync(&topo("0"), &s("0-1"), &mut rep, &mut stats);
    assert_eq!(
        st.kernel.writes,
        [
            (MaskFile::IrqDefault, "0-1".to_string()),
            (MaskFile::Irq(24), "0-1".into()),
            (MaskFile::Workqueue, "0-1".into()),
            (MaskFile::IrqDefault, "0".into()),
            (MaskFile::Irq(24), "0".into()),
            (MaskFile::Workqueue, "0".into()),
        ]
    );
    assert_eq!(stats.errors, 0);
}

pub(super) fn rules() -> Vec<IrqRule> {
    vec![IrqRule {
        target: IrqTarget::Action("nvme*".into()),
        prefer: Preference::Housekeeping,
        line: 3,
    }]
}

#[test]
fn a_named_workqueue_is_steered_reported_by_name_and_restored() {
    let writeback = MaskFile::NamedWorkqueue(crate::policy::WqName::new("writeback").unwrap());
    let (mut st, mut rep, mut stats) = steering(false);
    st.kernel.masks.insert(writeback, s("0-1"));
    let wq_rules = [
        WorkqueueRule {
            target: "writeback".into(),
            prefer: Preference::Cpus(s("0")),
            line: 7,
        },
        WorkqueueRule {
            target: "nosuch*".into(),
            prefer: Preference::Housekeeping,
            line: 11,
        },
    ];
    st.engine =
        SteerEngine::new(topo("0-1"), s("0"), rules()).with_workqueue_rules(wq_rules.to_vec());
    let warnings = st.first_scan(&rules(), &wq_rules, &mut rep, &mut stats);
    assert_eq!(
        warnings,
        [
            "the [[workqueue]] rule at line 11 (nosuch*) matches no workqueue with a cpumask in /sys/devices/virtual/workqueue now; it applies to matching ones that appear later"
        ]
    );
    let r = records(&mut rep);
    assert_eq!(
        r.last().unwrap(),
        &json!({"type": "workqueue_set", "workqueue": "writeback", "mask": "0", "effective": "0"})
    );
    assert_eq!(st.kernel.masks[&writeback], s("0"));
    assert_eq!(st.restore(), 4);
    assert_eq!(st.kernel.masks[&writeback], s("0-1"));
    assert_eq!(
        st.kernel.writes.last().unwrap(),
        &(writeback, "0-1".to_string())
    );
}

#[test]
fn beside_irqbalance_no_irq_is_written_until_it_goes() {
    let (mut st, mut rep, mut stats) = steering(false);
    st.kernel.irqbalance = Some(4242);
    st.first_scan(&rules(), &[], &mut rep, &mut stats);
    assert_eq!(
        records(&mut rep),
        [
            json!({"type": "irq_conflict", "with": "irqbalance", "pid": 4242, "winner": "irqbalance", "banned_cpus": "1"}),
            json!({"type": "irq_default_set", "mask": "0"}),
            json!({"type": "workqueue_set", "mask": "0"}),
        ]
    );
    // Rescans with it still there: nothing said, no IRQ written.
    for _ in 0..3 {
        st.look_for_irqbalance(&mut rep, &mut stats);
        st.sync(&topo("0-1"), &s("0"), &mut rep, &mut stats);
    }
    assert_eq!(records(&mut rep), Vec::<Value>::new());
    assert!(
        !st.kernel
            .writes
            .iter()
            .any(|(f, _)| matches!(f, MaskFile::Irq(_))),
        "{:?}",
        st.kernel.writes
    );
    st.kernel.irqbalance = None;
    st.look_for_irqbalance(&mut rep, &mut stats);
    assert_eq!(
        records(&mut rep),
        [
            json!({"type": "irq_conflict_ended", "with": "irqbalance", "pid": 4242}),
            json!({"type": "irq_set", "irq": 24, "actions": ["ACPI:Ged"], "mask": "0", "effective": "0"}),
            json!({"type": "irq_kernel_managed", "irq": 36, "actions": ["nvme0q0"]}),
        ]
    );
}
