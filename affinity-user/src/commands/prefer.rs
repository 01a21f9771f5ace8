//! `affinity prefer` / `affinity unprefer`: runtime registration through the
//! running daemon, the userspace side of `kthread_affine_preferred()` and the
//! `_update()` variant its review asked for.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};

use crate::{
    daemon::control::{self, Request},
    input::BadInput,
};

#[derive(Debug, clap::Args)]
pub struct PreferArgs {
    /// The kthread: a pid, or a comm (or glob) such as `khugepaged`.
    #[arg(required_unless_present = "list")]
    pub target: Option<String>,
    /// Preferred CPUs: a cpulist (`0-3`), `housekeeping`, `node` or `node:N`.
    #[arg(required_unless_present = "list")]
    pub cpus: Option<String>,
    /// Change an existing registration; without it, registering twice fails.
    #[arg(long)]
    pub update: bool,
    /// List the running daemon's registrations (target, CPUs, kthreads, who).
    #[arg(long, conflicts_with_all = ["target", "cpus", "update"])]
    pub list: bool,
    #[command(flatten)]
    pub output: super::OutputArgs,
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct UnpreferArgs {
    /// The kthread: a pid or a comm.
    pub target: String,
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

fn call(socket: &std::path::Path, request: Request) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let response = rt.block_on(control::call(socket, &request))?;
    if response.ok {
        println!("{}", response.message);
        Ok(ExitCode::SUCCESS)
    } else {
        // The daemon refused what we asked: an unknown kthread, a double
        // registration, a bad CPU list. That is the user's input.
        Err(BadInput::err(response.message))
    }
}

pub fn run_prefer(args: PreferArgs) -> Result<ExitCode> {
    let (Some(target), Some(cpus)) = (args.target, args.cpus) else {
        // clap requires both unless --list, which excludes them.
        return super::status::list_registrations(&args.socket, args.output.is_json());
    };
    // An empty list would prefer nothing: refused here, before any daemon is asked.
    if cpus.trim().is_empty() {
        return Err(BadInput::err(format!(
            "prefer {target} \"\": an empty CPU list prefers nothing; give CPUs (0-3), housekeeping, node or node:N, or use `affinity unprefer {target}` to remove a preference"
        )));
    }
    call(
        &args.socket,
        Request::Prefer {
            target,
            prefer: cpus,
            update: args.update,
        },
    )
}

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// `affinity reload`: the daemon reads its rules file again (as on SIGHUP)
/// and says what changed, or why nothing did.
pub fn run_reload(args: ReloadArgs) -> Result<ExitCode> {
    call(&args.socket, Request::Reload)
}

pub fn run_unprefer(args: UnpreferArgs) -> Result<ExitCode> {
    call(
        &args.socket,
        Request::Unprefer {
            target: args.target,
        },
    )
}
