//! IRQ masks, the default IRQ affinity and the workqueue cpumasks (global
//! and each WQ_SYSFS workqueue's), read and put back for the kernel tests
//! (through the daemon's own reader).

use std::{collections::BTreeMap, path::Path};

use affinity::{
    kernel::irq::IrqFs,
    policy::{CpuSet, MAX_CPUS, MaskFile},
};

/// Interrupts per IRQ so far, summed over CPUs (/proc/interrupts; the
/// arch's named vectors such as LOC are left out).
pub fn interrupt_counts() -> BTreeMap<u32, u64> {
    let text = std::fs::read_to_string("/proc/interrupts").expect("reading /proc/interrupts");
    let ncpu = text
        .lines()
        .next()
        .map_or(0, |l| l.split_whitespace().count());
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let irq = f.next()?.trim_end_matches(':').parse().ok()?;
            Some((
                irq,
                f.take(ncpu).filter_map(|c| c.parse::<u64>().ok()).sum(),
            ))
        })
        .collect()
}

/// The kernel's nr_cpu_ids: the width of every mask here.
pub fn width() -> u32 {
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .expect("reading the possible CPUs");
    CpuSet::parse(&possible, MAX_CPUS)
        .expect("parsing the possible CPUs")
        .last()
        .map_or(1, |l| l + 1)
}

/// A cpulist file; a missing one (no nohz_full, no cgroup partitions) or
/// `(null)` (nohz_full on a kernel without CONFIG_NO_HZ_FULL) is empty.
fn cpus(path: &str) -> CpuSet {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.trim();
    if text == "(null)" {
        return CpuSet::empty(width());
    }
    CpuSet::parse(text, width()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The online CPUs now.
pub fn online() -> CpuSet {
    cpus("/sys/devices/system/cpu/online")
}

/// The daemon's `auto` housekeeping on this machine (every possible CPU
/// but isolcpus, nohz_full and isolated cgroup partitions), less
/// `isolate` (`--isolate`): 0-1 on this host, 0-1 in the vm-test guests
/// (isolcpus=2,3); with `--isolate 1`, 0 on both.
pub fn housekeeping(isolate: &[u32]) -> CpuSet {
    let mut extra = CpuSet::empty(width());
    for cpu in isolate {
        extra.insert(*cpu);
    }
    affinity::policy::housekeeping_from(
        &cpus("/sys/devices/system/cpu/possible"),
        &cpus("/sys/devices/system/cpu/isolated"),
        &cpus("/sys/devices/system/cpu/nohz_full"),
        &cpus("/sys/fs/cgroup/cpuset.cpus.isolated"),
    )
    .and_not(&extra)
}

/// Every possible CPU outside `housekeeping`.
pub fn outside(housekeeping: &CpuSet) -> CpuSet {
    cpus("/sys/devices/system/cpu/possible").and_not(housekeeping)
}

pub fn irq_fs() -> IrqFs {
    IrqFs::new(Path::new("/proc"), Path::new("/sys"), width())
}

/// Every steerable mask as a cpulist, by file: what `--restore-on-exit`
/// must put back.
pub fn all_masks() -> BTreeMap<MaskFile, String> {
    let scan = irq_fs().scan().expect("reading /proc/irq");
    let mut out: BTreeMap<MaskFile, String> = scan
        .irqs
        .iter()
        .map(|i| (MaskFile::Irq(i.number), i.affinity.to_string()))
        .collect();
    if let Some(d) = scan.default_affinity {
        out.insert(MaskFile::IrqDefault, d.to_string());
    }
    if let Some(w) = scan.workqueue {
        out.insert(MaskFile::Workqueue, w.to_string());
    }
    for (name, mask) in scan.workqueues {
        out.insert(MaskFile::NamedWorkqueue(name), mask.to_string());
    }
    out
}

/// Puts every mask back as it was when saved, when dropped (also when the
/// test panics): IRQ affinity is machine-wide state.
pub struct IrqGuard(BTreeMap<MaskFile, String>);

impl IrqGuard {
    pub fn save() -> IrqGuard {
        IrqGuard(all_masks())
    }
}

impl Drop for IrqGuard {
    fn drop(&mut self) {
        let fs = irq_fs();
        for (file, list) in &self.0 {
            if let Ok(mask) = CpuSet::parse(list, width()) {
                let _ = fs.write(*file, &mask);
            }
        }
    }
}
