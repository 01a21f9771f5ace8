//! The periodic rescan, made cheap: a kthread the daemon already knows is
//! checked with one sched_getaffinity() call instead of reading its
//! /proc stat and status files, and read in full only when that answer
//! differs from what the daemon believes.
//!
//! sched_getaffinity() answers `cpus_mask ∩ active CPUs`, not the mask
//! itself (see [`super::procfs`]), so it is compared with the believed mask
//! ∩ the online CPUs: outside a hotplug step the two sets of CPUs are the
//! same, and inside one a difference only costs a full read. What a quick
//! scan cannot see (a changed bit on an inactive CPU; a rename or reused
//! pid whose records were lost) is what a full scan is for: the daemon
//! makes one after lost records and every [`FULL_EVERY`] scans.

use std::{collections::HashMap, io, path::Path};

use crate::policy::{CpuSet, Kthread};

use super::sysfs::{self, Scan};

/// Every how many scans one reads every kthread in full.
pub const FULL_EVERY: u32 = 15;

/// What a quick scan compares with: every kthread as the daemon believes it
/// is, and the CPUs it believes online.
#[derive(Clone, Debug, Default)]
pub struct Believed {
    pub kthreads: HashMap<u32, Kthread>,
    pub online: Option<CpuSet>,
}

/// The kthreads now: kthreadd's children (or every pid), each known one
/// whose allowed CPUs are as believed taken as it is, every other one read
/// from /proc.
pub fn quick_scan(proc_root: &Path, width: u32, believed: &Believed) -> io::Result<Scan> {
    quick_scan_by(proc_root, width, believed, |pid| get_affinity(pid, width))
}

/// [`quick_scan`] with the sched_getaffinity() given (tests fake it with
/// their /proc).
fn quick_scan_by(
    proc_root: &Path,
    width: u32,
    believed: &Believed,
    get_affinity: impl Fn(u32) -> io::Result<CpuSet>,
) -> io::Result<Scan> {
    let mut scan = Scan::default();
    for pid in sysfs::candidates(proc_root)? {
        if let (Some(k), Some(online)) = (believed.kthreads.get(&pid), &believed.online) {
            match get_affinity(pid) {
                Ok(now) if now == k.cpus_allowed.and(online) => {
                    scan.kthreads.push(k.clone());
                    continue;
                }
                // Gone: left out, as a full read would.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                _ => {}
            }
        }
        match sysfs::kthread_of(proc_root, pid, width) {
            Ok(Some(k)) => scan.kthreads.push(k),
            Ok(None) => {}
            Err(_) => scan.unreadable.push(pid),
        }
    }
    if scan.kthreads.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: no kernel thread found (is procfs mounted?)",
                proc_root.display()
            ),
        ));
    }
    scan.kthreads.sort_by_key(|k| k.pid);
    Ok(scan)
}

/// sched_getaffinity(pid): its allowed CPUs ∩ the active ones.
pub fn get_affinity(pid: u32, width: u32) -> io::Result<CpuSet> {
    let mut words = vec![0u64; width.div_ceil(64).max(1) as usize];
    // SAFETY: the buffer is words.len() * 8 bytes long and outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            pid as libc::pid_t,
            words.len() * 8,
            words.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(CpuSet::from_words(width, &words))
}

#[cfg(test)]
mod tests;
