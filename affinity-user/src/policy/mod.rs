//! The pure policy core: CPU sets, rules, and the engine that turns events
//! into actions. Nothing here does I/O, so every path is unit- and
//! property-tested without root.

mod config;
mod cpuset;
mod engine;
mod irq;
mod kthread;
#[cfg(test)]
mod tests;

pub use config::{
    Config, ConfigError, ConfigErrors, DEFAULT_TOML, HousekeepingSpec, IrqRule, IrqTarget,
    IsolationSources, Preference, PreferenceError, Rule, Target, WorkqueueRule,
    unmatched_workqueue_rules,
};
pub use cpuset::{CpuListError, CpuSet, MAX_CPUS};
pub use engine::{
    Action, Engine, Entry, Event, Refusal, Registration, RegistryError, State, Topology, cli_form,
};
pub use irq::{
    IrqInfo, IrqOwner, IrqbalanceNote, IrqbalancePolicy, IrqbalanceWatch, MaskFile, SteerAction,
    SteerEngine, SteerEntry, SteerEvent, SteerNote, SteerScan, SteerState, WqName, WriteRefusal,
    placement, unmatched_rules, workqueue_effective,
};
pub use kthread::{
    KernelIsolation, Kthread, PF_KTHREAD, PF_NO_SETAFFINITY, kernel_default,
    kernel_manages_affinity, kernel_release, kernel_version,
};

/// Housekeeping as the kernel defines it: every possible CPU that is not
/// isolated (isolcpus), nohz_full, or in an isolated cpuset partition.
pub fn housekeeping_from(
    possible: &CpuSet,
    isolated: &CpuSet,
    nohz_full: &CpuSet,
    cpuset_isolated: &CpuSet,
) -> CpuSet {
    possible.and_not(&isolated.or(nohz_full).or(cpuset_isolated))
}
