//! eBPF side of affinity: watches CPU hotplug, where kthreads run, kthread
//! creation and exit, and who calls sched_setaffinity on a registered kthread.
//!
//! Everything is filtered here so that userspace wakes only for what it must
//! act on or report. Kernel struct offsets come from userspace at load time
//! (see [`globals`]): Rust eBPF has no CO-RE, and one object must run on
//! every kernel from 5.8 on.

#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod hotplug;
#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod noise;
#[cfg(target_arch = "bpf")]
mod sched;
#[cfg(target_arch = "bpf")]
mod setaffinity;
#[cfg(target_arch = "bpf")]
mod task;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic; this is never called.
    loop {}
}

/// The kernel refuses bpf_probe_read_kernel and friends to non-GPL programs.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

// Lets `cargo clippy --workspace` build this crate for the host, where
// none of the programs (and so none of the dependencies) are compiled.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
#[cfg(not(target_arch = "bpf"))]
use {affinity_common as _, aya_ebpf as _, aya_log_ebpf as _};
