//! `affinity check FILE`: validate a rules file, listing every error.

use std::{fmt, path::PathBuf, process::ExitCode};

use anyhow::Result;
use serde::Serialize;

use crate::{
    input::{BadInput, EXIT_BAD_INPUT},
    kernel::sysfs,
    policy::{
        Config, ConfigError, HousekeepingSpec, Kthread, MAX_CPUS, SteerScan, Target, Topology,
        unmatched_rules, unmatched_workqueue_rules,
    },
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
    #[command(flatten)]
    pub output: super::OutputArgs,
    #[command(flatten)]
    pub roots: super::Roots,
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    // Nodes and CPUs are checked against this machine when it can be read;
    // otherwise (a container without /sys) only the syntax is.
    let stdin = std::path::Path::new("-");
    if args.snapshot.as_deref() == Some(stdin) && args.file == stdin {
        return Err(BadInput::err(
            "check - --snapshot: only one of the rules file and the snapshot can be stdin",
        ));
    }
    let machine = match &args.snapshot {
        Some(path) => Some(sysfs::Machine::from_snapshot_file(path)?),
        None => sysfs::Machine::read(&args.roots.sys, &args.roots.proc).ok(),
    };
    let topology = match &machine {
        Some(m) => m.topology.clone(),
        None => any_topology(),
    };
    let origin = sysfs::input_name(&args.file);
    let bytes = sysfs::read_input(&args.file)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        BadInput::err(format!(
            "{origin}: not UTF-8 text (invalid byte at offset {}): is this a rules file?",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let parsed = Config::parse(&text, &origin, topology.width)
        .and_then(|c| c.validate(&text, &origin, &topology).map(|()| c));
    if args.output.is_json() {
        let (config, errors) = match &parsed {
            Ok(c) => (Some(c), Vec::new()),
            Err(e) => (None, e.errors.clone()),
        };
        let warns = config.map_or_else(Vec::new, |c| warnings(c, &text, machine.as_ref()));
        super::print_json(&Report {
            file: &origin,
            valid: errors.is_empty(),
            rules: config.map(|c| c.rules.len()),
            irq_rules: config.map(|c| c.irq.len()),
            workqueue_rules: config.map(|c| c.workqueue.len()),
            errors,
            warnings: &warns,
        })?;
        return Ok(if parsed.is_err() {
            ExitCode::from(EXIT_BAD_INPUT)
        } else if args.strict && !warns.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let config = parsed.map_err(|e| BadInput::err(e.to_string()))?;
    let warns = warnings(&config, &text, machine.as_ref());
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

/// `check --format json`: one document, errors or not.
#[derive(Serialize)]
struct Report<'a> {
    file: &'a str,
    /// False when there are errors (exit 2).
    valid: bool,
    /// Only for a valid file.
    rules: Option<usize>,
    irq_rules: Option<usize>,
    workqueue_rules: Option<usize>,
    errors: Vec<ConfigError>,
    warnings: &'a [Warning],
}

/// A rule that can never apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.line, self.message)
    }
}

/// The line of rule `index` (1-based): the `index`th `[[rule]]` header.
fn rule_line(text: &str, index: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[rule]]"))
        .nth(index)
        .map_or(1, |(n, _)| n + 1)
}

/// Rules that can never apply, and a housekeeping set with no online CPU.
/// `machine`: this one or the snapshot's, when known; without it only the
/// checks that need no machine run.
pub fn warnings(config: &Config, text: &str, machine: Option<&sysfs::Machine>) -> Vec<Warning> {
    let mut out = Vec::new();
    let kthreads = machine.map(|m| m.kthreads.as_slice());
    // The rule `run` and `plan` share: a config leaving no online
    // housekeeping CPU is allowed (kthreads fall back to every online CPU)
    // but never what was meant.
    if let (HousekeepingSpec::Cpus(hk), Some(m)) = (&config.housekeeping, machine)
        && hk.and(&m.topology.online).is_empty()
    {
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with("[housekeeping]"))
            .map_or(1, |n| n + 1);
        out.push(Warning {
            line,
            message: format!(
                "housekeeping cpus {hk} has no online CPU here (online: {}): kthreads fall back to every online CPU",
                m.topology.online
            ),
        });
    }
    for (i, rule) in config.rules.iter().enumerate() {
        let line = rule_line(text, i);
        let mut warn = |msg: String| {
            out.push(Warning {
                line,
                message: format!("rule for {}: {msg}", rule.target),
            })
        };
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
    // As `run --irqs` warns at start-up, where the machine's IRQs and
    // workqueues are known (a snapshot from before they were recorded: not).
    if let Some(scan) = machine
        .map(|m| &m.steering)
        .filter(|s| **s != SteerScan::default())
    {
        for r in unmatched_rules(&config.irq, &scan.irqs) {
            out.push(Warning {
                line: r.line,
                message: format!(
                    "[[irq]] rule for {}: matches no IRQ on this machine (it applies to matching IRQs that appear later)",
                    r.target
                ),
            });
        }
        let names: Vec<String> = scan.workqueues.iter().map(|(n, _)| n.to_string()).collect();
        for r in unmatched_workqueue_rules(&config.workqueue, &names) {
            out.push(Warning {
                line: r.line,
                message: format!(
                    "[[workqueue]] rule for {}: matches no workqueue with a cpumask on this machine (it applies to matching ones that appear later)",
                    r.target.as_str()
                ),
            });
        }
    }
    // In the file's order, whichever table each came from.
    out.sort_by_key(|w| w.line);
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
