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
/// `affinity restore` puts back: before 7.0 what kthreads get when created
/// (HK_TYPE_KTHREAD: every CPU but nohz_full ones), from 7.0 the domain
/// housekeeping the kernel manages them against (HK_TYPE_DOMAIN: not
/// isolcpus, not an isolated partition); from 6.14 a node-affine kthread
/// (kswapdN, kcompactdN) gets its node's share of that. Online CPUs only,
/// and every online CPU when nothing is left, as the kernel falls back.
pub fn kernel_default(
    release: &str,
    k: &Kthread,
    topology: &super::Topology,
    iso: &KernelIsolation<'_>,
) -> CpuSet {
    let version = kernel_version(release);
    let hk = if version.is_some_and(|v| v >= (7, 0)) {
        topology
            .possible
            .and_not(iso.isolated)
            .and_not(iso.cpuset_isolated)
    } else {
        topology.possible.and_not(iso.nohz_full)
    };
    let hk = hk.and(&topology.online);
    let node_affine = ["kswapd", "kcompactd"]
        .iter()
        .any(|p| k.comm.starts_with(p));
    let mut mask = hk.clone();
    if version.is_some_and(|v| v >= (6, 14))
        && node_affine
        && let Some(cpus) = k.own_node().and_then(|n| topology.nodes.get(&n))
    {
        let on_node = hk.and(cpus);
        if !on_node.is_empty() {
            mask = on_node;
        }
    }
    if mask.is_empty() {
        topology.online.clone()
    } else {
        mask
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
            s("0-4"),
            "no node affinity before 6.14"
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
    fn own_node_from_name() {
        assert_eq!(k("kswapd1", 0).own_node(), Some(1));
        assert_eq!(k("kcompactd12", 0).own_node(), Some(12));
        assert_eq!(k("khugepaged", 0).own_node(), None);
    }
}
