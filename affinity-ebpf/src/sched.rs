//! Where kthreads run: `sched_switch` and `sched_migrate_task`.
//!
//! sched_switch is the hottest path in the kernel, so the common case costs
//! one probe read: tasks without PF_KTHREAD return at once. Only a kthread on
//! a CPU outside its policy mask (a registered one), or a movable kthread on
//! a non-housekeeping CPU (the default policy), is reported, at most once
//! per pid per REPORT_INTERVAL_NS.

use affinity_common::{Counter, EventKind, Header, PF_KTHREAD, PF_NO_SETAFFINITY, TaskEvent};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    maps::{
        ALLOWED, EVENTS, ISOLATED, LAST_REPORT, count,
        globals::{self, REPORT_INTERVAL_NS},
    },
    task::Task,
};

// TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let next = Task(ctx.arg(2));
    check(next, None, EventKind::Violation);
    0
}

// TP_PROTO(struct task_struct *p, int dest_cpu)
#[btf_tracepoint(function = "sched_migrate_task")]
pub fn sched_migrate_task(ctx: BtfTracePointContext) -> i32 {
    let task = Task(ctx.arg(0));
    let dest: u32 = ctx.arg(1);
    check(task, Some(dest), EventKind::Migrate);
    0
}

#[inline(always)]
/// `cpu`: where the task is going; None for "this CPU", read only once the
/// task is known to be a kthread (the common case must stay cheap).
fn check(task: Task, cpu: Option<u32>, kind: EventKind) {
    let Some(flags) = task.flags() else { return };
    if flags & PF_KTHREAD == 0 {
        return;
    }
    let cpu = cpu.unwrap_or_else(|| unsafe { bpf_get_smp_processor_id() });
    let Some(pid) = task.pid() else { return };
    let outside = match unsafe { ALLOWED.get(pid) } {
        Some(allowed) => !allowed.contains(cpu),
        // Unregistered: only the default policy applies, and only to
        // kthreads that could have been moved.
        None => {
            flags & PF_NO_SETAFFINITY == 0
                && ISOLATED
                    .get(0)
                    .is_some_and(|isolated| isolated.contains(cpu))
        }
    };
    if !outside {
        return;
    }
    count(Counter::Violations);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(last) = unsafe { LAST_REPORT.get(pid) }
        && now.wrapping_sub(*last) < globals::get(&REPORT_INTERVAL_NS)
    {
        count(Counter::Suppressed);
        return;
    }
    let _ = LAST_REPORT.insert(pid, now, 0);
    let event = TaskEvent {
        header: Header {
            kind: kind as u32,
            cpu: unsafe { bpf_get_smp_processor_id() },
            ts_ns: now,
        },
        pid,
        tgid: task.tgid().unwrap_or(pid),
        flags,
        cpu,
        comm: task.comm(),
    };
    if EVENTS.output::<TaskEvent>(&event, 0).is_err() {
        count(Counter::Dropped);
    }
}
