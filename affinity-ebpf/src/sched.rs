//! Where kthreads run: `sched_switch` and `sched_migrate_task`.
//!
//! sched_switch is the hottest path in the kernel, so the common case costs
//! two plain loads: tasks without PF_KTHREAD return at once. A kthread on a
//! CPU inside the mask userspace applied returns after one map lookup.
//! Only then is the run judged against the policy itself — P∩H∩O, else
//! H∩O, else O — for every online set the machine had since the last
//! hotplug step userspace acknowledged ([`HotplugView`]), so a run that the
//! old or the new set allows is never a violation, and one that no set
//! allows (an isolated CPU after the kernel's fallback widened a mask) always
//! is, even if the mask is fixed before userspace reads the record.
//!
//! A violating run is timed: the record is sent when the kthread switches
//! out, with how long it ran there, at most once per pid per
//! REPORT_INTERVAL_NS (every run is counted). A migration onto a CPU no
//! set allows is reported at once (run time 0), and does not take the rate
//! limit's slot from the run that follows it.

use affinity_common::{
    Counter, CpuMask, EventKind, Header, HotplugView, PF_KTHREAD, PF_NO_SETAFFINITY, Policy,
    Running, TaskEvent,
};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    maps::{
        ALLOWED, CPUHP_VIEW, EVENTS, HOTPLUG_ACK, ISOLATED, LAST_REPORT, RUNNING, count,
        globals::{self, REPORT_INTERVAL_NS},
        intersects,
    },
    noise,
    task::Task,
};

// TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next, ...)
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let prev = Task(ctx.arg(1));
    if prev.flags() & PF_KTHREAD != 0 {
        let pid = prev.pid();
        // The idle tasks (pid 0) are never judged nor counted as noise.
        if pid != 0 {
            switched_out(prev, pid);
            noise::run_ends(pid);
        }
    }
    let next = Task(ctx.arg(2));
    let flags = next.flags();
    if flags & PF_KTHREAD != 0 {
        let pid = next.pid();
        if pid != 0 {
            // SAFETY: helper without preconditions.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            judge(next, flags, pid, cpu, EventKind::Violation);
            noise::run_starts(pid, cpu);
        }
    }
    0
}

// TP_PROTO(struct task_struct *p, int dest_cpu)
#[btf_tracepoint(function = "sched_migrate_task")]
pub fn sched_migrate_task(ctx: BtfTracePointContext) -> i32 {
    let task = Task(ctx.arg(0));
    let flags = task.flags();
    if flags & PF_KTHREAD == 0 {
        return 0;
    }
    let pid = task.pid();
    // The idle tasks: PF_KTHREAD and, before 5.13 or so, movable.
    if pid != 0 {
        judge(task, flags, pid, ctx.arg(1), EventKind::Migrate);
    }
    0
}

/// A kthread leaves this CPU: if its run here was a violation, report it
/// now that its length is known.
#[inline(always)]
fn switched_out(prev: Task, pid: u32) {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(slot) = RUNNING.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: a valid array slot that only programs on this CPU write, and
    // sched_switch does not nest on one CPU.
    let running = unsafe { &mut *slot };
    if running.pid != pid {
        return;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let run_ns = now.wrapping_sub(running.since_ns);
    running.pid = 0;
    emit(prev, prev.flags(), EventKind::Violation, cpu, now, run_ns);
}

/// A kthread (`flags`, `pid` ≠ 0, read once by the caller: the common case,
/// not a kthread, costs the one load of the flags) runs or is going to
/// run on `cpu`.
#[inline(always)]
fn judge(task: Task, flags: u32, pid: u32, cpu: u32, kind: EventKind) {
    // SAFETY: the value is only read, and userspace replaces values whole.
    let policy = unsafe { ALLOWED.get(pid) };
    match policy {
        Some(p) if p.applied.contains(cpu) => return,
        Some(_) => {}
        // Unregistered: only the default policy applies, and only to
        // kthreads that could have been moved.
        None if flags & PF_NO_SETAFFINITY != 0 => return,
        None => {}
    }
    let Some(isolated) = ISOLATED.get(0) else {
        return;
    };
    if policy.is_none() && !isolated.contains(cpu) {
        return;
    }
    if allowed_by_some_online_set(policy, isolated, cpu) {
        return;
    }
    count(Counter::Violations);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is a plain u64 read once.
    if let Some(last) = unsafe { LAST_REPORT.get(pid) }
        && now.wrapping_sub(*last) < globals::get(&REPORT_INTERVAL_NS)
    {
        count(Counter::Suppressed);
        return;
    }
    if kind == EventKind::Violation {
        // Only runs take the rate limit's slot: the migration that put a
        // kthread on a CPU must not hide its run there.
        let _ = LAST_REPORT.insert(pid, now, 0);
        // Reported when it switches out, with its run time.
        if let Some(slot) = RUNNING.get_ptr_mut(cpu) {
            // SAFETY: this CPU's own slot, see `switched_out`.
            unsafe {
                *slot = Running {
                    pid,
                    _pad: 0,
                    since_ns: now,
                }
            };
        }
    } else {
        emit(task, flags, kind, cpu, now, 0);
    }
}

/// Whether the policy allows `cpu` for the online set now, or, while a
/// hotplug step is unacknowledged, for any set since the last one that was.
#[inline(always)]
fn allowed_by_some_online_set(policy: Option<&Policy>, isolated: &CpuMask, cpu: u32) -> bool {
    let Some(view) = CPUHP_VIEW.get(0) else {
        return true;
    };
    let preferred = policy.map(|p| &p.preferred);
    if allowed_under(&view.online, preferred, isolated, cpu) {
        return true;
    }
    let ack = HOTPLUG_ACK.get(0).copied().unwrap_or(0);
    in_window(view, ack)
        && (allowed_under(&view.low, preferred, isolated, cpu)
            || allowed_under(&view.high, preferred, isolated, cpu))
}

#[inline(always)]
fn in_window(view: &HotplugView, ack: u64) -> bool {
    view.seq != ack
}

/// `cpu` ∈ P∩H∩O, else H∩O, else O, for the online set `online`.
#[inline(always)]
fn allowed_under(
    online: &CpuMask,
    preferred: Option<&CpuMask>,
    isolated: &CpuMask,
    cpu: u32,
) -> bool {
    if !online.contains(cpu) {
        return false;
    }
    let housekeeping = !isolated.contains(cpu);
    if let Some(p) = preferred {
        if housekeeping && p.contains(cpu) {
            return true;
        }
        if intersects(p, online, isolated) {
            return false;
        }
    }
    if housekeeping {
        return true;
    }
    // Not housekeeping: allowed only when no online CPU is.
    !intersects(online, online, isolated)
}

#[inline(always)]
fn emit(task: Task, flags: u32, kind: EventKind, cpu: u32, now: u64, run_ns: u64) {
    let pid = task.pid();
    let event = TaskEvent {
        header: Header {
            kind: kind as u32,
            // SAFETY: helper without preconditions.
            cpu: unsafe { bpf_get_smp_processor_id() },
            ts_ns: now,
        },
        pid,
        tgid: task.tgid().unwrap_or(pid),
        flags,
        cpu,
        comm: task.comm(),
        run_ns,
    };
    if EVENTS.output::<TaskEvent>(&event, 0).is_err() {
        count(Counter::Dropped);
    }
}
