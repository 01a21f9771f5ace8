//! `affinity snapshot`: this machine's CPUs and kthreads as JSON, for `plan
//! --snapshot` elsewhere or for a bug report; `--format human` summarises it.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::{
    daemon::report::Format,
    kernel::sysfs::{Machine, Snapshot},
    policy::PF_NO_SETAFFINITY,
};

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// json (the default: what `plan --snapshot` and `check --snapshot`
    /// read, exactly its keys) or human (a summary).
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    #[command(flatten)]
    pub roots: super::Roots,
}

pub fn run(args: SnapshotArgs) -> Result<ExitCode> {
    let machine =
        Machine::read(&args.roots.sys, &args.roots.proc).context("reading this machine's state")?;
    let snapshot = machine.to_snapshot();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&snapshot)?),
        Format::Human => print!("{}", human(&snapshot)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The summary: one line per fact, `none` for an empty CPU list.
fn human(s: &Snapshot) -> String {
    let list = |l: &str| {
        if l.is_empty() {
            "none".to_string()
        } else {
            l.to_string()
        }
    };
    let pinned = s
        .kthreads
        .iter()
        .filter(|k| k.flags & PF_NO_SETAFFINITY != 0)
        .count();
    let mut out = format!(
        "kernel            {}\npossible          {}\nonline            {}\nisolated          {}\nnohz_full         {}\ncpuset isolated   {}\n",
        s.kernel,
        list(&s.possible),
        list(&s.online),
        list(&s.isolated),
        list(&s.nohz_full),
        list(&s.cpuset_isolated),
    );
    for (node, cpus) in &s.nodes {
        out.push_str(&format!("node {node:<12} {}\n", list(cpus)));
    }
    out.push_str(&format!(
        "kthreads          {} ({} movable, {pinned} pinned by the kernel)\n",
        s.kthreads.len(),
        s.kthreads.len() - pinned
    ));
    out
}
