//! CPU hotplug: `cpuhp_enter`, `cpuhp_multi_enter`, `cpuhp_exit`.
//!
//! The hotplug state machine calls one callback per step and traces each.
//! We report three moments per CPU and nothing else: the first teardown step
//! (so userspace can shrink masks before the scheduler has to push threads
//! off the CPU and `select_fallback_rq()` widens their masks), the CPU being
//! dead, and the CPU being active again.

use affinity_common::{EventKind, Header, HotplugEvent, hotplug_state as hs, phase};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use aya_log_ebpf::debug;

/// `BPF_RB_FORCE_WAKEUP` from uapi/linux/bpf.h.
const BPF_RB_FORCE_WAKEUP: u64 = 2;

use crate::maps::{
    EVENTS, HOTPLUG, count,
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
    let Some(slot) = HOTPLUG.get_ptr_mut(cpu) else {
        return 0;
    };
    let state = unsafe { *slot };
    if state == hs::UP_STARTED && idx == globals::get(&CPUHP_AP_ACTIVE) {
        unsafe { *slot = hs::UP_DONE };
        debug!(&ctx, "cpu{} active", cpu);
        emit(cpu, phase::ONLINE_DONE, idx);
    } else if state == hs::DOWN_STARTED && idx <= globals::get(&CPUHP_TEARDOWN_CPU) {
        unsafe { *slot = hs::DOWN_DONE };
        debug!(&ctx, "cpu{} dead", cpu);
        emit(cpu, phase::OFFLINE_DONE, idx);
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
    let state = unsafe { *slot };
    // Teardown invokes a step's callback when leaving it, on the way down to
    // a lower target; bringup when entering it, up to a higher one.
    let down = target < idx;
    if down && state != hs::DOWN_STARTED && state != hs::DOWN_DONE {
        unsafe { *slot = hs::DOWN_STARTED };
        debug!(ctx, "cpu{} teardown starts at step {}", cpu, idx);
        emit(cpu, phase::OFFLINE_BEGIN, idx);
    } else if !down && state != hs::UP_STARTED && state != hs::UP_DONE {
        // A failed teardown rolls back through bringup: that too ends in
        // ONLINE_DONE, which is what userspace needs to hear.
        unsafe { *slot = hs::UP_STARTED };
    }
    0
}

fn emit(target_cpu: u32, phase: u32, state: i32) {
    let event = HotplugEvent {
        header: Header {
            kind: EventKind::Hotplug as u32,
            cpu: unsafe { bpf_get_smp_processor_id() },
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        target_cpu,
        phase,
        state,
        _pad: 0,
    };
    // Hotplug records are rare and urgent: wake the reader now rather
    // than when the kernel's adaptive notification gets round to it.
    if EVENTS
        .output::<HotplugEvent>(&event, BPF_RB_FORCE_WAKEUP)
        .is_err()
    {
        count(affinity_common::Counter::Dropped);
    }
}
