//! `affinity status`: every kthread with its preferred, applied and actual
//! mask, and who manages its affinity on this kernel.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;

use super::plan::{PlanAction, WhatIf, align, load, plan};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Rules file; the embedded default without it.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, default_value = "/sys", hide = true)]
    pub sys: PathBuf,
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc: PathBuf,
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    let (machine, config) = load(None, args.config.as_ref(), &args.sys, &args.proc)?;
    let p = plan(&machine, &config, &WhatIf::default());
    let mut rows = vec![
        [
            "PID",
            "COMM",
            "KIND",
            "PREFERRED",
            "APPLIED",
            "ACTUAL",
            "MANAGED BY",
        ]
        .map(String::from),
    ];
    for r in &p.kthreads {
        let managed_by = if r.pinned {
            "kernel (pinned)"
        } else if r.kernel_managed {
            "kernel (preferred affinity)"
        } else if r.rule.is_some() {
            "affinity"
        } else {
            "nobody"
        };
        let actual = if r.current == r.applied || r.action != PlanAction::Set {
            r.current.clone()
        } else {
            format!("{} !", r.current)
        };
        rows.push([
            r.pid.to_string(),
            r.comm.clone(),
            if r.pinned { "pinned" } else { "movable" }.into(),
            r.preferred.clone().unwrap_or_else(|| "-".into()),
            r.applied.clone(),
            actual,
            managed_by.into(),
        ]);
    }
    println!(
        "kernel {}, online {}, housekeeping {}",
        machine.kernel, p.online, p.housekeeping
    );
    print!("{}", align(&rows));
    let off = p
        .kthreads
        .iter()
        .filter(|r| r.action == PlanAction::Set)
        .count();
    println!("{off} movable kthreads are not where the policy would put them (marked !)");
    Ok(ExitCode::SUCCESS)
}
