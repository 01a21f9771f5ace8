//! `cargo xtask`: the project's build, run, test and benchmark driver.
//!
//! Every command first makes sure the tools it needs are installed
//! ([`bootstrap`]), so a fresh machine needs nothing but this repository.

mod bench;
mod bootstrap;
mod build;
mod deb;
mod install;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark affinity"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the eBPF toolchain if missing and build the `affinity` binary.
    Build(build::BuildArgs),
    /// Build, then run `affinity run` as root with a live report (Ctrl-C stops it).
    Run(build::RunArgs),
    /// Everything CI runs: fmt, clippy, unit tests, host kernel tests, VM tests.
    Test(test::TestArgs),
    /// Run the kernel tests inside virtme-ng VMs on Debian's cloud kernels (5.10 to the newest 7.x).
    VmTest(vm::VmArgs),
    /// Benchmarks (root): hot-path overhead, program cost, hotplug reaction, idle cost, scale.
    Bench(bench::BenchArgs),
    /// Build the release binary and install it with its systemd unit, config, man pages and completions.
    Install(install::InstallArgs),
    /// Build a Debian package (cargo-deb) with what `install --prefix /usr` installs.
    Deb(deb::DebArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Build(args) => build::build(&args).map(drop),
        Command::Run(args) => build::run_daemon(args),
        Command::Test(args) => test::test(args),
        Command::VmTest(args) => vm::vm_test(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Install(args) => install::install(&args),
        Command::Deb(args) => deb::deb(&args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
