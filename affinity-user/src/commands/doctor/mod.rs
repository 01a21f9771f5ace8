//! `affinity doctor`: what this machine gives the daemon, checked the way
//! the daemon would use it (the programs are loaded for real, then
//! detached), so "doctor says ok" means `affinity run` starts. Read-only:
//! nothing is written to the kernel.

mod checks;

use std::{fs, os::unix::ffi::OsStrExt as _, path::Path, process::ExitCode};

use anyhow::{Context, Result};
use serde::Serialize;

pub use checks::{Check, CheckName, Cpuset, Facts, Irqs, Programs, Status, judge, semantics};

use crate::{
    kernel::{
        bpf::{self, EMBEDDED_OBJECT, LogSink, Observer, ObserverConfig},
        btf::KernelBtf,
        caps::{self, Cap},
        sysfs::Machine,
    },
    policy::Config,
};
use affinity_common::programs;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub output: super::OutputArgs,
    #[command(flatten)]
    pub roots: super::Roots,
}

#[derive(Serialize)]
struct Verdict<'a> {
    /// True when everything the default policy needs is here (exit 0).
    ready: bool,
    missing: Vec<CheckName>,
    checks: &'a [Check],
}

pub fn run(args: DoctorArgs) -> Result<ExitCode> {
    let facts = gather(&args.roots.sys, &args.roots.proc)?;
    let checks = judge(&facts);
    let missing: Vec<CheckName> = checks
        .iter()
        .filter(|c| c.status == Status::Missing)
        .map(|c| c.check)
        .collect();
    let ready = missing.is_empty();
    if args.output.is_json() {
        super::print_json(&Verdict {
            ready,
            missing: missing.clone(),
            checks: &checks,
        })?;
    } else {
        print!("{}", render(&checks));
        if ready {
            println!("\neverything the default policy needs is here");
        } else {
            let names: Vec<&str> = missing.iter().map(|m| m.as_str()).collect();
            println!(
                "\nthe default policy cannot run here; missing: {}",
                names.join(", ")
            );
        }
    }
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The human table: one line per check, details wrapped under their column.
pub fn render(checks: &[Check]) -> String {
    let name_w = checks
        .iter()
        .map(|c| c.check.as_str().len())
        .max()
        .unwrap_or(5)
        .max("CHECK".len());
    let mut s = format!("{:<name_w$}  {:<7}  DETAIL\n", "CHECK", "STATUS");
    for c in checks {
        s.push_str(&format!(
            "{:<name_w$}  {:<7}  {}\n",
            c.check.as_str(),
            c.status.as_str(),
            c.detail
        ));
    }
    s
}

/// Reads everything [`judge`] needs. Only the machine's CPU state is
/// required; every other fact that cannot be read is itself a finding.
pub fn gather(sys: &Path, proc: &Path) -> Result<Facts> {
    let machine = Machine::read(sys, proc).context("reading the machine's CPU state")?;
    let width = machine.topology.width;
    let btf_path = sys.join("kernel/btf/vmlinux");
    let kernel_btf =
        KernelBtf::read(&btf_path).map_err(|e| format!("{}: {e:#}", btf_path.display()));
    let btf = kernel_btf.as_ref().map(|_| ()).map_err(Clone::clone);
    let mut needed = caps::for_bpf(&machine.kernel, caps::memlock_unlimited());
    needed.push(Cap::SysNice);
    let have = caps::effective(&proc.join("self/status")).unwrap_or(0);
    let caps_missing: Vec<Cap> = needed
        .into_iter()
        .filter(|c| have & (1u64 << *c as u32) == 0)
        .collect();
    let init_pidns = bpf::init_pidns(proc);
    let pidns = match &init_pidns {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{}: {e}", proc.join("self/ns/pid").display())),
    };
    let programs = match (kernel_btf, &init_pidns) {
        (Ok(kernel_btf), Ok(ns)) if caps_missing.iter().all(|c| *c == Cap::SysNice) => {
            let cfg = ObserverConfig::new(
                kernel_btf,
                width,
                machine.topology.online.words().to_vec(),
                *ns,
            );
            try_load(&cfg)
        }
        _ => Programs::NotTried,
    };
    let hk = machine.housekeeping(&Config::embedded_default().housekeeping);
    Ok(Facts {
        release: machine.kernel.clone(),
        btf,
        caps_missing,
        programs,
        lockdown: lockdown(&sys.join("kernel/security/lockdown")),
        pidns,
        hotpluggable: hotpluggable(sys, &machine),
        cpuset: cpuset(&sys.join("fs/cgroup")),
        isolated: machine.isolated.to_string(),
        nohz_full: machine.nohz_full.to_string(),
        cpuset_isolated: machine.cpuset_isolated.to_string(),
        housekeeping: hk.to_string(),
        online: machine.topology.online.to_string(),
        irqs: Irqs {
            irqbalance: crate::kernel::irq::find_irqbalance(proc),
            ..irqs(&proc.join("irq"))
        },
        workqueue: writable_file(&sys.join("devices/virtual/workqueue/cpumask")),
    })
}

/// aya-log records are the daemon's business; a trial load drops them.
struct Quiet;

impl LogSink for Quiet {
    fn log(&self, _: log::Level, _: String) {}
}

/// Loads and attaches the daemon's programs, then drops them (which
/// detaches every link and unloads every program).
fn try_load(cfg: &ObserverConfig) -> Programs {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Programs::Failed(format!("starting a runtime: {e}")),
    };
    let _guard = rt.enter();
    match Observer::load(EMBEDDED_OBJECT, cfg, Quiet) {
        Ok(observer) => {
            let fexit = observer
                .unavailable
                .iter()
                .find(|(p, _)| *p == programs::SETAFFINITY_FEXIT)
                .map_or(Ok(()), |(_, why)| Err(first_cause(why)));
            let attached = programs::BTF_TRACEPOINTS.len()
                + if fexit.is_ok() {
                    programs::FEXITS.len()
                } else {
                    0
                };
            Programs::Loaded { attached, fexit }
        }
        Err(e) => Programs::Failed(format!("{:#}", anyhow::Error::from(e))),
    }
}

/// The fexit part of the observer's "fexit: ...; syscall tracepoints ..." note.
fn first_cause(why: &str) -> String {
    let why = why.strip_prefix("fexit: ").unwrap_or(why);
    let why = why.split("; ").next().unwrap_or(why).trim_end();
    // aya appends the verifier's log, empty when the kernel refused the
    // load before verifying.
    why.strip_suffix(" Verifier output:")
        .unwrap_or(why)
        .trim_end_matches('.')
        .to_string()
}

fn lockdown(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let start = text.find('[')? + 1;
    let end = text[start..].find(']')? + start;
    Some(text[start..end].to_string())
}

fn hotpluggable(sys: &Path, m: &Machine) -> Vec<u32> {
    m.topology
        .possible
        .iter()
        .filter(|cpu| {
            sys.join(format!("devices/system/cpu/cpu{cpu}/online"))
                .exists()
        })
        .collect()
}

fn cpuset(cgroup: &Path) -> Cpuset {
    match fs::read_to_string(cgroup.join("cgroup.controllers")) {
        Err(_) => Cpuset::NoCgroup2,
        Ok(c) if c.split_whitespace().any(|c| c == "cpuset") => Cpuset::Present,
        Ok(_) => Cpuset::NoController,
    }
}

/// Whether this process may write `path` (None: no such file), without
/// writing it.
fn writable_file(path: &Path) -> Option<bool> {
    if !path.exists() {
        return None;
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path; access() only reads it.
    Some(unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
}

fn irqs(dir: &Path) -> Irqs {
    let mut irqs = Irqs {
        default_writable: writable_file(&dir.join("default_smp_affinity")),
        ..Irqs::default()
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return irqs;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok())
        {
            match writable_file(&e.path().join("smp_affinity_list")) {
                Some(true) => {
                    irqs.total += 1;
                    irqs.writable += 1;
                }
                Some(false) => irqs.total += 1,
                None => {}
            }
        }
    }
    irqs
}
