//! `affinity check FILE`: validate a rules file, listing every error.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;

use crate::{
    kernel::sysfs,
    policy::{Config, Kthread, MAX_CPUS, Target, Topology},
};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The rules file to validate (`-` for stdin).
    pub file: PathBuf,
    /// Validate CPU and node numbers against the machine in this snapshot
    /// (from `affinity snapshot`; `-` for stdin) instead of this one.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Exit 1 when there are warnings (rules that can never apply).
    #[arg(long)]
    pub strict: bool,
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
    let machine = match &args.snapshot {
        Some(path) => Some(sysfs::Machine::from_snapshot_file(path)?),
        None => sysfs::Machine::read(&args.sys, &args.proc).ok(),
    };
    let topology = match &machine {
        Some(m) => m.topology.clone(),
        None => any_topology(),
    };
    let origin = sysfs::input_name(&args.file);
    let bytes = sysfs::read_input(&args.file)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let config = sysfs::parse_config(bytes, &origin, &topology)?;
    let kthreads = machine.as_ref().map(|m| m.kthreads.as_slice());
    let warns = warnings(&config, &text, kthreads);
    for w in &warns {
        eprintln!("{origin}:{w}");
    }
    println!(
        "{origin}: ok ({} rules{})",
        config.rules.len(),
        if warns.is_empty() {
            String::new()
        } else {
            format!(
                ", {} warning{}",
                warns.len(),
                if warns.len() == 1 { "" } else { "s" }
            )
        }
    );
    Ok(if args.strict && !warns.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The line of rule `index` (1-based): the `index`th `[[rule]]` header.
fn rule_line(text: &str, index: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[rule]]"))
        .nth(index)
        .map_or(1, |(n, _)| n + 1)
}

/// Rules that can never apply, as `LINE: warning: ...`. `kthreads`: the
/// machine's (or snapshot's), when known; without it only the checks that
/// need no machine run.
pub fn warnings(config: &Config, text: &str, kthreads: Option<&[Kthread]>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let line = rule_line(text, i);
        let mut warn =
            |msg: String| out.push(format!("{line}: warning: rule for {}: {msg}", rule.target));
        if let Target::Comm(g) = &rule.target {
            let literal = g.as_str().chars().filter(|c| !"*?[]".contains(*c)).count();
            if literal > COMM_MAX {
                warn(format!(
                    "can never match: a comm is at most {COMM_MAX} characters"
                ));
                continue;
            }
        }
        if let Some(j) = config.rules[..i]
            .iter()
            .position(|r| matches!(&r.target, Target::Comm(g) if g.as_str() == "*"))
        {
            warn(format!(
                "never applies: the rule at line {} (match = \"*\") takes every kthread first",
                rule_line(text, j)
            ));
            continue;
        }
        let Some(ks) = kthreads else { continue };
        let matched: Vec<&Kthread> = ks
            .iter()
            .filter(|k| rule.target.matches(k.pid, &k.comm))
            .collect();
        if matched.is_empty() {
            let hint = match &rule.target {
                Target::Comm(g) if g.as_str() != g.as_str().to_ascii_lowercase() => {
                    " (comms are matched case-sensitively)"
                }
                _ => " (only kthreads are managed; userspace processes never are)",
            };
            warn(format!("matches no kthread on this machine{hint}"));
        } else if matched.iter().all(|k| k.is_pinned()) {
            warn("every kthread it matches is pinned by the kernel".into());
        } else if matched.iter().all(|k| {
            config.rules[..i]
                .iter()
                .any(|r| r.target.matches(k.pid, &k.comm))
        }) {
            warn("never applies: earlier rules take every kthread it matches".into());
        }
    }
    out
}

/// `TASK_COMM_LEN` - 1.
const COMM_MAX: usize = 15;

/// Without a machine to check against: every CPU and node number is possible.
fn any_topology() -> Topology {
    let all = crate::policy::CpuSet::full(MAX_CPUS);
    let mut t = Topology::single_node(all.clone(), all);
    t.nodes = (0..1024)
        .map(|n| (n, crate::policy::CpuSet::empty(MAX_CPUS)))
        .collect();
    t
}
