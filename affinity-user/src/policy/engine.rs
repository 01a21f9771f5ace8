//! The policy engine: `handle(event) -> actions`, no I/O.
//!
//! For a registered kthread with preferred CPUs P, housekeeping H and online
//! CPUs O the applied mask is P∩H∩O, else H∩O, else O, recomputed on every
//! hotplug, housekeeping and registry change.
//!
//! The engine owns one [`Entry`] per kthread. It asks for effects through
//! [`Action`]s and learns their outcome only from events the executor sends
//! back ([`Event::Applied`], [`Event::Refused`], [`Event::Pinned`],
//! [`Event::KthreadExit`]): nothing is assumed done before the kernel said so.

use std::collections::BTreeMap;

use thiserror::Error;

use super::{CpuSet, Kthread, Preference, Rule, Target, kernel_manages_affinity};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub width: u32,
    pub possible: CpuSet,
    pub online: CpuSet,
    /// node → the CPUs known to belong to it (grows as CPUs come online).
    pub nodes: BTreeMap<u32, CpuSet>,
}

impl Topology {
    /// A machine without NUMA information: node 0 holds every possible CPU.
    pub fn single_node(possible: CpuSet, online: CpuSet) -> Self {
        Topology {
            width: possible.width(),
            nodes: BTreeMap::from([(0, possible.clone())]),
            possible,
            online,
        }
    }

    /// The node `cpu` belongs to, as far as the topology knows.
    pub fn node_of(&self, cpu: u32) -> Option<u32> {
        self.nodes
            .iter()
            .find(|(_, cpus)| cpus.contains(cpu))
            .map(|(n, _)| *n)
    }
}

/// Who decides a kthread's mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No rule matched: we only watch it.
    Unmanaged,
    /// A rule matched: we set its mask.
    Managed,
    /// PF_NO_SETAFFINITY: the kernel refuses any change.
    Pinned,
}

/// A mask the kernel would not take, and when to try again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub mask: CpuSet,
    pub errno: i32,
    /// Rescans to wait before the next attempt; doubles each time.
    pub backoff: u32,
    wait: u32,
}

/// Most rescans between two attempts at a refused mask (2 s each: ~2 min).
const MAX_BACKOFF: u32 = 64;

/// A kthread the engine knows about: the one record of it in the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pid: u32,
    pub comm: String,
    pub start_time: u64,
    pub flags: u32,
    pub state: State,
    /// What gave it its preference: the rule's match (`kswapd*`, `pid 45`)
    /// or `runtime`; None when no rule matched.
    pub rule: Option<String>,
    pub preference: Option<Preference>,
    /// P(k) resolved against the topology now.
    pub preferred: Option<CpuSet>,
    /// What the policy says its mask should be.
    pub applied: CpuSet,
    /// Its mask as last read back from the kernel.
    pub current: CpuSet,
    /// Its mask when we first saw it: what `--restore-on-exit` puts back.
    pub original: CpuSet,
    /// A 6.14+ kernel re-affines it itself.
    pub kernel_managed: bool,
    /// An IRQ thread (`irq/N-*`): its mask follows IRQ N's affinity, so it
    /// is left alone like a pinned one.
    pub follows_irq: Option<u32>,
    /// An unbound workqueue worker: its CPUs are the workqueue cpumask.
    pub follows_workqueue: bool,
    /// The mask last asked for and not yet answered (or, in observe mode,
    /// never answered): not asked for again until something changes.
    pub requested: Option<CpuSet>,
    pub refused: Option<Refusal>,
    runtime: bool,
    /// The daemon set its mask (the kernel took one): it is handed back to
    /// the kernel when the daemon stops managing it.
    pub touched: bool,
    /// The mask that hands it back to the kernel without a `user_cpus_ptr`
    /// clip (`kernel_release`): known from the start for a kthread the
    /// kernel manages, else from the first mask the daemon sets (planning
    /// 10k kthreads computes none); None when the kernel is not known.
    pub release: Option<CpuSet>,
}

impl Entry {
    pub fn managed(&self) -> bool {
        self.state == State::Managed
    }

    pub fn pinned(&self) -> bool {
        self.state == State::Pinned
    }

    /// Where the policy puts it, as far as the daemon is concerned: its mask
    /// is the applied one, or the kernel manages it and it can run only where
    /// the policy puts it. `status`, `verify` and [`Engine::sync`] share this.
    pub fn in_place(&self, online: &CpuSet) -> bool {
        !self.managed()
            || self.applied == self.current
            || (self.kernel_managed && self.current.and(online) == self.applied)
    }

    /// What the eBPF programs judge its runs against, if anything.
    fn judged(&self) -> bool {
        self.managed()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A kthread appeared (or was found at start-up). Non-kthreads are ignored.
    KthreadNew(Kthread),
    /// It exited, or the executor found it gone (ESRCH, another start time).
    KthreadExit {
        pid: u32,
    },
    CpuOnline {
        cpu: u32,
        node: Option<u32>,
    },
    /// Teardown started: drop the CPU from every applied mask now.
    CpuOfflineBegin {
        cpu: u32,
    },
    CpuOfflineDone {
        cpu: u32,
    },
    /// The kernel's online set and CPU → node map, read from sysfs: the
    /// engine takes them as the truth, whatever events it has seen.
    Resync {
        online: CpuSet,
        nodes: BTreeMap<u32, CpuSet>,
    },
    HousekeepingChanged(CpuSet),
    /// Someone else changed a kthread's mask (or a rescan found it changed).
    AffinityChanged {
        pid: u32,
        mask: CpuSet,
        by_pid: Option<u32>,
        by_comm: Option<String>,
    },
    /// The kernel judged a run of `pid` on `cpu` a violation.
    Ran {
        pid: u32,
        comm: String,
        cpu: u32,
        run_ns: u64,
    },
    /// The executor set a mask; `mask` is what the kernel reports it has now.
    Applied {
        pid: u32,
        start_time: u64,
        requested: CpuSet,
        mask: CpuSet,
    },
    /// The kernel refused a mask (errno), for a reason that may pass.
    Refused {
        pid: u32,
        start_time: u64,
        mask: CpuSet,
        errno: i32,
        message: String,
    },
    /// The kernel refused because the kthread is PF_NO_SETAFFINITY now.
    Pinned {
        pid: u32,
        start_time: u64,
    },
    /// The kernel refused a mask with no CPU online by the time it was set:
    /// a hotplug step the daemon has not yet heard of overtook it, and that
    /// step's record will bring the next mask.
    Overtaken {
        pid: u32,
        start_time: u64,
    },
    /// A rescan tick: time for refused masks to be tried again.
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SetAffinity {
        pid: u32,
        start_time: u64,
        comm: String,
        mask: CpuSet,
    },
    /// What the programs judge `pid`'s runs against.
    SetPolicy {
        pid: u32,
        applied: CpuSet,
        preferred: Option<CpuSet>,
    },
    /// The programs stop judging `pid`.
    ClearPolicy {
        pid: u32,
    },
    ReportViolation {
        pid: u32,
        comm: String,
        cpu: u32,
        allowed: CpuSet,
        run_ns: u64,
    },
    ReportPinned {
        pid: u32,
        comm: String,
    },
    ReportKernelManaged {
        pid: u32,
        comm: String,
    },
    ReportFollowsIrq {
        pid: u32,
        comm: String,
        irq: u32,
    },
    /// An unbound workqueue worker (`kworker/u*`): pinned by the kernel to
    /// the workqueue cpumask, the lever `--irqs` steers; reported instead
    /// of `ReportPinned`.
    ReportFollowsWorkqueue {
        pid: u32,
        comm: String,
    },
    ReportAffinityChanged {
        pid: u32,
        comm: String,
        mask: CpuSet,
        by_pid: Option<u32>,
        by_comm: Option<String>,
    },
    /// The daemon's view differed from the kernel's and was corrected.
    ReportResync {
        what: String,
    },
    /// A mask was refused, or came back other than asked: said once per mask.
    ReportRefused {
        pid: u32,
        comm: String,
        mask: CpuSet,
        message: String,
    },
    /// The entry is gone; `comm` is set when it was managed (an exit to report).
    Forget {
        pid: u32,
        comm: Option<String>,
    },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RegistryError {
    #[error("{target} already has a runtime preference ({current}{}); pass --update to change it", via_note(.via))]
    AlreadyRegistered {
        target: String,
        current: String,
        /// The registration it comes from, when that is not `target` itself.
        via: Option<String>,
    },
    #[error("no kthread matches {0}")]
    NoSuchKthread(String),
    #[error("{target} is pinned by the kernel (PF_NO_SETAFFINITY): its affinity cannot be changed")]
    Pinned { target: String },
    #[error(
        "{target} is the thread of IRQ {irq}: its mask follows the IRQ's; steer the IRQ instead (an [[irq]] rule with --irqs, or /proc/irq/{irq}/smp_affinity_list)"
    )]
    FollowsIrq { target: String, irq: u32 },
    #[error("{0} has no runtime preference to remove")]
    NotRegistered(String),
    /// `unprefer khugepaged` after `prefer 'khuge*'`: the preference is the glob's.
    #[error(
        "{target}'s runtime preference comes from the registration {via:?}; remove it with `affinity unprefer '{via}'`"
    )]
    RegisteredVia { target: String, via: String },
    #[error("node {0} does not exist on this machine")]
    NoSuchNode(u32),
}

fn via_note(via: &Option<String>) -> String {
    via.as_ref()
        .map(|v| format!(", registered as {v:?}"))
        .unwrap_or_default()
}

/// A target as `affinity prefer`/`unprefer` take it: `1234`, `khuge*`.
pub fn cli_form(target: &Target) -> String {
    match target {
        Target::Pid(p) => p.to_string(),
        Target::Comm(c) => c.as_str().to_string(),
    }
}

/// An `affinity prefer` registration and who made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub rule: Rule,
    /// The client, as the control socket saw it (`uid 0, pid 4242`).
    pub by: String,
}

pub struct Engine {
    topology: Topology,
    housekeeping: CpuSet,
    rules: Vec<Rule>,
    /// `affinity prefer` registrations, tried before the config's rules.
    runtime: Vec<Registration>,
    entries: BTreeMap<u32, Entry>,
    /// The running kernel's release, for which kthreads it manages itself.
    kernel: Option<String>,
    /// Boot-time isolcpus and nohz_full: the kernel's own policy for a
    /// kthread, which a released one is handed back to.
    boot_isolated: CpuSet,
    boot_nohz_full: CpuSet,
}

impl Engine {
    pub fn new(topology: Topology, housekeeping: CpuSet, rules: Vec<Rule>) -> Engine {
        let width = topology.width;
        Engine {
            topology,
            housekeeping,
            rules,
            runtime: Vec::new(),
            entries: BTreeMap::new(),
            kernel: None,
            boot_isolated: CpuSet::empty(width),
            boot_nohz_full: CpuSet::empty(width),
        }
    }

    /// The boot-time isolation (`isolcpus=`, `nohz_full=`) the kernel's own
    /// kthread policy follows: what a kthread the daemon stops managing is
    /// handed back to.
    pub fn with_boot_isolation(mut self, isolated: &CpuSet, nohz_full: &CpuSet) -> Engine {
        self.boot_isolated = isolated.clone();
        self.boot_nohz_full = nohz_full.clone();
        self
    }

    fn release_mask(&self, comm: &str, flags: u32) -> Option<CpuSet> {
        let release = self.kernel.as_deref()?;
        let k = Kthread {
            pid: 0,
            comm: comm.to_string(),
            flags,
            start_time: 0,
            cpus_allowed: CpuSet::empty(self.topology.width),
        };
        let none = CpuSet::empty(self.topology.width);
        let iso = super::KernelIsolation {
            isolated: &self.boot_isolated,
            nohz_full: &self.boot_nohz_full,
            cpuset_isolated: &none,
        };
        Some(super::kernel_release(release, &k, &self.topology, &iso))
    }

    /// The kernel release whose own kthread management to report (6.14+).
    pub fn with_kernel(mut self, release: &str) -> Engine {
        self.kernel = Some(release.to_string());
        self
    }

    /// The kernel release given by [`Engine::with_kernel`].
    pub fn kernel(&self) -> Option<&str> {
        self.kernel.as_deref()
    }

    pub fn online(&self) -> &CpuSet {
        &self.topology.online
    }

    pub fn housekeeping(&self) -> &CpuSet {
        &self.housekeeping
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn entry(&self, pid: u32) -> Option<&Entry> {
        self.entries.get(&pid)
    }

    /// P(k): the preference's CPUs as the topology is now.
    fn preferred(&self, pref: &Preference, comm: &str) -> Option<CpuSet> {
        match pref {
            Preference::Cpus(s) => Some(s.clone()),
            Preference::Housekeeping => Some(self.housekeeping.clone()),
            Preference::Node(n) => self.topology.nodes.get(n).cloned(),
            Preference::OwnNode => {
                let digits = comm.len() - comm.trim_end_matches(|c: char| c.is_ascii_digit()).len();
                let node: u32 = comm[comm.len() - digits..].parse().ok()?;
                self.topology.nodes.get(&node).cloned()
            }
        }
    }

    /// P∩H∩O, else H∩O, else O.
    fn applied(&self, preferred: Option<&CpuSet>) -> CpuSet {
        let ho = self.housekeeping.and(&self.topology.online);
        if let Some(p) = preferred {
            let pho = p.and(&ho);
            if !pho.is_empty() {
                return pho;
            }
        }
        if !ho.is_empty() {
            ho
        } else {
            self.topology.online.clone()
        }
    }

    fn rule_for(&self, pid: u32, comm: &str) -> Option<(Rule, bool)> {
        if let Some(r) = self
            .runtime
            .iter()
            .find(|r| r.rule.target.matches(pid, comm))
        {
            return Some((r.rule.clone(), true));
        }
        self.rules
            .iter()
            .find(|r| r.target.matches(pid, comm))
            .map(|r| (r.clone(), false))
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::KthreadNew(k) => {
                if !k.is_kthread() {
                    return actions;
                }
                if let Some(old) = self.entries.get_mut(&k.pid)
                    && old.start_time == k.start_time
                    && old.pinned()
                {
                    // A pinned kthread renamed (kworkers take the name of
                    // the work they run): the kernel's still, nothing new.
                    old.comm = k.comm;
                    return actions;
                }
                if let Some(old) = self.entries.get(&k.pid)
                    && (old.start_time != k.start_time || old.comm != k.comm)
                {
                    // A reused pid, or a rename a rule may match differently:
                    // the old record goes, without an exit report.
                    self.entries.remove(&k.pid);
                    actions.push(Action::ClearPolicy { pid: k.pid });
                } else if self.entries.contains_key(&k.pid) {
                    return actions;
                }
                self.insert(k, &mut actions);
            }
            Event::KthreadExit { pid } => self.forget(pid, &mut actions),
            Event::CpuOnline { cpu, node } => {
                self.topology.online.insert(cpu);
                if let Some(n) = node {
                    self.place(cpu, n);
                }
                self.recompute_all(&mut actions);
            }
            Event::CpuOfflineBegin { cpu } | Event::CpuOfflineDone { cpu } => {
                self.topology.online.remove(cpu);
                self.recompute_all(&mut actions);
            }
            Event::Resync { online, nodes } => {
                let mut what = Vec::new();
                if online != self.topology.online {
                    what.push(format!(
                        "online CPUs are {online}, not {}",
                        self.topology.online
                    ));
                    self.topology.online = online;
                }
                for (n, cpus) in nodes {
                    let known = self
                        .topology
                        .nodes
                        .get(&n)
                        .cloned()
                        .unwrap_or_else(|| CpuSet::empty(self.topology.width));
                    let missing = cpus.and_not(&known);
                    if !missing.is_empty() {
                        what.push(format!("CPUs {missing} belong to node {n}"));
                        for cpu in missing.iter() {
                            self.place(cpu, n);
                        }
                    }
                }
                if !what.is_empty() {
                    actions.push(Action::ReportResync {
                        what: what.join("; "),
                    });
                    self.recompute_all(&mut actions);
                }
            }
            Event::HousekeepingChanged(h) => {
                self.housekeeping = h;
                self.recompute_all(&mut actions);
            }
            Event::AffinityChanged {
                pid,
                mask,
                by_pid,
                by_comm,
            } => {
                let Some(e) = self.entries.get_mut(&pid) else {
                    return actions;
                };
                if e.pinned() {
                    return actions;
                }
                let same = e.current == mask;
                e.current = mask.clone();
                if !e.managed() {
                    // Unmanaged: the new mask is simply what it has now.
                    e.applied = mask;
                    return actions;
                }
                // A call that changed nothing, or the kernel re-affining a
                // kthread it manages to where the policy puts it anyway
                // (every unbound one at each CPU online on 7.0): nothing
                // to say, nothing to do.
                if same || (e.kernel_managed && e.in_place(&self.topology.online)) {
                    return actions;
                }
                actions.push(Action::ReportAffinityChanged {
                    pid,
                    comm: e.comm.clone(),
                    mask,
                    by_pid,
                    by_comm,
                });
                // Put it back, even if the same mask was asked for before.
                e.requested = None;
                e.refused = None;
                Self::sync(e, &self.topology.online, &mut actions);
            }
            Event::Ran {
                pid,
                comm,
                cpu,
                run_ns,
            } => {
                // The kernel judged it against the policy for every online
                // set of the hotplug step: a report, whatever we think now.
                let (comm, allowed) = match self.entries.get(&pid) {
                    Some(e) if e.managed() => (e.comm.clone(), e.applied.clone()),
                    _ => (comm, self.applied(None)),
                };
                actions.push(Action::ReportViolation {
                    pid,
                    comm,
                    cpu,
                    allowed,
                    run_ns,
                });
            }
            Event::Applied {
                pid,
                start_time,
                requested,
                mask,
            } => {
                let release = self
                    .entries
                    .get(&pid)
                    .filter(|e| e.managed() && e.release.is_none())
                    .and_then(|e| self.release_mask(&e.comm, e.flags));
                let online = self.topology.online.clone();
                let Some(e) = self.entry_of(pid, start_time) else {
                    return actions;
                };
                if e.requested.as_ref() == Some(&requested) {
                    e.requested = None;
                }
                e.current = mask.clone();
                if !e.managed() {
                    // A release: whatever the kernel made of it is the
                    // kernel's now.
                    e.applied = mask;
                    return actions;
                }
                e.touched = true;
                if release.is_some() {
                    e.release = release;
                }
                if mask != requested && mask != e.applied {
                    // The kernel took another mask than asked (a cpuset
                    // narrowing it, say): said once, tried again later.
                    if e.refused.as_ref().map(|r| &r.mask) != Some(&requested) {
                        actions.push(Action::ReportRefused {
                            pid,
                            comm: e.comm.clone(),
                            mask: requested.clone(),
                            message: format!("the kernel set {mask} instead"),
                        });
                    }
                    e.refused = Some(Refusal {
                        mask: requested,
                        errno: 0,
                        backoff: 1,
                        wait: 1,
                    });
                    actions.push(Self::policy_while_refused(e));
                } else {
                    if e.refused.take().is_some() {
                        actions.push(Self::policy(e, &online));
                    }
                }
            }
            Event::Refused {
                pid,
                start_time,
                mask,
                errno,
                message,
            } => {
                let Some(e) = self.entry_of(pid, start_time) else {
                    return actions;
                };
                e.requested = None;
                if !e.managed() {
                    // A release refused: said, not retried; the mask is
                    // the kernel's to change now.
                    actions.push(Action::ReportRefused {
                        pid,
                        comm: e.comm.clone(),
                        mask,
                        message,
                    });
                    return actions;
                }
                let backoff = match &e.refused {
                    Some(r) if r.mask == mask => (r.backoff * 2).min(MAX_BACKOFF),
                    _ => {
                        actions.push(Action::ReportRefused {
                            pid,
                            comm: e.comm.clone(),
                            mask: mask.clone(),
                            message,
                        });
                        1
                    }
                };
                e.refused = Some(Refusal {
                    mask,
                    errno,
                    backoff,
                    wait: backoff,
                });
                actions.push(Self::policy_while_refused(e));
            }
            Event::Pinned { pid, start_time } => {
                let Some(e) = self.entry_of(pid, start_time) else {
                    return actions;
                };
                if !e.pinned() {
                    e.state = State::Pinned;
                    e.requested = None;
                    e.refused = None;
                    actions.push(Action::ClearPolicy { pid });
                    actions.push(Self::report_pinned(e));
                }
            }
            Event::Overtaken { pid, start_time } => {
                if let Some(e) = self.entry_of(pid, start_time) {
                    e.requested = None;
                }
            }
            Event::Tick => {
                for e in self.entries.values_mut() {
                    if let Some(r) = &mut e.refused {
                        r.wait = r.wait.saturating_sub(1);
                        if r.wait == 0 && e.state == State::Managed {
                            let mask = r.mask.clone();
                            e.requested = Some(mask.clone());
                            actions.push(Action::SetAffinity {
                                pid: e.pid,
                                start_time: e.start_time,
                                comm: e.comm.clone(),
                                mask,
                            });
                        }
                    }
                }
            }
        }
        actions
    }

    fn entry_of(&mut self, pid: u32, start_time: u64) -> Option<&mut Entry> {
        self.entries
            .get_mut(&pid)
            .filter(|e| e.start_time == start_time)
    }

    fn place(&mut self, cpu: u32, node: u32) {
        for (n, cpus) in self.topology.nodes.iter_mut() {
            if *n != node {
                cpus.remove(cpu);
            }
        }
        self.topology
            .nodes
            .entry(node)
            .or_insert_with(|| CpuSet::empty(self.topology.width))
            .insert(cpu);
    }

    fn forget(&mut self, pid: u32, actions: &mut Vec<Action>) {
        if let Some(e) = self.entries.remove(&pid) {
            actions.push(Action::ClearPolicy { pid });
            actions.push(Action::Forget {
                pid,
                comm: e.managed().then_some(e.comm),
            });
        }
    }

    /// Pinned, and what pins it: an unbound workqueue worker follows the
    /// workqueue cpumask (a lever the daemon has), any other is the kernel's.
    fn report_pinned(e: &Entry) -> Action {
        let (pid, comm) = (e.pid, e.comm.clone());
        if e.follows_workqueue {
            Action::ReportFollowsWorkqueue { pid, comm }
        } else {
            Action::ReportPinned { pid, comm }
        }
    }

    fn insert(&mut self, k: Kthread, actions: &mut Vec<Action>) {
        let rule = self.rule_for(k.pid, &k.comm);
        let follows_irq = k.follows_irq();
        let state = match (&rule, k.is_pinned() || follows_irq.is_some()) {
            (_, true) => State::Pinned,
            (Some(_), false) => State::Managed,
            (None, false) => State::Unmanaged,
        };
        let kernel_managed = !k.is_pinned()
            && follows_irq.is_none()
            && self
                .kernel
                .as_deref()
                .is_some_and(|r| kernel_manages_affinity(r, &k));
        let mut entry = Entry {
            pid: k.pid,
            comm: k.comm.clone(),
            start_time: k.start_time,
            flags: k.flags,
            state,
            rule: rule.as_ref().map(|(r, rt)| {
                if *rt {
                    "runtime".to_string()
                } else {
                    r.target.to_string()
                }
            }),
            preference: rule.as_ref().map(|(r, _)| r.prefer.clone()),
            preferred: None,
            applied: k.cpus_allowed.clone(),
            current: k.cpus_allowed.clone(),
            original: k.cpus_allowed.clone(),
            kernel_managed,
            follows_irq,
            follows_workqueue: k.follows_workqueue(),
            requested: None,
            refused: None,
            runtime: rule.as_ref().is_some_and(|(_, rt)| *rt),
            touched: false,
            release: if kernel_managed {
                self.release_mask(&k.comm, k.flags)
            } else {
                None
            },
        };
        if kernel_managed {
            actions.push(Action::ReportKernelManaged {
                pid: k.pid,
                comm: k.comm.clone(),
            });
        }
        if let Some(pref) = &entry.preference {
            entry.preferred = self.preferred(pref, &k.comm);
            if let Some(irq) = follows_irq {
                actions.push(Action::ReportFollowsIrq {
                    pid: k.pid,
                    comm: k.comm.clone(),
                    irq,
                });
            } else if entry.pinned() {
                actions.push(Self::report_pinned(&entry));
            } else {
                entry.applied = self.applied(entry.preferred.as_ref());
                actions.push(Self::policy(&entry, &self.topology.online));
            }
        }
        Self::sync(&mut entry, &self.topology.online, actions);
        self.entries.insert(k.pid, entry);
    }

    /// While the kernel refuses the applied mask (or sets another), the
    /// kthread runs where its mask really is: those runs are the refusal,
    /// reported once as `refused`, not a violation on every switch. (On
    /// 5.10 a CPU just online is not in the cpuset yet, so a mask set at the
    /// online step fails for a moment.) The applied mask comes back when the
    /// kernel takes it.
    fn policy_while_refused(e: &Entry) -> Action {
        Action::SetPolicy {
            pid: e.pid,
            applied: e.applied.or(&e.current),
            preferred: e.preferred.clone(),
        }
    }

    /// What the programs judge a kthread's runs against: its applied mask;
    /// for one the kernel manages and leaves in place across an offline
    /// step, the mask it really has too. Its mask keeps the departing CPU
    /// (the daemon does not narrow it), and until the teardown has
    /// deactivated that CPU the scheduler may still put it there: the
    /// kernel's business, not a violation. Once the CPU is gone it cannot
    /// run there anyway.
    fn policy(e: &Entry, online: &CpuSet) -> Action {
        let applied = if e.kernel_managed && e.in_place(online) {
            e.applied.or(&e.current)
        } else {
            e.applied.clone()
        };
        Action::SetPolicy {
            pid: e.pid,
            applied,
            preferred: e.preferred.clone(),
        }
    }

    /// Asks for the applied mask when the kthread does not have it and it
    /// has not been asked for already (or refused and not yet due again).
    ///
    /// A kthread the kernel manages itself (6.14+, all unbound ones on 7.0+)
    /// is left alone while it can run only where the policy puts it: the
    /// kernel keeps its mask across an offline step and re-affines it on
    /// online, and a mask set by us would stay behind as `user_cpus_ptr`,
    /// clipping the kernel's later choices. Only a preference that differs
    /// from the kernel's own result is set.
    ///
    /// A mask set here stays as `user_cpus_ptr` and clips the kernel's
    /// re-affines while the daemon manages the kthread; the daemon puts its
    /// own mask back after each of them, and hands the kthread back without
    /// a clip when it stops managing it (`release`).
    fn sync(e: &mut Entry, online: &CpuSet, actions: &mut Vec<Action>) {
        if e.in_place(online) {
            return;
        }
        let mask = e.applied.clone();
        if e.requested.as_ref() == Some(&mask) {
            return;
        }
        if e.refused.as_ref().is_some_and(|r| r.mask == mask) {
            return;
        }
        e.requested = Some(mask.clone());
        actions.push(Action::SetAffinity {
            pid: e.pid,
            start_time: e.start_time,
            comm: e.comm.clone(),
            mask,
        });
    }

    /// Hands a kthread the daemon stops managing back to the kernel: its
    /// release mask, if the daemon ever set one. Left where it is when the
    /// daemon never touched it, or the kernel is not known.
    fn release(e: &mut Entry, actions: &mut Vec<Action>) {
        if !e.touched {
            return;
        }
        let Some(mask) = e.release.clone() else {
            return;
        };
        e.touched = false;
        if e.current == mask {
            return;
        }
        e.requested = Some(mask.clone());
        actions.push(Action::SetAffinity {
            pid: e.pid,
            start_time: e.start_time,
            comm: e.comm.clone(),
            mask,
        });
    }

    fn recompute(&mut self, pid: u32, actions: &mut Vec<Action>) {
        let Some(e) = self.entries.get(&pid) else {
            return;
        };
        if !e.managed() {
            return;
        }
        let preferred = e
            .preference
            .as_ref()
            .and_then(|p| self.preferred(p, &e.comm));
        let applied = self.applied(preferred.as_ref());
        let Some(e) = self.entries.get_mut(&pid) else {
            return;
        };
        let online = &self.topology.online;
        let changed = e.preferred != preferred || e.applied != applied;
        e.preferred = preferred;
        e.applied = applied;
        if changed {
            // A new situation: a mask refused before may be taken now.
            e.refused = None;
            actions.push(Self::policy(e, online));
        }
        Self::sync(e, online, actions);
    }

    fn recompute_all(&mut self, actions: &mut Vec<Action>) {
        let pids: Vec<u32> = self
            .entries
            .values()
            .filter(|e| e.judged())
            .map(|e| e.pid)
            .collect();
        for pid in pids {
            self.recompute(pid, actions);
        }
    }

    /// Runtime registration (`affinity prefer`). Registering a kthread that
    /// already has a runtime preference fails unless `update` (the review's
    /// two points: no silent double registration, an explicit update).
    pub fn register(
        &mut self,
        target: Target,
        prefer: Preference,
        update: bool,
        by: &str,
    ) -> Result<Vec<Action>, RegistryError> {
        if let Preference::Node(n) = prefer
            && !self.topology.nodes.contains_key(&n)
        {
            return Err(RegistryError::NoSuchNode(n));
        }
        let pids: Vec<u32> = self
            .entries
            .values()
            .filter(|e| target.matches(e.pid, &e.comm))
            .map(|e| e.pid)
            .collect();
        if pids.is_empty() {
            return Err(RegistryError::NoSuchKthread(target.to_string()));
        }
        for pid in &pids {
            let e = &self.entries[pid];
            if let Some(irq) = e.follows_irq {
                return Err(RegistryError::FollowsIrq {
                    target: format!("{} ({})", e.comm, e.pid),
                    irq,
                });
            }
            if e.pinned() {
                return Err(RegistryError::Pinned {
                    target: format!("{} ({})", e.comm, e.pid),
                });
            }
            if e.runtime && !update {
                let current = e
                    .preference
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                let via = self
                    .registration_of(e.pid, &e.comm)
                    .filter(|t| **t != target)
                    .map(cli_form);
                return Err(RegistryError::AlreadyRegistered {
                    target: target.to_string(),
                    current,
                    via,
                });
            }
        }
        self.runtime.retain(|r| r.rule.target != target);
        self.runtime.insert(
            0,
            Registration {
                rule: Rule {
                    target,
                    prefer: prefer.clone(),
                },
                by: by.to_string(),
            },
        );
        let mut actions = Vec::new();
        for pid in pids {
            let Some(e) = self.entries.get_mut(&pid) else {
                continue;
            };
            e.preference = Some(prefer.clone());
            e.rule = Some("runtime".into());
            e.runtime = true;
            e.state = State::Managed;
            e.refused = None;
            // Forces a SetPolicy even if the applied mask stays the same.
            e.preferred = None;
            self.recompute(pid, &mut actions);
        }
        Ok(actions)
    }

    /// The kthreads whose mask the daemon set, away from their first mask:
    /// what a stopping daemon puts back (`--restore-on-exit`) or leaves for
    /// `affinity restore`. With each, the mask that puts it back: the release
    /// mask when its first mask was the kernel's own policy (on the CPUs
    /// online), so that no clip of ours stays; else the first mask, someone
    /// else's choice.
    pub fn handed_back(&self) -> impl Iterator<Item = (&Entry, CpuSet)> + '_ {
        let online = &self.topology.online;
        self.entries
            .values()
            .filter(|e| e.managed() && e.touched && e.current != e.original)
            .map(move |e| {
                let mask = match &e.release {
                    Some(r) if r.and(online) == e.original.and(online) => r.clone(),
                    _ => e.original.clone(),
                };
                (e, mask)
            })
    }

    /// `pid`'s mask as just read from the kernel, taken as its current one
    /// without judging it (the caller judges after what comes next).
    pub fn observed(&mut self, pid: u32, mask: CpuSet) {
        if let Some(e) = self.entries.get_mut(&pid) {
            e.current = mask;
        }
    }

    /// The runtime registration that gives `pid` its preference, if any.
    pub fn registration_of(&self, pid: u32, comm: &str) -> Option<&Target> {
        self.runtime
            .iter()
            .find(|r| r.rule.target.matches(pid, comm))
            .map(|r| &r.rule.target)
    }

    /// Runtime registrations, the one tried first first.
    pub fn registrations(&self) -> &[Registration] {
        &self.runtime
    }

    /// Drops a runtime preference; the config's rule (if any) applies again.
    pub fn unregister(&mut self, target: &Target) -> Result<Vec<Action>, RegistryError> {
        let before = self.runtime.len();
        self.runtime.retain(|r| &r.rule.target != target);
        if before == self.runtime.len() {
            // The same kthreads `prefer` would call registered: say which
            // registration holds them rather than that there is none.
            let via = self
                .entries
                .values()
                .filter(|e| e.runtime && target.matches(e.pid, &e.comm))
                .find_map(|e| self.registration_of(e.pid, &e.comm));
            return Err(match via {
                Some(via) => RegistryError::RegisteredVia {
                    target: target.to_string(),
                    via: cli_form(via),
                },
                None => RegistryError::NotRegistered(target.to_string()),
            });
        }
        let pids: Vec<u32> = self
            .entries
            .values()
            .filter(|e| e.runtime && target.matches(e.pid, &e.comm))
            .map(|e| e.pid)
            .collect();
        let mut actions = Vec::new();
        for pid in pids {
            self.rematch(pid, &mut actions);
        }
        Ok(actions)
    }

    /// The rules file's rules replaced (SIGHUP, `affinity reload`): only
    /// kthreads whose rule or preference changes are touched. Runtime
    /// registrations stay first. Returns the actions and how many kthreads
    /// changed.
    pub fn replace_rules(&mut self, rules: Vec<Rule>) -> (Vec<Action>, usize) {
        self.rules = rules;
        let changed: Vec<u32> = self
            .entries
            .values()
            .filter(|e| !e.pinned())
            .filter(|e| {
                let (label, preference) = Self::labelled(self.rule_for(e.pid, &e.comm));
                label != e.rule || preference != e.preference
            })
            .map(|e| e.pid)
            .collect();
        let mut actions = Vec::new();
        for &pid in &changed {
            self.rematch(pid, &mut actions);
        }
        (actions, changed.len())
    }

    /// A rule's label as an entry shows it (`runtime` for a registration)
    /// and its preference.
    fn labelled(rule: Option<(Rule, bool)>) -> (Option<String>, Option<Preference>) {
        match rule {
            Some((r, true)) => (Some("runtime".into()), Some(r.prefer)),
            Some((r, false)) => (Some(r.target.to_string()), Some(r.prefer)),
            None => (None, None),
        }
    }

    /// Matches `pid` against the registrations and rules again and moves it
    /// to what the match says: managed with a new preference, or unmanaged
    /// (its mask left where it is).
    fn rematch(&mut self, pid: u32, actions: &mut Vec<Action>) {
        let Some(comm) = self.entries.get(&pid).map(|e| e.comm.clone()) else {
            return;
        };
        let rule = self.rule_for(pid, &comm);
        let runtime = rule.as_ref().is_some_and(|(_, rt)| *rt);
        let (label, preference) = Self::labelled(rule);
        let Some(e) = self.entries.get_mut(&pid) else {
            return;
        };
        if e.pinned() {
            return;
        }
        e.runtime = runtime;
        e.rule = label;
        e.preference = preference;
        e.refused = None;
        if e.preference.is_none() {
            let was_managed = e.managed();
            // Unmanaged again: back to the kernel's policy, with no clip
            // of ours left on what the kernel does next.
            e.state = State::Unmanaged;
            e.preferred = None;
            e.applied = e.current.clone();
            e.requested = None;
            if was_managed {
                actions.push(Action::ClearPolicy { pid });
                Self::release(e, actions);
            }
        } else {
            e.state = State::Managed;
            // Forces a SetPolicy even if the applied mask stays the same.
            e.preferred = None;
        }
        self.recompute(pid, actions);
    }
}
