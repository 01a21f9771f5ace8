//! affinity: preferred CPU affinity for Linux kernel threads, from userspace.
//!
//! The pure policy core lives in [`policy`]; everything that touches the
//! kernel (procfs, sysfs, sched_setaffinity, BPF) sits behind narrow
//! interfaces so the core can be tested without root.

pub mod bpf;
pub mod btf;
pub mod commands;
pub mod daemon;
pub mod policy;
pub mod sysfs;
pub mod wire;
