//! Who moves a registered kthread: the kernel's `sched_setaffinity()`.
//!
//! Preferred: fexit on the function, which runs only when it returns, with
//! its arguments and result. Where BPF trampolines are refused, the classic
//! syscall tracepoints (entry remembers the target per calling thread, exit
//! reports with the result) do the same job, at a price: enabling them
//! sends every syscall of every task through the slow tracing path.
//!
//! Only calls that succeeded are reported: anyone may call
//! sched_setaffinity() on a kthread's pid and get EPERM, and a loop doing
//! that must not be able to fill the ring. The target pid is the caller's
//! pid number, which names a global pid only for callers in the initial pid
//! namespace; kthreads live only there, so callers elsewhere cannot have
//! moved one and are ignored.

use affinity_common::{Counter, EventKind, Header, PendingSetAffinity, SetAffinityEvent};
use aya_ebpf::{
    EbpfContext,
    bindings::bpf_pidns_info,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::bpf_get_ns_current_pid_tgid,
    },
    macros::{fexit, tracepoint},
    programs::{FExitContext, TracePointContext},
};

use crate::{
    maps::{
        ALLOWED, EVENTS, SETAFFINITY, count,
        globals::{self, DAEMON_TGID, INIT_PIDNS_DEV, INIT_PIDNS_INO},
    },
    task::Task,
};

/// Whether the current task's pid numbers are global ones.
#[inline(always)]
fn in_init_pidns() -> bool {
    let mut info = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `info` is a valid out buffer of the size passed.
    let ret = unsafe {
        bpf_get_ns_current_pid_tgid(
            globals::get(&INIT_PIDNS_DEV),
            globals::get(&INIT_PIDNS_INO),
            &mut info,
            size_of::<bpf_pidns_info>() as u32,
        )
    };
    ret == 0
}

/// The registered kthread a call by the current task on `pid` targets.
#[inline(always)]
fn registered_target(pid: i64, own_pid: u32) -> Option<u32> {
    // pid 0 is the caller itself.
    let target = if pid == 0 { own_pid } else { pid as u32 };
    ALLOWED.get_ptr(target)?;
    in_init_pidns().then_some(target)
}

// long sched_setaffinity(pid_t pid, const struct cpumask *in_mask)
#[fexit(function = "sched_setaffinity")]
pub fn sched_setaffinity_exit(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(2);
    if ret != 0 || ctx.tgid() == globals::get(&DAEMON_TGID) {
        return 0;
    }
    let pid: i32 = ctx.arg(0);
    if let Some(target) = registered_target(pid as i64, ctx.pid()) {
        emit(target, EventKind::SetAffinity);
    }
    0
}

// int set_cpus_allowed_ptr(struct task_struct *p, const struct cpumask *new_mask)
//
// The kernel's own re-affines: kthread_affine_preferred() and its CPU-online
// and partition updates (6.14, 7.0), kcompactd on CPU online before 6.14,
// cpuset moving the root's tasks. sched_setaffinity() does not come here
// (it calls __set_cpus_allowed_ptr()), so the daemon's own calls do not
// either. Reported like a call, the current task (cpuhp/N, a kworker) as
// the caller, so the daemon hears of it at once rather than at the rescan.
#[fexit(function = "set_cpus_allowed_ptr")]
pub fn set_cpus_allowed_ptr_exit(ctx: FExitContext) -> i32 {
    let ret: i32 = ctx.arg(2);
    if ret != 0 {
        return 0;
    }
    let task = Task(ctx.arg(0));
    let target = task.pid();
    if ALLOWED.get_ptr(target).is_some() {
        emit(target, EventKind::Reaffine);
    }
    0
}

/// Reports a successful call by the current task on `target`.
fn emit(target: u32, kind: EventKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = SetAffinityEvent {
        header: Header {
            kind: kind as u32,
            // SAFETY: helpers without preconditions.
            cpu: unsafe { bpf_get_smp_processor_id() },
            // SAFETY: as above.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        target_pid: target,
        caller_pid: pid_tgid as u32,
        caller_tgid: (pid_tgid >> 32) as u32,
        ret: 0,
        caller_comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output::<SetAffinityEvent>(&event, 0).is_err() {
        count(Counter::Dropped);
    }
}

/// `struct syscall_trace_enter`: 8 bytes of common fields, the syscall
/// number, then each argument as an unsigned long.
const ENTER_PID_OFF: usize = 16;
/// `struct syscall_trace_exit`: common fields, syscall number, `long ret`.
const EXIT_RET_OFF: usize = 16;

#[tracepoint]
pub fn sys_enter_sched_setaffinity(ctx: TracePointContext) -> i32 {
    if ctx.tgid() == globals::get(&DAEMON_TGID) {
        return 0;
    }
    // SAFETY: the offset is within the tracepoint's record (see above); a
    // failed read is an error, not undefined behaviour.
    let Ok(pid) = (unsafe { ctx.read_at::<u64>(ENTER_PID_OFF) }) else {
        return 0;
    };
    let Some(target) = registered_target(pid as i32 as i64, ctx.pid()) else {
        return 0;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = SETAFFINITY.insert(
        tid,
        PendingSetAffinity {
            target_pid: target,
            _pad: 0,
        },
        0,
    );
    0
}

#[tracepoint]
pub fn sys_exit_sched_setaffinity(ctx: TracePointContext) -> i32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { SETAFFINITY.get(tid) }).copied() else {
        return 0;
    };
    let _ = SETAFFINITY.remove(tid);
    // SAFETY: as for the entry's offset.
    let ret = unsafe { ctx.read_at::<i64>(EXIT_RET_OFF) }.unwrap_or(-1);
    if ret == 0 {
        emit(pending.target_pid, EventKind::SetAffinity);
    }
    0
}
