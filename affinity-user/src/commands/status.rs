//! `affinity status`: every kthread with its preferred, applied and current
//! mask, and who manages its affinity on this kernel. `affinity verify`: the
//! same verdict as an exit code (0 all in place, 1 drift), like `tuned-adm verify`.
//!
//! Both ask the running daemon for its live registry (runtime registrations
//! included) when one answers on the control socket; with `--config` or
//! `--local`, or when no daemon runs, they compute the view here from the
//! rules file, and say which it is.

use std::{
    io::ErrorKind,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result};
use serde::Serialize;

use super::plan::{PlanAction, PlanRow, SteerRow, WhatIf, align, load, plan, steer_table};
use crate::daemon::{
    control::{self, LiveKthread, LiveRegistration, LiveSteer, LiveView, Request},
    noise::CpuNoise,
};
use crate::policy::SteerState;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Compute the view here from this rules file instead of asking the daemon.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Compute the view here (from the embedded default without --config),
    /// even when a daemon runs.
    #[arg(long)]
    pub local: bool,
    /// Control socket of the running daemon.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub output: super::OutputArgs,
    #[command(flatten)]
    pub roots: super::Roots,
}

/// Who manages a kthread's affinity; the same words in human and JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagedBy {
    KernelPinned,
    KernelPreferred,
    /// An IRQ thread: its mask is its IRQ's (`follows_irq` names it).
    FollowsIrq,
    /// An unbound kworker: its CPUs are the workqueue cpumask.
    FollowsWorkqueue,
    Affinity,
    Nobody,
}

impl ManagedBy {
    fn of(r: &PlanRow) -> Self {
        if r.follows_irq.is_some() {
            ManagedBy::FollowsIrq
        } else if r.follows_workqueue {
            ManagedBy::FollowsWorkqueue
        } else if r.pinned {
            ManagedBy::KernelPinned
        } else if r.kernel_managed {
            ManagedBy::KernelPreferred
        } else if r.rule.is_some() {
            ManagedBy::Affinity
        } else {
            ManagedBy::Nobody
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ManagedBy::KernelPinned => "kernel_pinned",
            ManagedBy::KernelPreferred => "kernel_preferred",
            ManagedBy::FollowsIrq => "follows_irq",
            ManagedBy::FollowsWorkqueue => "follows_workqueue",
            ManagedBy::Affinity => "affinity",
            ManagedBy::Nobody => "nobody",
        }
    }
}

#[derive(Serialize)]
struct StatusRow {
    #[serde(flatten)]
    row: PlanRow,
    managed_by: ManagedBy,
    drift: bool,
    /// The kernel refused the applied mask with this errno (daemon view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    refused_errno: Option<i32>,
}

/// Where the view comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Source {
    /// The running daemon's registry, over the control socket.
    Daemon,
    /// Computed here from the rules file.
    Local,
}

#[derive(Serialize)]
struct Status {
    kernel: String,
    online: String,
    housekeeping: String,
    source: Source,
    daemon_running: bool,
    /// The daemon runs with `--observe` and sets nothing.
    observe: bool,
    drift: usize,
    kthreads: Vec<StatusRow>,
    /// `affinity prefer` registrations (daemon view only).
    registrations: Vec<LiveRegistration>,
    /// The daemon's last noise interval per watched CPU (daemon view only).
    noise: Vec<CpuNoise>,
    /// Why a running daemon was not asked, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// The IRQs, default IRQ affinity and workqueue cpumasks: what `run
    /// --irqs` puts them on (local), or what the daemon keeps them on and
    /// their state (a daemon run with --irqs). Not counted as drift, which
    /// is the kthreads'.
    #[serde(skip_serializing_if = "Steering::is_empty")]
    steering: Steering,
}

/// The steering rows of either view, serialised as a list.
#[derive(Serialize)]
#[serde(untagged)]
enum Steering {
    Local(Vec<SteerRow>),
    Daemon(Vec<LiveSteer>),
}

impl Steering {
    fn is_empty(&self) -> bool {
        match self {
            Steering::Local(rows) => rows.is_empty(),
            Steering::Daemon(rows) => rows.is_empty(),
        }
    }
}

/// The daemon's steering, changes (anything not in place) first.
fn live_steer_table(rows: &[LiveSteer]) -> String {
    let mut table = vec![
        [
            "MASK (--irqs)",
            "RULE",
            "APPLIED",
            "CURRENT",
            "EFFECTIVE",
            "STATE",
        ]
        .map(String::from),
    ];
    let mut sorted: Vec<&LiveSteer> = rows.iter().collect();
    sorted.sort_by_key(|r| r.state == SteerState::Steered);
    for r in sorted {
        table.push([
            r.file.what(r.irq, &r.actions, r.workqueue.as_deref()),
            r.rule.clone().unwrap_or_else(|| "-".into()),
            r.applied.clone(),
            r.current.clone(),
            r.effective.clone().unwrap_or_else(|| "-".into()),
            r.state.as_str().into(),
        ]);
    }
    align(&table)
}

/// Whether a daemon listens on `socket`: Ok(true) it answers, Ok(false)
/// nothing there, Err why it could not be told (permission, say).
fn probe(socket: &Path) -> std::io::Result<bool> {
    match UnixStream::connect(socket) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn ask(socket: &Path) -> Result<LiveView> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let response = rt.block_on(control::call(socket, &Request::Status))?;
    match response.view {
        Some(view) if response.ok => Ok(*view),
        _ => anyhow::bail!(
            "the daemon on {} did not send its registry: {}",
            socket.display(),
            response.message
        ),
    }
}

fn row_of(k: LiveKthread) -> StatusRow {
    let action = if k.follows_irq.is_some() {
        PlanAction::FollowsIrq
    } else if k.follows_workqueue {
        PlanAction::FollowsWorkqueue
    } else if k.pinned {
        PlanAction::Pinned
    } else if k.rule.is_none() {
        PlanAction::Unmanaged
    } else if k.drift {
        PlanAction::Set
    } else {
        PlanAction::Keep
    };
    let row = PlanRow {
        pid: k.pid,
        comm: k.comm,
        rule: k.rule,
        preferred: k.preferred.filter(|_| !k.pinned),
        applied: k.applied,
        current: k.current,
        action,
        pinned: k.pinned,
        kernel_managed: k.kernel_managed,
        follows_irq: k.follows_irq,
        follows_workqueue: k.follows_workqueue,
    };
    StatusRow {
        managed_by: ManagedBy::of(&row),
        drift: k.drift,
        refused_errno: k.refused_errno,
        row,
    }
}

fn from_daemon(v: LiveView) -> Status {
    let kthreads: Vec<_> = v.kthreads.into_iter().map(row_of).collect();
    Status {
        kernel: v.kernel,
        online: v.online,
        housekeeping: v.housekeeping,
        source: Source::Daemon,
        daemon_running: true,
        observe: v.observe,
        drift: kthreads.iter().filter(|r| r.drift).count(),
        kthreads,
        registrations: v.registrations,
        noise: v.noise,
        note: None,
        steering: Steering::Daemon(v.steering),
    }
}

/// This machine and the rules file's plan for it as it is now.
fn local(args: &StatusArgs, daemon: bool, note: Option<String>) -> Result<Status> {
    let (machine, config) = load(
        None,
        args.config.as_ref(),
        &args.roots.sys,
        &args.roots.proc,
    )?;
    let p = plan(&machine, &config, &WhatIf::default());
    let steering = p.steering;
    let kthreads: Vec<_> = p
        .kthreads
        .into_iter()
        .map(|row| StatusRow {
            managed_by: ManagedBy::of(&row),
            drift: row.action == PlanAction::Set,
            refused_errno: None,
            row,
        })
        .collect();
    Ok(Status {
        kernel: machine.kernel,
        online: p.online,
        housekeeping: p.housekeeping,
        source: Source::Local,
        daemon_running: daemon,
        observe: false,
        drift: kthreads.iter().filter(|r| r.drift).count(),
        kthreads,
        registrations: Vec::new(),
        noise: Vec::new(),
        note,
        steering: Steering::Local(steering),
    })
}

/// The daemon's view when one runs and was not told to be skipped, else the local one.
fn status(args: &StatusArgs) -> Result<Status> {
    let running = probe(&args.socket);
    match running {
        Ok(true) if args.config.is_none() && !args.local => Ok(from_daemon(
            ask(&args.socket).context("asking the running daemon for its registry")?,
        )),
        Ok(daemon) => local(args, daemon, None),
        Err(e) => local(
            args,
            false,
            Some(format!(
                "could not ask the daemon on {} ({e})",
                args.socket.display()
            )),
        ),
    }
}

fn print_registrations(regs: &[LiveRegistration]) {
    let mut rows = vec![["TARGET", "PREFER", "PIDS", "BY"].map(String::from)];
    for r in regs {
        let pids: Vec<_> = r.pids.iter().map(ToString::to_string).collect();
        let pids = if pids.is_empty() {
            "-".into()
        } else {
            pids.join(",")
        };
        rows.push([r.target.clone(), r.prefer.clone(), pids, r.by.clone()]);
    }
    print!("{}", align(&rows));
}

fn print_status(s: &Status, only_drift: bool) {
    let mut rows = vec![
        [
            "PID",
            "COMM",
            "KIND",
            "RULE",
            "PREFERRED",
            "APPLIED",
            "CURRENT",
            "MANAGED_BY",
        ]
        .map(String::from),
    ];
    for k in s.kthreads.iter().filter(|k| !only_drift || k.drift) {
        let r = &k.row;
        let current = if k.drift {
            format!("{} !", r.current)
        } else {
            r.current.clone()
        };
        rows.push([
            r.pid.to_string(),
            r.comm.clone(),
            if r.follows_irq.is_some() {
                "irq"
            } else if r.pinned {
                "pinned"
            } else {
                "movable"
            }
            .into(),
            r.rule.clone().unwrap_or_else(|| "-".into()),
            r.preferred.clone().unwrap_or_else(|| "-".into()),
            r.applied.clone(),
            current,
            match (r.follows_irq, r.follows_workqueue) {
                (Some(irq), _) => format!("follows IRQ {irq}"),
                (None, true) => "follows workqueue mask".into(),
                (None, false) => k.managed_by.as_str().into(),
            },
        ]);
    }
    println!(
        "kernel {}, online {}, housekeeping {}",
        s.kernel, s.online, s.housekeeping
    );
    match (s.source, s.daemon_running) {
        (Source::Daemon, _) if s.observe => {
            println!("the running daemon's live registry (it runs with --observe and sets nothing)")
        }
        (Source::Daemon, _) => println!("the running daemon's live registry"),
        (Source::Local, true) => println!(
            "a daemon is running, but this view is computed locally from the rules file (--config/--local) and does not show its runtime registrations"
        ),
        (Source::Local, false) => match &s.note {
            Some(note) => println!("{note}; computed locally from the rules file"),
            None => println!("no daemon is running; computed locally from the rules file"),
        },
    }
    if rows.len() > 1 {
        print!("{}", align(&rows));
    }
    if !s.registrations.is_empty() && !only_drift {
        println!("runtime registrations (affinity prefer), tried first to last:");
        print_registrations(&s.registrations);
    }
    if !only_drift {
        match &s.steering {
            Steering::Local(rows) if !rows.is_empty() => print!("{}", steer_table(rows)),
            Steering::Daemon(rows) if !rows.is_empty() => print!("{}", live_steer_table(rows)),
            _ => {}
        }
    }
    if !s.noise.is_empty() && !only_drift {
        println!("noise on the non-housekeeping CPUs, last interval:");
        for n in &s.noise {
            println!("  {}", n.human());
        }
    }
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    let s = status(&args)?;
    if args.output.is_json() {
        super::print_json(&s)?;
    } else {
        print_status(&s, false);
        println!(
            "{} movable kthreads are not where the policy would put them (marked !)",
            s.drift
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when every managed kthread is where the policy puts it, 1 listing the drift.
pub fn verify(args: StatusArgs) -> Result<ExitCode> {
    let s = status(&args)?;
    if args.output.is_json() {
        super::print_json(&s)?;
    } else if s.drift == 0 {
        println!("ok: every managed kthread is where the policy puts it");
    } else {
        print_status(&s, true);
        println!(
            "drift: {} kthreads are not where the policy puts them",
            s.drift
        );
    }
    Ok(if s.drift == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `affinity prefer --list`: the running daemon's runtime registrations.
pub fn list_registrations(socket: &Path, json: bool) -> Result<ExitCode> {
    let view = ask(socket)?;
    if json {
        #[derive(Serialize)]
        struct Registrations<'a> {
            registrations: &'a [LiveRegistration],
        }
        super::print_json(&Registrations {
            registrations: &view.registrations,
        })?;
    } else if view.registrations.is_empty() {
        println!("no runtime registrations (affinity prefer) in the running daemon");
    } else {
        print_registrations(&view.registrations);
    }
    Ok(ExitCode::SUCCESS)
}
