//! The VM tools: QEMU, busybox, kmod and udev from apt; virtme-ng and
//! virtiofsd in a cache outside the repository; and which accelerator QEMU
//! can really use here.

use std::{
    ffi::OsString,
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::AccelChoice;
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
            "boots the kernel tests in VMs on Debian's 6.1 and 6.12 kernels",
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Decides the accelerator and says why.
///
/// `/dev/kvm` existing proves nothing here: it is a nested device QEMU
/// aborts on (`failed to set MSR 0x10a`). The probe first runs 8 bytes of
/// real-mode guest code under KVM (~50 ms); only if that works does a full
/// vng boot of `true` confirm it.
pub fn choose_accel(
    choice: AccelChoice,
    tools: &Tools,
    vmlinuz: &Path,
    vm_dir: &Path,
) -> Result<(Accel, String)> {
    match choice {
        AccelChoice::Kvm => return Ok((Accel::Kvm, "--accel kvm".into())),
        AccelChoice::Tcg => return Ok((Accel::Tcg, "--accel tcg".into())),
        AccelChoice::Auto => {}
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok((Accel::Tcg, "no usable /dev/kvm".into()));
    }
    if let Err(e) = probe_kvm_cpu(vm_dir) {
        return Ok((
            Accel::Tcg,
            format!("/dev/kvm is present but QEMU cannot run a guest with it: {e:#}"),
        ));
    }
    let probe = super::guest::write_probe(vm_dir)?;
    let vm = super::guest::Vm {
        tools,
        vmlinuz,
        profile: &super::profile::STANDARD,
        accel: Accel::Kvm,
    };
    let boot = super::guest::boot(&vm, &probe, Duration::from_secs(120), None, "kvm-probe")?;
    if boot.code == Some(0) && boot.guest_started.is_some() {
        Ok((Accel::Kvm, "a KVM probe boot worked".into()))
    } else {
        Ok((
            Accel::Tcg,
            format!(
                "QEMU runs guest code with KVM, but a vng boot with it failed (exit {:?})",
                boot.code
            ),
        ))
    }
}

/// Runs `mov al, 0x2a; out 0xf4, al; hlt` as the firmware under KVM: QEMU's
/// isa-debug-exit then exits with (0x2a << 1) | 1 = 85.
fn probe_kvm_cpu(vm_dir: &Path) -> Result<()> {
    let mut bios = vec![0u8; 64 * 1024];
    // The reset vector, F000:FFF0; then cli; hlt; jmp back to the hlt.
    let code = [0xb0, 0x2a, 0xe6, 0xf4, 0xfa, 0xf4, 0xeb, 0xfd];
    bios[0xfff0..0xfff0 + code.len()].copy_from_slice(&code);
    fs::create_dir_all(vm_dir)?;
    let bios_path = vm_dir.join("kvm-probe.bin");
    fs::write(&bios_path, &bios).with_context(|| format!("writing {}", bios_path.display()))?;
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-cpu", "host", "-m", "16", "-display", "none",
        ])
        .args(["-nodefaults", "-no-reboot", "-bios"])
        .arg(&bios_path)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("QEMU with KVM did not run 8 instructions in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.code() == Some(85) {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .map_or_else(|| format!("QEMU exited with {status}"), str::to_string);
    bail!("{}", first.trim_start_matches("qemu-system-x86_64: "))
}
