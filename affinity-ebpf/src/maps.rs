//! Maps and load-time globals shared by the programs.

use affinity_common::{COUNTERS_LEN, Counter, CpuMask, MAX_CPUS, PendingSetAffinity};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};

/// BPF_F_NO_PREALLOC: entries are 1 KiB; only registered kthreads use them.
const NO_PREALLOC: u32 = 1;

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[map(name = "ALLOWED")]
pub static ALLOWED: HashMap<u32, CpuMask> = HashMap::with_max_entries(16384, NO_PREALLOC);

#[map(name = "ISOLATED")]
pub static ISOLATED: Array<CpuMask> = Array::with_max_entries(1, 0);

#[map(name = "HOTPLUG")]
pub static HOTPLUG: Array<u32> = Array::with_max_entries(MAX_CPUS as u32, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[map(name = "LAST_REPORT")]
pub static LAST_REPORT: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "SETAFFINITY")]
pub static SETAFFINITY: HashMap<u32, PendingSetAffinity> = HashMap::with_max_entries(1024, 0);

pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on
        // one CPU for these tracepoints.
        unsafe { *slot += 1 };
    }
}

/// Globals rewritten by userspace (`EbpfLoader::override_global`). Read them
/// with `read_volatile`, or the compiler folds the zero initialiser in.
pub mod globals {
    #[unsafe(no_mangle)]
    pub static TASK_FLAGS_OFF: u32 = 0;
    #[unsafe(no_mangle)]
    pub static TASK_PID_OFF: u32 = 0;
    #[unsafe(no_mangle)]
    pub static TASK_TGID_OFF: u32 = 0;
    #[unsafe(no_mangle)]
    pub static TASK_COMM_OFF: u32 = 0;
    #[unsafe(no_mangle)]
    pub static CPUHP_AP_ACTIVE: i32 = 0;
    #[unsafe(no_mangle)]
    pub static CPUHP_TEARDOWN_CPU: i32 = 0;
    #[unsafe(no_mangle)]
    pub static DAEMON_TGID: u32 = 0;
    #[unsafe(no_mangle)]
    pub static REPORT_INTERVAL_NS: u64 = 0;

    #[inline(always)]
    pub fn get<T: Copy>(v: &'static T) -> T {
        unsafe { core::ptr::read_volatile(v) }
    }
}
