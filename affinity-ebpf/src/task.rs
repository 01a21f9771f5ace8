//! Reading `struct task_struct` fields at offsets resolved from the running
//! kernel's BTF.

use affinity_common::TASK_COMM_LEN;
use aya_ebpf::helpers::bpf_probe_read_kernel;

use crate::maps::globals::{self, TASK_COMM_OFF, TASK_FLAGS_OFF, TASK_PID_OFF, TASK_TGID_OFF};

/// An opaque `struct task_struct *`.
#[derive(Clone, Copy)]
pub struct Task(pub *const u8);

impl Task {
    #[inline(always)]
    fn read<T: Copy>(self, off: u32) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel checks the address and fails
        // cleanly on a bad one; the result is plain integers.
        unsafe { bpf_probe_read_kernel(self.0.add(off as usize) as *const T).ok() }
    }

    /// A plain load: the pointer is a tp_btf argument the verifier types as
    /// `struct task_struct *`, and the offset, a frozen read-only global,
    /// is a constant to it, so it checks the access against the kernel's BTF
    /// and turns it into a fault-safe load. Far cheaper than the helper
    /// call, which matters on sched_switch.
    #[inline(always)]
    fn load_u32(self, off: u32) -> u32 {
        // SAFETY: see above: the verifier checks the access against BTF and
        // makes it fault-safe.
        unsafe { core::ptr::read_volatile(self.0.add(off as usize) as *const u32) }
    }

    #[inline(always)]
    pub fn flags(self) -> u32 {
        self.load_u32(globals::get(&TASK_FLAGS_OFF))
    }

    #[inline(always)]
    pub fn pid(self) -> u32 {
        self.load_u32(globals::get(&TASK_PID_OFF))
    }

    #[inline(always)]
    pub fn tgid(self) -> Option<u32> {
        self.read(globals::get(&TASK_TGID_OFF))
    }

    #[inline(always)]
    pub fn comm(self) -> [u8; TASK_COMM_LEN] {
        self.read(globals::get(&TASK_COMM_OFF))
            .unwrap_or([0; TASK_COMM_LEN])
    }
}
