//! affinity: preferred CPU affinity for Linux kernel threads, from userspace.
//!
//! The pure policy core lives in [`policy`]; everything that touches the
//! kernel (procfs, sysfs, sched_setaffinity, BPF) sits behind narrow
//! interfaces so the core can be tested without root.

pub mod commands;
pub mod daemon;
pub mod input;
pub mod kernel;
pub mod notify;
pub mod policy;

// The Criterion benchmarks use it; the library's unit tests do not.
#[cfg(test)]
use criterion as _;
