//! The core against a fake kernel and fake maps.

use std::{collections::BTreeMap, io};

use super::*;
use crate::{
    daemon::kernel::SetAffinityError,
    kernel::wire::TaskRecord,
    policy::{Kthread, PF_KTHREAD, PF_NO_SETAFFINITY, Rule, Topology},
};

const W: u32 = 4;

pub(crate) fn set(list: &str) -> CpuSet {
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
pub(crate) struct FakeKernel {
    tasks: BTreeMap<u32, Kthread>,
    pub(crate) sets: Vec<(u32, String)>,
    online: CpuSet,
    nodes: BTreeMap<u32, u32>,
    unsettled: Vec<u32>,
    /// Errors set_affinity returns for a pid, once each, before succeeding.
    fail: BTreeMap<u32, Vec<i32>>,
    /// A cpuset that narrows every mask set.
    cpuset: Option<CpuSet>,
    /// /proc cannot be read / these pids cannot.
    scan_fails: bool,
    unreadable: Vec<u32>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        FakeKernel {
            tasks: BTreeMap::new(),
            sets: Vec::new(),
            online: set("0-3"),
            nodes: (0..W).map(|c| (c, 0)).collect(),
            unsettled: Vec::new(),
            fail: BTreeMap::new(),
            cpuset: None,
            scan_fails: false,
            unreadable: Vec::new(),
        }
    }
}

impl Kernel for FakeKernel {
    fn set_affinity(
        &mut self,
        pid: u32,
        start_time: u64,
        mask: &CpuSet,
    ) -> Result<CpuSet, SetAffinityError> {
        if let Some(errno) = self.fail.get_mut(&pid).and_then(|v| v.pop()) {
            return Err(SetAffinityError::Os {
                what: "sched_setaffinity",
                pid,
                mask: mask.to_string(),
                source: io::Error::from_raw_os_error(errno),
            });
        }
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
        if mask.and(&self.online).is_empty() {
            return Err(SetAffinityError::Offline {
                pid,
                mask: mask.to_string(),
            });
        }
        k.cpus_allowed = match &self.cpuset {
            Some(c) if !mask.and(c).is_empty() => mask.and(c),
            _ => mask.clone(),
        };
        self.sets.push((pid, mask.to_string()));
        Ok(k.cpus_allowed.clone())
    }
    fn kthread(&self, pid: u32) -> io::Result<Option<Kthread>> {
        if self.unreadable.contains(&pid) {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(self.tasks.get(&pid).cloned())
    }
    fn kthreads(&self) -> io::Result<Scan> {
        if self.scan_fails {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(Scan {
            kthreads: self
                .tasks
                .values()
                .filter(|k| !self.unreadable.contains(&k.pid))
                .cloned()
                .collect(),
            unreadable: self.unreadable.clone(),
        })
    }
    fn online_cpus(&self) -> anyhow::Result<CpuSet> {
        Ok(self.online.clone())
    }
    fn cpu_settled(&self, cpu: u32) -> bool {
        !self.unsettled.contains(&cpu)
    }
    fn cpu_node(&self, cpu: u32) -> Option<u32> {
        self.nodes.get(&cpu).copied()
    }
}

#[derive(Default)]
pub(crate) struct FakeMaps {
    policy: BTreeMap<u32, (String, Option<String>)>,
    acked: u64,
    seq: u64,
    online: Vec<u64>,
}

impl FakeMaps {
    fn new() -> Self {
        FakeMaps {
            online: set("0-3").words().to_vec(),
            ..Default::default()
        }
    }
    fn applied(&self, pid: u32) -> Option<&str> {
        self.policy.get(&pid).map(|(a, _)| a.as_str())
    }
}

impl PolicyMaps for FakeMaps {
    fn set_policy(
        &mut self,
        pid: u32,
        applied: &CpuSet,
        preferred: Option<&CpuSet>,
    ) -> anyhow::Result<()> {
        self.policy.insert(
            pid,
            (applied.to_string(), preferred.map(ToString::to_string)),
        );
        Ok(())
    }
    fn clear_policy(&mut self, pid: u32) -> anyhow::Result<()> {
        self.policy.remove(&pid);
        Ok(())
    }
    fn acknowledge(&mut self, seq: u64) -> anyhow::Result<()> {
        self.acked = seq;
        Ok(())
    }
    fn hotplug_view(&self) -> anyhow::Result<(u64, Vec<u64>)> {
        Ok((self.seq, self.online.clone()))
    }
    fn correct_online(&mut self, online: &CpuSet) -> anyhow::Result<u64> {
        self.online = online.words().to_vec();
        self.acked = self.seq;
        Ok(self.seq)
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
        ..Default::default()
    };
    let opts = Options {
        observe,
        restore_on_exit: true,
    };
    Core::new(
        engine,
        kernel,
        Reporter::new(Vec::new(), report::Format::Json, false),
        opts,
    )
}

fn khugepaged_record() -> TaskRecord {
    TaskRecord {
        pid: 38,
        tgid: 38,
        flags: PF_KTHREAD,
        comm: "khugepaged".into(),
    }
}

/// A started core whose only rule moves khugepaged (pid 38, on 0-3) to `cpus`.
pub(crate) fn khugepaged_on(cpus: &str) -> (Core<FakeKernel, Vec<u8>>, FakeMaps) {
    let mut c = core(
        false,
        vec![rule("khugepaged", cpus)],
        &[kt(38, "khugepaged", 0, "0-3")],
    );
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    (c, maps)
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

fn of_type<'a>(r: &'a [serde_json::Value], ty: &str) -> Vec<&'a serde_json::Value> {
    r.iter().filter(|e| e["type"] == ty).collect()
}

fn hotplug(cpu: u32, phase: HotplugPhase, seq: u64) -> WireEvent {
    WireEvent::Hotplug {
        ts_ns: monotonic_ns(),
        cpu,
        phase,
        state: 0,
        ret: 0,
        seq,
    }
}

#[test]
fn start_applies_rules_and_fills_the_map() {
    let (mut c, maps) = khugepaged_on("1");
    assert_eq!(c.kernel.sets, [(38, "1".to_string())]);
    assert_eq!(
        maps.policy.get(&38),
        Some(&("1".to_string(), Some("1".to_string())))
    );
    assert_eq!(c.engine.entry(38).unwrap().current.to_string(), "1");
    let r = reports(&mut c);
    assert!(
        r.iter()
            .any(|e| e["type"] == "applied" && e["pid"] == 38 && e["mask"] == "1"),
        "{r:?}"
    );
}

#[test]
fn observe_sets_nothing_but_says_what_it_would_do_once() {
    let mut c = core(
        true,
        vec![rule("khugepaged", "1")],
        &[kt(38, "khugepaged", 0, "0-3")],
    );
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    c.rescan(&mut maps);
    c.rescan(&mut maps);
    assert!(c.kernel.sets.is_empty());
    assert_eq!(
        maps.applied(38),
        Some("1"),
        "violations are still judged by the policy"
    );
    let r = reports(&mut c);
    assert_eq!(of_type(&r, "would_apply").len(), 1, "{r:?}");
    assert!(of_type(&r, "affinity_changed").is_empty(), "{r:?}");
}

#[test]
fn offline_begin_shrinks_masks_online_restores_them_and_steps_are_acknowledged() {
    let (mut c, mut maps) = khugepaged_on("1-2");
    c.on_wire(hotplug(1, HotplugPhase::OfflineBegin, 1), &mut maps);
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "2");
    assert_eq!(maps.acked, 1, "acknowledged once the masks are in place");
    c.on_wire(hotplug(1, HotplugPhase::OfflineDone, 1), &mut maps);
    c.on_wire(hotplug(1, HotplugPhase::OnlineDone, 2), &mut maps);
    assert_eq!(maps.acked, 2);
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "1-2");
    assert_eq!(maps.applied(38), Some("1-2"));
    let r = reports(&mut c);
    let handled: Vec<_> = of_type(&r, "hotplug_handled")
        .iter()
        .map(|e| (e["online"].clone(), e["applied"].clone()))
        .collect();
    assert_eq!(handled, [(false.into(), 1.into()), (true.into(), 1.into())]);
    assert_eq!(c.stats.hotplug, 2);
}

#[test]
fn an_aborted_teardown_puts_the_masks_back() {
    let (mut c, mut maps) = khugepaged_on("1");
    c.on_wire(hotplug(1, HotplugPhase::OfflineBegin, 1), &mut maps);
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "0,2-3");
    let mut aborted = hotplug(1, HotplugPhase::OfflineAborted, 2);
    if let WireEvent::Hotplug { state, ret, .. } = &mut aborted {
        *state = 203;
        *ret = -11;
    }
    c.on_wire(aborted, &mut maps);
    assert_eq!(c.engine.online().to_string(), "0-3");
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "1");
    let r = reports(&mut c);
    let a = of_type(&r, "hotplug_aborted");
    assert_eq!(a.len(), 1, "{r:?}");
    assert_eq!(
        (
            a[0]["cpu"].clone(),
            a[0]["online"].clone(),
            a[0]["step"].clone(),
            a[0]["ret"].clone()
        ),
        (1.into(), true.into(), 203.into(), (-11).into())
    );
    assert_eq!(maps.acked, 2);
}

#[test]
fn a_lost_online_record_is_corrected_from_sysfs() {
    let (mut c, mut maps) = khugepaged_on("1");
    c.on_wire(hotplug(1, HotplugPhase::OfflineBegin, 1), &mut maps);
    c.on_wire(hotplug(1, HotplugPhase::OfflineDone, 1), &mut maps);
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "0,2-3");
    // cpu1 came back, but its record was lost; the programs saw the step.
    maps.seq = 2;
    c.kernel.unsettled = vec![1];
    c.converge(&mut maps, true);
    assert_eq!(
        c.engine.online().to_string(),
        "0,2-3",
        "not while a hotplug operation is under way on it"
    );
    c.kernel.unsettled.clear();
    c.converge(&mut maps, true);
    assert_eq!(c.engine.online().to_string(), "0-3");
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "1");
    assert_eq!(maps.acked, 2, "the lost step is acknowledged");
    let r = reports(&mut c);
    let resync = of_type(&r, "resync");
    assert_eq!(resync.len(), 1, "{r:?}");
    assert!(
        resync[0]["what"]
            .as_str()
            .unwrap()
            .contains("online CPUs are 0-3"),
        "{r:?}"
    );
    assert_eq!(c.stats.resyncs, 1);
}

#[test]
fn the_programs_view_of_online_cpus_is_corrected() {
    let mut c = core(false, vec![rule("khugepaged", "1")], &[]);
    let mut maps = FakeMaps::new();
    maps.online = set("0").words().to_vec();
    maps.seq = 5;
    c.converge(&mut maps, true);
    assert_eq!(CpuSet::from_words(W, &maps.online).to_string(), "0-3");
    assert_eq!(maps.acked, 5);
    let r = reports(&mut c);
    assert_eq!(of_type(&r, "resync").len(), 1, "{r:?}");
    c.converge(&mut maps, true);
    assert!(of_type(&reports(&mut c), "resync").is_empty(), "only once");
}

#[test]
fn a_cpu_coming_online_gets_its_node_read_then() {
    use crate::policy::Preference;
    let mut c = core(false, vec![], &[kt(50, "kswapd1", 0, "0-1")]);
    c.engine = Engine::new(
        Topology {
            width: W,
            possible: set("0-3"),
            online: set("0-1"),
            // Node 1 had no CPU at start-up (memory only, or hot-added later).
            nodes: BTreeMap::from([(0, set("0-1")), (1, CpuSet::empty(W))]),
        },
        set("0-3"),
        vec![Rule {
            target: Target::Comm("kswapd*".into()),
            prefer: Preference::OwnNode,
        }],
    );
    c.kernel.online = set("0-1");
    c.kernel.nodes = BTreeMap::from([(0, 0), (1, 0), (2, 1), (3, 1)]);
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    assert_eq!(c.kernel.tasks[&50].cpus_allowed.to_string(), "0-1");
    c.kernel.online = set("0-2");
    c.on_wire(hotplug(2, HotplugPhase::OnlineDone, 1), &mut maps);
    assert_eq!(c.kernel.tasks[&50].cpus_allowed.to_string(), "2");
    c.kernel.online = set("0-3");
    c.on_wire(hotplug(3, HotplugPhase::OnlineDone, 2), &mut maps);
    assert_eq!(c.kernel.tasks[&50].cpus_allowed.to_string(), "2-3");
    for (cpu, seq) in [(3, 3), (2, 4)] {
        c.on_wire(hotplug(cpu, HotplugPhase::OfflineBegin, seq), &mut maps);
    }
    assert_eq!(c.kernel.tasks[&50].cpus_allowed.to_string(), "0-1");
}

#[test]
fn a_reused_pid_is_never_touched() {
    let mut c = core(
        false,
        vec![rule("khugepaged", "1")],
        &[kt(38, "khugepaged", 0, "1")],
    );
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    // pid 38 exits and a new task gets its number.
    let mut other = kt(38, "khugepaged", 0, "0-3");
    other.start_time = 99_999;
    c.kernel.tasks.insert(38, other);
    c.on_wire(hotplug(1, HotplugPhase::OfflineBegin, 1), &mut maps);
    assert!(
        c.kernel.sets.is_empty(),
        "the new owner of pid 38 was not touched"
    );
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "0-3");
    assert!(c.engine.entry(38).is_none(), "the old record is gone");
}

#[test]
fn pinned_kthreads_are_reported_once_and_never_retried() {
    let mut c = core(
        false,
        vec![rule("ksoftirqd/*", "1"), rule("kworker", "1")],
        &[
            kt(14, "ksoftirqd/0", PF_NO_SETAFFINITY, "0"),
            kt(15, "kworker", 0, "0"),
        ],
    );
    // kworker becomes PF_NO_SETAFFINITY after we read it: EINVAL.
    c.kernel.tasks.get_mut(&15).unwrap().flags |= PF_NO_SETAFFINITY;
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    for seq in 1..=3 {
        c.on_wire(
            hotplug(1, HotplugPhase::OfflineBegin, seq * 2 - 1),
            &mut maps,
        );
        c.on_wire(hotplug(1, HotplugPhase::OnlineDone, seq * 2), &mut maps);
        c.rescan(&mut maps);
    }
    let r = reports(&mut c);
    let pinned: Vec<_> = of_type(&r, "pinned")
        .iter()
        .map(|e| e["pid"].as_u64())
        .collect();
    assert_eq!(pinned, [Some(14), Some(15)], "{r:?}");
    assert!(c.kernel.sets.is_empty());
    assert!(
        !maps.policy.contains_key(&15),
        "no longer judged as movable"
    );
    assert!(of_type(&r, "error").is_empty(), "{r:?}");
}

#[test]
fn a_refused_mask_is_reported_once_and_retried_with_backoff() {
    let mut c = core(
        false,
        vec![rule("khugepaged", "1")],
        &[kt(38, "khugepaged", 0, "0-3")],
    );
    // Refused four times (EBUSY, say), then taken.
    c.kernel.fail.insert(38, vec![libc::EBUSY; 4]);
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    let attempts = |k: &FakeKernel| 4 - k.fail[&38].len() + k.sets.len();
    assert_eq!(attempts(&c.kernel), 1, "the start-up attempt");
    let mut attempts_at = Vec::new();
    for tick in 1..=30 {
        let before = attempts(&c.kernel);
        c.rescan(&mut maps);
        if attempts(&c.kernel) > before {
            attempts_at.push(tick);
        }
    }
    // Waits of 1, 2, 4 and 8 rescans; the fifth attempt works.
    assert_eq!(attempts_at, [1, 3, 7, 15], "backoff doubles, then stops");
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "1");
    let r = reports(&mut c);
    assert_eq!(of_type(&r, "refused").len(), 1, "said once: {r:?}");
    assert!(
        of_type(&r, "affinity_changed").is_empty(),
        "a refusal is not someone else's change: {r:?}"
    );
    assert!(c.engine.entry(38).is_some(), "EBUSY is not an exit");
    assert_eq!(c.stats.refused, 1);
}

#[test]
fn a_mask_the_kernel_narrows_is_reported_once_not_fought() {
    let mut c = core(
        false,
        vec![rule("khugepaged", "0-1")],
        &[kt(38, "khugepaged", 0, "0-3")],
    );
    c.kernel.cpuset = Some(set("1"));
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    c.rescan(&mut maps);
    c.rescan(&mut maps);
    let r = reports(&mut c);
    assert_eq!(of_type(&r, "refused").len(), 1, "{r:?}");
    assert!(of_type(&r, "affinity_changed").is_empty(), "{r:?}");
    assert_eq!(c.engine.entry(38).unwrap().current.to_string(), "1");
}

#[test]
fn transient_errors_are_not_exits() {
    let mut c = core(
        false,
        vec![rule("khugepaged", "1"), rule("kauditd", "1")],
        &[kt(38, "khugepaged", 0, "1"), kt(39, "kauditd", 0, "1")],
    );
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    c.kernel.scan_fails = true;
    c.rescan(&mut maps);
    c.kernel.scan_fails = false;
    c.kernel.unreadable = vec![39];
    c.rescan(&mut maps);
    assert!(c.engine.entry(38).is_some() && c.engine.entry(39).is_some());
    let r = reports(&mut c);
    assert!(of_type(&r, "exited").is_empty(), "{r:?}");
    assert_eq!(of_type(&r, "error").len(), 1, "the failed scan: {r:?}");
    // Really gone: then it is an exit.
    c.kernel.unreadable.clear();
    c.kernel.tasks.remove(&39);
    c.rescan(&mut maps);
    assert_eq!(of_type(&reports(&mut c), "exited").len(), 1);
}

#[test]
fn a_foreign_setaffinity_is_named_and_undone() {
    let (mut c, mut maps) = khugepaged_on("0");
    c.kernel.tasks.get_mut(&38).unwrap().cpus_allowed = set("3");
    c.on_wire(
        WireEvent::SetAffinity {
            ts_ns: 0,
            target_pid: 38,
            caller_pid: 4242,
            caller_tgid: 4242,
            caller_comm: "taskset".into(),
            ret: 0,
            by_kernel: false,
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
fn violations_judged_by_the_kernel_are_reported_as_judged() {
    let (mut c, mut maps) = khugepaged_on("1");
    let task = khugepaged_record();
    // Even on a CPU the current mask allows: the kernel saw it outside
    // every set of its hotplug step.
    for cpu in [3, 1] {
        c.on_wire(
            WireEvent::Violation {
                ts_ns: 0,
                task: task.clone(),
                cpu,
                run_ns: 180_000,
            },
            &mut maps,
        );
    }
    let r = reports(&mut c);
    let v = of_type(&r, "violation");
    assert_eq!(v.len(), 2, "{r:?}");
    assert_eq!(
        (
            v[0]["cpu"].clone(),
            v[0]["allowed"].clone(),
            v[0]["run_us"].clone()
        ),
        (3.into(), "1".into(), 180.0.into())
    );
}

#[test]
fn an_exiting_kthread_is_reported_and_leaves_the_map() {
    let (mut c, mut maps) = khugepaged_on("1");
    let task = khugepaged_record();
    c.on_wire(WireEvent::KthreadExit { ts_ns: 0, task }, &mut maps);
    assert!(!maps.policy.contains_key(&38));
    assert!(c.engine.entry(38).is_none());
    assert!(
        reports(&mut c)
            .iter()
            .any(|e| e["type"] == "exited" && e["pid"] == 38 && e["comm"] == "khugepaged")
    );
}

#[test]
fn restore_on_exit_puts_original_masks_back() {
    let (mut c, _maps) = khugepaged_on("1");
    assert_eq!(c.restore_originals(), 1);
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "0-3");
}

#[test]
fn coalesce_keeps_the_last_successful_setaffinity_per_target() {
    let sa = |target_pid, caller_pid, ret| {
        Ok(WireEvent::SetAffinity {
            ts_ns: 0,
            target_pid,
            caller_pid,
            caller_tgid: caller_pid,
            caller_comm: String::new(),
            ret,
            by_kernel: false,
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
    let mut batch = vec![
        sa(1, 10, 0),
        sa(2, 20, 0),
        exit.clone(),
        sa(1, 11, 0),
        sa(1, 12, -1),
    ];
    coalesce(&mut batch);
    assert_eq!(batch, vec![sa(2, 20, 0), exit, sa(1, 11, 0)]);
}

#[test]
fn a_kthread_created_later_gets_its_rule() {
    let mut c = core(
        false,
        vec![rule("jbd2/*", "1")],
        &[kt(2, "kthreadd", 0, "0-3")],
    );
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    c.kernel.tasks.insert(77, kt(77, "jbd2/loop0-8", 0, "0-3"));
    let task = TaskRecord {
        pid: 77,
        tgid: 77,
        flags: PF_KTHREAD,
        comm: "jbd2/loop0-8".into(),
    };
    let pid = c.on_wire(
        WireEvent::KthreadNew {
            ts_ns: 0,
            task: task.clone(),
        },
        &mut maps,
    );
    assert_eq!(pid, Some(77));
    c.kthread_created(77, &mut maps);
    // The rename record of the same kthread: nothing new.
    c.on_wire(WireEvent::KthreadNew { ts_ns: 0, task }, &mut maps);
    c.kthread_created(77, &mut maps);
    assert_eq!(c.kernel.sets, [(77, "1".to_string())]);
}

#[test]
fn a_mask_overtaken_by_a_hotplug_is_neither_refused_nor_blocked() {
    let (mut c, mut maps) = khugepaged_on("1");
    c.on_wire(hotplug(1, HotplugPhase::OfflineBegin, 1), &mut maps);
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "0,2-3");
    // The daemon trails the kernel: cpu1 came back and went again, and the
    // daemon hears of the online step only now.
    c.kernel.online = set("0,2-3");
    c.on_wire(hotplug(1, HotplugPhase::OnlineDone, 2), &mut maps);
    assert_eq!(c.kernel.tasks[&38].cpus_allowed.to_string(), "0,2-3");
    c.on_wire(hotplug(1, HotplugPhase::OfflineBegin, 3), &mut maps);
    c.kernel.online = set("0-3");
    c.on_wire(hotplug(1, HotplugPhase::OnlineDone, 4), &mut maps);
    assert_eq!(
        c.kernel.tasks[&38].cpus_allowed.to_string(),
        "1",
        "the same mask is asked for again at the next online step"
    );
    let r = reports(&mut c);
    assert!(of_type(&r, "refused").is_empty(), "{r:?}");
    assert!(of_type(&r, "error").is_empty(), "{r:?}");
}

#[test]
fn the_live_view_has_every_record_and_who_registered_what() {
    let mut c = core(
        false,
        vec![rule("khugepaged", "1")],
        &[
            kt(38, "khugepaged", 0, "0-3"),
            kt(40, "oom_reaper", 0, "0-3"),
        ],
    );
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    c.register(
        Target::Comm("oom*".into()),
        Preference::Cpus(set("2")),
        false,
        "uid 0, pid 4242",
        &mut maps,
    )
    .unwrap();
    let v = c.view();
    assert_eq!(
        (v.online.as_str(), v.housekeeping.as_str(), v.observe),
        ("0-3", "0-3", false)
    );
    let rows: Vec<_> = v
        .kthreads
        .iter()
        .map(|k| {
            (
                k.pid,
                k.rule.as_deref(),
                k.preferred.as_deref(),
                k.applied.as_str(),
                k.current.as_str(),
                k.drift,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (38, Some("khugepaged"), Some("1"), "1", "1", false),
            (40, Some("runtime"), Some("2"), "2", "2", false),
        ]
    );
    assert_eq!(v.registrations.len(), 1);
    let r = &v.registrations[0];
    assert_eq!(
        (
            r.target.as_str(),
            r.prefer.as_str(),
            r.by.as_str(),
            &r.pids[..]
        ),
        ("oom*", "2", "uid 0, pid 4242", &[40][..])
    );
    // An observing daemon sets nothing: khugepaged is not where the policy
    // puts it, and the view says so.
    let mut o = core(
        true,
        vec![rule("khugepaged", "1")],
        &[
            kt(38, "khugepaged", 0, "0-3"),
            kt(40, "oom_reaper", 0, "0-3"),
        ],
    );
    o.start(&mut maps).unwrap();
    let v = o.view();
    let drift: Vec<_> = v.kthreads.iter().map(|k| (k.pid, k.drift)).collect();
    assert_eq!(drift, [(38, true), (40, false)]);
    assert!(v.observe && v.registrations.is_empty());
}

#[test]
fn while_the_kernel_refuses_a_mask_runs_where_it_really_is_are_not_judged() {
    // khugepaged sits on 0; its rule says 1, which the kernel refuses once
    // (5.10: a CPU just online, not in the cpuset yet).
    let mut c = core(
        false,
        vec![rule("khugepaged", "1")],
        &[kt(38, "khugepaged", 0, "0")],
    );
    c.kernel.fail.insert(38, vec![libc::EIO]);
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    assert_eq!(
        maps.applied(38),
        Some("0-1"),
        "judged against the policy and where the kernel keeps it"
    );
    assert_eq!(of_type(&reports(&mut c), "refused").len(), 1);
    // The retry is taken: judged against the policy alone again.
    c.rescan(&mut maps);
    assert_eq!(c.kernel.sets.last().map(|(_, m)| m.as_str()), Some("1"));
    assert_eq!(maps.applied(38), Some("1"));
}

#[test]
fn a_partition_the_kernel_already_followed_sets_no_mask() {
    // 7.x: khugepaged and oom_reaper on housekeeping 0-3, the kernel's own.
    let topology = Topology {
        width: W,
        possible: set("0-3"),
        online: set("0-3"),
        nodes: BTreeMap::from([(0, set("0-3"))]),
    };
    let rules = vec![Rule {
        target: Target::Comm("*".into()),
        prefer: Preference::Housekeeping,
    }];
    let engine = Engine::new(topology, set("0-3"), rules).with_kernel("7.3.4-cloud-amd64");
    let tasks = [
        kt(38, "khugepaged", 0, "0-3"),
        kt(39, "oom_reaper", 0, "0-3"),
    ];
    let kernel = FakeKernel {
        tasks: tasks.iter().map(|k| (k.pid, k.clone())).collect(),
        ..Default::default()
    };
    let opts = Options {
        observe: false,
        restore_on_exit: false,
    };
    let mut c = Core::new(
        engine,
        kernel,
        Reporter::new(Vec::new(), report::Format::Json, false),
        opts,
    );
    let mut maps = FakeMaps::new();
    c.start(&mut maps).unwrap();
    assert!(c.kernel.sets.is_empty(), "{:?}", c.kernel.sets);
    // An isolated partition takes cpu3: the kernel moves both itself before
    // the daemon reads the new housekeeping.
    for pid in [38, 39] {
        c.kernel.tasks.get_mut(&pid).unwrap().cpus_allowed = set("0-2");
    }
    c.housekeeping_changed(set("0-2"), &mut maps);
    assert!(
        c.kernel.sets.is_empty(),
        "nothing to set: {:?}",
        c.kernel.sets
    );
    assert_eq!(maps.applied(38), Some("0-2"));
    // And back.
    for pid in [38, 39] {
        c.kernel.tasks.get_mut(&pid).unwrap().cpus_allowed = set("0-3");
    }
    c.housekeeping_changed(set("0-3"), &mut maps);
    assert!(
        c.kernel.sets.is_empty(),
        "nothing to set: {:?}",
        c.kernel.sets
    );
}

#[test]
fn the_kernel_moving_a_kthread_onto_a_cpu_not_yet_heard_online_is_not_fought() {
    let (mut c, mut maps) = khugepaged_on("0-1");
    c.on_wire(hotplug(3, HotplugPhase::OfflineBegin, 1), &mut maps);
    c.on_wire(hotplug(3, HotplugPhase::OfflineDone, 1), &mut maps);
    let before = c.kernel.sets.len();
    // cpu3 coming up: the kernel re-affines khugepaged onto it at a step
    // before the one whose record says the CPU is active.
    c.kernel.tasks.get_mut(&38).unwrap().cpus_allowed = set("3");
    let reaffine = |by_kernel| WireEvent::SetAffinity {
        ts_ns: 0,
        target_pid: 38,
        caller_pid: 30,
        caller_tgid: 30,
        caller_comm: "cpuhp/3".into(),
        ret: 0,
        by_kernel,
    };
    c.on_wire(reaffine(true), &mut maps);
    assert_eq!(
        c.kernel.sets.len(),
        before,
        "not put back: {:?}",
        c.kernel.sets
    );
    assert!(of_type(&reports(&mut c), "affinity_changed").is_empty());
    // A move by a sched_setaffinity() caller is undone.
    c.kernel.tasks.get_mut(&38).unwrap().cpus_allowed = set("2");
    c.on_wire(reaffine(false), &mut maps);
    assert_eq!(c.kernel.sets.len(), before + 1, "{:?}", c.kernel.sets);
}
