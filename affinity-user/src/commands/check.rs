//! `affinity check FILE`: validate a rules file, listing every error.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;

use crate::{kernel::sysfs, policy::MAX_CPUS, policy::Topology};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The rules file to validate.
    pub file: PathBuf,
    /// Check CPU and node numbers against this machine's sysfs root.
    #[arg(long, default_value = "/sys", hide = true)]
    pub sys: PathBuf,
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc: PathBuf,
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    // Nodes and CPUs are checked against this machine when it can be read;
    // otherwise (a container without /sys) only the syntax is.
    let topology = match sysfs::Machine::read(&args.sys, &args.proc) {
        Ok(m) => m.topology,
        Err(_) => {
            let all = crate::policy::CpuSet::full(MAX_CPUS);
            let mut t = Topology::single_node(all.clone(), all);
            t.nodes = (0..1024)
                .map(|n| (n, crate::policy::CpuSet::empty(MAX_CPUS)))
                .collect();
            t
        }
    };
    let config = sysfs::load_config(&args.file, &topology)?;
    println!("{}: ok ({} rules)", args.file.display(), config.rules.len());
    Ok(ExitCode::SUCCESS)
}
