//! Maps and load-time globals shared by the programs.

use affinity_common::{
    COUNTERS_LEN, Counter, CpuMask, HotplugView, MASK_WORDS, MAX_CPUS, NOISE_ENTRIES, NoiseKey,
    NoiseStat, NoiseState, PendingSetAffinity, Policy, Running,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};

/// BPF_F_NO_PREALLOC: entries are 1 KiB; only registered kthreads use them.
const NO_PREALLOC: u32 = 1;

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// 64 KiB: hotplug records are 48 bytes and come a few per step.
#[map(name = "HOTPLUG_EVENTS")]
pub static HOTPLUG_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 16, 0);

#[map(name = "ALLOWED")]
pub static ALLOWED: HashMap<u32, Policy> = HashMap::with_max_entries(16384, NO_PREALLOC);

#[map(name = "CPUHP_VIEW")]
pub static CPUHP_VIEW: Array<HotplugView> = Array::with_max_entries(1, 0);

#[map(name = "HOTPLUG_ACK")]
pub static HOTPLUG_ACK: Array<u64> = Array::with_max_entries(1, 0);

/// Indexed by CPU, written only by programs running on that CPU.
#[map(name = "RUNNING")]
pub static RUNNING: Array<Running> = Array::with_max_entries(MAX_CPUS as u32, 0);

#[map(name = "ISOLATED")]
pub static ISOLATED: Array<CpuMask> = Array::with_max_entries(1, 0);

#[map(name = "HOTPLUG")]
pub static HOTPLUG: Array<u32> = Array::with_max_entries(MAX_CPUS as u32, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[map(name = "LAST_REPORT")]
pub static LAST_REPORT: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "NOISE")]
pub static NOISE: LruPerCpuHashMap<NoiseKey, NoiseStat> =
    LruPerCpuHashMap::with_max_entries(NOISE_ENTRIES, 0);

#[map(name = "NOISE_STATE")]
pub static NOISE_STATE: PerCpuArray<NoiseState> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SETAFFINITY")]
pub static SETAFFINITY: HashMap<u32, PendingSetAffinity> = HashMap::with_max_entries(1024, 0);

pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a valid per-CPU slot: no other CPU writes it, and programs
        // do not nest on one CPU for these tracepoints.
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
    #[unsafe(no_mangle)]
    pub static MASK_WORDS_USED: u32 = 0;
    #[unsafe(no_mangle)]
    pub static INIT_PIDNS_DEV: u64 = 0;
    #[unsafe(no_mangle)]
    pub static INIT_PIDNS_INO: u64 = 0;

    #[inline(always)]
    pub fn get<T: Copy>(v: &'static T) -> T {
        // SAFETY: a reference to a static is valid for reads, forever.
        unsafe { core::ptr::read_volatile(v) }
    }
}

/// Whether some CPU is in `a` and `b` but not in `not`: one pass over the
/// words that cover the possible CPUs (a frozen global, so the verifier
/// sees a constant bound).
#[inline(always)]
pub fn intersects(a: &CpuMask, b: &CpuMask, not: &CpuMask) -> bool {
    let n = globals::get(&globals::MASK_WORDS_USED) as usize;
    for i in 0..MASK_WORDS {
        if i >= n {
            break;
        }
        if a.words[i] & b.words[i] & !not.words[i] != 0 {
            return true;
        }
    }
    false
}

/// `dst = src` over the words in use.
#[inline(always)]
pub fn copy_mask(dst: &mut CpuMask, src: &CpuMask) {
    let n = globals::get(&globals::MASK_WORDS_USED) as usize;
    for i in 0..MASK_WORDS {
        if i >= n {
            break;
        }
        dst.words[i] = src.words[i];
    }
}
