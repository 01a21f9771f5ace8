//! The machine as the kernel shows it in /sys and /proc, and the same state
//! as a JSON snapshot (`affinity snapshot`, `affinity plan --snapshot`).
//!
//! The roots are parameters so tests and other machines' snapshots go
//! through the same code.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    input::BadInput,
    policy::{
        self, Config, CpuSet, HousekeepingSpec, IrqInfo, Kthread, MAX_CPUS, PF_KTHREAD, SteerScan,
        Topology, WqName,
    },
};

/// The kernel's CPU isolation settings, which can change at run time
/// (cpuset partitions): cheap to re-read, unlike a whole [`Machine`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    pub isolated: CpuSet,
    pub nohz_full: CpuSet,
    pub cpuset_isolated: CpuSet,
}

impl Isolation {
    pub fn read(sys_root: &Path, width: u32) -> Result<Isolation> {
        let cpu = sys_root.join("devices/system/cpu");
        Ok(Isolation {
            isolated: optional_list(&cpu.join("isolated"), width)?,
            nohz_full: optional_list(&cpu.join("nohz_full"), width)?,
            cpuset_isolated: optional_list(
                &sys_root.join("fs/cgroup/cpuset.cpus.isolated"),
                width,
            )?,
        })
    }
}

/// Everything the policy needs to know about a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub kernel: String,
    pub topology: Topology,
    pub isolated: CpuSet,
    pub nohz_full: CpuSet,
    pub cpuset_isolated: CpuSet,
    pub kthreads: Vec<Kthread>,
    /// What `run --irqs` steers: IRQs, the default IRQ affinity, the
    /// workqueue cpumasks (empty when /proc/irq cannot be read, or the
    /// snapshot has none).
    pub steering: SteerScan,
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// A cpulist file that may be absent (older kernels, no cgroup v2) or say
/// "(null)" (nohz_full when unset): both mean the empty set.
fn optional_list(path: &Path, width: u32) -> Result<CpuSet> {
    match fs::read_to_string(path) {
        Ok(s) if s.trim() == "(null)" => Ok(CpuSet::empty(width)),
        Ok(s) => CpuSet::parse(&s, width).with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CpuSet::empty(width)),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Fields of /proc/PID/stat: (comm, flags, start time). The comm is in
/// parentheses and may contain spaces and parentheses itself, so fields are
/// counted from the last ')'.
pub fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_ascii_whitespace();
    // rest[0] is field 3 (state); flags is field 9, starttime field 22.
    let flags = rest.nth(6)?.parse().ok()?;
    let start_time = rest.nth(12)?.parse().ok()?;
    Some((comm, flags, start_time))
}

/// Whether an error reading /proc/PID means the task is gone (as opposed
/// to a failure that says nothing about it: EINTR, EMFILE, ENOMEM…).
pub fn is_gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// A /proc file read whole with as few syscalls as it takes: open, one
/// read of a page (a kthread's stat and status fit), one more that says
/// EOF, close. `fs::read_to_string` first asks the size (0 for /proc) and
/// then grows its buffer from 32 bytes: 13 reads and a statx for a status
/// file, for every kthread on every rescan and hotplug step.
pub fn read_proc_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// `/proc/PID/stat` of `pid`: (comm, flags, start time). `Ok(None)`: gone.
pub fn stat_of(proc_root: &Path, pid: u32) -> std::io::Result<Option<(String, u32, u64)>> {
    match read_proc_file(&proc_root.join(pid.to_string()).join("stat")) {
        Ok(text) => parse_stat(&text)
            .map(Some)
            .ok_or_else(|| invalid(format!("/proc/{pid}/stat: unexpected format"))),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `/proc/PID/stat` of `pid`: (comm, flags, start time), None if unreadable.
pub fn read_stat(proc_root: &Path, pid: u32) -> Option<(String, u32, u64)> {
    stat_of(proc_root, pid).ok().flatten()
}

/// The kthread `pid` as /proc shows it now. `Ok(None)`: gone, or not a
/// kthread; `Err`: it could not be read, which says nothing about it.
pub fn kthread_of(proc_root: &Path, pid: u32, width: u32) -> std::io::Result<Option<Kthread>> {
    let Some((comm, flags, start_time)) = stat_of(proc_root, pid)? else {
        return Ok(None);
    };
    if flags & PF_KTHREAD == 0 {
        return Ok(None);
    }
    let status = match read_proc_file(&proc_root.join(pid.to_string()).join("status")) {
        Ok(s) => s,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .ok_or_else(|| invalid(format!("/proc/{pid}/status: no Cpus_allowed_list")))?;
    let cpus_allowed = CpuSet::parse(list, width)
        .map_err(|e| invalid(format!("/proc/{pid}/status: Cpus_allowed_list: {e}")))?;
    Ok(Some(Kthread {
        pid,
        comm,
        flags,
        start_time,
        cpus_allowed,
    }))
}

/// One pass over /proc: every kthread that could be read, and the pids that
/// are there but could not be (neither alive nor gone, as far as we know).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub kthreads: Vec<Kthread>,
    pub unreadable: Vec<u32>,
}

/// Every kthread, by pid. Kthreads are single-threaded, so the top level of
/// /proc lists them all; every one but kthreadd (pid 2) is a child of
/// kthreadd, so where the kernel lists children (CONFIG_PROC_CHILDREN) only
/// those are read, not every process on the machine. An unreadable /proc
/// is an error, not "no kthreads".
pub fn scan_kthreads(proc_root: &Path, width: u32) -> std::io::Result<Scan> {
    let mut scan = Scan::default();
    for pid in candidates(proc_root)? {
        match kthread_of(proc_root, pid, width) {
            Ok(Some(k)) => scan.kthreads.push(k),
            Ok(None) => {}
            Err(_) => scan.unreadable.push(pid),
        }
    }
    if scan.kthreads.is_empty() {
        // There is always kthreadd: an empty scan is a broken /proc.
        return Err(invalid(format!(
            "{}: no kernel thread found (is procfs mounted?)",
            proc_root.display()
        )));
    }
    scan.kthreads.sort_by_key(|k| k.pid);
    Ok(scan)
}

/// The pids that may be kthreads: kthreadd and its children, else every
/// pid in /proc.
pub(crate) fn candidates(proc_root: &Path) -> std::io::Result<Vec<u32>> {
    if let Ok(children) = read_proc_file(&proc_root.join("2/task/2/children")) {
        let mut pids = vec![2];
        pids.extend(
            children
                .split_ascii_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
        return Ok(pids);
    }
    let mut pids = Vec::new();
    for entry in fs::read_dir(proc_root)? {
        if let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Every kthread that can be read now, by pid (empty if /proc cannot be).
pub fn read_kthreads(proc_root: &Path, width: u32) -> Vec<Kthread> {
    scan_kthreads(proc_root, width)
        .map(|s| s.kthreads)
        .unwrap_or_default()
}

/// An IRQ's action names (`/sys/kernel/irq/N/actions`, CONFIG_SPARSE_IRQ),
/// or None where the kernel has no such file or the IRQ is gone.
pub fn irq_actions(sys_root: &Path, irq: u32) -> Option<String> {
    let s = fs::read_to_string(sys_root.join(format!("kernel/irq/{irq}/actions"))).ok()?;
    Some(s.trim().to_string())
}

/// The online CPUs as the kernel shows them now.
pub fn online_cpus(sys_root: &Path, width: u32) -> Result<CpuSet> {
    let path = sys_root.join("devices/system/cpu/online");
    CpuSet::parse(&read_trimmed(&path)?, width)
        .with_context(|| format!("parsing {}", path.display()))
}

/// Whether no hotplug operation is under way on `cpu`: its cpuhp state is
/// its target. A CPU without the files (cpu0 on some machines) is settled.
pub fn cpu_settled(sys_root: &Path, cpu: u32) -> bool {
    let dir = sys_root.join(format!("devices/system/cpu/cpu{cpu}/hotplug"));
    match (
        fs::read_to_string(dir.join("state")),
        fs::read_to_string(dir.join("target")),
    ) {
        (Ok(s), Ok(t)) => s.trim() == t.trim(),
        _ => true,
    }
}

/// The node a CPU belongs to, from its `nodeN` link (present while offline too).
pub fn cpu_node(sys_root: &Path, cpu: u32) -> Option<u32> {
    let dir = sys_root.join(format!("devices/system/cpu/cpu{cpu}"));
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .find_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
}

/// The nodes of the CPUs in `online`: each node's `cpulist` (one read per
/// node, where a directory listing per CPU would be 256 of them every
/// rescan on a 256-CPU host), then the `nodeN` link of any online CPU no
/// cpulist names yet (the lists follow hotplug a step behind `online`).
pub fn online_nodes(sys_root: &Path, online: &CpuSet) -> BTreeMap<u32, CpuSet> {
    let width = online.width();
    let mut nodes: BTreeMap<u32, CpuSet> = BTreeMap::new();
    let mut placed = CpuSet::empty(width);
    if let Ok(dir) = fs::read_dir(sys_root.join("devices/system/node")) {
        for e in dir.flatten() {
            let Some(n) = e
                .file_name()
                .to_str()
                .and_then(|s| s.strip_prefix("node")?.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(list) = read_proc_file(&e.path().join("cpulist")) else {
                continue;
            };
            let Ok(cpus) = CpuSet::parse(list.trim(), width) else {
                continue;
            };
            let cpus = cpus.and(online);
            placed = placed.or(&cpus);
            if !cpus.is_empty() {
                nodes.insert(n, cpus);
            }
        }
    }
    for cpu in online.and_not(&placed).iter() {
        if let Some(n) = cpu_node(sys_root, cpu) {
            nodes
                .entry(n)
                .or_insert_with(|| CpuSet::empty(width))
                .insert(cpu);
        }
    }
    nodes
}

impl Machine {
    pub fn read(sys_root: &Path, proc_root: &Path) -> Result<Machine> {
        let cpu = sys_root.join("devices/system/cpu");
        let possible_text = read_trimmed(&cpu.join("possible"))?;
        let possible = CpuSet::parse(&possible_text, MAX_CPUS)
            .with_context(|| format!("parsing {}/possible", cpu.display()))?;
        let width = possible.last().map_or(1, |l| l + 1);
        let possible = CpuSet::from_words(width, possible.words());
        let online = CpuSet::parse(&read_trimmed(&cpu.join("online"))?, width)
            .context("parsing the online CPU list")?;
        let mut nodes = BTreeMap::new();
        if let Ok(dir) = fs::read_dir(sys_root.join("devices/system/node")) {
            for e in dir.flatten() {
                let Some(n) = e
                    .file_name()
                    .to_str()
                    .and_then(|s| s.strip_prefix("node")?.parse::<u32>().ok())
                else {
                    continue;
                };
                nodes.insert(n, optional_list(&e.path().join("cpulist"), width)?);
            }
        }
        // Node cpulists show online CPUs only: place offline ones by their link.
        for c in possible.and_not(&online).iter() {
            if let Some(n) = cpu_node(sys_root, c) {
                nodes
                    .entry(n)
                    .or_insert_with(|| CpuSet::empty(width))
                    .insert(c);
            }
        }
        if nodes.is_empty() {
            nodes.insert(0, possible.clone());
        }
        let iso = Isolation::read(sys_root, width)?;
        Ok(Machine {
            kernel: read_trimmed(&proc_root.join("sys/kernel/osrelease"))?,
            isolated: iso.isolated,
            nohz_full: iso.nohz_full,
            cpuset_isolated: iso.cpuset_isolated,
            kthreads: read_kthreads(proc_root, width),
            steering: super::irq::IrqFs::new(proc_root, sys_root, width)
                .scan()
                .unwrap_or_default(),
            topology: Topology {
                width,
                possible,
                online,
                nodes,
            },
        })
    }

    /// H: as the config says, or from the kernel's isolation settings.
    pub fn housekeeping(&self, spec: &HousekeepingSpec) -> CpuSet {
        match spec {
            HousekeepingSpec::Cpus(s) => CpuSet::from_words(self.topology.width, s.words()),
            HousekeepingSpec::Auto(sources) => {
                let none = CpuSet::empty(self.topology.width);
                let pick = |on: bool, s| if on { s } else { &none };
                policy::housekeeping_from(
                    &self.topology.possible,
                    pick(sources.isolcpus, &self.isolated),
                    pick(sources.nohz_full, &self.nohz_full),
                    pick(sources.partitions, &self.cpuset_isolated),
                )
            }
        }
    }

    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            kernel: self.kernel.clone(),
            possible: self.topology.possible.to_string(),
            online: self.topology.online.to_string(),
            isolated: self.isolated.to_string(),
            nohz_full: self.nohz_full.to_string(),
            cpuset_isolated: self.cpuset_isolated.to_string(),
            nodes: self
                .topology
                .nodes
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
            kthreads: self
                .kthreads
                .iter()
                .map(|k| SnapshotKthread {
                    pid: k.pid,
                    comm: k.comm.clone(),
                    flags: k.flags,
                    cpus_allowed: k.cpus_allowed.to_string(),
                })
                .collect(),
            steering: SnapshotSteering::of(&self.steering),
        }
    }

    /// Reads a snapshot taken elsewhere; every problem is the user's input.
    pub fn from_snapshot_file(path: &Path) -> Result<Machine> {
        let text = read_input(path)?;
        let origin = input_name(path);
        let snap: Snapshot = serde_json::from_slice(&text).map_err(|e| {
            BadInput::err(format!(
                "{origin}:{}:{}: not a valid snapshot: {e}",
                e.line(),
                e.column()
            ))
        })?;
        snap.to_machine()
            .map_err(|e| BadInput::err(format!("{origin}: {e}")))
    }
}

/// `affinity snapshot`'s JSON, exactly these keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub kernel: String,
    pub possible: String,
    pub online: String,
    pub isolated: String,
    pub nohz_full: String,
    pub cpuset_isolated: String,
    pub nodes: BTreeMap<String, String>,
    pub kthreads: Vec<SnapshotKthread>,
    /// What `run --irqs` steers; absent in snapshots from before it was
    /// recorded (they still load, with nothing to steer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steering: Option<SnapshotSteering>,
}

/// The IRQs, default IRQ affinity and workqueue cpumasks, as cpulists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSteering {
    #[serde(default)]
    pub irqs: Vec<SnapshotIrq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_affinity: Option<String>,
    /// `/sys/devices/virtual/workqueue/cpumask`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workqueue: Option<String>,
    /// Each WQ_SYSFS workqueue's cpumask, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workqueues: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotIrq {
    pub irq: u32,
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    pub affinity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<String>,
}

impl SnapshotSteering {
    /// None when there is nothing to record (no /proc/irq).
    fn of(scan: &SteerScan) -> Option<SnapshotSteering> {
        if *scan == SteerScan::default() {
            return None;
        }
        Some(SnapshotSteering {
            irqs: scan
                .irqs
                .iter()
                .map(|i| SnapshotIrq {
                    irq: i.number,
                    actions: i.actions.clone(),
                    node: i.node,
                    affinity: i.affinity.to_string(),
                    effective: i.effective.as_ref().map(ToString::to_string),
                })
                .collect(),
            default_affinity: scan.default_affinity.as_ref().map(ToString::to_string),
            workqueue: scan.workqueue.as_ref().map(ToString::to_string),
            workqueues: scan
                .workqueues
                .iter()
                .map(|(n, m)| (n.to_string(), m.to_string()))
                .collect(),
        })
    }

    fn to_scan(
        &self,
        list: impl Fn(&str, &str) -> Result<CpuSet, SnapshotError>,
    ) -> Result<SteerScan, SnapshotError> {
        let mut scan = SteerScan::default();
        for i in &self.irqs {
            let key = format!("steering.irqs[irq {}]", i.irq);
            scan.irqs.push(IrqInfo {
                number: i.irq,
                actions: i.actions.clone(),
                node: i.node,
                affinity: list(&format!("{key}.affinity"), &i.affinity)?,
                effective: i
                    .effective
                    .as_ref()
                    .map(|e| list(&format!("{key}.effective"), e))
                    .transpose()?,
            });
        }
        scan.default_affinity = self
            .default_affinity
            .as_ref()
            .map(|m| list("steering.default_affinity", m))
            .transpose()?;
        scan.workqueue = self
            .workqueue
            .as_ref()
            .map(|m| list("steering.workqueue", m))
            .transpose()?;
        for (name, mask) in &self.workqueues {
            let key = format!("steering.workqueues.{name}");
            let wq = WqName::new(name).ok_or_else(|| SnapshotError {
                field: key.clone(),
                problem: format!("a workqueue name is at most {} bytes", WqName::MAX),
            })?;
            scan.workqueues.push((wq, list(&key, mask)?));
        }
        Ok(scan)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotKthread {
    pub pid: u32,
    pub comm: String,
    pub flags: u32,
    pub cpus_allowed: String,
}

/// A snapshot field that does not hold what it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SnapshotError {
    pub field: String,
    pub problem: String,
}

impl Snapshot {
    pub fn to_machine(&self) -> Result<Machine, SnapshotError> {
        let bad = |field: &str, problem: String| SnapshotError {
            field: field.to_string(),
            problem,
        };
        let possible =
            CpuSet::parse(&self.possible, MAX_CPUS).map_err(|e| bad("possible", e.to_string()))?;
        let width = possible
            .last()
            .map(|l| l + 1)
            .ok_or_else(|| bad("possible", "no CPU at all".into()))?;
        let possible = CpuSet::from_words(width, possible.words());
        let list =
            |key: &str, v: &str| CpuSet::parse(v, width).map_err(|e| bad(key, e.to_string()));
        let mut nodes = BTreeMap::new();
        for (n, cpus) in &self.nodes {
            let id: u32 = n
                .parse()
                .map_err(|_| bad("nodes", format!("{n:?} is not a node number")))?;
            nodes.insert(id, list(&format!("nodes.{n}"), cpus)?);
        }
        if nodes.is_empty() {
            nodes.insert(0, possible.clone());
        }
        let mut kthreads = Vec::with_capacity(self.kthreads.len());
        for k in &self.kthreads {
            kthreads.push(Kthread {
                pid: k.pid,
                comm: k.comm.clone(),
                flags: k.flags,
                start_time: 0,
                cpus_allowed: list(
                    &format!("kthreads[pid {}].cpus_allowed", k.pid),
                    &k.cpus_allowed,
                )?,
            });
        }
        Ok(Machine {
            kernel: self.kernel.clone(),
            topology: Topology {
                width,
                online: list("online", &self.online)?,
                possible,
                nodes,
            },
            isolated: list("isolated", &self.isolated)?,
            nohz_full: list("nohz_full", &self.nohz_full)?,
            cpuset_isolated: list("cpuset_isolated", &self.cpuset_isolated)?,
            kthreads,
            steering: match &self.steering {
                Some(s) => s.to_scan(list)?,
                None => SteerScan::default(),
            },
        })
    }
}

/// Reads a file the user named; `-` is stdin. A missing file is bad input
/// (exit 2), like any other mistake on the command line.
pub fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
        return Ok(buf);
    }
    match fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(BadInput::err(format!("{}: no such file", path.display())))
        }
        r => r.with_context(|| format!("reading {}", path.display())),
    }
}

/// How error messages name an input: its path, or `<stdin>` for `-`.
pub fn input_name(path: &Path) -> String {
    if path == Path::new("-") {
        "<stdin>".into()
    } else {
        path.display().to_string()
    }
}

/// Reads and checks a rules file against a machine; errors are BadInput.
pub fn load_config(path: &Path, topology: &Topology) -> Result<Config> {
    let bytes = read_input(path)?;
    parse_config(bytes, &input_name(path), topology)
}

/// `load_config` on bytes already read.
pub fn parse_config(bytes: Vec<u8>, origin: &str, topology: &Topology) -> Result<Config> {
    let origin = origin.to_string();
    let text = String::from_utf8(bytes).map_err(|e| {
        BadInput::err(format!(
            "{origin}: not UTF-8 text (invalid byte at offset {}): is this a rules file?",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let config =
        Config::parse(&text, &origin, topology.width).map_err(|e| BadInput::err(e.to_string()))?;
    config
        .validate(&text, &origin, topology)
        .map_err(|e| BadInput::err(e.to_string()))?;
    Ok(config)
}

/// Default roots, overridable for tests.
pub fn roots(sys: Option<PathBuf>, proc: Option<PathBuf>) -> (PathBuf, PathBuf) {
    (
        sys.unwrap_or_else(|| "/sys".into()),
        proc.unwrap_or_else(|| "/proc".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::IsolationSources;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let stat = "38 (kworker/u8:0 (x)) I 2 0 0 0 -1 69238880 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(("kworker/u8:0 (x)".into(), 69238880, 12345))
        );
        assert_eq!(parse_stat("38 (khugepaged) S 2 0"), None);
    }

    fn fake_task(proc: &Path, pid: u32, comm: &str, flags: u32) {
        fs::create_dir_all(proc.join(pid.to_string())).unwrap();
        fs::write(
            proc.join(format!("{pid}/stat")),
            format!("{pid} ({comm}) S 0 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 7 0"),
        )
        .unwrap();
        fs::write(
            proc.join(format!("{pid}/status")),
            "Name:\tx\nCpus_allowed_list:\t0-1\n",
        )
        .unwrap();
    }

    /// kthreadd's children are the kthreads: a process elsewhere in /proc
    /// is not read at all where the kernel lists them.
    #[test]
    fn the_rescan_reads_kthreadd_and_its_children_only() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        fake_task(proc, 2, "kthreadd", PF_KTHREAD);
        fake_task(proc, 10, "kswapd0", PF_KTHREAD);
        // A kthread-looking entry that is no child of kthreadd: unreadable
        // garbage would make it "unreadable" if it were read.
        fs::create_dir_all(proc.join("11")).unwrap();
        fs::write(proc.join("11/stat"), "garbage").unwrap();
        fs::create_dir_all(proc.join("2/task/2")).unwrap();
        fs::write(proc.join("2/task/2/children"), "10 ").unwrap();
        let scan = scan_kthreads(proc, 2).unwrap();
        let pids: Vec<u32> = scan.kthreads.iter().map(|k| k.pid).collect();
        assert_eq!((pids, scan.unreadable), (vec![2, 10], vec![]));
        // Without the children file: every pid, so 11 is read and fails.
        fs::remove_file(proc.join("2/task/2/children")).unwrap();
        let scan = scan_kthreads(proc, 2).unwrap();
        let pids: Vec<u32> = scan.kthreads.iter().map(|k| k.pid).collect();
        assert_eq!((pids, scan.unreadable), (vec![2, 10], vec![11]));
    }

    /// Nodes from their cpulists, and an online CPU no cpulist names yet
    /// (a step behind hotplug) from its link; offline CPUs are in none.
    #[test]
    fn online_nodes_come_from_the_node_lists_then_the_cpu_links() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let node = sys.join("devices/system/node");
        fs::create_dir_all(node.join("node0")).unwrap();
        fs::create_dir_all(node.join("node1")).unwrap();
        fs::create_dir_all(node.join("node2")).unwrap();
        fs::write(node.join("node0/cpulist"), "0-1\n").unwrap();
        fs::write(node.join("node1/cpulist"), "2\n").unwrap();
        // A memory-only node.
        fs::write(node.join("node2/cpulist"), "\n").unwrap();
        fs::create_dir_all(sys.join("devices/system/cpu/cpu3/node1")).unwrap();
        let online = CpuSet::parse("0,2-3", 5).unwrap();
        let got: Vec<(u32, String)> = online_nodes(sys, &online)
            .into_iter()
            .map(|(n, c)| (n, c.to_string()))
            .collect();
        assert_eq!(got, vec![(0, "0".into()), (1, "2-3".into())]);
    }

    /// A fake /sys and /proc: the roots are parameters for this.
    #[test]
    fn reads_a_fake_machine() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let proc = dir.path().join("proc");
        let cpu = sys.join("devices/system/cpu");
        fs::create_dir_all(cpu.join("cpu3/node1")).unwrap();
        fs::create_dir_all(sys.join("devices/system/node/node0")).unwrap();
        fs::create_dir_all(sys.join("devices/system/node/node1")).unwrap();
        fs::write(cpu.join("possible"), "0-3\n").unwrap();
        fs::write(cpu.join("online"), "0-2\n").unwrap();
        fs::write(cpu.join("isolated"), "2\n").unwrap();
        fs::write(cpu.join("nohz_full"), "(null)\n").unwrap();
        fs::write(sys.join("devices/system/node/node0/cpulist"), "0-1\n").unwrap();
        fs::write(sys.join("devices/system/node/node1/cpulist"), "2\n").unwrap();
        fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        fs::write(proc.join("sys/kernel/osrelease"), "6.1.0-test\n").unwrap();
        for (pid, comm, flags) in [
            (2, "kthreadd", 0x208040),
            (45, "kswapd1", 0x00a20840),
            (900, "bash", 0x400100),
        ] {
            fs::create_dir_all(proc.join(pid.to_string())).unwrap();
            fs::write(
                proc.join(format!("{pid}/stat")),
                format!(
                    "{pid} ({comm}) S 0 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 {} 0",
                    pid * 10
                ),
            )
            .unwrap();
            fs::write(
                proc.join(format!("{pid}/status")),
                "Name:\tx\nCpus_allowed_list:\t0-3\n",
            )
            .unwrap();
        }
        let m = Machine::read(&sys, &proc).unwrap();
        assert_eq!(m.kernel, "6.1.0-test");
        assert_eq!(
            (m.topology.width, m.topology.online.to_string()),
            (4, "0-2".into())
        );
        assert_eq!(
            m.topology.nodes[&1].to_string(),
            "2-3",
            "offline cpu3 placed by its node link"
        );
        assert_eq!(
            m.housekeeping(&HousekeepingSpec::Auto(Default::default()))
                .to_string(),
            "0-1,3"
        );
        // isolcpus not counted: cpu2 is housekeeping again.
        let sources = IsolationSources {
            isolcpus: false,
            ..Default::default()
        };
        assert_eq!(
            m.housekeeping(&HousekeepingSpec::Auto(sources)).to_string(),
            "0-3"
        );
        assert_eq!(
            m.kthreads
                .iter()
                .map(|k| k.comm.as_str())
                .collect::<Vec<_>>(),
            ["kthreadd", "kswapd1"]
        );
        let snap = m.to_snapshot();
        let back = snap.to_machine().unwrap();
        assert_eq!(back.topology, m.topology);
        assert_eq!(back.kthreads.len(), 2);
        // No /proc/irq in this tree: nothing to steer, no key written.
        assert_eq!(
            (m.steering.clone(), snap.steering),
            (SteerScan::default(), None)
        );
    }

    #[test]
    fn steering_round_trips_through_a_snapshot_and_old_ones_load() {
        let json = r#"{"kernel": "6.18.0", "possible": "0-3", "online": "0-3", "isolated": "",
            "nohz_full": "", "cpuset_isolated": "", "nodes": {"0": "0-3"}, "kthreads": [],
            "steering": {"irqs": [{"irq": 36, "actions": ["nvme0q1"], "node": 0,
                "affinity": "0-3", "effective": "2"}],
                "default_affinity": "0-3", "workqueue": "0-3",
                "workqueues": {"writeback": "0-3"}}}"#;
        let snap: Snapshot = serde_json::from_str(json).unwrap();
        let m = snap.to_machine().unwrap();
        let s = |l: &str| CpuSet::parse(l, 4).unwrap();
        assert_eq!(
            m.steering,
            SteerScan {
                irqs: vec![IrqInfo {
                    number: 36,
                    actions: vec!["nvme0q1".into()],
                    node: Some(0),
                    affinity: s("0-3"),
                    effective: Some(s("2")),
                }],
                unreadable: vec![],
                default_affinity: Some(s("0-3")),
                workqueue: Some(s("0-3")),
                workqueues: vec![(WqName::new("writeback").unwrap(), s("0-3"))],
            }
        );
        assert_eq!(m.to_snapshot(), snap, "written back with the same keys");
        // From before steering was recorded: loads, with nothing to steer.
        let old = r#"{"kernel": "6.18.0", "possible": "0-3", "online": "0-3", "isolated": "",
            "nohz_full": "", "cpuset_isolated": "", "nodes": {"0": "0-3"}, "kthreads": []}"#;
        let old: Snapshot = serde_json::from_str(old).unwrap();
        assert_eq!(old.to_machine().unwrap().steering, SteerScan::default());
        // A bad mask names its field.
        let bad: Snapshot =
            serde_json::from_str(&json.replace(r#""effective": "2""#, r#""effective": "9""#))
                .unwrap();
        assert_eq!(
            bad.to_machine().unwrap_err().field,
            "steering.irqs[irq 36].effective"
        );
    }
}
