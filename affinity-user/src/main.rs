#![allow(
    unused_crate_dependencies,
    reason = "a binary, test or bench target of affinity-user sees the library's dependencies too"
)]
use std::process::ExitCode;

use affinity::commands::{self, BadInput};
use clap::{CommandFactory as _, Parser, Subcommand};

/// Observe and enforce preferred CPU affinity of Linux kernel threads.
#[derive(Parser)]
#[command(name = "affinity", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: load the eBPF observer, apply the policy, report live.
    Run(commands::run::RunArgs),
    /// Apply the policy once and exit (no daemon, nothing follows hotplug).
    Apply(commands::apply::ApplyArgs),
    /// Validate a configuration file (exit 2 listing every error).
    Check(commands::check::CheckArgs),
    /// Print this machine's CPU and kthread state as JSON.
    Snapshot(commands::snapshot::SnapshotArgs),
    /// Show what the policy would do, optionally after hypothetical hotplug or isolation.
    Plan(commands::plan::PlanArgs),
    /// List kthreads with their preferred, applied and actual masks.
    Status(commands::status::StatusArgs),
    /// Exit 0 when every managed kthread is where the policy puts it, 1 listing the drift.
    Verify(commands::status::StatusArgs),
    /// Print the embedded default policy as a rules file (`config --default`).
    Config(commands::config::ConfigArgs),
    /// Register (or with --update, change) a kthread's preferred CPUs in the running daemon.
    Prefer(commands::prefer::PreferArgs),
    /// Remove a kthread's runtime preference from the running daemon.
    Unprefer(commands::prefer::UnpreferArgs),
    /// Make the running daemon read its rules file again (as SIGHUP does).
    Reload(commands::prefer::ReloadArgs),
    /// With no daemon running, give the masks it left back to the kernel's own policy.
    Restore(commands::restore::RestoreArgs),
    /// Check what this kernel and process give the daemon; exit 1 naming what the default policy lacks.
    Doctor(commands::doctor::DoctorArgs),
    /// Write man pages or shell completions (for installers and packages).
    #[command(hide = true)]
    Generate(commands::generate::GenerateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // Like every Unix filter: `affinity status | head -1` ends quietly
        // when head is done. The daemon keeps Rust's default (SIGPIPE
        // ignored): a reader going away must never stop enforcement.
        // SAFETY: setting a signal's disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Apply(args) => commands::apply::run(args),
        Command::Check(args) => commands::check::run(args),
        Command::Snapshot(args) => commands::snapshot::run(args),
        Command::Plan(args) => commands::plan::run(args),
        Command::Status(args) => commands::status::run(args),
        Command::Verify(args) => commands::status::verify(args),
        Command::Config(args) => commands::config::run(args),
        Command::Prefer(args) => commands::prefer::run_prefer(args),
        Command::Unprefer(args) => commands::prefer::run_unprefer(args),
        Command::Reload(args) => commands::prefer::run_reload(args),
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Restore(args) => commands::restore::run(args),
        Command::Generate(args) => commands::generate::run(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("affinity: error: {e:#}");
            if e.chain().any(|c| c.is::<BadInput>()) {
                ExitCode::from(commands::EXIT_BAD_INPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
