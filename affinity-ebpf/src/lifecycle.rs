//! Kthread creation and exit: `sched_process_fork`, `task_rename` and
//! `sched_process_exit`.
//!
//! kthreadd forks every kthread. Since 6.2 the child has its final name at
//! fork; before, it is named "kthreadd" and renamed right after, so renames
//! of kthreads are reported too. Userspace reads the rest from /proc once
//! the creator has finished binding and naming it.

use affinity_common::{Counter, EventKind, Header, PF_KTHREAD, TASK_COMM_LEN, TaskEvent};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    maps::{ALLOWED, EVENTS, LAST_REPORT, count},
    task::Task,
};

// TP_PROTO(struct task_struct *parent, struct task_struct *child)
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let child = Task(ctx.arg(1));
    let flags = child.flags();
    if flags & PF_KTHREAD != 0 {
        emit(child, flags, EventKind::KthreadNew, child.comm());
    }
    0
}

// TP_PROTO(struct task_struct *task, const char *comm)
#[btf_tracepoint(function = "task_rename")]
pub fn task_rename(ctx: BtfTracePointContext) -> i32 {
    let task = Task(ctx.arg(0));
    let flags = task.flags();
    if flags & PF_KTHREAD == 0 {
        return 0;
    }
    let name: *const u8 = ctx.arg(1);
    let mut comm = [0u8; TASK_COMM_LEN];
    // SAFETY: the helper checks the address and bounds the copy by `comm`.
    if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut comm) }.is_err() {
        comm = task.comm();
    }
    emit(task, flags, EventKind::KthreadNew, comm);
    0
}

// TP_PROTO(struct task_struct *p, ...)
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let task = Task(ctx.arg(0));
    let flags = task.flags();
    if flags & PF_KTHREAD == 0 {
        return 0;
    }
    // Stop judging a pid that may be reused before userspace catches up.
    let pid = task.pid();
    let _ = ALLOWED.remove(pid);
    let _ = LAST_REPORT.remove(pid);
    emit(task, flags, EventKind::KthreadExit, task.comm());
    0
}

fn emit(task: Task, flags: u32, kind: EventKind, comm: [u8; TASK_COMM_LEN]) {
    let pid = task.pid();
    let event = TaskEvent {
        header: Header {
            kind: kind as u32,
            // SAFETY: helpers without preconditions.
            cpu: unsafe { bpf_get_smp_processor_id() },
            // SAFETY: as above.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        pid,
        tgid: task.tgid().unwrap_or(pid),
        flags,
        cpu: 0,
        comm,
        run_ns: 0,
    };
    if EVENTS.output::<TaskEvent>(&event, 0).is_err() {
        count(Counter::Dropped);
    }
}
