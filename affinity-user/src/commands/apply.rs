//! `affinity apply`: the policy applied once, then exit — for boot scripts,
//! tests and hosts that do not want a daemon (tuna's habit). No BPF: the
//! daemon's core runs its start-up pass against the real kernel and stops.
//! Nothing follows hotplug afterwards; the README says so.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};

use crate::{
    daemon::{
        Core, NoPrograms, Options,
        control::{self, ControlServer},
        report::{ColorChoice, Format, Report, Reporter},
    },
    kernel::{
        caps::{self, Cap},
        procfs::ProcKernel,
        sysfs::Machine,
    },
    policy::Engine,
};

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub policy: super::PolicyArgs,
    #[command(flatten)]
    pub output: super::OutputArgs,
    /// Colour human output: auto, always or never.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: ColorChoice,
    /// A running daemon's control socket: apply refuses to run beside one.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub roots: super::Roots,
}

pub fn run(args: ApplyArgs) -> Result<ExitCode> {
    let machine = Machine::read(&args.roots.sys, &args.roots.proc)
        .context("reading the machine's CPU state")?;
    let config = args.policy.rules(&machine.topology)?;
    let hk = args
        .policy
        .housekeeping(machine.topology.width)?
        .checked(&machine, &config)?;
    // `affinity plan` shows what it would do without any.
    caps::require_own(&args.roots.proc, "`affinity apply`", &[Cap::SysNice])?;
    // Held until we are done: a daemon started meanwhile waits for us, and
    // one already running (which enforces the policy itself and would
    // undo or fight ours) makes this fail before anything is set.
    let _single = ControlServer::bind(&args.socket).context(
        "affinity apply does not run beside a daemon (use `affinity prefer` to change its policy)",
    )?;

    let engine = Engine::new(machine.topology.clone(), hk, config.rules)
        .with_kernel(&machine.kernel)
        .with_boot_isolation(&machine.isolated, &machine.nohz_full);
    let kernel = ProcKernel::new(&args.roots.proc, &args.roots.sys, machine.topology.width);
    let format = if args.output.is_json() {
        Format::Json
    } else {
        Format::Human
    };
    let mut core = Core::new(
        engine,
        kernel,
        Reporter::with_output(std::io::stdout(), format, args.color),
        Options {
            observe: false,
            restore_on_exit: false,
        },
    );
    core.start(&mut NoPrograms)
        .context("reading the kthreads in /proc")?;
    let s = &core.stats;
    let (applied, refused, errors) = (s.applied, s.refused, s.errors);
    let managed = core.managed_count();
    let in_place = core
        .engine
        .entries()
        .filter(|e| e.managed() && e.in_place(core.engine.online()))
        .count();
    core.reporter.report(&Report::ApplyDone {
        managed,
        set: applied,
        in_place,
        refused,
        errors,
    });
    Ok(if refused == 0 && errors == 0 && in_place == managed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
