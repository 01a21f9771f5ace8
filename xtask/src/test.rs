//! `cargo xtask test`: everything CI runs, in the order that fails fastest.

use std::{process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{
    bootstrap::{self, EBPF_TOOLCHAIN, run},
    build::{cargo, kernel_test_binaries, workspace_root},
    vm,
};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the virtme-ng VM tests (they take a few minutes per kernel).
    #[arg(long)]
    pub no_vm: bool,
    /// Only the host-side checks: fmt, clippy and unit tests; no root needed.
    #[arg(long)]
    pub unit_only: bool,
}

/// Prints a step's name, and how long the whole run has taken so far, so
/// CI logs show where the time goes.
fn step(started: Instant, name: &str) {
    eprintln!(
        "\nxtask: ==> {name} (at {:.0} s)",
        started.elapsed().as_secs_f64()
    );
}

pub fn test(args: TestArgs) -> Result<()> {
    let started = Instant::now();
    bootstrap::ensure_ebpf_toolchain()?;

    step(started, "cargo fmt --check");
    run(&mut cargo(&["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;

    step(started, "clippy: host crates");
    run(&mut cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    step(started, "clippy: eBPF crate for bpfel-unknown-none");
    let mut ebpf_clippy = Command::new("rustup");
    ebpf_clippy
        .args([
            "run",
            EBPF_TOOLCHAIN,
            "cargo",
            "clippy",
            "--package",
            "affinity-ebpf",
            "--release",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(workspace_root().join("target/ebpf"))
        .args(["--", "-D", "warnings"])
        .current_dir(workspace_root().join("affinity-ebpf"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO") || key.starts_with("RUSTC") || key == "RUSTUP_TOOLCHAIN" {
            ebpf_clippy.env_remove(key);
        }
    }
    run(&mut ebpf_clippy)?;

    step(started, "unit, property and CLI tests");
    bootstrap::ensure_packaging_tools()?;
    run(&mut cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "affinity-tests",
    ]))?;
    if args.unit_only {
        return Ok(());
    }

    step(
        started,
        "kernel tests on this host (root, BPF, hotplug of cpu1; one thread)",
    );
    if !bootstrap::is_root() {
        bail!(
            "the kernel tests need root (BPF, sched_setaffinity, CPU hotplug); run as root, or pass --unit-only"
        );
    }
    let bins = kernel_test_binaries()?;
    let mut failed = Vec::new();
    for (name, exe) in &bins.tests {
        // vm_* targets assert a VM's isolcpus setup; they run in vm-test.
        if name.starts_with("vm_") {
            continue;
        }
        eprintln!("xtask: running {name}");
        let status = Command::new(exe)
            .arg("--test-threads=1")
            .env("AFFINITY_BIN", &bins.affinity)
            .status()
            .with_context(|| format!("starting {}", exe.display()))?;
        if !status.success() {
            failed.push(name.clone());
        }
    }
    if !failed.is_empty() {
        bail!("kernel tests failed on the host: {}", failed.join(", "));
    }

    if !args.no_vm {
        step(
            started,
            &format!(
                "kernel tests in virtme-ng VMs (Debian kernels {})",
                vm::all_labels()
            ),
        );
        vm::vm_test(&vm::VmArgs::all_kernels())?;
    }
    eprintln!("\nxtask: all tests passed in {:.0?}", started.elapsed());
    Ok(())
}
