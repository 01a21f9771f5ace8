//! IRQs, the default IRQ affinity and the unbound workqueue cpumasks as
//! files: `<proc>/irq/N/`, `<proc>/irq/default_smp_affinity`,
//! `<sys>/devices/virtual/workqueue/cpumask` and `.../<name>/cpumask`. The
//! roots are parameters, so the unit tests read and write a fake tree.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::policy::{CpuSet, IrqInfo, MaskFile, SteerScan, WqName, WriteRefusal};

/// A write the kernel did not take.
#[derive(Debug, Error)]
pub enum WriteError {
    /// EIO (older kernels) or EPERM (6.18) on an IRQ: the kernel does not let
    /// userspace set its affinity (a managed interrupt of a multi-queue
    /// device, or a chip that cannot steer), and never will.
    #[error("{path}: the kernel manages this affinity itself ({source})")]
    Managed { path: String, source: io::Error },
    /// EINVAL: no CPU of the mask is online, or the IRQ's chip cannot be
    /// steered, or the kernel's own isolation leaves nothing of the mask.
    #[error("{path}: the kernel rejected {mask} (EINVAL)")]
    Invalid { path: String, mask: String },
    #[error("writing {mask} to {path}: {source}")]
    Os {
        path: String,
        mask: String,
        source: io::Error,
    },
}

impl WriteError {
    fn new(path: &Path, mask: &CpuSet, source: io::Error) -> WriteError {
        let path = path.display().to_string();
        match source.raw_os_error() {
            Some(libc::EIO | libc::EPERM) => WriteError::Managed { path, source },
            Some(libc::EINVAL) => WriteError::Invalid {
                path,
                mask: mask.to_string(),
            },
            _ => WriteError::Os {
                path,
                mask: mask.to_string(),
                source,
            },
        }
    }

    /// What the policy makes of it.
    pub fn refusal(&self) -> WriteRefusal {
        match self {
            WriteError::Managed { .. } => WriteRefusal::Managed,
            WriteError::Invalid { .. } => WriteRefusal::Invalid,
            WriteError::Os { source, .. } => {
                WriteRefusal::Other(source.raw_os_error().unwrap_or(0))
            }
        }
    }
}

/// The steering files of one machine.
#[derive(Clone, Debug)]
pub struct IrqFs {
    proc_root: PathBuf,
    sys_root: PathBuf,
    width: u32,
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

/// A file that may be missing (None); any other failure is an error.
fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The action names of every IRQ in `/proc/interrupts`: its last column,
/// after the per-CPU counts, the chip and the hardware IRQ. The kernel puts
/// two spaces before the first name and ", " between names.
pub fn parse_interrupts(text: &str) -> BTreeMap<u32, Vec<String>> {
    let mut lines = text.lines();
    let cpus = lines.next().map_or(0, |h| h.split_whitespace().count());
    let mut out = BTreeMap::new();
    for line in lines {
        let Some((num, mut rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(num) = num.trim().parse::<u32>() else {
            continue;
        };
        for _ in 0..cpus {
            rest = rest
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
        }
        let names = match rest.rfind("  ") {
            Some(i) => rest[i..].trim(),
            None => "",
        };
        let names: Vec<String> = names
            .split(", ")
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        out.insert(num, names);
    }
    out
}

/// The lowest pid of the processes whose comm is `irqbalance`, read under
/// `proc_root` (every process: only thread-group leaders are listed there).
/// A process that exits meanwhile is just not found.
pub fn find_irqbalance(proc_root: &Path) -> Option<u32> {
    fs::read_dir(proc_root)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(proc_root.join(format!("{pid}/comm")))
                .is_ok_and(|c| c.trim_end_matches('\n') == "irqbalance")
        })
        .min()
}

impl IrqFs {
    pub fn new(proc_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>, width: u32) -> Self {
        IrqFs {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
            width,
        }
    }

    /// The file a mask is written to and read back from.
    pub fn path(&self, file: MaskFile) -> PathBuf {
        match file {
            MaskFile::IrqDefault => self.proc_root.join("irq/default_smp_affinity"),
            MaskFile::Irq(n) => self.proc_root.join(format!("irq/{n}/smp_affinity_list")),
            MaskFile::Workqueue => self.sys_root.join("devices/virtual/workqueue/cpumask"),
            MaskFile::NamedWorkqueue(n) => self
                .sys_root
                .join("devices/virtual/workqueue")
                .join(n.as_str())
                .join("cpumask"),
        }
    }

    /// Every `WQ_SYSFS` workqueue with a cpumask (the unbound ones; a
    /// per-CPU one has none), by name. One that cannot be read is left out.
    fn workqueues(&self) -> Vec<(WqName, CpuSet)> {
        let dir = self.sys_root.join("devices/virtual/workqueue");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<(WqName, CpuSet)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                // `cpumask` itself and the other global files are not directories.
                if !e.file_type().ok()?.is_dir() {
                    return None;
                }
                let name = WqName::new(e.file_name().to_str()?)?;
                let mask = self
                    .mask(&self.path(MaskFile::NamedWorkqueue(name)))
                    .ok()??;
                Some((name, mask))
            })
            .collect();
        out.sort_by_key(|(name, _)| *name);
        out
    }

    fn list(&self, path: &Path) -> io::Result<CpuSet> {
        let text = fs::read_to_string(path)?;
        CpuSet::parse(&text, self.width).map_err(|e| invalid(path, e))
    }

    fn mask(&self, path: &Path) -> io::Result<Option<CpuSet>> {
        read_optional(path)?
            .map(|t| CpuSet::parse_mask(&t, self.width).map_err(|e| invalid(path, e)))
            .transpose()
    }

    /// IRQ `n` as the kernel shows it. `Ok(None)`: it is gone.
    /// `interrupts`: action names from /proc/interrupts, for kernels
    /// without `/sys/kernel/irq`.
    pub fn irq(
        &self,
        n: u32,
        interrupts: Option<&BTreeMap<u32, Vec<String>>>,
    ) -> io::Result<Option<IrqInfo>> {
        let dir = self.proc_root.join(format!("irq/{n}"));
        let affinity = match self.list(&dir.join("smp_affinity_list")) {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let effective_path = dir.join("effective_affinity_list");
        let effective = read_optional(&effective_path)?
            .map(|t| CpuSet::parse(&t, self.width).map_err(|e| invalid(&effective_path, e)))
            .transpose()?;
        let node = read_optional(&dir.join("node"))?
            .and_then(|t| t.trim().parse::<i64>().ok())
            .and_then(|n| u32::try_from(n).ok());
        let sys_actions = self.sys_root.join(format!("kernel/irq/{n}/actions"));
        let actions = match read_optional(&sys_actions)? {
            Some(t) => t
                .trim()
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
            None => interrupts
                .and_then(|m| m.get(&n).cloned())
                .unwrap_or_default(),
        };
        Ok(Some(IrqInfo {
            number: n,
            actions,
            node,
            affinity,
            effective,
        }))
    }

    /// Every IRQ with an affinity file, the default affinity and the
    /// workqueue mask. An unreadable `/proc/irq` is an error, not "no IRQs".
    pub fn scan(&self) -> io::Result<SteerScan> {
        let dir = self.proc_root.join("irq");
        let mut numbers: Vec<u32> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        numbers.sort_unstable();
        let interrupts = if self.sys_root.join("kernel/irq").is_dir() {
            None
        } else {
            fs::read_to_string(self.proc_root.join("interrupts"))
                .ok()
                .map(|t| parse_interrupts(&t))
        };
        let mut scan = SteerScan::default();
        for n in numbers {
            match self.irq(n, interrupts.as_ref()) {
                Ok(Some(i)) => scan.irqs.push(i),
                Ok(None) => {}
                Err(_) => scan.unreadable.push(n),
            }
        }
        scan.default_affinity = self.mask(&self.path(MaskFile::IrqDefault)).ok().flatten();
        scan.workqueue = self.mask(&self.path(MaskFile::Workqueue)).ok().flatten();
        scan.workqueues = self.workqueues();
        Ok(scan)
    }

    /// A running irqbalance under this tree's /proc: [`find_irqbalance`].
    pub fn irqbalance(&self) -> Option<u32> {
        find_irqbalance(&self.proc_root)
    }

    /// Writes `mask` in the file's own format (a cpulist for an IRQ, a hex
    /// mask for the others), in one write(2) as the kernel wants it.
    pub fn write(&self, file: MaskFile, mask: &CpuSet) -> Result<(), WriteError> {
        let path = self.path(file);
        let text = match file {
            MaskFile::Irq(_) => mask.to_string(),
            MaskFile::IrqDefault | MaskFile::Workqueue | MaskFile::NamedWorkqueue(_) => {
                mask.to_mask()
            }
        };
        let result = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write(format!("{text}\n").as_bytes()));
        match result {
            Ok(n) if n == text.len() + 1 => Ok(()),
            Ok(n) => Err(WriteError::new(
                &path,
                mask,
                io::Error::other(format!("short write: {n} of {} bytes", text.len() + 1)),
            )),
            Err(e) => Err(WriteError::new(&path, mask, e)),
        }
    }

    /// The mask (and for an IRQ its effective affinity) as the kernel
    /// reads it back now.
    pub fn read_back(&self, file: MaskFile) -> io::Result<(CpuSet, Option<CpuSet>)> {
        let path = self.path(file);
        match file {
            MaskFile::Irq(n) => self
                .irq(n, None)?
                .map(|i| (i.affinity, i.effective))
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)),
            MaskFile::IrqDefault | MaskFile::Workqueue | MaskFile::NamedWorkqueue(_) => Ok((
                self.mask(&path)?
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?,
                None,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERRUPTS: &str = "           CPU0       CPU1       \n  24:          1          0  IO-APIC   5-edge      ACPI:Ged\n  25:          0          1  IO-APIC   6-edge      ACPI:Ged, acpi\n  36:          0      32613 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0\nNMI:          0          0   Non-maskable interrupts\n";

    #[test]
    fn action_names_are_the_last_column_of_proc_interrupts() {
        let m = parse_interrupts(INTERRUPTS);
        assert_eq!(
            m,
            BTreeMap::from([
                (24, vec!["ACPI:Ged".to_string()]),
                (25, vec!["ACPI:Ged".to_string(), "acpi".to_string()]),
                (36, vec!["virtio1-req.0".to_string()]),
            ])
        );
    }

    /// A fake /proc and /sys: IRQ 24 with /sys/kernel/irq actions, 36
    /// without an effective affinity, 37 whose node is unknown.
    fn tree(sys_irq: bool) -> (tempfile::TempDir, IrqFs) {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        for (n, list, eff, node) in [
            (24, "0-1", Some("0"), "0"),
            (36, "1", None, "0"),
            (37, "0-1", Some("1"), "-1"),
        ] {
            let d = proc.join(format!("irq/{n}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("smp_affinity_list"), format!("{list}\n")).unwrap();
            if let Some(e) = eff {
                fs::write(d.join("effective_affinity_list"), format!("{e}\n")).unwrap();
            }
            fs::write(d.join("node"), format!("{node}\n")).unwrap();
        }
        fs::write(proc.join("irq/default_smp_affinity"), "3\n").unwrap();
        fs::write(proc.join("interrupts"), INTERRUPTS).unwrap();
        let wq = sys.join("devices/virtual/workqueue");
        fs::create_dir_all(&wq).unwrap();
        fs::write(wq.join("cpumask"), "3\n").unwrap();
        // A WQ_SYSFS unbound workqueue, and `power`, a directory without one.
        fs::create_dir_all(wq.join("writeback")).unwrap();
        fs::write(wq.join("writeback/cpumask"), "2\n").unwrap();
        fs::create_dir_all(wq.join("power")).unwrap();
        if sys_irq {
            for (n, actions) in [(24, "ACPI:Ged,acpi\n"), (36, "nvme0q1\n"), (37, "\n")] {
                let d = sys.join(format!("kernel/irq/{n}"));
                fs::create_dir_all(&d).unwrap();
                fs::write(d.join("actions"), actions).unwrap();
            }
        }
        let fs = IrqFs::new(proc, sys, 2);
        (dir, fs)
    }

    fn s(list: &str) -> CpuSet {
        CpuSet::parse(list, 2).unwrap()
    }

    #[test]
    fn scans_irqs_the_default_and_the_workqueue_mask() {
        let (_dir, irqfs) = tree(true);
        let scan = irqfs.scan().unwrap();
        assert_eq!(
            scan,
            SteerScan {
                irqs: vec![
                    IrqInfo {
                        number: 24,
                        actions: vec!["ACPI:Ged".into(), "acpi".into()],
                        node: Some(0),
                        affinity: s("0-1"),
                        effective: Some(s("0")),
                    },
                    IrqInfo {
                        number: 36,
                        actions: vec!["nvme0q1".into()],
                        node: Some(0),
                        affinity: s("1"),
                        effective: None,
                    },
                    IrqInfo {
                        number: 37,
                        actions: vec![],
                        node: None,
                        affinity: s("0-1"),
                        effective: Some(s("1")),
                    },
                ],
                unreadable: vec![],
                default_affinity: Some(s("0-1")),
                workqueue: Some(s("0-1")),
                workqueues: vec![(WqName::new("writeback").unwrap(), s("1"))],
            }
        );
    }

    #[test]
    fn without_sys_kernel_irq_the_names_come_from_proc_interrupts() {
        let (_dir, irqfs) = tree(false);
        let scan = irqfs.scan().unwrap();
        let names: Vec<_> = scan
            .irqs
            .iter()
            .map(|i| (i.number, i.actions.join(",")))
            .collect();
        assert_eq!(
            names,
            [
                (24, "ACPI:Ged".to_string()),
                (36, "virtio1-req.0".into()),
                (37, String::new())
            ]
        );
    }

    #[test]
    fn a_missing_proc_irq_is_an_error_and_missing_masks_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let irqfs = IrqFs::new(dir.path().join("proc"), dir.path().join("sys"), 2);
        assert_eq!(irqfs.scan().unwrap_err().kind(), io::ErrorKind::NotFound);
        fs::create_dir_all(dir.path().join("proc/irq")).unwrap();
        assert_eq!(irqfs.scan().unwrap(), SteerScan::default());
    }

    #[test]
    fn writes_each_file_in_its_own_format_and_reads_it_back() {
        let (dir, irqfs) = tree(true);
        irqfs.write(MaskFile::Irq(36), &s("0")).unwrap();
        irqfs.write(MaskFile::IrqDefault, &s("0")).unwrap();
        irqfs.write(MaskFile::Workqueue, &s("1")).unwrap();
        let writeback = MaskFile::NamedWorkqueue(WqName::new("writeback").unwrap());
        irqfs.write(writeback, &s("0")).unwrap();
        let read = |p: &str| fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("proc/irq/36/smp_affinity_list"), "0\n");
        assert_eq!(read("proc/irq/default_smp_affinity"), "1\n");
        assert_eq!(read("sys/devices/virtual/workqueue/cpumask"), "2\n");
        assert_eq!(
            read("sys/devices/virtual/workqueue/writeback/cpumask"),
            "1\n"
        );
        assert_eq!(irqfs.read_back(writeback).unwrap(), (s("0"), None));
        assert_eq!(irqfs.read_back(MaskFile::Irq(36)).unwrap(), (s("0"), None));
        assert_eq!(
            irqfs.read_back(MaskFile::Irq(24)).unwrap(),
            (s("0-1"), Some(s("0")))
        );
        assert_eq!(
            irqfs.read_back(MaskFile::Workqueue).unwrap(),
            (s("1"), None)
        );
        // An IRQ that went away is not created.
        let e = irqfs.write(MaskFile::Irq(99), &s("0")).unwrap_err();
        assert!(
            matches!(&e, WriteError::Os { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{e}"
        );
        assert!(!dir.path().join("proc/irq/99").exists());
    }

    #[test]
    fn irqbalance_is_found_by_its_comm_under_the_proc_root() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        for (pid, comm) in [
            ("1", "systemd\n"),
            ("700", "irqbalance\n"),
            ("90", "irqbalancer\n"),
        ] {
            fs::create_dir_all(proc.join(pid)).unwrap();
            fs::write(proc.join(pid).join("comm"), comm).unwrap();
        }
        // Not a process: a file, and a directory without a comm.
        fs::create_dir_all(proc.join("irq")).unwrap();
        fs::create_dir_all(proc.join("55")).unwrap();
        let irqfs = IrqFs::new(&proc, dir.path().join("sys"), 2);
        assert_eq!(irqfs.irqbalance(), Some(700));
        fs::create_dir_all(proc.join("650")).unwrap();
        fs::write(proc.join("650/comm"), "irqbalance\n").unwrap();
        assert_eq!(irqfs.irqbalance(), Some(650), "the lowest pid");
        fs::remove_dir_all(proc.join("700")).unwrap();
        fs::remove_dir_all(proc.join("650")).unwrap();
        assert_eq!(irqfs.irqbalance(), None);
    }

    #[test]
    fn errors_are_classified_by_errno() {
        let p = Path::new("/proc/irq/36/smp_affinity_list");
        let m = s("0");
        let e = WriteError::new(p, &m, io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(e.refusal(), WriteRefusal::Managed);
        assert_eq!(
            e.to_string(),
            "/proc/irq/36/smp_affinity_list: the kernel manages this affinity itself (Input/output error (os error 5))"
        );
        let e = WriteError::new(p, &m, io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(e.refusal(), WriteRefusal::Managed, "6.18 says EPERM");
        let e = WriteError::new(p, &m, io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(e.refusal(), WriteRefusal::Invalid);
        assert_eq!(
            e.to_string(),
            "/proc/irq/36/smp_affinity_list: the kernel rejected 0 (EINVAL)"
        );
        let e = WriteError::new(p, &m, io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.refusal(), WriteRefusal::Other(libc::ENOSPC));
    }
}
