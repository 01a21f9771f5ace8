//! `affinity check FILE`: validate a rules file, listing every error.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;

use crate::{kernel::sysfs, policy::MAX_CPUS, policy::Topology};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The rules file to validate (`-` for stdin).
    pub file: PathBuf,
    /// Validate CPU and node numbers against the machine in this snapshot
    /// (from `affinity snapshot`; `-` for stdin) instead of this one.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Check CPU and node numbers against this machine's sysfs root.
    #[arg(long, default_value = "/sys", hide = true)]
    pub sys: PathBuf,
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc: PathBuf,
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    // Nodes and CPUs are checked against this machine when it can be read;
    // otherwise (a container without /sys) only the syntax is.
    let stdin = std::path::Path::new("-");
    if args.snapshot.as_deref() == Some(stdin) && args.file == stdin {
        return Err(crate::input::BadInput::err(
            "check - --snapshot: only one of the rules file and the snapshot can be stdin",
        ));
    }
    let topology = match &args.snapshot {
        Some(path) => sysfs::Machine::from_snapshot_file(path)?.topology,
        None => local_topology(&args),
    };
    let config = sysfs::load_config(&args.file, &topology)?;
    println!(
        "{}: ok ({} rules)",
        sysfs::input_name(&args.file),
        config.rules.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn local_topology(args: &CheckArgs) -> Topology {
    match sysfs::Machine::read(&args.sys, &args.proc) {
        Ok(m) => m.topology,
        Err(_) => {
            let all = crate::policy::CpuSet::full(MAX_CPUS);
            let mut t = Topology::single_node(all.clone(), all);
            t.nodes = (0..1024)
                .map(|n| (n, crate::policy::CpuSet::empty(MAX_CPUS)))
                .collect();
            t
        }
    }
}
