//! The daemon's [`Kernel`] on the real kernel: procfs, sysfs and
//! sched_setaffinity(2), with the pid-reuse checks around every change.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use super::sysfs::{self, Scan};
use crate::{
    daemon::kernel::{Kernel, SetAffinityError},
    policy::{CpuSet, Kthread, PF_KTHREAD, PF_NO_SETAFFINITY},
};

/// The kernel as seen through procfs, sysfs and sched_setaffinity(2).
#[derive(Clone, Debug)]
pub struct ProcKernel {
    proc_root: PathBuf,
    sys_root: PathBuf,
    width: u32,
}

impl ProcKernel {
    pub fn new(proc_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>, width: u32) -> Self {
        ProcKernel {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
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

impl ProcKernel {
    fn os(
        &self,
        what: &'static str,
        pid: u32,
        mask: &CpuSet,
        source: io::Error,
    ) -> SetAffinityError {
        if source.raw_os_error() == Some(libc::ESRCH) {
            return SetAffinityError::Gone(pid);
        }
        SetAffinityError::Os {
            what,
            pid,
            mask: mask.to_string(),
            source,
        }
    }

    /// The mask as /proc shows it (`cpus_mask`), as every rescan reads it:
    /// sched_getaffinity() would answer it ∩ the active CPUs, which is not
    /// what was set while a CPU is coming or going.
    fn get_affinity(&self, pid: u32) -> io::Result<CpuSet> {
        match sysfs::kthread_of(&self.proc_root, pid, self.width)? {
            Some(k) => Ok(k.cpus_allowed),
            None => Err(io::Error::from_raw_os_error(libc::ESRCH)),
        }
    }
}

impl Kernel for ProcKernel {
    fn set_affinity(
        &mut self,
        pid: u32,
        start_time: u64,
        mask: &CpuSet,
    ) -> Result<CpuSet, SetAffinityError> {
        // Pin the task first, then check it is the one we mean: if the pid had
        // been reused in between, the start time would differ.
        let pidfd = pidfd_open(pid).map_err(|e| self.os("pidfd_open", pid, mask, e))?;
        // Only /proc/PID/stat: this runs for every kthread on every hotplug.
        match sysfs::stat_of(&self.proc_root, pid) {
            Ok(Some((_, flags, started))) if started == start_time && flags & PF_KTHREAD != 0 => {}
            Ok(_) => return Err(SetAffinityError::Gone(pid)),
            Err(e) => {
                return Err(self.os(
                    "reading /proc/PID/stat before sched_setaffinity",
                    pid,
                    mask,
                    e,
                ));
            }
        }
        // The raw syscall takes any whole number of longs, so masks wider
        // than glibc's 1024-CPU cpu_set_t need no special case.
        let words = mask.words();
        // SAFETY: words outlives the call and its length is passed in bytes.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_sched_setaffinity,
                pid as libc::pid_t,
                size_of_val(words),
                words.as_ptr(),
            )
        };
        if ret != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL)
                && sysfs::read_stat(&self.proc_root, pid)
                    .is_some_and(|(_, f, _)| f & PF_NO_SETAFFINITY != 0)
            {
                return Err(SetAffinityError::Pinned(pid));
            }
            if err.raw_os_error() == Some(libc::EINVAL)
                && self.online_cpus().is_ok_and(|o| o.and(mask).is_empty())
            {
                return Err(SetAffinityError::Offline {
                    pid,
                    mask: mask.to_string(),
                });
            }
            return Err(self.os("sched_setaffinity", pid, mask, err));
        }
        // Still alive after the call: the pid was ours throughout.
        if exited(&pidfd) {
            return Err(SetAffinityError::Gone(pid));
        }
        self.get_affinity(pid)
            .map_err(|e| self.os("reading the mask back from /proc/PID/status", pid, mask, e))
    }

    fn kthread(&self, pid: u32) -> io::Result<Option<Kthread>> {
        sysfs::kthread_of(&self.proc_root, pid, self.width)
    }

    fn kthreads(&self) -> io::Result<Scan> {
        sysfs::scan_kthreads(&self.proc_root, self.width)
    }

    fn online_cpus(&self) -> anyhow::Result<CpuSet> {
        sysfs::online_cpus(&self.sys_root, self.width)
    }

    fn cpu_settled(&self, cpu: u32) -> bool {
        sysfs::cpu_settled(&self.sys_root, cpu)
    }

    fn cpu_node(&self, cpu: u32) -> Option<u32> {
        sysfs::cpu_node(&self.sys_root, cpu)
    }

    fn online_nodes(&self, online: &CpuSet) -> BTreeMap<u32, CpuSet> {
        sysfs::online_nodes(&self.sys_root, online)
    }
}
