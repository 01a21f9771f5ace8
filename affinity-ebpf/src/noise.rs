//! What takes time on the watched CPUs (the non-housekeeping ones, in
//! [`ISOLATED`]): hard IRQ handlers, softirqs and kthread runs, summed per
//! CPU in [`NOISE`] by source for userspace to read every interval.
//!
//! Housekeeping CPUs pay one array lookup and a bit test per handler and
//! return; nothing is sent on a ring. Nested time is counted once: a softirq
//! is charged without the hard IRQs that interrupted it, a kthread run
//! without either (see [`NoiseState`]), so a softirq that ksoftirqd runs is
//! the softirq's, not ksoftirqd's.

use affinity_common::{NoiseKey, NoiseKind, NoiseStat, NoiseState};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::maps::{ISOLATED, NOISE, NOISE_STATE};

/// This CPU's state, if this CPU is watched.
#[inline(always)]
fn watched() -> Option<&'static mut NoiseState> {
    // SAFETY: helper without preconditions.
    watched_on(unsafe { bpf_get_smp_processor_id() })
}

/// The state of `cpu`, this CPU, if it is watched.
#[inline(always)]
fn watched_on(cpu: u32) -> Option<&'static mut NoiseState> {
    if !ISOLATED.get(0)?.contains(cpu) {
        return None;
    }
    let slot = NOISE_STATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's own slot of a per-CPU array.
    Some(unsafe { &mut *slot })
}

/// This CPU's state whether watched or not: closing a run needs no
/// lookup of the watched set, since a run is only opened on a watched CPU.
#[inline(always)]
fn state() -> Option<&'static mut NoiseState> {
    let slot = NOISE_STATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's own slot of a per-CPU array.
    Some(unsafe { &mut *slot })
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn charge(kind: NoiseKind, id: u32, ns: u64) {
    let key = NoiseKey {
        kind: kind as u32,
        id,
    };
    match NOISE.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a per-CPU map; its programs do not
        // nest for one key except a hard IRQ over a kthread run, which
        // charges another key.
        Some(stat) => unsafe {
            (*stat).count += 1;
            (*stat).total_ns += ns;
        },
        None => {
            let _ = NOISE.insert(
                key,
                NoiseStat {
                    count: 1,
                    total_ns: ns,
                },
                0,
            );
        }
    }
}

// TP_PROTO(int irq, struct irqaction *action)
#[btf_tracepoint(function = "irq_handler_entry")]
pub fn irq_handler_entry(_ctx: BtfTracePointContext) -> i32 {
    if let Some(s) = watched() {
        s.hard_start = now();
    }
    0
}

// TP_PROTO(int irq, struct irqaction *action, int ret)
#[btf_tracepoint(function = "irq_handler_exit")]
pub fn irq_handler_exit(ctx: BtfTracePointContext) -> i32 {
    if let Some(s) = watched()
        && s.hard_start != 0
    {
        let irq: i32 = ctx.arg(0);
        let ns = now().saturating_sub(s.hard_start);
        s.hard_start = 0;
        s.hard_ns += ns;
        charge(NoiseKind::HardIrq, irq as u32, ns);
    }
    0
}

// TP_PROTO(unsigned int vec_nr)
#[btf_tracepoint(function = "softirq_entry")]
pub fn softirq_entry(_ctx: BtfTracePointContext) -> i32 {
    if let Some(s) = watched() {
        s.soft_start = now();
        s.soft_mark = s.hard_ns;
    }
    0
}

// TP_PROTO(unsigned int vec_nr)
#[btf_tracepoint(function = "softirq_exit")]
pub fn softirq_exit(ctx: BtfTracePointContext) -> i32 {
    if let Some(s) = watched()
        && s.soft_start != 0
    {
        let vec: u32 = ctx.arg(0);
        let nested = s.hard_ns.wrapping_sub(s.soft_mark);
        let ns = now().saturating_sub(s.soft_start).saturating_sub(nested);
        s.soft_start = 0;
        s.soft_ns += ns;
        charge(NoiseKind::SoftIrq, vec, ns);
    }
    0
}

/// From sched_switch: kthread `pid` (not the idle task) starts running on
/// `cpu`, this CPU.
#[inline(always)]
pub fn run_starts(pid: u32, cpu: u32) {
    if let Some(s) = watched_on(cpu) {
        s.run_pid = pid;
        s.run_start = now();
        s.run_mark = s.hard_ns + s.soft_ns;
    }
}

/// From sched_switch: kthread `pid` (not the idle task) leaves this CPU.
#[inline(always)]
pub fn run_ends(pid: u32) {
    let Some(s) = state() else {
        return;
    };
    if s.run_pid != pid {
        return;
    }
    let nested = (s.hard_ns + s.soft_ns).wrapping_sub(s.run_mark);
    let ns = now().saturating_sub(s.run_start).saturating_sub(nested);
    s.run_pid = 0;
    charge(NoiseKind::Kthread, pid, ns);
}
