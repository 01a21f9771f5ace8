//! The daemon's narrow interface to the kernel: read kthreads and CPUs, set
//! a mask. `kernel::procfs::ProcKernel` is the real one; tests use a fake.

use std::{collections::BTreeMap, io};

use thiserror::Error;

use crate::{
    kernel::sysfs::Scan,
    policy::{CpuSet, Kthread},
};

#[derive(Debug, Error)]
pub enum SetAffinityError {
    /// The pid is gone, or now names another task: it must never be touched.
    #[error("pid {0} is no longer the kthread it was")]
    Gone(u32),
    /// PF_NO_SETAFFINITY: the kernel refuses (EINVAL).
    #[error("pid {0} is pinned by the kernel")]
    Pinned(u32),
    /// EINVAL because no CPU of the mask is online any more.
    #[error("no CPU of {mask} is online now")]
    Offline { pid: u32, mask: String },
    /// Anything else, which may pass: the kthread is still there.
    #[error("{what}({pid}, {mask}): {source}")]
    Os {
        what: &'static str,
        pid: u32,
        mask: String,
        source: io::Error,
    },
}

impl SetAffinityError {
    pub fn errno(&self) -> i32 {
        match self {
            SetAffinityError::Gone(_) => libc::ESRCH,
            SetAffinityError::Pinned(_) | SetAffinityError::Offline { .. } => libc::EINVAL,
            SetAffinityError::Os { source, .. } => source.raw_os_error().unwrap_or(0),
        }
    }
}

pub trait Kernel {
    /// Sets `pid`'s CPU mask, but only if `pid` is still the kthread that
    /// started at `start_time` (clock ticks since boot, /proc/PID/stat field
    /// 22). Returns the mask the kernel reports afterwards.
    fn set_affinity(
        &mut self,
        pid: u32,
        start_time: u64,
        mask: &CpuSet,
    ) -> Result<CpuSet, SetAffinityError>;
    /// The kthread `pid` as it is now: `Ok(None)` if gone or not a kthread,
    /// `Err` if it could not be read (which says nothing about it).
    fn kthread(&self, pid: u32) -> io::Result<Option<Kthread>>;
    /// Every kthread now.
    fn kthreads(&self) -> io::Result<Scan>;
    /// The online CPUs now.
    fn online_cpus(&self) -> anyhow::Result<CpuSet>;
    /// Whether no hotplug operation is under way on `cpu`.
    fn cpu_settled(&self, cpu: u32) -> bool;
    /// The node `cpu` belongs to, read now.
    fn cpu_node(&self, cpu: u32) -> Option<u32>;
    /// The nodes of the CPUs in `online`, read now; a CPU whose node is
    /// not known is in none.
    fn online_nodes(&self, online: &CpuSet) -> BTreeMap<u32, CpuSet> {
        let mut nodes: BTreeMap<u32, CpuSet> = BTreeMap::new();
        for cpu in online.iter() {
            if let Some(n) = self.cpu_node(cpu) {
                nodes
                    .entry(n)
                    .or_insert_with(|| CpuSet::empty(online.width()))
                    .insert(cpu);
            }
        }
        nodes
    }
}
