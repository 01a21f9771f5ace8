//! The kernel edge: loading the eBPF object and its maps ([`bpf`]), the
//! running kernel's layout from BTF ([`btf`]), checked decoding of its
//! records ([`wire`]), /sys and /proc as data ([`sysfs`]), and the daemon's
//! [`crate::daemon::kernel::Kernel`] on them ([`procfs`]). Nothing above
//! this module touches a kernel interface directly.

pub mod bpf;
pub mod btf;
pub mod caps;
pub mod irq;
pub mod procfs;
pub mod sched;
pub mod sysfs;
pub mod wire;
