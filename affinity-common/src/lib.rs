//! Wire types shared by the eBPF programs and the userspace daemon.
//!
//! Every ring-buffer record starts with a [`Header`] whose `kind` says which
//! `#[repr(C)]` record follows; userspace checks kind and length before it
//! reads a record (see `affinity::wire`), it never transmutes blindly.
//! Map and program names live here so both sides agree on them.

#![cfg_attr(not(feature = "user"), no_std)]
// Every wire type shows up in a test failure or a verbose log sooner or later.
#![warn(missing_debug_implementations)]

/// Widest CPU mask the eBPF side understands (the kernel's NR_CPUS maximum).
pub const MAX_CPUS: usize = 8192;
/// A power of two: [`CpuMask::contains`] bounds its index with a mask.
pub const MASK_WORDS: usize = MAX_CPUS / 64;
pub const TASK_COMM_LEN: usize = 16;

pub const PF_KTHREAD: u32 = 0x0020_0000;
pub const PF_NO_SETAFFINITY: u32 = 0x0400_0000;

/// Names of the maps in the eBPF object.
pub mod maps {
    /// Ring buffer for everything but hotplug records.
    pub const EVENTS: &str = "EVENTS";
    /// Hotplug records only: a small ring of their own, so no flood of other
    /// records can crowd them out, drained first.
    pub const HOTPLUG_EVENTS: &str = "HOTPLUG_EVENTS";
    /// pid → [`super::Policy`] of a registered kthread (written by userspace).
    pub const ALLOWED: &str = "ALLOWED";
    /// index 0: [`super::HotplugView`], the online CPUs as the cpuhp programs
    /// saw them change (written by the programs, seeded by userspace).
    pub const CPUHP_VIEW: &str = "CPUHP_VIEW";
    /// index 0: the last [`super::HotplugView::seq`] userspace has acted on
    /// (written by userspace only).
    pub const HOTPLUG_ACK: &str = "HOTPLUG_ACK";
    /// cpu → the kthread now running there outside its policy, since when.
    pub const RUNNING: &str = "RUNNING";
    /// index 0: CPUs no movable kthread should run on (non-housekeeping).
    pub const ISOLATED: &str = "ISOLATED";
    /// cpu → hotplug progress, so each transition is reported once.
    pub const HOTPLUG: &str = "HOTPLUG";
    /// per-CPU counters, indexed by [`super::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// tid → pending sched_setaffinity call (target pid), between syscall entry and exit.
    pub const SETAFFINITY: &str = "SETAFFINITY";
    /// pid → last time a violation of it was reported (rate limit).
    pub const LAST_REPORT: &str = "LAST_REPORT";
    /// per-CPU [`super::NoiseKey`] → [`super::NoiseStat`]: time spent on
    /// watched (non-housekeeping) CPUs by kthreads, hard IRQs and softirqs.
    pub const NOISE: &str = "NOISE";
    /// per-CPU [`super::NoiseState`]: the run, handler or softirq open now.
    pub const NOISE_STATE: &str = "NOISE_STATE";
}

/// Names of the programs, which are also the names of what they attach to.
pub mod programs {
    pub const CPUHP_ENTER: &str = "cpuhp_enter";
    pub const CPUHP_MULTI_ENTER: &str = "cpuhp_multi_enter";
    pub const CPUHP_EXIT: &str = "cpuhp_exit";
    pub const SCHED_SWITCH: &str = "sched_switch";
    pub const SCHED_MIGRATE_TASK: &str = "sched_migrate_task";
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    pub const TASK_RENAME: &str = "task_rename";
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    pub const SETAFFINITY_FEXIT: &str = "sched_setaffinity_exit";
    /// The kernel's own re-affines (fexit on set_cpus_allowed_ptr).
    pub const REAFFINE_FEXIT: &str = "set_cpus_allowed_ptr_exit";
    pub const SETAFFINITY_ENTER: &str = "sys_enter_sched_setaffinity";
    pub const SETAFFINITY_EXIT: &str = "sys_exit_sched_setaffinity";
    pub const IRQ_HANDLER_ENTRY: &str = "irq_handler_entry";
    pub const IRQ_HANDLER_EXIT: &str = "irq_handler_exit";
    pub const SOFTIRQ_ENTRY: &str = "softirq_entry";
    pub const SOFTIRQ_EXIT: &str = "softirq_exit";

    /// (program, tracepoint category, tracepoint name) for every tp_btf program.
    pub const BTF_TRACEPOINTS: &[(&str, &str)] = &[
        (CPUHP_ENTER, "cpuhp_enter"),
        (CPUHP_MULTI_ENTER, "cpuhp_multi_enter"),
        (CPUHP_EXIT, "cpuhp_exit"),
        (SCHED_SWITCH, "sched_switch"),
        (SCHED_MIGRATE_TASK, "sched_migrate_task"),
        (SCHED_PROCESS_FORK, "sched_process_fork"),
        (TASK_RENAME, "task_rename"),
        (SCHED_PROCESS_EXIT, "sched_process_exit"),
        (IRQ_HANDLER_ENTRY, "irq_handler_entry"),
        (IRQ_HANDLER_EXIT, "irq_handler_exit"),
        (SOFTIRQ_ENTRY, "softirq_entry"),
        (SOFTIRQ_EXIT, "softirq_exit"),
    ];
    /// The hard IRQ and softirq programs of the noise report, which
    /// `--noise-interval 0` leaves unattached.
    pub const NOISE: &[&str] = &[
        IRQ_HANDLER_ENTRY,
        IRQ_HANDLER_EXIT,
        SOFTIRQ_ENTRY,
        SOFTIRQ_EXIT,
    ];
    /// (program, kernel function) for the fexit programs.
    pub const FEXITS: &[(&str, &str)] = &[
        (SETAFFINITY_FEXIT, "sched_setaffinity"),
        (REAFFINE_FEXIT, "set_cpus_allowed_ptr"),
    ];
    /// (program, category, name): the fallback where fexit is refused.
    pub const SYSCALL_TRACEPOINTS: &[(&str, &str, &str)] = &[
        (SETAFFINITY_ENTER, "syscalls", "sys_enter_sched_setaffinity"),
        (SETAFFINITY_EXIT, "syscalls", "sys_exit_sched_setaffinity"),
    ];

    /// Every program in the object, in load order: the one list the loader,
    /// the tests and the bench take names from.
    pub const ALL: &[&str] = &[
        CPUHP_ENTER,
        CPUHP_MULTI_ENTER,
        CPUHP_EXIT,
        SCHED_SWITCH,
        SCHED_MIGRATE_TASK,
        SCHED_PROCESS_FORK,
        TASK_RENAME,
        SCHED_PROCESS_EXIT,
        IRQ_HANDLER_ENTRY,
        IRQ_HANDLER_EXIT,
        SOFTIRQ_ENTRY,
        SOFTIRQ_EXIT,
        SETAFFINITY_FEXIT,
        REAFFINE_FEXIT,
        SETAFFINITY_ENTER,
        SETAFFINITY_EXIT,
    ];
}

/// Names of the read-only globals userspace sets at load time.
pub mod globals {
    /// Offsets into `struct task_struct`, from the running kernel's BTF:
    /// Rust eBPF gets no CO-RE relocations, so nothing is frozen at build time.
    pub const TASK_FLAGS_OFF: &str = "TASK_FLAGS_OFF";
    pub const TASK_PID_OFF: &str = "TASK_PID_OFF";
    pub const TASK_TGID_OFF: &str = "TASK_TGID_OFF";
    pub const TASK_COMM_OFF: &str = "TASK_COMM_OFF";
    /// `enum cpuhp_state` values, which differ between kernel versions.
    pub const CPUHP_AP_ACTIVE: &str = "CPUHP_AP_ACTIVE";
    pub const CPUHP_TEARDOWN_CPU: &str = "CPUHP_TEARDOWN_CPU";
    /// The daemon's own tgid: its sched_setaffinity calls are not reported.
    pub const DAEMON_TGID: &str = "DAEMON_TGID";
    /// Minimum nanoseconds between two violation reports for one pid.
    pub const REPORT_INTERVAL_NS: &str = "REPORT_INTERVAL_NS";
    /// 64-bit words that cover every possible CPU: bounds the mask loops.
    pub const MASK_WORDS_USED: &str = "MASK_WORDS_USED";
    /// st_dev and st_ino of the initial pid namespace (`/proc/self/ns/pid` of
    /// the daemon): only callers in it name kthreads by their global pid.
    pub const INIT_PIDNS_DEV: &str = "INIT_PIDNS_DEV";
    pub const INIT_PIDNS_INO: &str = "INIT_PIDNS_INO";
}

/// Per-CPU counters in [`maps::COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Records lost because the ring buffer was full.
    Dropped = 0,
    /// Violations seen but not reported because of the per-pid rate limit.
    Suppressed = 1,
    /// Violations seen (reported or not).
    Violations = 2,
    /// Hotplug records lost because their own ring was full.
    HotplugDropped = 3,
}
pub const COUNTERS_LEN: u32 = 4;

/// Hotplug progress per CPU in [`maps::HOTPLUG`].
pub mod hotplug_state {
    pub const IDLE: u32 = 0;
    pub const DOWN_STARTED: u32 = 1;
    pub const DOWN_DONE: u32 = 2;
    pub const UP_STARTED: u32 = 3;
    pub const UP_DONE: u32 = 4;
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Hotplug = 1,
    /// A kthread switched in on a CPU outside its policy mask.
    Violation = 2,
    /// A registered kthread was migrated to a CPU outside its policy mask.
    Migrate = 3,
    /// A kthread was created, or renamed.
    KthreadNew = 4,
    KthreadExit = 5,
    /// Someone called sched_setaffinity on a registered kthread.
    SetAffinity = 6,
    /// The kernel re-affined a registered kthread (set_cpus_allowed_ptr);
    /// the same record as [`EventKind::SetAffinity`].
    Reaffine = 7,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Hotplug,
            2 => Self::Violation,
            3 => Self::Migrate,
            4 => Self::KthreadNew,
            5 => Self::KthreadExit,
            6 => Self::SetAffinity,
            7 => Self::Reaffine,
            _ => return None,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    /// CPU the program ran on.
    pub cpu: u32,
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

/// Phases of a CPU hotplug transition, as reported in [`HotplugEvent::phase`].
pub mod phase {
    /// First teardown callback: act now, before the scheduler must migrate anything.
    pub const OFFLINE_BEGIN: u32 = 1;
    /// The CPU is dead.
    pub const OFFLINE_DONE: u32 = 2;
    /// The CPU is active: the scheduler may place tasks on it.
    pub const ONLINE_DONE: u32 = 3;
    /// A teardown step failed: the kernel rolled the CPU back online.
    pub const OFFLINE_ABORTED: u32 = 4;
    /// A bring-up step failed: the kernel rolled the CPU back offline.
    pub const ONLINE_ABORTED: u32 = 5;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotplugEvent {
    pub header: Header,
    /// The CPU going down or coming up (not the one the program ran on).
    pub target_cpu: u32,
    pub phase: u32,
    /// The `enum cpuhp_state` step that triggered the report.
    pub state: i32,
    /// The failing step's return value for the aborted phases, else 0.
    pub ret: i32,
    /// [`HotplugView::seq`] after this step: what userspace acknowledges
    /// in [`maps::HOTPLUG_ACK`] once it has acted on it.
    pub seq: u64,
}

/// Violation, Migrate, KthreadNew and KthreadExit records.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    pub header: Header,
    pub pid: u32,
    pub tgid: u32,
    pub flags: u32,
    /// Violation: the CPU it ran on; Migrate: destination CPU; otherwise 0.
    pub cpu: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// Violation: how long it ran there before it was switched out; else 0.
    pub run_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetAffinityEvent {
    pub header: Header,
    pub target_pid: u32,
    pub caller_pid: u32,
    pub caller_tgid: u32,
    /// The syscall's return value (0 or -errno).
    pub ret: i32,
    pub caller_comm: [u8; TASK_COMM_LEN],
}

/// The value type of [`maps::ALLOWED`] and [`maps::ISOLATED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMask {
    pub words: [u64; MASK_WORDS],
}

impl CpuMask {
    pub const EMPTY: CpuMask = CpuMask {
        words: [0; MASK_WORDS],
    };

    #[inline(always)]
    pub fn insert(&mut self, cpu: u32) {
        if (cpu as usize) < MAX_CPUS {
            // SAFETY: a volatile read of a local (see `contains`).
            let word = unsafe { core::ptr::read_volatile(&(cpu / 64)) } as usize & (MASK_WORDS - 1);
            self.words[word] |= 1 << (cpu % 64);
        }
    }

    #[inline(always)]
    pub fn remove(&mut self, cpu: u32) {
        if (cpu as usize) < MAX_CPUS {
            // SAFETY: a volatile read of a local (see `contains`).
            let word = unsafe { core::ptr::read_volatile(&(cpu / 64)) } as usize & (MASK_WORDS - 1);
            self.words[word] &= !(1 << (cpu % 64));
        }
    }

    #[inline(always)]
    pub fn contains(&self, cpu: u32) -> bool {
        if cpu as usize >= MAX_CPUS {
            return false;
        }
        // The 6.1 verifier loses a comparison's bound across the register
        // copies LLVM makes, and LLVM folds a plain `& (MASK_WORDS - 1)` into
        // that comparison. Going through memory hides the value from LLVM,
        // so the AND stays, right before the access, where the verifier sees it.
        // SAFETY: a volatile read of a local.
        let word = unsafe { core::ptr::read_volatile(&(cpu / 64)) } as usize & (MASK_WORDS - 1);
        self.words[word] & (1 << (cpu % 64)) != 0
    }
}

/// The value type of [`maps::ALLOWED`]: what the programs need to judge a
/// run of a registered kthread against the policy for *any* online set, so
/// that runs a hotplug step's old or new set allows are not violations.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The mask userspace applied (the fast path: a run inside it is fine).
    pub applied: CpuMask,
    /// P(k), the preferred CPUs; empty when the preference resolves to none.
    pub preferred: CpuMask,
}

/// The value type of [`maps::CPUHP_VIEW`]. Between a hotplug step and
/// userspace's acknowledgement of it (`seq` ≠ the ack) a run is judged
/// against `online`, `low` and `high`: the sets the machine had since the
/// last acknowledged step (`low` ⊆ every one of them ⊆ `high`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotplugView {
    /// Bumped by every reported hotplug step.
    pub seq: u64,
    pub online: CpuMask,
    pub low: CpuMask,
    pub high: CpuMask,
}

/// The value type of [`maps::RUNNING`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// 0: nobody (the idle task is never judged).
    pub pid: u32,
    pub _pad: u32,
    pub since_ns: u64,
}

/// What took time on a watched CPU, the key of [`maps::NOISE`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoiseKind {
    /// A kthread's run (id: its pid), less the handlers that interrupted it.
    Kthread = 1,
    /// A hard IRQ handler (id: the IRQ number).
    HardIrq = 2,
    /// A softirq (id: the vector, see [`SOFTIRQ_NAMES`]), less the hard IRQs
    /// that interrupted it.
    SoftIrq = 3,
}

impl NoiseKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Kthread,
            2 => Self::HardIrq,
            3 => Self::SoftIrq,
            _ => return None,
        })
    }
}

/// The kernel's `softirq_to_name`, indexed by vector (stable since 2.6.34).
pub const SOFTIRQ_NAMES: [&str; 10] = [
    "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU",
];

/// Entries of [`maps::NOISE`] (an LRU: a kthread that is gone makes room).
pub const NOISE_ENTRIES: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NoiseKey {
    /// A [`NoiseKind`].
    pub kind: u32,
    pub id: u32,
}

/// Per CPU: how often and how long, since the daemon started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoiseStat {
    pub count: u64,
    pub total_ns: u64,
}

/// The value type of [`maps::NOISE_STATE`], one per CPU. `hard_ns` and
/// `soft_ns` only grow: a softirq or a kthread run subtracts what they grew
/// by while it was open, so time nested in it is counted once, for the
/// handler that took it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoiseState {
    pub hard_start: u64,
    pub hard_ns: u64,
    pub soft_start: u64,
    /// `hard_ns` when the open softirq started.
    pub soft_mark: u64,
    pub soft_ns: u64,
    pub run_start: u64,
    /// `hard_ns + soft_ns` when the open kthread run started.
    pub run_mark: u64,
    /// The kthread whose run is open; 0: none.
    pub run_pid: u32,
    pub _pad: u32,
}

/// Pending sched_setaffinity, keyed by the caller's tid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingSetAffinity {
    pub target_pid: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)], Copy, contain only integers, and every bit
    // pattern is a valid value; padding is explicit.
    unsafe impl aya::Pod for CpuMask {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Policy {}
    // SAFETY: as above.
    unsafe impl aya::Pod for HotplugView {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NoiseKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NoiseStat {}
}
