//! `cargo xtask vm-test`: the kernel tests inside virtme-ng VMs booting
//! Debian's 6.1 and 6.12 cloud kernels, with 4 vCPUs and CPUs 2-3 isolated.
//!
//! The kernels are downloaded once into `target/vm/kernels`; virtme-ng and
//! virtiofsd go to a cache outside the repository (`/var/cache/affinity-vm`)
//! so clean clones reuse them. On these machines QEMU cannot use /dev/kvm
//! (see shared/VM.md), so a short probe decides, and TCG is the fallback.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bootstrap::{self, ensure_apt, output, run, say},
    build::{TestBinaries, kernel_test_binaries, workspace_root},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    All,
}

#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Which Debian kernel(s) to boot.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
    /// Seconds one VM may run before it counts as hung.
    #[arg(long, default_value_t = 1200)]
    pub timeout: u64,
}

impl VmArgs {
    pub fn all_kernels() -> Self {
        VmArgs {
            kernel: KernelChoice::All,
            timeout: 1200,
        }
    }
}

/// A Debian kernel to boot: our label and the meta package that names the
/// current image (names change with every security update).
struct DebianKernel {
    label: &'static str,
    meta: &'static str,
}

const KERNELS: [DebianKernel; 2] = [
    DebianKernel {
        label: "6.1",
        meta: "linux-image-cloud-amd64",
    },
    DebianKernel {
        label: "6.12",
        meta: "linux-image-6.12-cloud-amd64",
    },
];

const CACHE: &str = "/var/cache/affinity-vm";
const VIRTME_NG: &str = "virtme-ng==1.42";
const VIRTIOFSD: &str = "virtiofsd@1.14.0";
/// Printed by the guest script first: a failure after it is a test failure,
/// never a QEMU crash to retry.
const GUEST_MARKER: &str = "affinity-vm-guest: started";

struct Tools {
    vng: PathBuf,
    path: String,
}

fn ensure_tools() -> Result<Tools> {
    let why_qemu = "boots the test kernels (virtme-ng drives it)";
    ensure_apt(&[
        ("qemu-system-x86", why_qemu),
        (
            "busybox-static",
            "virtme-ng builds the guest's initramfs from it",
        ),
        ("kmod", "depmod for the trimmed kernel module trees"),
        (
            "udev",
            "the guest finds its virtio serial ports through host udev rules",
        ),
        (
            "libcap-ng-dev",
            "virtiofsd is built from source and links it",
        ),
        (
            "libseccomp-dev",
            "virtiofsd is built from source and links it",
        ),
        (
            "pkg-config",
            "virtiofsd's build finds its libraries with it",
        ),
    ])?;
    let cache = Path::new(CACHE);
    fs::create_dir_all(cache).with_context(|| format!("creating {CACHE}"))?;
    let venv = cache.join("venv");
    let vng = venv.join("bin/vng");
    if !vng.exists() {
        say(
            &format!("{VIRTME_NG} into {}", venv.display()),
            "runs the kernel tests in a VM on Debian's 6.1 and 6.12 kernels",
        );
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args(["install", "-q", VIRTME_NG]))?;
    }
    let fsd_root = cache.join("virtiofsd");
    if !fsd_root.join("bin/virtiofsd").exists() {
        say(
            &format!("{VIRTIOFSD} (cargo install, ~2 min)"),
            "shares the host's filesystem with the guest (Debian's is too old for vng)",
        );
        run(Command::new("cargo")
            .args(["install", "--locked", "--quiet", "--root"])
            .arg(&fsd_root)
            .arg(VIRTIOFSD))?;
    }
    let path = format!(
        "{}:{}:{}",
        fsd_root.join("bin").display(),
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Ok(Tools { vng, path })
}

/// The image package the meta package currently points at, unsigned flavour.
fn resolve_package(meta: &str) -> Result<String> {
    let deps = output(Command::new("apt-cache").args(["depends", meta]))
        .with_context(|| format!("asking apt which kernel {meta} points at (is the package list current? `apt-get update`)"))?;
    let image = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .with_context(|| format!("{meta} depends on no linux-image-*-cloud-amd64 package"))?;
    Ok(format!("{image}-unsigned"))
}

/// Modules the guest needs: the root overlay, virtio devices, virtiofs.
/// Everything else is dropped: under emulation, guest udev loading kvm,
/// ahci and friends doubles the boot time.
const KEEP_MODULES: &[&str] = &[
    "overlay",
    "virtio",
    "fuse",
    "virtiofs",
    "9p",
    "netfs",
    "failover",
    "net_failover",
];

fn ensure_kernel(k: &DebianKernel) -> Result<(String, PathBuf)> {
    let pkg = resolve_package(k.meta)?;
    let root = workspace_root().join("target/vm/kernels");
    let tree = root.join(&pkg);
    let ready = tree.join(".affinity-ready");
    // The marker records what the tree was trimmed to: a changed list re-extracts.
    let stamp = format!("{pkg} {}", KEEP_MODULES.join(","));
    if fs::read_to_string(&ready).ok().as_deref() != Some(stamp.as_str()) {
        fs::create_dir_all(&root)?;
        say(
            &format!("kernel {pkg} into {}", tree.display()),
            &format!("the {} VM boots it", k.label),
        );
        if !root.read_dir()?.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{pkg}_"))
        }) {
            run(Command::new("apt-get")
                .args(["download", "-q", &pkg])
                .current_dir(&root))
            .with_context(|| format!("apt-get download {pkg}"))?;
        }
        let deb = root
            .read_dir()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
            })
            .with_context(|| {
                format!("apt-get download {pkg} left no .deb in {}", root.display())
            })?;
        let _ = fs::remove_dir_all(&tree);
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;
        trim_modules(&tree)?;
        fs::write(&ready, &stamp)?;
    }
    let vmlinuz = fs::read_dir(tree.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}/boot", tree.display()))?;
    Ok((pkg, vmlinuz))
}

fn trim_modules(tree: &Path) -> Result<()> {
    let modules = tree.join("lib/modules");
    let Some(version) = fs::read_dir(&modules)?
        .flatten()
        .next()
        .map(|e| e.file_name())
    else {
        bail!("no module tree under {}", modules.display());
    };
    let base = modules.join(&version);
    let mut stack = vec![base.join("kernel")];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                if !KEEP_MODULES.iter().any(|k| name.starts_with(k)) {
                    fs::remove_file(&p)?;
                }
            }
        }
    }
    run(Command::new("depmod").arg("-b").arg(tree).arg(&version))
}

/// Writes the script the guest runs: every test executable, one thread each.
fn guest_script(bins: &TestBinaries, label: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target/vm");
    fs::create_dir_all(&dir)?;
    let ci = std::env::var("CI").unwrap_or_default();
    let mut s = format!(
        "#!/bin/sh\necho '{GUEST_MARKER}'\nexport AFFINITY_BIN='{}' AFFINITY_VM=1 AFFINITY_VM_KERNEL='{label}' CI='{ci}'\n\
         echo \"kernel $(uname -r), cpus $(cat /sys/devices/system/cpu/online), isolated $(cat /sys/devices/system/cpu/isolated)\"\nrc=0\n",
        bins.affinity.display()
    );
    // host_* targets need what a virtme-ng guest cannot do (see their docs).
    for (name, exe) in bins.tests.iter().filter(|(n, _)| !n.starts_with("host_")) {
        s.push_str(&format!(
            "echo '== {name}'\n'{}' --test-threads=1 || rc=1\n",
            exe.display()
        ));
    }
    s.push_str("exit $rc\n");
    let path = dir.join(format!("guest-{label}.sh"));
    fs::write(&path, s)?;
    Ok(path)
}

struct Boot {
    code: i32,
    timed_out: bool,
    guest_started: bool,
    elapsed: Duration,
}

fn boot(
    tools: &Tools,
    vmlinuz: &Path,
    script: &Path,
    kvm: bool,
    timeout: Duration,
    quiet: bool,
) -> Result<Boot> {
    let mut cmd = Command::new(&tools.vng);
    if kvm {
        cmd.arg("--force-kvm");
    } else {
        // One TCG thread: multi-threaded TCG crashed QEMU 7.2 early in boot now and then.
        cmd.args(["--disable-kvm", "--qemu-opts=-accel tcg,thread=single"]);
    }
    cmd.arg("-r")
        .arg(vmlinuz)
        .args([
            "--cpus",
            "4",
            "--memory",
            "2G",
            "--append",
            "isolcpus=2,3 nohz_full=2,3",
            "--rwdir",
        ])
        .arg(workspace_root().join("target/vm"))
        .arg("--")
        .arg("sh")
        .arg(script)
        .env("PATH", &tools.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting vng")?;
    let started = Arc::new(Mutex::new(false));
    let mut readers = Vec::new();
    for (stream, is_err) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            false,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            true,
        ),
    ] {
        let Some(stream) = stream else { continue };
        let started = started.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if line.contains(GUEST_MARKER) {
                    *started.lock().unwrap() = true;
                }
                if !quiet {
                    if is_err {
                        eprintln!("[vm] {line}");
                    } else {
                        println!("[vm] {line}");
                    }
                }
            }
        }));
    }
    let (code, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (status.code().unwrap_or(255), false);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break (124, true);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in readers {
        let _ = r.join();
    }
    let guest_started = *started.lock().unwrap();
    Ok(Boot {
        code,
        timed_out,
        guest_started,
        elapsed: start.elapsed(),
    })
}

/// Whether QEMU really runs guests with KVM here: a tiny boot with a short
/// limit. On these machines /dev/kvm exists but QEMU aborts with it.
fn kvm_works(tools: &Tools, vmlinuz: &Path) -> Result<bool> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let dir = workspace_root().join("target/vm");
    fs::create_dir_all(&dir)?;
    let probe = dir.join("kvm-probe.sh");
    fs::write(&probe, format!("#!/bin/sh\necho '{GUEST_MARKER}'\n"))?;
    let b = boot(tools, vmlinuz, &probe, true, Duration::from_secs(60), true)?;
    Ok(b.code == 0 && b.guest_started)
}

pub fn vm_test(args: &VmArgs) -> Result<()> {
    if !bootstrap::is_root() {
        bail!("vm-test needs root: it installs QEMU and virtme-ng and boots VMs");
    }
    let tools = ensure_tools()?;
    let chosen: Vec<&DebianKernel> = KERNELS
        .iter()
        .filter(|k| match args.kernel {
            KernelChoice::All => true,
            KernelChoice::V6_1 => k.label == "6.1",
            KernelChoice::V6_12 => k.label == "6.12",
        })
        .collect();
    let mut kernels = Vec::new();
    for k in &chosen {
        kernels.push((k, ensure_kernel(k)?));
    }
    let bins = kernel_test_binaries()?;
    let kvm = kvm_works(&tools, &kernels[0].1.1)?;
    let accel = if kvm {
        "KVM"
    } else {
        "TCG emulation (QEMU cannot use KVM here)"
    };
    eprintln!("xtask: VMs run under {accel}");
    let timeout = Duration::from_secs(args.timeout);
    let mut report = Vec::new();
    for (k, (pkg, vmlinuz)) in &kernels {
        let script = guest_script(&bins, k.label)?;
        eprintln!(
            "\nxtask: ==> VM {} ({pkg}), 4 vCPUs, isolcpus=2,3 nohz_full=2,3",
            k.label
        );
        let mut b = boot(&tools, vmlinuz, &script, kvm, timeout, false)?;
        // A QEMU crash or hang before the guest ran anything may be retried
        // once; a failure after the guest started never is.
        if (b.code == 255 || b.timed_out) && !b.guest_started {
            eprintln!(
                "xtask: VM {} died before the guest started (exit {}); retrying once",
                k.label, b.code
            );
            b = boot(&tools, vmlinuz, &script, kvm, timeout, false)?;
        }
        let verdict = match (b.code, b.timed_out, b.guest_started) {
            (0, _, true) => "passed".to_string(),
            (_, true, _) => format!("timed out after {:.0?}", b.elapsed),
            (_, _, false) => format!("VM failed before the guest ran (exit {})", b.code),
            (code, _, true) => format!("tests failed (exit {code})"),
        };
        report.push((k.label, pkg.clone(), verdict, b.elapsed));
    }
    eprintln!("\nxtask: VM results ({accel}):");
    for (label, pkg, verdict, elapsed) in &report {
        eprintln!(
            "  {label:<5} {pkg:<48} {verdict} in {:.0}s",
            elapsed.as_secs_f64()
        );
    }
    let failed: Vec<_> = report
        .iter()
        .filter(|r| r.2 != "passed")
        .map(|r| r.0)
        .collect();
    if !failed.is_empty() {
        bail!("VM tests failed on kernel {}", failed.join(", "));
    }
    Ok(())
}
