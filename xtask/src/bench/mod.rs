//! `cargo xtask bench`: the figures in BENCHMARKS.md, from one run.
//!
//! Each A/B comparison interleaves its runs (A, B, A, B, ...) so that drift
//! in a noisy VM hits both sides alike; ratios are taken pairwise and
//! reported as median with min–max.
//!
//! - [`daemon`]: the daemon under measurement and its JSON events.
//! - [`load`]: context switches, hotplug of cpu1, the kernel's BPF statistics.
//! - [`procfs`]: kthreads, CPU time and RSS from /proc.
//! - [`figures`]: the six measurements of affinity, each writing its section.
//! - [`peers`]: section 7, tuned and tuna beside affinity.

mod daemon;
mod figures;
mod load;
mod peers;
mod procfs;

use std::{fmt::Write as _, fs, process::Command};

use anyhow::{Context, Result, bail};

use self::{
    figures::Setup,
    load::{Cpu1Guard, set_cpu1},
    procfs::config_for,
};
use crate::{
    bootstrap::{self, output},
    build::{self, BuildArgs, workspace_root},
};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A/B rounds for the context-switch benchmark.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Hotplug cycles for the reaction-time figure.
    #[arg(long, default_value_t = 100)]
    pub cycles: usize,
    /// Seconds of idle measurement.
    #[arg(long, default_value_t = 60)]
    pub idle_secs: u64,
    /// Seconds of idle measurement per peer tool (section 7).
    #[arg(long, default_value_t = 20)]
    pub peer_idle_secs: u64,
    /// A/B rounds per peer tool for the context-switch ratio.
    #[arg(long, default_value_t = 3)]
    pub peer_rounds: usize,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if !bootstrap::is_root() {
        bail!("`cargo xtask bench` needs root: it loads BPF programs and hotplugs cpu1");
    }
    bootstrap::ensure_apt(&[(
        "bpftool",
        "reads per-program run time from the kernel's BPF statistics",
    )])?;
    let bin = build::build(&BuildArgs { release: true })?;
    let _cpu1 = Cpu1Guard;
    set_cpu1(true)?;
    let mut md = String::new();
    let uname = output(Command::new("uname").arg("-r"))?.trim().to_string();
    let cpu = fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let setup = Setup {
        bin,
        cfg50: config_for(50),
        cfg10: config_for(10),
    };
    let _ = writeln!(
        md,
        "# Benchmarks\n\nOne run of `cargo xtask bench` (as root) on {ncpu} × {cpu}, Linux {uname}, release build.\n\
         Regenerate with `cargo xtask bench`; this file is rewritten by it.\n"
    );

    figures::hot_path(&mut md, &setup, args.rounds)?;
    figures::per_program(&mut md, &setup)?;
    figures::hotplug_reaction(&mut md, &setup, args.cycles)?;
    figures::violation_window(&mut md, &setup)?;
    figures::idle_cost(&mut md, &setup, args.idle_secs)?;
    figures::scale(&mut md, &setup)?;
    peers::peers(&mut md, &setup, args.peer_rounds, args.peer_idle_secs)?;

    md.push('\n');
    md.push_str(FINDINGS);
    fs::write(workspace_root().join("BENCHMARKS.md"), &md).context("writing BENCHMARKS.md")?;
    eprintln!("{md}");
    eprintln!("xtask: wrote BENCHMARKS.md");
    Ok(())
}

/// What stands in the way of the targets the figures miss; kept with the
/// code that measures them and reviewed whenever the figures change.
const FINDINGS: &str = include_str!("FINDINGS.md");
