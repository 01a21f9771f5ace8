//! The policy engine: `handle(event) -> actions`, no I/O.
//!
//! For a registered kthread with preferred CPUs P, housekeeping H and online
//! CPUs O the applied mask is P∩H∩O, else H∩O, else O (DESIGN.md), and it is
//! recomputed on every hotplug, housekeeping and registry change.

use std::collections::BTreeMap;

use thiserror::Error;

use super::{CpuSet, Kthread, Preference, Rule, Target};

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
}

/// A kthread the engine knows about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pid: u32,
    pub comm: String,
    pub start_time: u64,
    /// What gave it its preference: the rule's match (`kswapd*`, `pid 45`)
    /// or `runtime`; None when no rule matched (unmanaged).
    pub rule: Option<String>,
    pub preference: Option<Preference>,
    /// P(k) resolved against the topology now.
    pub preferred: Option<CpuSet>,
    pub applied: CpuSet,
    /// The mask the kthread has, as far as we know.
    pub current: CpuSet,
    pub pinned: bool,
    runtime: bool,
}

impl Entry {
    pub fn managed(&self) -> bool {
        self.preference.is_some() && !self.pinned
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A kthread appeared (or was found at start-up). Non-kthreads are ignored.
    KthreadNew(Kthread),
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
    HousekeepingChanged(CpuSet),
    /// Someone else changed a kthread's mask.
    AffinityChanged {
        pid: u32,
        mask: CpuSet,
        by_pid: Option<u32>,
        by_comm: Option<String>,
    },
    /// The kthread was seen running on `cpu` (the kernel already filtered).
    Ran {
        pid: u32,
        cpu: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SetAffinity {
        pid: u32,
        start_time: u64,
        comm: String,
        mask: CpuSet,
    },
    ReportViolation {
        pid: u32,
        comm: String,
        cpu: u32,
        allowed: CpuSet,
    },
    ReportPinned {
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
    Forget {
        pid: u32,
    },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RegistryError {
    #[error("{target} already has a runtime preference ({current}); pass --update to change it")]
    AlreadyRegistered { target: String, current: String },
    #[error("no kthread matches {0}")]
    NoSuchKthread(String),
    #[error("{target} is pinned by the kernel (PF_NO_SETAFFINITY): its affinity cannot be changed")]
    Pinned { target: String },
    #[error("{0} has no runtime preference to remove")]
    NotRegistered(String),
    #[error("node {0} does not exist on this machine")]
    NoSuchNode(u32),
}

pub struct Engine {
    topology: Topology,
    housekeeping: CpuSet,
    rules: Vec<Rule>,
    /// `affinity prefer` registrations, tried before the config's rules.
    runtime: Vec<Rule>,
    entries: BTreeMap<u32, Entry>,
}

impl Engine {
    pub fn new(topology: Topology, housekeeping: CpuSet, rules: Vec<Rule>) -> Engine {
        Engine {
            topology,
            housekeeping,
            rules,
            runtime: Vec::new(),
            entries: BTreeMap::new(),
        }
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
        if let Some(r) = self.runtime.iter().find(|r| r.target.matches(pid, comm)) {
            return Some((r.clone(), true));
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
                if let Some(old) = self.entries.get(&k.pid)
                    && old.start_time != k.start_time
                {
                    self.entries.remove(&k.pid);
                    actions.push(Action::Forget { pid: k.pid });
                }
                self.insert(k, &mut actions);
            }
            Event::KthreadExit { pid } => {
                if self.entries.remove(&pid).is_some() {
                    actions.push(Action::Forget { pid });
                }
            }
            Event::CpuOnline { cpu, node } => {
                self.topology.online.insert(cpu);
                if let Some(n) = node {
                    self.topology
                        .nodes
                        .entry(n)
                        .or_insert_with(|| CpuSet::empty(self.topology.width))
                        .insert(cpu);
                }
                self.recompute_all(&mut actions);
            }
            Event::CpuOfflineBegin { cpu } | Event::CpuOfflineDone { cpu } => {
                self.topology.online.remove(cpu);
                self.recompute_all(&mut actions);
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
                if e.pinned {
                    return actions;
                }
                e.current = mask.clone();
                if e.preference.is_none() {
                    // Unmanaged: the new mask is simply what it has now.
                    e.applied = mask;
                    return actions;
                }
                actions.push(Action::ReportAffinityChanged {
                    pid,
                    comm: e.comm.clone(),
                    mask: mask.clone(),
                    by_pid,
                    by_comm,
                });
                if mask != e.applied {
                    e.current = e.applied.clone();
                    actions.push(Action::SetAffinity {
                        pid,
                        start_time: e.start_time,
                        comm: e.comm.clone(),
                        mask: e.applied.clone(),
                    });
                }
            }
            Event::Ran { pid, cpu } => {
                if let Some(e) = self.entries.get(&pid)
                    && e.managed()
                    && !e.applied.contains(cpu)
                {
                    actions.push(Action::ReportViolation {
                        pid,
                        comm: e.comm.clone(),
                        cpu,
                        allowed: e.applied.clone(),
                    });
                }
            }
        }
        actions
    }

    fn insert(&mut self, k: Kthread, actions: &mut Vec<Action>) {
        let pinned = k.is_pinned();
        let rule = self.rule_for(k.pid, &k.comm);
        let mut entry = Entry {
            pid: k.pid,
            comm: k.comm.clone(),
            start_time: k.start_time,
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
            pinned,
            runtime: rule.as_ref().is_some_and(|(_, rt)| *rt),
        };
        if let Some(pref) = &entry.preference {
            entry.preferred = self.preferred(pref, &k.comm);
            if pinned {
                actions.push(Action::ReportPinned {
                    pid: k.pid,
                    comm: k.comm.clone(),
                });
            } else {
                entry.applied = self.applied(entry.preferred.as_ref());
            }
        }
        Self::sync(&mut entry, actions);
        self.entries.insert(k.pid, entry);
    }

    /// Emits a SetAffinity when the applied mask differs from the current one.
    fn sync(e: &mut Entry, actions: &mut Vec<Action>) {
        if e.managed() && e.applied != e.current {
            e.current = e.applied.clone();
            actions.push(Action::SetAffinity {
                pid: e.pid,
                start_time: e.start_time,
                comm: e.comm.clone(),
                mask: e.applied.clone(),
            });
        }
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
        let e = self.entries.get_mut(&pid).expect("checked above");
        e.preferred = preferred;
        e.applied = applied;
        Self::sync(e, actions);
    }

    fn recompute_all(&mut self, actions: &mut Vec<Action>) {
        let pids: Vec<u32> = self.entries.keys().copied().collect();
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
            if e.pinned {
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
                return Err(RegistryError::AlreadyRegistered {
                    target: target.to_string(),
                    current,
                });
            }
        }
        self.runtime.retain(|r| r.target != target);
        self.runtime.insert(
            0,
            Rule {
                target,
                prefer: prefer.clone(),
            },
        );
        let mut actions = Vec::new();
        for pid in pids {
            let e = self.entries.get_mut(&pid).expect("listed above");
            e.preference = Some(prefer.clone());
            e.rule = Some("runtime".into());
            e.runtime = true;
            self.recompute(pid, &mut actions);
        }
        Ok(actions)
    }

    /// Drops a runtime preference; the config's rule (if any) applies again.
    pub fn unregister(&mut self, target: &Target) -> Result<Vec<Action>, RegistryError> {
        let before = self.runtime.len();
        self.runtime.retain(|r| &r.target != target);
        if before == self.runtime.len() {
            return Err(RegistryError::NotRegistered(target.to_string()));
        }
        let pids: Vec<u32> = self
            .entries
            .values()
            .filter(|e| e.runtime && target.matches(e.pid, &e.comm))
            .map(|e| e.pid)
            .collect();
        let mut actions = Vec::new();
        for pid in pids {
            let (comm, current) = {
                let e = &self.entries[&pid];
                (e.comm.clone(), e.current.clone())
            };
            let rule = self.rule_for(pid, &comm);
            let e = self.entries.get_mut(&pid).expect("listed above");
            e.runtime = rule.as_ref().is_some_and(|(_, rt)| *rt);
            e.rule = rule.as_ref().map(|(r, rt)| {
                if *rt {
                    "runtime".into()
                } else {
                    r.target.to_string()
                }
            });
            e.preference = rule.map(|(r, _)| r.prefer);
            if e.preference.is_none() {
                // Unmanaged again: leave its mask where it is.
                e.preferred = None;
                e.applied = current;
            }
            self.recompute(pid, &mut actions);
        }
        Ok(actions)
    }
}
