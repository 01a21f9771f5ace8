//! `cargo xtask vm-test`: the kernel tests inside virtme-ng VMs booting
//! Debian's cloud kernels (`all`: bullseye's 5.10, and 6.1 and 6.12 from
//! the host's bookworm apt; on request also trixie-backports' newest 7.x and
//! 7.x-rt), each twice ([`profile`]): 4 vCPUs
//! with CPUs 2-3 isolated (`isolcpus=2,3 nohz_full=2,3`) for every kernel
//! test, and two NUMA nodes of two CPUs with node 1's CPUs offline at boot
//! (`maxcpus=2`) for `vm_numa`.
//!
//! - [`tools`]: QEMU and friends from apt; virtme-ng (a venv) and virtiofsd
//!   (`cargo install`) in a cache outside the repository
//!   (`/var/cache/affinity-vm`, or `$AFFINITY_VM_CACHE`) so clean clones
//!   reuse them.
//! - [`kernel`]: the current Debian images, resolved from the meta packages
//!   (other suites through a private apt state in `target/vm/apt`),
//!   downloaded once into `target/vm/kernels`, unpacked, trimmed to the
//!   modules the guest needs.
//! - [`profile`]: the guest shapes and which test targets run in each.
//! - [`guest`]: one boot per kernel and profile running its test
//!   executables, with one retry only when QEMU died before the guest
//!   started.
//! - [`accel`]: the accelerator probe (on these machines /dev/kvm is a
//!   nested device with which QEMU aborts with "failed to set MSR 0x10a",
//!   so TCG emulation is the fallback).
//!
//! Dependencies go one way: `accel` → `guest` → `kernel`, `profile`,
//! `tools`.

mod accel;
mod guest;
mod kernel;
mod profile;
mod tools;

use std::{
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bootstrap,
    build::{TestBinaries, kernel_test_binaries, workspace_root},
};

pub use self::accel::AccelChoice;
use self::{
    guest::{Outcome, Verdict},
    kernel::KERNELS,
    profile::PROFILES,
};

/// The labels `--kernel all` boots, for the log: "5.10, 6.1, 6.12, 7, 7-rt".
pub fn all_labels() -> String {
    let labels: Vec<_> = KERNELS
        .iter()
        .filter(|k| k.in_all)
        .map(|k| k.label)
        .collect();
    labels.join(", ")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    #[value(name = "5.10")]
    V5_10,
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    /// The newest 7.x cloud kernel trixie-backports has (7.3 today).
    #[value(name = "7", alias = "7.3")]
    V7,
    /// The newest 7.x PREEMPT_RT kernel trixie-backports has.
    #[value(name = "7-rt", alias = "7.3-rt")]
    V7Rt,
    /// The kernels marked for CI (see `kernel::KERNELS`).
    All,
}

impl KernelChoice {
    /// The [`kernel::KernelSpec`] label chosen; None for `all`.
    fn label(self) -> Option<&'static str> {
        match self {
            KernelChoice::V5_10 => Some("5.10"),
            KernelChoice::V6_1 => Some("6.1"),
            KernelChoice::V6_12 => Some("6.12"),
            KernelChoice::V7 => Some("7"),
            KernelChoice::V7Rt => Some("7-rt"),
            KernelChoice::All => None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Which Debian kernel(s) to boot.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
    /// QEMU accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// Seconds one boot may run before it counts as hung.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Run these test executables instead of building the affinity-tests
    /// ones (repeatable; AFFINITY_BIN is then target/debug/affinity).
    #[arg(long = "test-exe", value_name = "PATH")]
    pub test_exes: Vec<PathBuf>,
    /// VMs booted at a time (default: under TCG one per host CPU, at most 2; else 1).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

impl VmArgs {
    pub fn all_kernels() -> Self {
        VmArgs {
            kernel: KernelChoice::All,
            accel: AccelChoice::Auto,
            timeout: 900,
            test_exes: Vec::new(),
            jobs: None,
        }
    }
}

pub fn vm_test(args: &VmArgs) -> Result<()> {
    if !bootstrap::is_root() {
        bail!("vm-test needs root: it installs QEMU and virtme-ng and boots VMs");
    }
    let setup = Instant::now();
    let tools = tools::ensure()?;
    let vm_dir = workspace_root().join("target/vm");
    // One vm-test at a time per workspace: the kernel cache, the guest
    // scripts and the logs live here, and its boots already share the
    // host's CPUs (--jobs).
    let _lock = tools::lock(&vm_dir.join(".lock"), "another vm-test in this workspace")?;

    let chosen: Vec<_> = KERNELS
        .iter()
        .filter(|k| args.kernel.label().map_or(k.in_all, |l| k.label == l))
        .collect();
    let kernels = chosen
        .iter()
        .map(|k| kernel::ensure(k, &vm_dir))
        .collect::<Result<Vec<_>>>()?;
    let setup_time = setup.elapsed();

    let bins = if args.test_exes.is_empty() {
        kernel_test_binaries()?
    } else {
        TestBinaries {
            affinity: workspace_root().join("target/debug/affinity"),
            tests: args
                .test_exes
                .iter()
                .map(|p| {
                    let name = p
                        .file_name()
                        .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
                    // Absolute: the guest script runs from tests/.
                    let exe = std::fs::canonicalize(p)
                        .with_context(|| format!("--test-exe {}", p.display()))?;
                    Ok((name, exe))
                })
                .collect::<Result<_>>()?,
        }
    };

    let Some(first) = kernels.first() else {
        bail!("no kernel chosen");
    };
    let (accel, why) = accel::choose_accel(args.accel, &tools, &first.vmlinuz, &vm_dir)?;
    eprintln!("xtask: VMs run under {accel} ({why})");

    let timeout = Duration::from_secs(args.timeout);
    let host_only: Vec<_> = bins
        .tests
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !PROFILES.iter().any(|p| p.runs(n)))
        .collect();
    if !host_only.is_empty() {
        eprintln!(
            "xtask: host-only test targets not run in the VMs: {}",
            host_only.join(", ")
        );
    }
    // Every boot to make, standard ones first: they are the long ones, so
    // with two at a time the short NUMA boots fill in at the end.
    let mut plan = Vec::new();
    for p in PROFILES {
        for k in &kernels {
            let runs: Vec<_> = bins
                .tests
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| p.runs_on(n, k.label))
                .collect();
            plan.push((k, p, runs));
        }
    }
    let jobs = args.jobs.unwrap_or_else(|| default_jobs(accel)).max(1);
    // QEMU inherits this process's CPUs: a narrowed mask (a tool that
    // isolated CPUs and did not give them back) serializes the boots.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "xtask: {jobs} VM(s) at a time (--jobs), on the {cpus} CPU(s) this process may run on"
    );
    let next = AtomicUsize::new(0);
    let outcomes: Vec<Mutex<Option<Result<Booted>>>> =
        plan.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(plan.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((k, p, runs)) = plan.get(i) else {
                        break;
                    };
                    if runs.is_empty() {
                        continue;
                    }
                    let done = boot_one(&tools, &bins, k, p, runs, accel, timeout, &vm_dir);
                    let failed = done.is_err();
                    *outcomes[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(done);
                    if failed {
                        // An error of ours (not a test failure): stop handing out boots.
                        next.store(plan.len(), Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let mut results = Vec::new();
    for ((k, p, runs), outcome) in plan.iter().zip(outcomes) {
        match outcome.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(done) => results.push((*k, *p, Some(done?))),
            None if runs.is_empty() => {
                eprintln!(
                    "\nxtask: VM {}/{}: no test executable for this profile; not booted",
                    k.label, p.name
                );
                results.push((*k, *p, None));
            }
            None => bail!(
                "VM {}/{}: not booted after an earlier error",
                k.label,
                p.name
            ),
        }
    }

    eprintln!(
        "\nxtask: VM results ({accel}; tools and kernels ready in {:.0} s):",
        setup_time.as_secs_f64()
    );
    for (k, p, r) in &results {
        let what = match r {
            Some((o, log)) => summary(o, log),
            None => "not booted: no test executable for this profile".into(),
        };
        eprintln!("  {:<6} {:<9} {:<48} {what}", k.label, p.name, k.package);
    }
    let failed: Vec<_> = results
        .iter()
        .filter(|(_, _, r)| {
            r.as_ref()
                .is_some_and(|(o, _)| o.verdict != Verdict::Passed)
        })
        .map(|(k, p, _)| format!("{}/{}", k.label, p.name))
        .collect();
    if !failed.is_empty() {
        bail!("VM tests failed: {}", failed.join(", "));
    }
    Ok(())
}

/// A boot's outcome and its log.
type Booted = (Outcome, PathBuf);

/// Boots kernel `k` in profile `p` running `runs`.
#[expect(clippy::too_many_arguments, reason = "one boot's inputs, used once")]
fn boot_one(
    tools: &tools::Tools,
    bins: &TestBinaries,
    k: &kernel::Kernel,
    p: &profile::Profile,
    runs: &[&str],
    accel: tools::Accel,
    timeout: Duration,
    vm_dir: &std::path::Path,
) -> Result<Booted> {
    let script = guest::write_script(bins, k.label, p, vm_dir)?;
    let log = vm_dir.join(format!("log-{}-{}.txt", k.label, p.name));
    eprintln!(
        "\nxtask: ==> VM {}/{} ({}): {}, {accel}; {}",
        k.label,
        p.name,
        k.package,
        p.describe(),
        runs.join(", ")
    );
    let outcome = guest::run_with_retry(tools, k, p, &script, accel, timeout, &log)?;
    Ok((outcome, log))
}

/// Boots at a time when `--jobs` is not given: under TCG each QEMU runs
/// its guest on one host thread (thread=single, see guest.rs) and is idle
/// half the time in the tests' waits, so one per host CPU, at most two:
/// measured on 2 cores, one boot kept the machine 40 % busy.
fn default_jobs(accel: tools::Accel) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    match accel {
        tools::Accel::Tcg => cpus.min(2),
        _ => 1,
    }
}

fn summary(o: &Outcome, log: &std::path::Path) -> String {
    let mut s = match &o.verdict {
        Verdict::Passed => "passed".to_string(),
        v => format!("FAILED: {v}"),
    };
    s.push_str(&format!(" in {:.0} s", o.elapsed.as_secs_f64()));
    if let Some(boot) = o.boot {
        s.push_str(&format!(" (guest up after {:.0} s)", boot.as_secs_f64()));
    }
    if o.retried {
        s.push_str(", after one retry (QEMU died before the guest started)");
    }
    if o.verdict != Verdict::Passed {
        s.push_str(&format!("; log: {}", log.display()));
    }
    s
}
