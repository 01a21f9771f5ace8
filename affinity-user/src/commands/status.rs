//! `affinity status`: every kthread with its preferred, applied and current
//! mask, and who manages its affinity on this kernel. `affinity verify`: the
//! same verdict as an exit code (0 all in place, 1 drift), like `tuned-adm verify`.

use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use serde::Serialize;

use super::plan::{Plan, PlanAction, PlanRow, WhatIf, align, load, plan};
use crate::daemon::control;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Rules file; the embedded default without it.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket of the running daemon (only probed, to say whether one runs).
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub output: super::OutputArgs,
    #[arg(long, default_value = "/sys", hide = true)]
    pub sys: PathBuf,
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc: PathBuf,
}

/// Who manages a kthread's affinity; the same words in human and JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagedBy {
    KernelPinned,
    KernelPreferred,
    Affinity,
    Nobody,
}

impl ManagedBy {
    fn of(r: &PlanRow) -> Self {
        if r.pinned {
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
            ManagedBy::Affinity => "affinity",
            ManagedBy::Nobody => "nobody",
        }
    }
}

#[derive(Serialize)]
struct StatusRow<'a> {
    #[serde(flatten)]
    row: &'a PlanRow,
    managed_by: ManagedBy,
    drift: bool,
}

#[derive(Serialize)]
struct Status<'a> {
    kernel: &'a str,
    online: &'a str,
    housekeeping: &'a str,
    /// Always `local`: computed here from the rules file, not asked of a daemon.
    source: &'static str,
    daemon_running: bool,
    drift: usize,
    kthreads: Vec<StatusRow<'a>>,
}

fn drifted(r: &PlanRow) -> bool {
    r.action == PlanAction::Set
}

fn daemon_running(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

fn status_of<'a>(kernel: &'a str, p: &'a Plan, daemon: bool) -> Status<'a> {
    let kthreads: Vec<_> = p
        .kthreads
        .iter()
        .map(|r| StatusRow {
            row: r,
            managed_by: ManagedBy::of(r),
            drift: drifted(r),
        })
        .collect();
    Status {
        kernel,
        online: &p.online,
        housekeeping: &p.housekeeping,
        source: "local",
        daemon_running: daemon,
        drift: kthreads.iter().filter(|r| r.drift).count(),
        kthreads,
    }
}

fn print_status(s: &Status<'_>, only_drift: bool) {
    let mut rows = vec![
        [
            "PID",
            "COMM",
            "KIND",
            "PREFERRED",
            "APPLIED",
            "CURRENT",
            "MANAGED_BY",
        ]
        .map(String::from),
    ];
    for k in s.kthreads.iter().filter(|k| !only_drift || k.drift) {
        let r = k.row;
        let current = if k.drift {
            format!("{} !", r.current)
        } else {
            r.current.clone()
        };
        rows.push([
            r.pid.to_string(),
            r.comm.clone(),
            if r.pinned { "pinned" } else { "movable" }.into(),
            r.preferred.clone().unwrap_or_else(|| "-".into()),
            r.applied.clone(),
            current,
            k.managed_by.as_str().into(),
        ]);
    }
    println!(
        "kernel {}, online {}, housekeeping {}",
        s.kernel, s.online, s.housekeeping
    );
    if s.daemon_running {
        println!(
            "a daemon is running; this view is computed locally from the rules file and does not show its runtime registrations"
        );
    } else {
        println!("no daemon is running; computed locally from the rules file");
    }
    if rows.len() > 1 {
        print!("{}", align(&rows));
    }
}

/// This machine and the policy's plan for it as it is now.
fn local(args: &StatusArgs) -> Result<(String, Plan)> {
    let (machine, config) = load(None, args.config.as_ref(), &args.sys, &args.proc)?;
    let p = plan(&machine, &config, &WhatIf::default());
    Ok((machine.kernel, p))
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    let (kernel, p) = local(&args)?;
    let s = status_of(&kernel, &p, daemon_running(&args.socket));
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
    let (kernel, p) = local(&args)?;
    let s = status_of(&kernel, &p, daemon_running(&args.socket));
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
