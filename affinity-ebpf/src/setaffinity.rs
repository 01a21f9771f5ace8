//! Who moves a registered kthread: the kernel's `sched_setaffinity()`.
//!
//! Preferred: fexit on the function, which runs only when it returns, with
//! its arguments and result. Where BPF trampolines are refused, the classic
//! syscall tracepoints (entry remembers the target per calling thread, exit
//! reports with the result) do the same job, at a price: enabling them
//! sends every syscall of every task through the slow tracing path.

use affinity_common::{Counter, EventKind, Header, PendingSetAffinity, SetAffinityEvent};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{fexit, tracepoint},
    programs::{FExitContext, TracePointContext},
};

use crate::maps::{
    ALLOWED, EVENTS, SETAFFINITY, count,
    globals::{self, DAEMON_TGID},
};

// long sched_setaffinity(pid_t pid, const struct cpumask *in_mask)
#[fexit(function = "sched_setaffinity")]
pub fn sched_setaffinity_exit(ctx: FExitContext) -> i32 {
    let tgid = ctx.tgid();
    if tgid == globals::get(&DAEMON_TGID) {
        return 0;
    }
    let pid: i32 = ctx.arg(0);
    let ret: i64 = ctx.arg(2);
    // pid 0 is the caller itself.
    let target = if pid == 0 { ctx.pid() } else { pid as u32 };
    if ALLOWED.get_ptr(target).is_none() {
        return 0;
    }
    emit(target, ret as i32);
    0
}

/// Reports a finished call by the current task on `target`.
fn emit(target: u32, ret: i32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = SetAffinityEvent {
        header: Header {
            kind: EventKind::SetAffinity as u32,
            cpu: unsafe { bpf_get_smp_processor_id() },
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        target_pid: target,
        caller_pid: pid_tgid as u32,
        caller_tgid: (pid_tgid >> 32) as u32,
        ret,
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
    let tgid = ctx.tgid();
    if tgid == globals::get(&DAEMON_TGID) {
        return 0;
    }
    let Ok(pid) = (unsafe { ctx.read_at::<u64>(ENTER_PID_OFF) }) else {
        return 0;
    };
    // pid 0 is the caller itself.
    let target = if pid == 0 { ctx.pid() } else { pid as u32 };
    if unsafe { ALLOWED.get(target) }.is_none() {
        return 0;
    }
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
    let Some(pending) = (unsafe { SETAFFINITY.get(tid) }).copied() else {
        return 0;
    };
    let _ = SETAFFINITY.remove(tid);
    let ret = unsafe { ctx.read_at::<i64>(EXIT_RET_OFF) }.unwrap_or(0);
    emit(pending.target_pid, ret as i32);
    0
}
