//! Debian's cloud kernels for the VMs: resolved from the meta packages (the
//! image names change with every security update), downloaded once into
//! `target/vm/kernels`, unpacked, and trimmed to the modules the guest needs.
//!
//! 6.1 and 6.12 come from the host's own (bookworm) apt. The other suites
//! (bullseye, trixie-backports) go through a private sources list and apt
//! state under `target/vm/apt/SUITE`, on the host's Debian mirror and
//! checked with its archive keyring; the host's apt configuration is never
//! read for them nor changed.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};

use crate::bootstrap::{output, run, say};

/// A kernel to boot: our label, where apt finds it and the meta package
/// naming the current image.
pub struct KernelSpec {
    pub label: &'static str,
    /// None: the host's own apt sources (bookworm). Some: this Debian suite,
    /// through a private sources list and apt state under `target/vm/apt`
    /// (the host's apt configuration is never touched).
    suite: Option<&'static str>,
    meta: &'static str,
    /// What every image package of this series starts with (to check the
    /// meta package still names this series, and to prune old ones).
    series: &'static str,
    /// `cloud-amd64` or `rt-amd64`.
    flavour: &'static str,
    layout: Layout,
    /// Booted by `--kernel all` (and so by `cargo xtask test`): the kernels
    /// the whole suite passes on. All of them since 7-rt joined: PREEMPT_RT
    /// has no khugepaged (no THP), and the tests that move it move
    /// `affinity_tests::movable_kthread()` (khungtaskd there) instead.
    pub in_all: bool,
}

/// How Debian packages a kernel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// One `linux-image-VER-unsigned` package with `boot/vmlinuz-VER` and
    /// `lib/modules/VER` (5.10 to 6.12).
    Unsigned,
    /// 7.x: the image package only depends on `linux-binary-VER`
    /// (`usr/lib/modules/VER/vmlinuz`), `linux-modules-VER` and
    /// `linux-base-VER` (`modules.builtin`, `modules.order`, `config`:
    /// without them depmod warns and modprobe cannot tell a built-in module
    /// from a missing one).
    Split,
}

pub const KERNELS: [KernelSpec; 5] = [
    KernelSpec {
        label: "5.10",
        suite: Some("bullseye"),
        meta: "linux-image-cloud-amd64",
        series: "linux-image-5.10.",
        flavour: "cloud-amd64",
        layout: Layout::Unsigned,
        in_all: true,
    },
    KernelSpec {
        label: "6.1",
        suite: None,
        meta: "linux-image-cloud-amd64",
        series: "linux-image-6.1.",
        flavour: "cloud-amd64",
        layout: Layout::Unsigned,
        in_all: true,
    },
    KernelSpec {
        label: "6.12",
        suite: None,
        meta: "linux-image-6.12-cloud-amd64",
        series: "linux-image-6.12.",
        flavour: "cloud-amd64",
        layout: Layout::Unsigned,
        in_all: true,
    },
    KernelSpec {
        label: "7",
        suite: Some("trixie-backports"),
        meta: "linux-image-cloud-amd64",
        series: "linux-image-7.",
        flavour: "cloud-amd64",
        layout: Layout::Split,
        in_all: true,
    },
    KernelSpec {
        label: "7-rt",
        suite: Some("trixie-backports"),
        meta: "linux-image-rt-amd64",
        series: "linux-image-7.",
        flavour: "rt-amd64",
        layout: Layout::Split,
        in_all: true,
    },
];

impl KernelSpec {
    /// "bookworm (host apt)" or "bullseye" for the log.
    pub fn source(&self) -> &'static str {
        self.suite.unwrap_or("bookworm, the host's apt")
    }
}

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

/// The kernel of `spec`, downloaded and prepared under `vm_dir/kernels` if
/// needed.
pub fn ensure(spec: &KernelSpec, vm_dir: &Path) -> Result<Kernel> {
    let apt = Apt::new(spec, vm_dir);
    apt.prepare()?;
    let resolved = resolve(spec, &apt)?;
    let dir = vm_dir.join("kernels");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tree = dir.join(&resolved.name);
    let stamp_path = tree.join(".affinity-ready");
    let stamp = format!("{} trim v{TRIM_VERSION}\n", resolved.debs.join(" "));
    if fs::read_to_string(&stamp_path).ok().as_deref() != Some(stamp.as_str()) {
        let mut debs = Vec::new();
        for package in &resolved.debs {
            debs.push(match find_deb(&dir, package)? {
                Some(deb) => deb,
                None => download(spec, &apt, package, &dir)?,
            });
        }
        let partial = dir.join(format!("{}.partial", resolved.name));
        remove(&partial)?;
        for deb in &debs {
            run(Command::new("dpkg").arg("-x").arg(deb).arg(&partial))
                .with_context(|| format!("unpacking {}", deb.display()))?;
        }
        if spec.layout == Layout::Split {
            usual_layout(&partial).with_context(|| format!("rearranging {}", partial.display()))?;
        }
        let kept = trim_modules(&partial).with_context(|| format!("trimming {}", resolved.name))?;
        eprintln!(
            "xtask: kernel {}: kept {kept} modules (overlay, virtio, virtiofs)",
            resolved.name
        );
        fs::write(partial.join(".affinity-ready"), &stamp)?;
        remove(&tree)?;
        fs::rename(&partial, &tree)
            .with_context(|| format!("renaming {} to {}", partial.display(), tree.display()))?;
    }
    prune(spec, &resolved, &dir)?;
    let version = module_version(&tree)?;
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        bail!("{} has no {}", resolved.name, vmlinuz.display());
    }
    Ok(Kernel {
        label: spec.label,
        package: resolved.name,
        vmlinuz,
    })
}

/// 7.x's `usr/lib/modules/VER/{vmlinuz,kernel/...}` rearranged as the older
/// packages have it, `boot/vmlinuz-VER` and `lib/modules/VER`: vng finds
/// the modules by walking up from the image to `lib/modules/VER`.
fn usual_layout(tree: &Path) -> Result<()> {
    let usr_modules = tree.join("usr/lib/modules");
    let lib = tree.join("lib");
    fs::create_dir_all(&lib)?;
    fs::rename(&usr_modules, lib.join("modules"))
        .with_context(|| format!("moving {}", usr_modules.display()))?;
    let version = module_version(tree)?;
    let image = tree.join("lib/modules").join(&version).join("vmlinuz");
    let boot = tree.join("boot");
    fs::create_dir_all(&boot)?;
    fs::rename(&image, boot.join(format!("vmlinuz-{version}")))
        .with_context(|| format!("moving {}", image.display()))
}

/// The host's Debian mirror (so the other suites come from the same
/// place), from its deb822 or one-line sources.
fn debian_mirror(sources: &str) -> Option<String> {
    sources
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| {
            let uris = l.strip_prefix("URIs:").map(str::split_whitespace);
            let deb = l
                .strip_prefix("deb ")
                .map(|rest| {
                    // "deb [signed-by=...] URI suite components"
                    let rest = match rest.trim_start().strip_prefix('[') {
                        Some(opts) => opts.split_once(']').map_or("", |(_, r)| r),
                        None => rest,
                    };
                    rest.split_whitespace().take(1)
                })
                .into_iter()
                .flatten();
            uris.into_iter().flatten().chain(deb).collect::<Vec<_>>()
        })
        .map(|uri| uri.trim_end_matches('/'))
        .find(|uri| uri.ends_with("/debian"))
        .map(String::from)
}

const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// debian-archive-keyring's; bookworm's holds the bullseye and trixie keys.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Touched after each successful `apt-get update` of a private suite.
const UPDATED_STAMP: &str = "updated";
/// Private package lists older than this are fetched again.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

fn host_mirror() -> String {
    let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "sources" || e == "list"))
        {
            text.push('\n');
            text.push_str(&fs::read_to_string(f).unwrap_or_default());
        }
    }
    debian_mirror(&text).unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// Where apt looks for a kernel: the host's configuration, or, for another
/// suite, a private sources list and state under `target/vm/apt/SUITE`.
struct Apt {
    suite: Option<&'static str>,
    dir: PathBuf,
}

impl Apt {
    fn new(spec: &KernelSpec, vm_dir: &Path) -> Self {
        Apt {
            suite: spec.suite,
            dir: vm_dir.join("apt").join(spec.suite.unwrap_or("host")),
        }
    }

    /// `apt-get`/`apt-cache` with this suite's private configuration.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if self.suite.is_some() {
            for (option, path) in [
                ("Dir::Etc::SourceList=", self.dir.join("sources.list")),
                ("Dir::Etc::SourceParts=", PathBuf::from("/dev/null")),
                ("Dir::State::Lists=", self.dir.join("lists")),
                ("Dir::Cache=", self.dir.join("cache")),
            ] {
                let mut value = OsString::from(option);
                value.push(path);
                cmd.arg("-o").arg(value);
            }
        }
        cmd
    }

    /// For a private suite: writes its sources list and fetches its package
    /// lists when there are none yet, the list changed, or they are over a
    /// day old. Nothing for the host's apt.
    fn prepare(&self) -> Result<()> {
        let Some(suite) = self.suite else {
            return Ok(());
        };
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = self.dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let list = self.dir.join("sources.list");
        let line = format!("deb [signed-by={KEYRING}] {} {suite} main\n", host_mirror());
        let changed = fs::read_to_string(&list).ok().as_deref() != Some(line.as_str());
        if changed {
            fs::write(&list, &line).with_context(|| format!("writing {}", list.display()))?;
        }
        // Our own stamp: apt keeps an unchanged list's old mtime, and may
        // store it compressed (`_Packages.lz4`).
        let age = fs::metadata(self.dir.join(UPDATED_STAMP))
            .and_then(|m| m.modified())
            .ok()
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
        match age {
            _ if changed => self.update("its sources list is new or changed"),
            None => self.update("no package lists yet"),
            Some(a) if a > LISTS_MAX_AGE => self.update("its package lists are over a day old"),
            Some(_) => Ok(()),
        }
    }

    /// `apt-get update` at most once per xtask run and apt configuration.
    fn update(&self, why: &str) -> Result<()> {
        static UPDATED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        let mut updated = UPDATED.lock().unwrap_or_else(PoisonError::into_inner);
        if updated.contains(&self.dir) {
            return Ok(());
        }
        updated.push(self.dir.clone());
        match self.suite {
            Some(suite) => eprintln!(
                "xtask: apt-get update for {suite} (private lists in {}): {why}",
                self.dir.display()
            ),
            None => eprintln!("xtask: apt-get update: {why}"),
        }
        run(self.command("apt-get").args(["update", "-q"]))?;
        if self.suite.is_some() {
            let stamp = self.dir.join(UPDATED_STAMP);
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            fs::write(&stamp, format!("{}\n", now.as_secs()))
                .with_context(|| format!("writing {}", stamp.display()))?;
        }
        Ok(())
    }

    /// The `Depends:` of `package`.
    fn depends(&self, package: &str) -> Result<Vec<String>> {
        let out = output(self.command("apt-cache").args(["depends", package]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(String::from)
            .collect())
    }
}

/// What a kernel is made of: the tree's name and the packages unpacked
/// into it.
struct Resolved {
    name: String,
    debs: Vec<String>,
}

/// `linux-image-cloud-amd64` → `linux-image-6.1.0-56-cloud-amd64-unsigned`;
/// on 7.x, `linux-image-7.3.4+deb13-cloud-amd64` →
/// `linux-base-7.3.4+deb13-cloud-amd64` + `linux-binary-...` +
/// `linux-modules-...`.
fn resolve(spec: &KernelSpec, apt: &Apt) -> Result<Resolved> {
    let suffix = format!("-{}", spec.flavour);
    let query = || -> Result<Resolved> {
        let deps = apt.depends(spec.meta)?;
        let image = deps
            .iter()
            .find(|p| p.starts_with(spec.series) && p.ends_with(&suffix))
            .with_context(|| {
                format!(
                    "{} depends on no {}*{suffix} image: {deps:?}",
                    spec.meta, spec.series
                )
            })?;
        match spec.layout {
            Layout::Unsigned => {
                let name = format!("{image}-unsigned");
                Ok(Resolved {
                    debs: vec![name.clone()],
                    name,
                })
            }
            Layout::Split => {
                let release = image.strip_prefix("linux-image-").unwrap_or(image);
                let parts = apt.depends(image)?;
                let debs = ["linux-base-", "linux-binary-", "linux-modules-"]
                    .iter()
                    .map(|prefix| {
                        let want = format!("{prefix}{release}");
                        parts.contains(&want).then_some(want).with_context(|| {
                            format!("{image} does not depend on {prefix}{release}: {parts:?}")
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok(Resolved {
                    name: image.clone(),
                    debs,
                })
            }
        }
    };
    query()
        .or_else(|_| {
            apt.update("the package lists do not know the current kernels")?;
            query()
        })
        .with_context(|| {
            format!(
                "finding the current {} kernel (apt-cache depends {}, {})",
                spec.label,
                spec.meta,
                spec.source()
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
fn download(spec: &KernelSpec, apt: &Apt, package: &str, dir: &Path) -> Result<PathBuf> {
    say(
        &format!(
            "kernel package {package} ({}) into {}",
            spec.source(),
            dir.display()
        ),
        &format!("the {} VM boots it (downloaded once)", spec.label),
    );
    let scratch = dir.join(".download");
    remove(&scratch)?;
    fs::create_dir_all(&scratch)?;
    let get = || {
        run(apt
            .command("apt-get")
            // Root downloads into a root-owned directory: no _apt sandbox
            // (it only warns that it cannot use it).
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
            .current_dir(&scratch))
    };
    get()
        .or_else(|_| {
            apt.update("a kernel download failed; the package lists may be stale")?;
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

/// Whether `name` (a tree or .deb under the kernel cache) is an older
/// build of `spec`'s series and flavour than `current`.
fn superseded(spec: &KernelSpec, current: &Resolved, name: &str) -> bool {
    let ours = name == current.name
        || name.starts_with(&format!("{}.", current.name))
        || current
            .debs
            .iter()
            .any(|d| name.starts_with(&format!("{d}_")));
    let series = spec
        .series
        .strip_prefix("linux-image-")
        .unwrap_or(spec.series);
    let of_series = [
        "linux-image-",
        "linux-base-",
        "linux-binary-",
        "linux-modules-",
    ]
    .iter()
    .any(|p| name.starts_with(&format!("{p}{series}")));
    of_series && name.contains(&format!("-{}", spec.flavour)) && !ours
}

/// Removes the .debs and trees of older images of the same series.
fn prune(spec: &KernelSpec, current: &Resolved, dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if superseded(spec, current, &name) {
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
    fn the_hosts_mirror() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                      URIs: http://deb.debian.org/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            debian_mirror(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let one_line = "deb http://security.debian.org/debian-security bookworm-security main\n\
                        deb [signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            debian_mirror(one_line).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(debian_mirror("# deb http://x/debian bookworm main\n"), None);
    }

    #[test]
    fn only_older_builds_of_the_same_series_and_flavour_are_pruned() {
        let [_, v6_1, v6_12, v7_3, v7_3_rt] = &KERNELS;
        let cloud = Resolved {
            name: "linux-image-7.3.4+deb13-cloud-amd64".into(),
            debs: vec![
                "linux-base-7.3.4+deb13-cloud-amd64".into(),
                "linux-binary-7.3.4+deb13-cloud-amd64".into(),
                "linux-modules-7.3.4+deb13-cloud-amd64".into(),
            ],
        };
        for old in [
            "linux-image-7.3.2+deb13-cloud-amd64",
            "linux-binary-7.3.2+deb13-cloud-amd64_7.3.2-1~bpo13+1_amd64.deb",
            "linux-modules-7.3.2+deb13-cloud-amd64_7.3.2-1~bpo13+1_amd64.deb",
            "linux-base-7.3.2+deb13-cloud-amd64_7.3.2-1~bpo13+1_amd64.deb",
        ] {
            assert!(superseded(v7_3, &cloud, old), "{old}");
        }
        for keep in [
            "linux-image-7.3.4+deb13-cloud-amd64",
            "linux-image-7.3.4+deb13-cloud-amd64.partial",
            "linux-modules-7.3.4+deb13-cloud-amd64_7.3.4-1~bpo13+1_amd64.deb",
            // The rt flavour of the same series is another kernel.
            "linux-image-7.3.2+deb13-rt-amd64",
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
        ] {
            assert!(!superseded(v7_3, &cloud, keep), "{keep}");
        }
        assert!(!superseded(
            v7_3_rt,
            &cloud,
            "linux-image-7.3.2+deb13-cloud-amd64"
        ));
        let v61 = Resolved {
            name: "linux-image-6.1.0-56-cloud-amd64-unsigned".into(),
            debs: vec!["linux-image-6.1.0-56-cloud-amd64-unsigned".into()],
        };
        assert!(superseded(
            v6_1,
            &v61,
            "linux-image-6.1.0-55-cloud-amd64-unsigned"
        ));
        assert!(!superseded(
            v6_1,
            &v61,
            "linux-image-6.1.0-56-cloud-amd64-unsigned_6.1.158-1_amd64.deb"
        ));
        assert!(!superseded(
            v6_1,
            &v61,
            "linux-image-6.12.57+deb12-cloud-amd64-unsigned"
        ));
        assert!(superseded(
            v6_12,
            &v61,
            "linux-image-6.12.57+deb12-cloud-amd64-unsigned"
        ));
    }

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
