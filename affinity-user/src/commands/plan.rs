//! `affinity plan`: what the policy would do, on this machine or a
//! snapshot, optionally after hypothetical hotplug or isolation.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    daemon::control::SteerFile,
    input::BadInput,
    kernel::sysfs::{self, Machine},
    policy::{
        Action, Config, CpuSet, Engine, Event, MaskFile, SteerAction, SteerEngine, SteerEvent,
        Topology,
    },
};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Plan for the machine in this snapshot (from `affinity snapshot`) instead of this one.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Rules file; the embedded default without it.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Suppose these CPUs come online.
    #[arg(long, value_name = "CPULIST")]
    pub online: Option<String>,
    /// Suppose these CPUs go offline.
    #[arg(long, value_name = "CPULIST")]
    pub offline: Option<String>,
    /// Suppose these CPUs are isolated (leave housekeeping).
    #[arg(long, value_name = "CPULIST")]
    pub isolate: Option<String>,
    /// Suppose exactly these CPUs are housekeeping.
    #[arg(long, value_name = "CPULIST")]
    pub housekeeping: Option<String>,
    #[command(flatten)]
    pub output: super::OutputArgs,
    #[command(flatten)]
    pub roots: super::Roots,
}

/// What the policy would do to a kthread; serialised as `set`, `keep`,
/// `pinned`, `follows_irq` (an IRQ thread, moved with its IRQ),
/// `follows_workqueue` (an unbound kworker, moved with the workqueue
/// cpumask) or `unmanaged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanAction {
    Set,
    Keep,
    Pinned,
    FollowsIrq,
    FollowsWorkqueue,
    Unmanaged,
}

impl std::fmt::Display for PlanAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlanAction::Set => "set",
            PlanAction::Keep => "keep",
            PlanAction::Pinned => "pinned",
            PlanAction::FollowsIrq => "follows_irq",
            PlanAction::FollowsWorkqueue => "follows_workqueue",
            PlanAction::Unmanaged => "unmanaged",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanRow {
    pub pid: u32,
    pub comm: String,
    pub rule: Option<String>,
    pub preferred: Option<String>,
    pub applied: String,
    pub current: String,
    pub action: PlanAction,
    #[serde(skip)]
    pub pinned: bool,
    #[serde(skip)]
    pub kernel_managed: bool,
    /// An IRQ thread: its mask is IRQ N's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follows_irq: Option<u32>,
    /// An unbound workqueue worker: its CPUs are the workqueue cpumask.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub follows_workqueue: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub online: String,
    pub housekeeping: String,
    pub kthreads: Vec<PlanRow>,
    /// What `run --irqs` would do to the IRQs, the default IRQ affinity and
    /// the workqueue cpumasks (none known: absent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steering: Vec<SteerRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SteerRow {
    pub file: SteerFile,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub irq: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// A named workqueue's name (none: the global workqueue cpumask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workqueue: Option<String>,
    pub rule: Option<String>,
    pub applied: String,
    pub current: String,
    /// `set` or `keep`.
    pub action: PlanAction,
}

impl SteerRow {
    /// As the live report names it.
    fn what(&self) -> String {
        self.file
            .what(self.irq, &self.actions, self.workqueue.as_deref())
    }
}

/// What the steering engine asks for on `machine`'s masks, as `run --irqs`
/// would at start-up (the kernel's answers, such as a managed IRQ's
/// refusal, cannot be known here).
fn steering(machine: &Machine, config: &Config, topology: Topology, hk: CpuSet) -> Vec<SteerRow> {
    let mut engine = SteerEngine::new(topology, hk, config.irq.clone())
        .with_workqueue_rules(config.workqueue.clone());
    let writes: HashSet<MaskFile> = engine
        .handle(SteerEvent::Scan(machine.steering.clone()))
        .into_iter()
        .filter_map(|a| match a {
            SteerAction::Write { file, .. } => Some(file),
            _ => None,
        })
        .collect();
    engine
        .entries()
        .map(|e| {
            let (file, irq, workqueue) = SteerFile::of(e.file);
            SteerRow {
                file,
                irq,
                actions: e.actions.clone(),
                workqueue,
                rule: e.rule.clone(),
                applied: e.desired.to_string(),
                current: e.current.to_string(),
                action: if writes.contains(&e.file) {
                    PlanAction::Set
                } else {
                    PlanAction::Keep
                },
            }
        })
        .collect()
}

/// Hypothetical changes applied before planning.
#[derive(Debug, Default, Clone)]
pub struct WhatIf {
    pub online: Option<CpuSet>,
    pub offline: Option<CpuSet>,
    pub isolate: Option<CpuSet>,
    pub housekeeping: Option<CpuSet>,
}

fn housekeeping_of(machine: &Machine, config: &Config, what_if: &WhatIf) -> CpuSet {
    let mut hk = what_if
        .housekeeping
        .clone()
        .unwrap_or_else(|| machine.housekeeping(&config.housekeeping));
    if let Some(iso) = &what_if.isolate {
        hk = hk.and_not(iso);
    }
    hk
}

/// The policy's verdict for every kthread of `machine`. Pure: the machine
/// may be a snapshot of another host.
pub fn plan(machine: &Machine, config: &Config, what_if: &WhatIf) -> Plan {
    let mut topology = machine.topology.clone();
    if let Some(on) = &what_if.online {
        topology.online = topology.online.or(on);
    }
    if let Some(off) = &what_if.offline {
        topology.online = topology.online.and_not(off);
    }
    let hk = housekeeping_of(machine, config, what_if);
    let online = topology.online.to_string();
    let steering = steering(machine, config, topology.clone(), hk.clone());
    let mut engine = Engine::new(topology, hk.clone(), config.rules.clone())
        .with_kernel(&machine.kernel)
        .with_boot_isolation(&machine.isolated, &machine.nohz_full);
    let current: HashMap<u32, String> = machine
        .kthreads
        .iter()
        .map(|k| (k.pid, k.cpus_allowed.to_string()))
        .collect();
    // What the daemon would set is what its engine asks for: the plan
    // makes no second judgement (a kthread the kernel manages keeps its
    // mask while it can run only where the policy puts it).
    let mut sets = HashSet::new();
    for k in &machine.kthreads {
        for a in engine.handle(Event::KthreadNew(k.clone())) {
            if let Action::SetAffinity { pid, .. } = a {
                sets.insert(pid);
            }
        }
    }
    let kthreads = engine
        .entries()
        .map(|e| {
            let current = current.get(&e.pid).cloned().unwrap_or_default();
            let (applied, action) = if e.follows_irq.is_some() {
                (current.clone(), PlanAction::FollowsIrq)
            } else if e.follows_workqueue {
                (current.clone(), PlanAction::FollowsWorkqueue)
            } else if e.pinned() {
                (current.clone(), PlanAction::Pinned)
            } else if e.preference.is_none() {
                (current.clone(), PlanAction::Unmanaged)
            } else {
                let action = if sets.contains(&e.pid) {
                    PlanAction::Set
                } else {
                    PlanAction::Keep
                };
                (e.applied.to_string(), action)
            };
            PlanRow {
                pid: e.pid,
                comm: e.comm.clone(),
                rule: e.rule.clone(),
                preferred: e
                    .preferred
                    .as_ref()
                    .filter(|_| !e.pinned())
                    .map(ToString::to_string),
                applied,
                current,
                action,
                pinned: e.pinned(),
                kernel_managed: e.kernel_managed,
                follows_irq: e.follows_irq,
                follows_workqueue: e.follows_workqueue,
            }
        })
        .collect();
    Plan {
        online,
        housekeeping: hk.to_string(),
        kthreads,
        steering,
    }
}

fn cpus(flag: &str, list: &Option<String>, machine: &Machine) -> Result<Option<CpuSet>> {
    let Some(list) = list else { return Ok(None) };
    let set = CpuSet::parse(list, machine.topology.width)
        .map_err(|e| BadInput::err(format!("--{flag}: {e}")))?;
    let impossible = set.and_not(&machine.topology.possible);
    if !impossible.is_empty() {
        return Err(BadInput::err(format!(
            "--{flag}: CPUs {impossible} do not exist (possible: {})",
            machine.topology.possible
        )));
    }
    Ok(Some(set))
}

/// Reads the machine (or snapshot), config and what-ifs shared by plan and status.
pub fn load(
    snapshot: Option<&PathBuf>,
    config: Option<&PathBuf>,
    sys: &std::path::Path,
    proc: &std::path::Path,
) -> Result<(Machine, Config)> {
    let machine = match snapshot {
        Some(path) => Machine::from_snapshot_file(path)?,
        None => Machine::read(sys, proc).context("reading this machine's state")?,
    };
    let config = match config {
        Some(path) => sysfs::load_config(path, &machine.topology)?,
        None => Config::embedded_default(),
    };
    Ok((machine, config))
}

pub fn run(args: PlanArgs) -> Result<ExitCode> {
    let (machine, config) = load(
        args.snapshot.as_ref(),
        args.config.as_ref(),
        &args.roots.sys,
        &args.roots.proc,
    )?;
    let what_if = WhatIf {
        online: cpus("online", &args.online, &machine)?,
        offline: cpus("offline", &args.offline, &machine)?,
        isolate: cpus("isolate", &args.isolate, &machine)?,
        housekeeping: cpus("housekeeping", &args.housekeeping, &machine)?,
    };
    if let Some(off) = &what_if.offline {
        let online = machine
            .topology
            .online
            .or(what_if.online.as_ref().unwrap_or(&CpuSet::empty(1)));
        if online.and_not(off).is_empty() {
            return Err(BadInput::err(format!(
                "--offline {off}: that would leave no CPU online"
            )));
        }
    }
    // The rule shared with `run`: flags that leave no online housekeeping
    // CPU are a mistake (exit 2); a config or kernel that does is warned
    // about, since kthreads then fall back to all online CPUs.
    let mut online = machine.topology.online.clone();
    if let Some(on) = &what_if.online {
        online = online.or(on);
    }
    if let Some(off) = &what_if.offline {
        online = online.and_not(off);
    }
    if housekeeping_of(&machine, &config, &what_if)
        .and(&online)
        .is_empty()
    {
        if what_if.housekeeping.is_some() || what_if.isolate.is_some() {
            return Err(BadInput::err(
                "--housekeeping/--isolate: that leaves no online housekeeping CPU (kthreads would have nowhere preferred to run)",
            ));
        }
        eprintln!(
            "affinity: warning: no online housekeeping CPU; kthreads fall back to all online CPUs"
        );
    }
    let plan = plan(&machine, &config, &what_if);
    if args.output.is_json() {
        super::print_json(&plan)?;
    } else {
        print!("{}", table(&plan));
    }
    Ok(ExitCode::SUCCESS)
}

/// An aligned table: one line per kthread, changes first.
pub fn table(plan: &Plan) -> String {
    let mut rows: Vec<[String; 7]> = vec![
        [
            "PID",
            "COMM",
            "RULE",
            "PREFERRED",
            "APPLIED",
            "CURRENT",
            "ACTION",
        ]
        .map(String::from),
    ];
    let mut sorted: Vec<&PlanRow> = plan.kthreads.iter().collect();
    sorted.sort_by_key(|r| (r.action != PlanAction::Set, r.pid));
    for r in sorted {
        rows.push([
            r.pid.to_string(),
            r.comm.clone(),
            r.rule.clone().unwrap_or_else(|| "-".into()),
            r.preferred.clone().unwrap_or_else(|| "-".into()),
            r.applied.clone(),
            r.current.clone(),
            r.action.to_string(),
        ]);
    }
    let mut out = format!(
        "online {}, housekeeping {}\n",
        plan.online, plan.housekeeping
    );
    out.push_str(&align(&rows));
    let changes = plan
        .kthreads
        .iter()
        .filter(|r| r.action == PlanAction::Set)
        .count();
    let _ = writeln!(
        out,
        "{changes} of {} kthreads would change",
        plan.kthreads.len()
    );
    if !plan.steering.is_empty() {
        out.push_str(&steer_table(&plan.steering));
    }
    out
}

/// The masks `run --irqs` keeps, changes first, then in file order.
pub fn steer_table(steering: &[SteerRow]) -> String {
    let mut rows: Vec<[String; 5]> =
        vec![["MASK (with --irqs)", "RULE", "APPLIED", "CURRENT", "ACTION"].map(String::from)];
    let mut sorted: Vec<&SteerRow> = steering.iter().collect();
    sorted.sort_by_key(|r| r.action != PlanAction::Set);
    for r in sorted {
        rows.push([
            r.what(),
            r.rule.clone().unwrap_or_else(|| "-".into()),
            r.applied.clone(),
            r.current.clone(),
            r.action.to_string(),
        ]);
    }
    let changes = steering
        .iter()
        .filter(|r| r.action == PlanAction::Set)
        .count();
    let mut out = align(&rows);
    let _ = writeln!(
        out,
        "{changes} of {} masks would change with --irqs",
        steering.len()
    );
    out
}

pub fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
