//! What the policy knows of a task, and which kthreads the kernel itself
//! re-affines.

use super::CpuSet;

/// `PF_KTHREAD`: the task is a kernel thread.
pub const PF_KTHREAD: u32 = 0x0020_0000;
/// `PF_NO_SETAFFINITY`: per-CPU and bound kthreads; the kernel refuses any change.
pub const PF_NO_SETAFFINITY: u32 = 0x0400_0000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kthread {
    pub pid: u32,
    pub comm: String,
    /// `/proc/PID/stat` field 9.
    pub flags: u32,
    /// Clock ticks after boot (`/proc/PID/stat` field 22): with the pid, names the task.
    pub start_time: u64,
    pub cpus_allowed: CpuSet,
}

impl Kthread {
    pub fn is_kthread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    pub fn is_pinned(&self) -> bool {
        self.flags & PF_NO_SETAFFINITY != 0
    }

    /// The IRQ a threaded handler (`irq/N-name`) serves. Its mask follows
    /// the IRQ's affinity: the kernel resets it whenever the IRQ moves, and
    /// from 6.19 refuses sched_setaffinity() on it outright, so the lever for
    /// it is `/proc/irq/N/`, never its own mask.
    pub fn follows_irq(&self) -> Option<u32> {
        let rest = self.comm.strip_prefix("irq/")?;
        let (n, _) = rest.split_once('-')?;
        n.parse().ok()
    }

    /// An unbound workqueue worker (`kworker/uN:M`): pinned by the kernel,
    /// its CPUs are the workqueue's unbound cpumask
    /// (`/sys/devices/virtual/workqueue/cpumask`, which `--irqs` steers).
    pub fn follows_workqueue(&self) -> bool {
        self.comm.starts_with("kworker/u")
    }

    /// The node in a node-affine kthread's name: `kswapd1` → 1.
    pub fn own_node(&self) -> Option<u32> {
        let digits = self.comm.len()
            - self
                .comm
                .trim_end_matches(|c: char| c.is_ascii_digit())
                .len();
        self.comm[self.comm.len() - digits..].parse().ok()
    }
}

/// `major.minor` of a kernel release string such as `6.18.44-fc`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether the kernel `release` re-affines `k` by itself on hotplug.
///
/// 6.14 added `kthread_affine_preferred()` and node affinity for kthreads
/// created on a node (kswapd, kcompactd) and RCU's boost threads; 7.0 made
/// the kernel manage every unbound kthread (HK_TYPE_DOMAIN). Pinned threads
/// are the kernel's in any version, but never "preferred".
pub fn kernel_manages_affinity(release: &str, k: &Kthread) -> bool {
    if k.is_pinned() {
        return false;
    }
    match kernel_version(release) {
        Some(v) if v >= (7, 0) => true,
        Some(v) if v >= (6, 14) => ["kswapd", "kcompactd", "rcub/"]
            .iter()
            .any(|p| k.comm.starts_with(p)),
        _ => false,
    }
}

/// The kernel's isolation settings, as `kernel_default` needs them.
pub struct KernelIsolation<'a> {
    /// `isolcpus=` (domain isolation).
    pub isolated: &'a CpuSet,
    pub nohz_full: &'a CpuSet,
    /// cgroup v2 isolated partitions.
    pub cpuset_isolated: &'a CpuSet,
}

/// The mask the kernel `release` itself gives the movable kthread `k`, as
/// `affinity restore` reports it: before 7.0 what kthreads get when created
/// (HK_TYPE_KTHREAD: every CPU but nohz_full ones), from 7.0 the domain
/// housekeeping the kernel manages them against (HK_TYPE_DOMAIN: not
/// isolcpus, not an isolated partition). A node-affine kthread (kswapdN,
/// kcompactdN) gets its node: before 6.14 all of it (the thread sets its
/// node's mask itself, kcompactd again on every CPU online), from 6.14 its
/// node's share of housekeeping. Online CPUs only, and every online CPU
/// when nothing is left, as the kernel falls back.
pub fn kernel_default(
    release: &str,
    k: &Kthread,
    topology: &super::Topology,
    iso: &KernelIsolation<'_>,
) -> CpuSet {
    let mask = kernel_mask(release, k, topology, iso, iso.cpuset_isolated).and(&topology.online);
    if mask.is_empty() {
        topology.online.clone()
    } else {
        mask
    }
}

/// The mask that hands `k` back to the kernel without leaving a clip
/// behind. From 6.2 every sched_setaffinity() is also kept as the task's
/// `user_cpus_ptr`, and every later re-affine by the kernel (CPU online,
/// partition change, 6.14's preferred affinity) is intersected with it; no
/// call removes it. So the mask written is the kernel's own policy over
/// every possible CPU with boot-time isolation only: the kernel's later
/// choices all fall inside it and none is clipped, while what the task gets
/// now is the kernel's own mask (the cpuset takes out isolated partitions;
/// an offline CPU in a mask is simply not run on), so runtime partitions
/// are left in.
pub fn kernel_release(
    release: &str,
    k: &Kthread,
    topology: &super::Topology,
    iso: &KernelIsolation<'_>,
) -> CpuSet {
    let none = CpuSet::empty(topology.width);
    let mask = kernel_mask(release, k, topology, iso, &none);
    if mask.is_empty() {
        topology.possible.clone()
    } else {
        mask
    }
}

/// The kernel's policy for `k` over every possible CPU; from 7.0 the
/// domain housekeeping leaves out `partitions` too.
fn kernel_mask(
    release: &str,
    k: &Kthread,
    topology: &super::Topology,
    iso: &KernelIsolation<'_>,
    partitions: &CpuSet,
) -> CpuSet {
    let version = kernel_version(release);
    let hk = if version.is_some_and(|v| v >= (7, 0)) {
        topology.possible.and_not(iso.isolated).and_not(partitions)
    } else {
        topology.possible.and_not(iso.nohz_full)
    };
    let node_affine = ["kswapd", "kcompactd"]
        .iter()
        .any(|p| k.comm.starts_with(p));
    let node = k.own_node().and_then(|n| topology.nodes.get(&n));
    match node {
        Some(cpus) if node_affine && version.is_some_and(|v| v >= (6, 14)) => {
            let on_node = hk.and(cpus);
            if on_node.is_empty() { hk } else { on_node }
        }
        Some(cpus) if node_affine => cpus.and(&topology.possible),
        _ => hk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(comm: &str, flags: u32) -> Kthread {
        Kthread {
            pid: 1,
            comm: comm.into(),
            flags: PF_KTHREAD | flags,
            start_time: 0,
            cpus_allowed: CpuSet::full(2),
        }
    }

    #[test]
    fn which_kernel_manages_what() {
        assert!(!kernel_manages_affinity("6.12.30", &k("kswapd0", 0)));
        assert!(kernel_manages_affinity("6.14.0", &k("kswapd0", 0)));
        assert!(!kernel_manages_affinity("6.18.44-fc", &k("khugepaged", 0)));
        assert!(kernel_manages_affinity("7.0.1", &k("khugepaged", 0)));
        assert!(!kernel_manages_affinity(
            "7.0.1",
            &k("ksoftirqd/0", PF_NO_SETAFFINITY)
        ));
        assert!(!kernel_manages_affinity("garbage", &k("kswapd0", 0)));
    }

    #[test]
    fn the_kernels_own_mask_follows_its_version() {
        let s = |l: &str| CpuSet::parse(l, 8).unwrap();
        let mut topo = super::super::Topology::single_node(s("0-7"), s("0-6"));
        topo.nodes = [(0, s("0-3")), (1, s("4-7"))].into();
        let (isolated, nohz, part) = (s("6-7"), s("5-7"), s("4"));
        let iso = KernelIsolation {
            isolated: &isolated,
            nohz_full: &nohz,
            cpuset_isolated: &part,
        };
        let d = |release: &str, comm: &str| kernel_default(release, &k(comm, 0), &topo, &iso);
        // Before 7.0: all but nohz_full, online; isolcpus does not count.
        assert_eq!(d("6.12.1", "khugepaged"), s("0-4"));
        assert_eq!(
            d("6.12.1", "kswapd1"),
            s("4-6"),
            "before 6.14 its whole node, nohz_full or not"
        );
        assert_eq!(d("6.14.0", "kswapd1"), s("4"), "node 1's share");
        assert_eq!(d("6.14.0", "kswapd0"), s("0-3"));
        // 7.0: domain housekeeping: not isolcpus, not the partition.
        assert_eq!(d("7.0.1", "khugepaged"), s("0-3,5"));
        assert_eq!(d("7.3.4", "kswapd1"), s("5"));
        // Nothing left: every online CPU, as the kernel falls back.
        let none = CpuSet::empty(8);
        let all = s("0-7");
        let iso = KernelIsolation {
            isolated: &none,
            nohz_full: &all,
            cpuset_isolated: &none,
        };
        assert_eq!(
            kernel_default("6.1.0", &k("khugepaged", 0), &topo, &iso),
            s("0-6")
        );
    }

    #[test]
    fn the_release_mask_is_the_kernels_policy_over_every_possible_cpu() {
        let s = |l: &str| CpuSet::parse(l, 8).unwrap();
        let mut topo = super::super::Topology::single_node(s("0-7"), s("0-5"));
        topo.nodes = [(0, s("0-3")), (1, s("4-7"))].into();
        let (isolated, nohz, part) = (s("6-7"), s("5-7"), s("4"));
        let iso = KernelIsolation {
            isolated: &isolated,
            nohz_full: &nohz,
            cpuset_isolated: &part,
        };
        let r = |release: &str, comm: &str| kernel_release(release, &k(comm, 0), &topo, &iso);
        // Offline CPUs and the runtime partition stay in: the kernel may
        // choose them later, and the cpuset takes the partition out now.
        assert_eq!(r("6.12.1", "khugepaged"), s("0-4"));
        assert_eq!(r("6.12.1", "kcompactd1"), s("4-7"));
        assert_eq!(r("6.14.0", "kcompactd1"), s("4"));
        assert_eq!(r("7.0.1", "khugepaged"), s("0-5"));
        assert_eq!(r("7.3.4", "kswapd1"), s("4-5"));
        // Each is a superset of the kernel's own mask now.
        for (rel, comm) in [("6.12.1", "kcompactd1"), ("7.0.1", "khugepaged")] {
            let now = kernel_default(rel, &k(comm, 0), &topo, &iso);
            assert!(now.is_subset(&r(rel, comm)), "{rel} {comm}");
        }
    }

    #[test]
    fn irq_threads_name_their_irq() {
        assert_eq!(k("irq/9-acpi", 0).follows_irq(), Some(9));
        assert_eq!(k("irq/123-nvme0q1", 0).follows_irq(), Some(123));
        assert_eq!(k("irq/x-acpi", 0).follows_irq(), None);
        assert_eq!(k("irq_work/3", 0).follows_irq(), None);
        assert_eq!(k("khugepaged", 0).follows_irq(), None);
        assert!(k("kworker/u8:2-ev", PF_NO_SETAFFINITY).follows_workqueue());
        assert!(!k("kworker/0:1H", PF_NO_SETAFFINITY).follows_workqueue());
    }

    #[test]
    fn own_node_from_name() {
        assert_eq!(k("kswapd1", 0).own_node(), Some(1));
        assert_eq!(k("kcompactd12", 0).own_node(), Some(12));
        assert_eq!(k("khugepaged", 0).own_node(), None);
    }
}
