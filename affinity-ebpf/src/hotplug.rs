//! CPU hotplug: `cpuhp_enter`, `cpuhp_multi_enter`, `cpuhp_exit`.
//!
//! The hotplug state machine calls one callback per step and traces each.
//! We report four moments per CPU and nothing else: the first teardown step
//! (so userspace can shrink masks before the scheduler has to push threads
//! off the CPU and `select_fallback_rq()` widens their masks), the CPU being
//! dead, the CPU being active again, and a step failing (the kernel then
//! rolls the CPU back to where it was).
//!
//! Every step that changes the online set also updates [`CPUHP_VIEW`], which
//! the sched programs judge runs against until userspace acknowledges the
//! step (see `sched.rs`).

use affinity_common::{Counter, EventKind, Header, HotplugEvent, hotplug_state as hs, phase};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::debug;

/// `BPF_RB_FORCE_WAKEUP` from uapi/linux/bpf.h.
const BPF_RB_FORCE_WAKEUP: u64 = 2;

use crate::maps::{
    CPUHP_VIEW, HOTPLUG, HOTPLUG_ACK, HOTPLUG_EVENTS, copy_mask, count,
    globals::{self, CPUHP_AP_ACTIVE, CPUHP_TEARDOWN_CPU},
};

// TP_PROTO(unsigned int cpu, int target, int idx, int (*fun)(unsigned int))
#[btf_tracepoint(function = "cpuhp_enter")]
pub fn cpuhp_enter(ctx: BtfTracePointContext) -> i32 {
    on_enter(&ctx)
}

// Same leading arguments as cpuhp_enter; without it, steps of multi-instance
// states are missed.
#[btf_tracepoint(function = "cpuhp_multi_enter")]
pub fn cpuhp_multi_enter(ctx: BtfTracePointContext) -> i32 {
    on_enter(&ctx)
}

// TP_PROTO(unsigned int cpu, int state, int idx, int ret)
#[btf_tracepoint(function = "cpuhp_exit")]
pub fn cpuhp_exit(ctx: BtfTracePointContext) -> i32 {
    let cpu: u32 = ctx.arg(0);
    let idx: i32 = ctx.arg(2);
    let ret: i32 = ctx.arg(3);
    let Some(slot) = HOTPLUG.get_ptr_mut(cpu) else {
        return 0;
    };
    // SAFETY: a valid array slot; cpuhp steps of one CPU never run concurrently.
    let state = unsafe { *slot };
    if ret < 0 {
        // The kernel undoes the steps done so far: the CPU ends where it
        // started, and the rollback's own steps must not be reported again.
        if state == hs::DOWN_STARTED {
            // SAFETY: as above.
            unsafe { *slot = hs::UP_DONE };
            let seq = begin_step(cpu, true);
            debug!(&ctx, "cpu{} teardown failed at step {}: {}", cpu, idx, ret);
            emit(cpu, phase::OFFLINE_ABORTED, idx, ret, seq);
        } else if state == hs::UP_STARTED {
            // SAFETY: as above.
            unsafe { *slot = hs::DOWN_DONE };
            let seq = begin_step(cpu, false);
            debug!(&ctx, "cpu{} bring-up failed at step {}: {}", cpu, idx, ret);
            emit(cpu, phase::ONLINE_ABORTED, idx, ret, seq);
        }
        return 0;
    }
    if state == hs::UP_STARTED && idx == globals::get(&CPUHP_AP_ACTIVE) {
        // SAFETY: as above.
        unsafe { *slot = hs::UP_DONE };
        debug!(&ctx, "cpu{} active", cpu);
        emit(cpu, phase::ONLINE_DONE, idx, 0, current_seq());
    } else if state == hs::DOWN_STARTED && idx <= globals::get(&CPUHP_TEARDOWN_CPU) {
        // SAFETY: as above.
        unsafe { *slot = hs::DOWN_DONE };
        debug!(&ctx, "cpu{} dead", cpu);
        emit(cpu, phase::OFFLINE_DONE, idx, 0, current_seq());
    }
    0
}

fn on_enter(ctx: &BtfTracePointContext) -> i32 {
    let cpu: u32 = ctx.arg(0);
    let target: i32 = ctx.arg(1);
    let idx: i32 = ctx.arg(2);
    let Some(slot) = HOTPLUG.get_ptr_mut(cpu) else {
        return 0;
    };
    // SAFETY: a valid array slot; cpuhp steps of one CPU never run concurrently.
    let state = unsafe { *slot };
    // Teardown invokes a step's callback when leaving it, on the way down to
    // a lower target; bringup when entering it, up to a higher one.
    let down = target < idx;
    if down && state != hs::DOWN_STARTED && state != hs::DOWN_DONE {
        // SAFETY: as above.
        unsafe { *slot = hs::DOWN_STARTED };
        let seq = begin_step(cpu, false);
        debug!(ctx, "cpu{} teardown starts at step {}", cpu, idx);
        emit(cpu, phase::OFFLINE_BEGIN, idx, 0, seq);
    } else if !down && state != hs::UP_STARTED && state != hs::UP_DONE {
        // SAFETY: as above.
        unsafe { *slot = hs::UP_STARTED };
        // The scheduler may use the CPU from its activation on, and a
        // 6.14+ kernel re-affines its kthreads onto it before userspace
        // hears of it: from here on both online sets are allowed.
        begin_step(cpu, true);
    }
    0
}

/// Records that `cpu` is leaving or joining the online set. If userspace
/// had acknowledged every earlier step, the window of sets to judge runs
/// against starts afresh from the settled set. Hotplug operations are
/// serialised by the kernel (cpu_add_remove_lock), so nothing else writes
/// the view meanwhile; userspace writes it only to seed or correct it.
fn begin_step(cpu: u32, online: bool) -> u64 {
    let Some(view) = CPUHP_VIEW.get_ptr_mut(0) else {
        return 0;
    };
    let ack = HOTPLUG_ACK.get(0).copied().unwrap_or(0);
    // SAFETY: a valid array value, written only under the hotplug lock.
    let view = unsafe { &mut *view };
    if view.seq == ack {
        // Field by field: a 1 KiB mask would not fit the 512-byte BPF stack.
        copy_mask(&mut view.low, &view.online);
        copy_mask(&mut view.high, &view.online);
    }
    if online {
        view.online.insert(cpu);
        view.high.insert(cpu);
    } else {
        view.online.remove(cpu);
        view.low.remove(cpu);
    }
    view.seq += 1;
    view.seq
}

fn current_seq() -> u64 {
    CPUHP_VIEW.get(0).map_or(0, |v| v.seq)
}

fn emit(target_cpu: u32, phase: u32, state: i32, ret: i32, seq: u64) {
    let event = HotplugEvent {
        header: Header {
            kind: EventKind::Hotplug as u32,
            // SAFETY: helpers without preconditions.
            cpu: unsafe { bpf_get_smp_processor_id() },
            // SAFETY: as above.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        target_cpu,
        phase,
        state,
        ret,
        seq,
    };
    // Hotplug records are rare and urgent: wake the reader now rather
    // than when the kernel's adaptive notification gets round to it.
    if HOTPLUG_EVENTS
        .output::<HotplugEvent>(&event, BPF_RB_FORCE_WAKEUP)
        .is_err()
    {
        count(Counter::HotplugDropped);
    }
}
