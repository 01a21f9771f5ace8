//! The kernel edge: loading the eBPF object and its maps ([`bpf`]), the
//! running kernel's layout from BTF ([`btf`]), checked decoding of its
//! records ([`wire`]), /sys and /proc as data ([`sysfs`]), the cheap periodic
//! rescan ([`rescan`]), and the daemon's
//! [`crate::daemon::kernel::Kernel`] on them ([`procfs`]). Nothing above
//! this module touches a kernel interface directly.

pub mod bpf;
pub mod btf;
pub mod caps;
pub mod irq;
pub mod procfs;
pub mod rescan;
pub mod sched;
pub mod sysfs;
pub mod wire;

/// Hands the heap's free pages back to the kernel. glibc keeps what a
/// large parse freed (the kernel BTF, 20 MB) as resident heap; start-up
/// calls this after each such parse so the peak and the steady resident
/// set are what is in use, not what once was.
pub fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
