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
    fn own_node_from_name() {
        assert_eq!(k("kswapd1", 0).own_node(), Some(1));
        assert_eq!(k("kcompactd12", 0).own_node(), Some(12));
        assert_eq!(k("khugepaged", 0).own_node(), None);
    }
}
