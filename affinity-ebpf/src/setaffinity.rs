//! Who moves a registered kthread: the sched_setaffinity syscall, entry and
//! exit (classic tracepoints; their layout has not changed since 2.6).
//!
//! Entry remembers the target per calling thread; exit reports the call with
//! its result, so userspace reads the new mask only once it is in place.

use affinity_common::{Counter, EventKind, Header, PendingSetAffinity, SetAffinityEvent};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::{
    ALLOWED, EVENTS, SETAFFINITY, count,
    globals::{self, DAEMON_TGID},
};

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
    let event = SetAffinityEvent {
        header: Header {
            kind: EventKind::SetAffinity as u32,
            cpu: unsafe { bpf_get_smp_processor_id() },
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        target_pid: pending.target_pid,
        caller_pid: ctx.pid(),
        caller_tgid: ctx.tgid(),
        ret: ret as i32,
        caller_comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output::<SetAffinityEvent>(&event, 0).is_err() {
        count(Counter::Dropped);
    }
    0
}
