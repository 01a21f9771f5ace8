//! The daemon's narrow interface to the kernel: read a kthread, set its
//! mask. [`ProcKernel`] is the real one; tests use a fake.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use thiserror::Error;

use crate::{
    policy::{CpuSet, Kthread, PF_KTHREAD, PF_NO_SETAFFINITY},
    sysfs,
};

#[derive(Debug, Error)]
pub enum SetAffinityError {
    /// The pid is gone, or now names another task: it must never be touched.
    #[error("pid {0} is no longer the kthread it was")]
    Gone(u32),
    /// PF_NO_SETAFFINITY: the kernel refuses (EINVAL).
    #[error("pid {0} is pinned by the kernel")]
    Pinned(u32),
    #[error("sched_setaffinity({pid}, {mask}): {source}")]
    Os {
        pid: u32,
        mask: String,
        source: io::Error,
    },
}

pub trait Kernel {
    /// Sets `pid`'s CPU mask, but only if `pid` is still the kthread that
    /// started at `start_time` (clock ticks since boot, /proc/PID/stat field 22).
    fn set_affinity(
        &mut self,
        pid: u32,
        start_time: u64,
        mask: &CpuSet,
    ) -> Result<(), SetAffinityError>;
    /// The kthread `pid` as it is now; None if gone or not a kthread.
    fn kthread(&self, pid: u32) -> Option<Kthread>;
    /// Every kthread now.
    fn kthreads(&self) -> Vec<Kthread>;
}

/// The kernel as seen through procfs and sched_setaffinity(2).
pub struct ProcKernel {
    proc_root: PathBuf,
    width: u32,
}

impl ProcKernel {
    pub fn new(proc_root: impl Into<PathBuf>, width: u32) -> Self {
        ProcKernel {
            proc_root: proc_root.into(),
            width,
        }
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A pidfd polls readable once its process has exited.
fn exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n != 0
}

impl Kernel for ProcKernel {
    fn set_affinity(
        &mut self,
        pid: u32,
        start_time: u64,
        mask: &CpuSet,
    ) -> Result<(), SetAffinityError> {
        // Pin the task first, then check it is the one we mean: if the pid had
        // been reused in between, the start time would differ.
        let pidfd = pidfd_open(pid).map_err(|_| SetAffinityError::Gone(pid))?;
        // Only /proc/PID/stat: this runs for every kthread on every hotplug.
        match sysfs::read_stat(&self.proc_root, pid) {
            Some((_, flags, started)) if started == start_time && flags & PF_KTHREAD != 0 => {}
            _ => return Err(SetAffinityError::Gone(pid)),
        }
        // The raw syscall takes any whole number of longs, so masks wider
        // than glibc's 1024-CPU cpu_set_t need no special case.
        let words = mask.words();
        // SAFETY: words outlives the call and its length is passed in bytes.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_sched_setaffinity,
                pid as libc::pid_t,
                std::mem::size_of_val(words),
                words.as_ptr(),
            )
        };
        if ret != 0 {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::ESRCH) => SetAffinityError::Gone(pid),
                Some(libc::EINVAL)
                    if sysfs::read_stat(&self.proc_root, pid)
                        .is_some_and(|(_, f, _)| f & PF_NO_SETAFFINITY != 0) =>
                {
                    SetAffinityError::Pinned(pid)
                }
                _ => SetAffinityError::Os {
                    pid,
                    mask: mask.to_string(),
                    source: err,
                },
            });
        }
        // Still alive after the call: the pid was ours throughout.
        if exited(&pidfd) {
            return Err(SetAffinityError::Gone(pid));
        }
        Ok(())
    }

    fn kthread(&self, pid: u32) -> Option<Kthread> {
        sysfs::read_kthread(&self.proc_root, pid, self.width)
    }

    fn kthreads(&self) -> Vec<Kthread> {
        sysfs::read_kthreads(&self.proc_root, self.width)
    }
}
