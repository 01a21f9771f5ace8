//! Detects and installs the tools the build and the tests need, so a fresh
//! machine of the supported kind (Debian 12, root) needs nothing by hand.
//!
//! Every install prints one line saying what and why; a second run finds
//! everything present and prints nothing.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The nightly toolchain the eBPF crate is built with (build-std needs it).
pub const EBPF_TOOLCHAIN: &str = "nightly";
/// bpf-linker's LLVM must be the one nightly's rustc uses.
const LLVM_MAJOR: u32 = 22;

pub fn say(what: &str, why: &str) {
    eprintln!("xtask: installing {what}: {why}");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command, failing with its full command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn on_path(bin: &str) -> Option<PathBuf> {
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .chain(cargo_home().map(|h| h.join("bin")))
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
}

pub fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

/// Installs the Debian packages that are missing, each `(package, why)`.
pub fn ensure_apt(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<_> = packages
        .iter()
        .filter(|(p, _)| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (pkg, why) in &missing {
        say(&format!("Debian package {pkg}"), why);
    }
    if !is_root() {
        bail!(
            "these Debian packages are missing and installing them needs root: {}",
            missing
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let names: Vec<_> = missing.iter().map(|(p, _)| *p).collect();
    let install = |update: bool| -> Result<()> {
        if update {
            run(Command::new("apt-get").args(["update", "-q"]))?;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&names)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    // A fresh image may have stale package lists: update only when needed.
    install(false)
        .or_else(|_| install(true))
        .with_context(|| format!("installing Debian packages {}", names.join(" ")))
}

/// nightly + rust-src, LLVM 22 and bpf-linker: what building the eBPF crate needs.
pub fn ensure_ebpf_toolchain() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        say(
            &format!("Rust toolchain {EBPF_TOOLCHAIN}"),
            "the eBPF crate is built with -Z build-std",
        );
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
        ]))
        .context("no nightly toolchain, and rustup could not install one")?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        say(
            "rust-src for nightly",
            "build-std compiles `core` for bpfel-unknown-none from source",
        );
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }
    let rustc_llvm = output(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "-vV"]))?;
    let llvm = rustc_llvm
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        .context("cannot tell which LLVM nightly's rustc uses")?;
    if llvm != LLVM_MAJOR {
        bail!(
            "nightly's rustc uses LLVM {llvm}, but bpf-linker is built against LLVM {LLVM_MAJOR} here; install a nightly with LLVM {LLVM_MAJOR}"
        );
    }
    if on_path("bpf-linker").is_none() {
        let why = "bpf-linker is built from source against it";
        ensure_apt(&[
            (&format!("llvm-{LLVM_MAJOR}-dev"), why),
            (&format!("libpolly-{LLVM_MAJOR}-dev"), why),
            ("zlib1g-dev", why),
            ("libzstd-dev", why),
        ])?;
        say(
            "bpf-linker (cargo install, ~90 s)",
            "links the eBPF crate into a BPF object",
        );
        let path = format!(
            "/usr/lib/llvm-{LLVM_MAJOR}/bin:{}",
            env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{LLVM_MAJOR}"))
            .env("PATH", path))?;
    }
    Ok(())
}

/// The Kubernetes schema validator, with the schemas bundled (it works
/// offline), pinned so the verdict does not move under us.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Where it goes: outside the repository, so clean clones reuse it.
/// affinity-user/tests/deploy.rs looks for it there.
const KUBERNETES_VALIDATE_VENV: &str = "/var/cache/affinity-tools/kubernetes-validate";

/// What the packaging tests (`affinity-user/tests/systemd_unit.rs`,
/// `generate.rs`, `deploy.rs`, xtask's deb tests) run; they fail without
/// it rather than skip.
pub fn ensure_packaging_tools() -> Result<()> {
    // `test --unit-only` needs no root; without it the tests name what is
    // missing (and the venv's tests skip, outside CI).
    if !is_root() {
        return ensure_cargo_deb();
    }
    ensure_apt(&[
        (
            "systemd",
            "systemd-analyze verifies the systemd unit and rates its exposure",
        ),
        (
            "man-db",
            "`man -l` checks that the generated man pages render",
        ),
        (
            "python3-venv",
            "kubernetes-validate (PyPI) goes into a venv of its own",
        ),
    ])?;
    ensure_kubernetes_validate()?;
    ensure_cargo_deb()
}

fn ensure_kubernetes_validate() -> Result<()> {
    let venv = Path::new(KUBERNETES_VALIDATE_VENV);
    let done = venv.join(".affinity-complete");
    if std::fs::read_to_string(&done).is_ok_and(|v| v == KUBERNETES_VALIDATE) {
        return Ok(());
    }
    say(
        &format!("{KUBERNETES_VALIDATE} into {}", venv.display()),
        "validates deploy/daemonset.yaml against the Kubernetes schema, offline",
    );
    if venv.exists() {
        std::fs::remove_dir_all(venv)
            .with_context(|| format!("removing the old {}", venv.display()))?;
    }
    // Debian's interpreter, not whatever `python3` is first on PATH.
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(venv))
    .context("creating the kubernetes-validate venv")?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]))
    .with_context(|| format!("pip install {KUBERNETES_VALIDATE}"))?;
    std::fs::write(&done, KUBERNETES_VALIDATE)
        .with_context(|| format!("writing {}", done.display()))
}

/// cargo-deb, which `cargo xtask deb` and its test package with.
const CARGO_DEB: &str = "3.8.0";

pub fn ensure_cargo_deb() -> Result<()> {
    if on_path("cargo-deb").is_some() {
        return Ok(());
    }
    say(
        &format!("cargo-deb {CARGO_DEB} (cargo install, ~2 min)"),
        "builds the Debian package (`cargo xtask deb`)",
    );
    // Out of the workspace, so its .cargo/config does not apply.
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "--quiet",
            "cargo-deb",
            "--version",
            CARGO_DEB,
        ])
        .current_dir(env::temp_dir())
        .env_remove("CARGO_TARGET_DIR"))
    .with_context(|| format!("cargo install cargo-deb {CARGO_DEB}"))
}
