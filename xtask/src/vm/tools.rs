//! The VM tools: QEMU, busybox, kmod and udev from apt; virtme-ng and
//! virtiofsd in a cache outside the repository; the accelerators QEMU can
//! be run with.

use std::{
    ffi::OsString,
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::bootstrap::{ensure_apt, run, say};

const VIRTME_NG: &str = "virtme-ng==1.42";
const VIRTIOFSD: &str = "virtiofsd@1.14.0";
const DEFAULT_CACHE: &str = "/var/cache/affinity-vm";

pub struct Tools {
    pub vng: PathBuf,
    /// PATH for vng: our virtiofsd and the venv first.
    pub path: OsString,
}

/// The cache for virtme-ng and virtiofsd: `$AFFINITY_VM_CACHE` or
/// `/var/cache/affinity-vm` (outside the repository, so clean clones reuse it).
fn cache_dir() -> PathBuf {
    std::env::var_os("AFFINITY_VM_CACHE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
}

/// Installs what is missing; prints one line per install, nothing otherwise.
pub fn ensure() -> Result<Tools> {
    let virtiofsd_build = "virtiofsd is built from source and links it";
    ensure_apt(&[
        (
            "qemu-system-x86",
            "boots the test kernels (virtme-ng drives it)",
        ),
        (
            "busybox-static",
            "virtme-ng builds the guest's initramfs from it",
        ),
        ("kmod", "depmod for the trimmed kernel module trees"),
        (
            "udev",
            "without host udev rules the guest cannot find its virtio serial ports",
        ),
        (
            "python3-venv",
            "virtme-ng is not packaged by Debian; it goes into a venv",
        ),
        ("libcap-ng-dev", virtiofsd_build),
        ("libseccomp-dev", virtiofsd_build),
        (
            "pkg-config",
            "virtiofsd's build finds its libraries with it",
        ),
    ])?;

    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let _lock = lock(&cache.join(".lock"), "another vm-test installing VM tools")?;

    // Versioned directories: a version bump installs next to the old one.
    let venv = cache.join(VIRTME_NG.replace("==", "-"));
    let vng = venv.join("bin/vng");
    let venv_done = venv.join(".affinity-complete");
    if !venv_done.exists() || !vng.exists() {
        say(
            &format!("{VIRTME_NG} into {}", venv.display()),
            "boots the kernel tests in VMs on Debian's cloud kernels",
        );
        if venv.exists() {
            fs::remove_dir_all(&venv)
                .with_context(|| format!("removing the half-made {}", venv.display()))?;
        }
        // Debian's interpreter, not whatever `python3` is first on PATH
        // (pyenv...): the cached venv must outlive the shell it was made in.
        run(Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv))
        .context("creating the virtme-ng venv")?;
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            VIRTME_NG,
        ]))
        .with_context(|| format!("pip install {VIRTME_NG}"))?;
        fs::write(&venv_done, VIRTME_NG)?;
    }

    let fsd_root = cache.join(VIRTIOFSD.replace('@', "-"));
    if !fsd_root.join("bin/virtiofsd").exists() {
        say(
            &format!(
                "{VIRTIOFSD} into {} (cargo install, ~2-3 min)",
                fsd_root.display()
            ),
            "shares the host's filesystem with the guest (Debian's C virtiofsd fails under vng)",
        );
        // Out of the workspace, so its .cargo/config and toolchain do not apply.
        run(Command::new("cargo")
            .args(["install", "--locked", "--quiet", "--root"])
            .arg(&fsd_root)
            .arg(VIRTIOFSD)
            .current_dir(&cache)
            .env_remove("CARGO_TARGET_DIR"))
        .with_context(|| format!("cargo install {VIRTIOFSD}"))?;
    }

    let mut dirs = vec![fsd_root.join("bin"), venv.join("bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(dirs).context("PATH with the VM tools")?;
    Ok(Tools { vng, path })
}

/// An exclusive lock held until the file is dropped; says whom it waits for.
pub fn lock(path: &Path, holder: &str) -> Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("xtask: waiting for {holder} ({})", path.display());
        // SAFETY: as above; blocks until the holder exits.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

/// How QEMU runs the guest; [`super::accel`] decides which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG emulation",
        })
    }
}
