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
    if let Some(st) = &s.steering {
        let or_none = |m: &Option<String>| m.as_deref().map_or("none".to_string(), list);
        out.push_str(&format!(
            "irqs              {} (default affinity {})\nworkqueue cpumask {}\n",
            st.irqs.len(),
            or_none(&st.default_affinity),
            or_none(&st.workqueue),
        ));
        for (name, mask) in &st.workqueues {
            out.push_str(&format!("workqueue {name:<7} {}\n", list(mask)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::sysfs::{SnapshotIrq, SnapshotSteering};

    #[test]
    fn the_summary_shows_irqs_and_workqueue_cpumasks_when_recorded() {
        let mut s = Snapshot {
            kernel: "6.18.0".into(),
            possible: "0-3".into(),
            online: "0-3".into(),
            isolated: "2-3".into(),
            nohz_full: String::new(),
            cpuset_isolated: String::new(),
            nodes: [("0".to_string(), "0-3".to_string())].into(),
            kthreads: Vec::new(),
            steering: None,
        };
        let without = human(&s);
        assert!(!without.contains("irqs"), "{without}");
        s.steering = Some(SnapshotSteering {
            irqs: vec![SnapshotIrq {
                irq: 36,
                actions: vec!["nvme0q1".into()],
                node: None,
                affinity: "0-3".into(),
                effective: None,
            }],
            default_affinity: Some("0-3".into()),
            workqueue: Some("0-1".into()),
            workqueues: [("writeback".to_string(), "0-3".to_string())].into(),
        });
        assert_eq!(
            human(&s).strip_prefix(&without).unwrap(),
            "irqs              1 (default affinity 0-3)\nworkqueue cpumask 0-1\nworkqueue writeback 0-3\n"
        );
    }
}
