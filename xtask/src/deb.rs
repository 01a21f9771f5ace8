//! `cargo xtask deb`: a Debian package with what `cargo xtask install
//! --prefix /usr` installs, built by cargo-deb from the metadata in
//! affinity-user/Cargo.toml.
//!
//! The files are staged by [`install_from`] under TARGET/release/deb-root,
//! where the `[package.metadata.deb]` assets point, so the package and a
//! plain install can never differ.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    bootstrap::{self, output, run},
    build::{self, BuildArgs, workspace_root},
    install::install_from,
};

#[derive(Debug, clap::Args)]
pub struct DebArgs {
    /// Package this binary instead of building the release one (not stripped).
    #[arg(long, hide = true)]
    pub binary: Option<PathBuf>,
}

/// The target directory cargo and cargo-deb use (`CARGO_TARGET_DIR`, or
/// the workspace's `target/`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || workspace_root().join("target"),
        |d| workspace_root().join(d),
    )
}

/// Stages `binary` and its files under `target`/release/deb-root and runs
/// cargo-deb there; returns the package's path (in `target`/debian).
pub fn package(binary: &Path, target: &Path, strip: bool) -> Result<PathBuf> {
    let root = target.join("release/deb-root");
    match fs::remove_dir_all(&root) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", root.display()));
        }
        _ => {}
    }
    install_from(binary, Path::new("/usr"), Some(&root))?;
    if strip {
        // cargo-deb strips only binaries it built itself; this is a copy.
        // The release profile keeps line tables: 36 MB unstripped.
        run(Command::new("strip")
            .arg("--strip-unneeded")
            .arg(root.join("usr/bin/affinity")))
        .context("stripping the packaged binary")?;
    }
    let out_dir = target.join("debian");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "deb",
        "--package",
        "affinity-user",
        "--no-build",
        "--output",
    ])
    .arg(&out_dir)
    .current_dir(workspace_root())
    .env("CARGO_TARGET_DIR", target);
    cmd.arg("--no-strip");
    // cargo-deb prints the package's path last.
    let printed = output(&mut cmd).context("cargo deb")?;
    let Some(deb) = printed
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
    else {
        bail!("cargo deb named no package: {printed}");
    };
    Ok(PathBuf::from(deb))
}

pub fn deb(args: &DebArgs) -> Result<()> {
    bootstrap::ensure_cargo_deb()?;
    let (binary, strip) = match &args.binary {
        Some(b) => (b.clone(), false),
        None => (build::build(&BuildArgs { release: true })?, true),
    };
    let deb = package(&binary, &target_dir(), strip)?;
    eprintln!("xtask: built {}", deb.display());
    eprintln!("xtask: install with `dpkg -i {}`", deb.display());
    Ok(())
}

#[cfg(test)]
#[path = "deb_tests.rs"]
mod tests;
