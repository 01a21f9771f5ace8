//! Building the `affinity` binary (with its embedded eBPF object) and the
//! kernel test binaries, and `cargo xtask run`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::bootstrap::{self, run};

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
    /// Arguments for `affinity run` (after `--`), e.g. `-- --observe --format json`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A cargo command in the workspace that must embed a real eBPF object.
pub fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args)
        .current_dir(workspace_root())
        .env("AFFINITY_REQUIRE_EBPF", "1")
        .env_remove("AFFINITY_SKIP_EBPF");
    cmd
}

/// Builds `affinity` and returns the path of the binary.
pub fn build(args: &BuildArgs) -> Result<PathBuf> {
    bootstrap::ensure_ebpf_toolchain()?;
    let mut cmd = cargo(&["build", "--package", "affinity-user", "--bin", "affinity"]);
    if args.release {
        cmd.arg("--release");
    }
    run(&mut cmd).context("building affinity")?;
    let profile = if args.release { "release" } else { "debug" };
    // A relative CARGO_TARGET_DIR is relative to where cargo runs: the workspace.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || workspace_root().join("target"),
        |d| workspace_root().join(d),
    );
    Ok(target.join(profile).join("affinity"))
}

pub fn run_daemon(args: RunArgs) -> Result<()> {
    let bin = build(&BuildArgs {
        release: args.release,
    })?;
    // The daemon needs root (BPF, sched_setaffinity on kthreads); say so
    // instead of failing deep inside the loader.
    let mut cmd = if bootstrap::is_root() {
        Command::new(&bin)
    } else {
        if bootstrap::on_path("sudo").is_none() {
            bail!(
                "`affinity run` needs root (BPF and sched_setaffinity); run `cargo xtask run` as root"
            );
        }
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    };
    cmd.arg("run").args(&args.args);
    eprintln!("xtask: {cmd:?}");
    // Ctrl-C reaches the daemon through the terminal's process group. We
    // must outlive it to pass its exit status on, so xtask catches SIGINT
    // and SIGTERM with a handler that does nothing (a caught signal is reset
    // to its default in the child at exec, unlike an ignored one).
    extern "C" fn wait_for_the_daemon(_: libc::c_int) {}
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing an async-signal-safe no-op handler.
        unsafe { libc::signal(sig, wait_for_the_daemon as *const () as libc::sighandler_t) };
    }
    let status = cmd.status().context("starting affinity")?;
    match status.code() {
        Some(0) => Ok(()),
        _ => bail!("affinity run exited with {status}"),
    }
}

/// The integration test executables of the `affinity-tests` crate, and the
/// `affinity` binary they drive.
pub struct TestBinaries {
    pub affinity: PathBuf,
    /// (test target name, executable)
    pub tests: Vec<(String, PathBuf)>,
}

pub fn kernel_test_binaries() -> Result<TestBinaries> {
    // The daemon the kernel tests drive is the release build: what users
    // run, and under TCG a debug daemon took twice as long to start
    // (0.66 s against 0.33 s on this host), some 30 times per kernel.
    let affinity = build(&BuildArgs { release: true })?;
    let out = bootstrap::output(&mut cargo(&[
        "test",
        "--package",
        "affinity-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]))
    .context("building the kernel tests")?;
    let mut tests = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test_target = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if msg["reason"] != "compiler-artifact" || !is_test_target {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            tests.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    if tests.is_empty() {
        bail!("cargo built no test executable for affinity-tests");
    }
    tests.sort();
    Ok(TestBinaries { affinity, tests })
}
