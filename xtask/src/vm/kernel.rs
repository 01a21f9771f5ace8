//! Debian's cloud kernels for the VMs: resolved from the meta packages (the
//! image names change with every security update), downloaded once into
//! `target/vm/kernels`, unpacked, and trimmed to the modules the guest needs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Once,
};

use anyhow::{Context, Result, bail};

use crate::bootstrap::{output, run, say};

/// A kernel to boot: our label and the meta package naming the current image.
pub struct KernelSpec {
    pub label: &'static str,
    meta: &'static str,
    /// What every image package of this series starts with (to prune old ones).
    series: &'static str,
}

pub const KERNELS: [KernelSpec; 2] = [
    KernelSpec {
        label: "6.1",
        meta: "linux-image-cloud-amd64",
        series: "linux-image-6.1.",
    },
    KernelSpec {
        label: "6.12",
        meta: "linux-image-6.12-cloud-amd64",
        series: "linux-image-6.12.",
    },
];

pub struct Kernel {
    pub label: &'static str,
    pub package: String,
    pub vmlinuz: PathBuf,
}

/// Modules the guest needs, with their dependencies: the overlays over the
/// host's root, virtio devices and virtiofs (a module on 6.1, built in on
/// 6.12). Everything else goes: under emulation, guest udev loading kvm,
/// ahci and friends doubles the boot time (33 s -> 15 s).
fn wanted(module: &str) -> bool {
    module.starts_with("virtio") || ["overlay", "fuse", "virtiofs"].contains(&module)
}
/// Bump when [`wanted`] changes: cached trees are then re-extracted.
const TRIM_VERSION: u32 = 2;

/// The kernel of `spec`, downloaded and prepared under `dir` if needed.
pub fn ensure(spec: &KernelSpec, dir: &Path) -> Result<Kernel> {
    let package = resolve(spec)?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tree = dir.join(&package);
    let stamp_path = tree.join(".affinity-ready");
    let stamp = format!("{package} trim v{TRIM_VERSION}\n");
    if fs::read_to_string(&stamp_path).ok().as_deref() != Some(stamp.as_str()) {
        let deb = match find_deb(dir, &package)? {
            Some(deb) => deb,
            None => download(spec, &package, dir)?,
        };
        let partial = dir.join(format!("{package}.partial"));
        remove(&partial)?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))
            .with_context(|| format!("unpacking {}", deb.display()))?;
        let kept = trim_modules(&partial).with_context(|| format!("trimming {package}"))?;
        eprintln!("xtask: kernel {package}: kept {kept} modules (overlay, virtio, virtiofs)");
        fs::write(partial.join(".affinity-ready"), &stamp)?;
        remove(&tree)?;
        fs::rename(&partial, &tree)
            .with_context(|| format!("renaming {} to {}", partial.display(), tree.display()))?;
    }
    prune(spec, &package, dir)?;
    let version = module_version(&tree)?;
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        bail!("{package} has no {}", vmlinuz.display());
    }
    Ok(Kernel {
        label: spec.label,
        package,
        vmlinuz,
    })
}

/// Runs `apt-get update` at most once per xtask run, when the package lists
/// look stale (a name they do not know, a download that 404s).
fn apt_update() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        eprintln!("xtask: apt-get update: the package lists do not know the current kernels");
        result = run(Command::new("apt-get").args(["update", "-q"]));
    });
    result
}

/// `linux-image-cloud-amd64` → `linux-image-6.1.0-56-cloud-amd64-unsigned`.
fn resolve(spec: &KernelSpec) -> Result<String> {
    let query = || -> Result<String> {
        let deps = output(Command::new("apt-cache").args(["depends", spec.meta]))?;
        deps.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with(spec.series) && p.ends_with("-cloud-amd64"))
            .map(|image| format!("{image}-unsigned"))
            .with_context(|| {
                format!(
                    "{} depends on no {}*-cloud-amd64 image:\n{deps}",
                    spec.meta, spec.series
                )
            })
    };
    query()
        .or_else(|_| {
            apt_update()?;
            query()
        })
        .with_context(|| {
            format!(
                "finding the current {} kernel (apt-cache depends {})",
                spec.label, spec.meta
            )
        })
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    Ok(fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        }))
}

/// `apt-get download` into a scratch directory, then moved into `dir`, so an
/// interrupted download never looks like a cached one.
fn download(spec: &KernelSpec, package: &str, dir: &Path) -> Result<PathBuf> {
    say(
        &format!("kernel {package} into {}", dir.display()),
        &format!("the {} VM boots it (downloaded once)", spec.label),
    );
    let scratch = dir.join(".download");
    remove(&scratch)?;
    fs::create_dir_all(&scratch)?;
    let get = || {
        run(Command::new("apt-get")
            // Root downloads into a root-owned directory: no _apt sandbox
            // (it only warns that it cannot use it).
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
            .current_dir(&scratch))
    };
    get()
        .or_else(|_| {
            apt_update()?;
            get()
        })
        .with_context(|| format!("apt-get download {package}"))?;
    let got = find_deb(&scratch, package)?
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let deb = dir.join(got.file_name().context("a .deb without a name")?);
    fs::rename(&got, &deb).with_context(|| format!("moving {}", got.display()))?;
    remove(&scratch)?;
    Ok(deb)
}

/// Removes the .debs and trees of older images of the same series.
fn prune(spec: &KernelSpec, current: &str, dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name == current
            || name.starts_with(&format!("{current}_"))
            || name.starts_with(&format!("{current}."));
        if name.starts_with(spec.series) && !ours {
            eprintln!("xtask: removing the superseded kernel {name}");
            remove(&entry.path())?;
        }
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    result.with_context(|| format!("removing {}", path.display()))
}

/// The kernel release, i.e. the one directory under `lib/modules`.
fn module_version(tree: &Path) -> Result<String> {
    let modules = tree.join("lib/modules");
    let mut versions = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    match (versions.next(), versions.next()) {
        (Some(v), None) => Ok(v),
        _ => bail!(
            "expected exactly one kernel release under {}",
            modules.display()
        ),
    }
}

/// Keeps [`wanted`] modules and everything they depend on (from a full
/// depmod), deletes the rest and runs depmod again (vng's guest needs
/// modules.dep; the packages ship none). Returns how many modules are kept.
fn trim_modules(tree: &Path) -> Result<usize> {
    let version = module_version(tree)?;
    let depmod = || {
        run(Command::new("depmod").arg("-b").arg(tree).arg(&version))
            .with_context(|| format!("depmod -b {} {version}", tree.display()))
    };
    depmod()?;
    let base = tree.join("lib/modules").join(&version);
    let dep_file = base.join("modules.dep");
    let deps =
        fs::read_to_string(&dep_file).with_context(|| format!("reading {}", dep_file.display()))?;
    // "kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko"
    let graph: BTreeMap<&str, Vec<&str>> = deps
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m.trim(), d.split_whitespace().collect()))
        .collect();
    let mut keep = BTreeSet::new();
    let mut todo: Vec<&str> = graph
        .keys()
        .copied()
        .filter(|m| wanted(module_name(m)))
        .collect();
    while let Some(m) = todo.pop() {
        if keep.insert(m) {
            todo.extend(graph.get(m).into_iter().flatten().copied());
        }
    }
    for module in graph.keys().filter(|m| !keep.contains(*m)) {
        let path = base.join(module);
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    depmod()?;
    Ok(keep.len())
}

/// `kernel/drivers/virtio/virtio_pci.ko.xz` → `virtio_pci`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split_once(".ko").map_or(file, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_and_the_keep_list() {
        assert_eq!(module_name("kernel/fs/fuse/virtiofs.ko"), "virtiofs");
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_pci.ko.xz"),
            "virtio_pci"
        );
        for m in ["virtiofs", "fuse", "overlay", "virtio_pci", "virtio-rng"] {
            assert!(wanted(m), "{m}");
        }
        for m in ["kvm", "ahci", "fuse_extra", "vmw_vsock_virtio_transport"] {
            assert!(!wanted(m), "{m}");
        }
    }
}
