//! `affinity snapshot`: this machine's CPUs and kthreads as JSON, for `plan
//! --snapshot` elsewhere or for a bug report.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};

use crate::kernel::sysfs::Machine;

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    #[arg(long, default_value = "/sys", hide = true)]
    pub sys: PathBuf,
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc: PathBuf,
}

pub fn run(args: SnapshotArgs) -> Result<ExitCode> {
    let machine = Machine::read(&args.sys, &args.proc).context("reading this machine's state")?;
    println!("{}", serde_json::to_string_pretty(&machine.to_snapshot())?);
    Ok(ExitCode::SUCCESS)
}
