//! `affinity restore`: with no daemon running, give every mask the last
//! daemon left in place back to the kernel's own policy for that kthread
//! (`policy::kernel_default`). Only masks the record names, and only where
//! nobody changed them since; `--all` for every movable kthread (after a
//! crash left no record, or to undo other tools too).
//!
//! On 6.2+ every sched_setaffinity() also becomes the task's user mask,
//! which clips the kernel's later re-affining, and no call clears one: the
//! mask written is the kernel's policy over every possible CPU
//! (`policy::kernel_release`), which gives the kernel's own mask now and
//! clips none of its later choices (README).

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    daemon::{
        control::{self, ControlServer},
        kernel::Kernel,
        left,
    },
    input::BadInput,
    kernel::{
        caps::{self, Cap},
        procfs::ProcKernel,
        sysfs::Machine,
    },
    policy::{CpuSet, KernelIsolation, Kthread, kernel_default, kernel_release},
};

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Every movable kthread whose mask is not the kernel's own, not only
    /// those the last daemon recorded.
    #[arg(long)]
    pub all: bool,
    /// Say what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: super::OutputArgs,
    /// The daemon's control socket: restore refuses to run beside a daemon,
    /// and reads the record of masks it left (masks.json) next to it.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub roots: super::Roots,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Set,
    WouldSet,
    /// Already the kernel's own mask.
    InPlace,
    /// Exited, or the pid now names another task.
    Gone,
    /// Someone changed it after the daemon stopped: not ours to undo.
    Changed,
    Failed,
}

#[derive(Debug, Serialize)]
struct Row {
    pid: u32,
    comm: String,
    /// Its mask now.
    from: String,
    /// The kernel's own mask for it.
    to: String,
    outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Serialize)]
struct Summary<'a> {
    record: Option<String>,
    all: bool,
    dry_run: bool,
    restored: usize,
    failed: usize,
    kthreads: &'a [Row],
}

pub fn run(args: RestoreArgs) -> Result<ExitCode> {
    let machine = Machine::read(&args.roots.sys, &args.roots.proc)
        .context("reading the machine's CPU state")?;
    let width = machine.topology.width;
    let record_path = left::path_for(&args.socket);
    let record = left::read(&record_path)?;
    if record.is_none() && !args.all {
        return Err(BadInput::err(format!(
            "no record of masks left by the daemon at {} (a daemon writes one when it stops, \
             unless --restore-on-exit or --observe); `affinity restore --all` returns every \
             movable kthread to the kernel's policy",
            record_path.display()
        )));
    }
    // Held until we are done, as `apply` does: a daemon would set its
    // masks again under us.
    let _single = if args.dry_run {
        None
    } else {
        caps::require_own(&args.roots.proc, "`affinity restore`", &[Cap::SysNice])?;
        Some(ControlServer::bind(&args.socket).context(
            "affinity restore does not run beside a daemon (stop it first; it leaves its masks in place)",
        )?)
    };
    let iso = KernelIsolation {
        isolated: &machine.isolated,
        nohz_full: &machine.nohz_full,
        cpuset_isolated: &machine.cpuset_isolated,
    };
    let own = |k: &Kthread| kernel_default(&machine.kernel, k, &machine.topology, &iso);
    let release = |k: &Kthread| kernel_release(&machine.kernel, k, &machine.topology, &iso);
    // In place: on the kernel's own CPUs among those online (an offline CPU
    // in a mask is not run on), and holding every CPU of the release mask
    // the cpuset allows, so that no narrower user mask clips the kernel's
    // next re-affine (a mask left with cpu1 offline matches on the online
    // CPUs and still would).
    let online = &machine.topology.online;
    let in_place = |k: &Kthread, to: &CpuSet| {
        k.cpus_allowed.and(online) == *to
            && release(k)
                .and_not(&machine.cpuset_isolated)
                .is_subset(&k.cpus_allowed)
    };
    let mut rows = Vec::new();
    let mut todo: Vec<(Kthread, CpuSet)> = Vec::new();
    if args.all {
        for k in machine.kthreads.iter().filter(|k| !k.is_pinned()) {
            let to = own(k);
            if !in_place(k, &to) {
                todo.push((k.clone(), to));
            }
        }
    } else if let Some(record) = &record {
        for r in &record.kthreads {
            let now = machine
                .kthreads
                .iter()
                .find(|k| k.pid == r.pid && k.start_time == r.start_time);
            let Some(k) = now else {
                rows.push(Row {
                    pid: r.pid,
                    comm: r.comm.clone(),
                    from: String::new(),
                    to: String::new(),
                    outcome: Outcome::Gone,
                    detail: None,
                });
                continue;
            };
            let to = own(k);
            let from = k.cpus_allowed.to_string();
            let outcome = if from != r.set {
                Some((
                    Outcome::Changed,
                    Some(format!(
                        "the daemon left {}; someone set {from} since",
                        r.set
                    )),
                ))
            } else if in_place(k, &to) {
                Some((Outcome::InPlace, None))
            } else {
                None
            };
            match outcome {
                Some((outcome, detail)) => rows.push(Row {
                    pid: k.pid,
                    comm: k.comm.clone(),
                    from,
                    to: to.to_string(),
                    outcome,
                    detail,
                }),
                None => todo.push((k.clone(), to)),
            }
        }
    }
    let mut kernel = ProcKernel::new(&args.roots.proc, &args.roots.sys, width);
    for (k, to) in todo {
        let (outcome, detail) = if args.dry_run {
            (Outcome::WouldSet, None)
        } else {
            match kernel.set_affinity(k.pid, k.start_time, &release(&k)) {
                Ok(_) => (Outcome::Set, None),
                Err(crate::daemon::kernel::SetAffinityError::Gone(_)) => (Outcome::Gone, None),
                Err(e) => (Outcome::Failed, Some(format!("{e:#}"))),
            }
        };
        rows.push(Row {
            pid: k.pid,
            comm: k.comm.clone(),
            from: k.cpus_allowed.to_string(),
            to: to.to_string(),
            outcome,
            detail,
        });
    }
    rows.sort_by_key(|r| r.pid);
    let restored = rows.iter().filter(|r| r.outcome == Outcome::Set).count();
    let failed = rows.iter().filter(|r| r.outcome == Outcome::Failed).count();
    // Done with: a second restore must not act on it again.
    if !args.dry_run && failed == 0 && record.is_some() {
        std::fs::remove_file(&record_path)
            .with_context(|| format!("removing {}", record_path.display()))?;
    }
    if args.output.is_json() {
        super::print_json(&Summary {
            record: record.as_ref().map(|_| record_path.display().to_string()),
            all: args.all,
            dry_run: args.dry_run,
            restored,
            failed,
            kthreads: &rows,
        })?;
    } else {
        for r in &rows {
            let what = match r.outcome {
                Outcome::Set => format!("{} -> {} (the kernel's policy)", r.from, r.to),
                Outcome::WouldSet => format!("would set {} -> {}", r.from, r.to),
                Outcome::InPlace => format!("already on the kernel's {}", r.to),
                Outcome::Gone => "gone".to_string(),
                Outcome::Changed => format!("left alone: {}", r.detail.as_deref().unwrap_or("")),
                Outcome::Failed => format!("FAILED: {}", r.detail.as_deref().unwrap_or("")),
            };
            println!("{} (pid {}): {what}", r.comm, r.pid);
        }
        let would = rows
            .iter()
            .filter(|r| r.outcome == Outcome::WouldSet)
            .count();
        if args.dry_run {
            println!("would restore {would} kthreads to the kernel's policy");
        } else {
            println!("restored {restored} kthreads to the kernel's policy, {failed} failed");
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
