//! The capabilities a command needs, checked before anything is loaded or
//! changed. What matters is the effective set, not uid 0: root in a
//! container or under systemd's `CapabilityBoundingSet=` may lack some, and
//! a non-root user granted them may run the daemon.

use std::{fmt, fs, path::Path};

use thiserror::Error;

/// The capabilities affinity uses, with their bit numbers (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// sched_setaffinity() on kthreads (which other users own).
    SysNice = 23,
    /// Raising RLIMIT_MEMLOCK, which charges BPF memory before 5.11.
    SysResource = 24,
    /// perf_event_open() for tracepoints, and reading kernel memory from BPF.
    Perfmon = 38,
    /// Creating maps and loading programs.
    Bpf = 39,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cap::SysNice => "CAP_SYS_NICE",
            Cap::SysResource => "CAP_SYS_RESOURCE",
            Cap::Perfmon => "CAP_PERFMON",
            Cap::Bpf => "CAP_BPF",
        })
    }
}

impl Cap {
    fn setpriv_name(self) -> &'static str {
        match self {
            Cap::SysNice => "sys_nice",
            Cap::SysResource => "sys_resource",
            Cap::Perfmon => "perfmon",
            Cap::Bpf => "bpf",
        }
    }
}

#[derive(Debug, Error)]
pub enum CapsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} has no readable CapEff line")]
    NoCapEff { path: String },
    #[error("{what} needs {}: missing from this process's effective capabilities (CapEff {have:#x}); run it as root, or grant them (e.g. `setpriv --inh-caps {grant} --ambient-caps {grant} affinity ...`, or AmbientCapabilities= in a systemd unit)", names(.missing), grant = grant(.missing))]
    Missing {
        what: &'static str,
        missing: Vec<Cap>,
        have: u64,
    },
}

fn names(caps: &[Cap]) -> String {
    caps.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn grant(caps: &[Cap]) -> String {
    caps.iter()
        .map(|c| format!("+{}", c.setpriv_name()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The effective capability mask of the process whose status file is `status`.
pub fn effective(status: &Path) -> Result<u64, CapsError> {
    let path = status.display().to_string();
    let text = fs::read_to_string(status).map_err(|source| CapsError::Read {
        path: path.clone(),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or(CapsError::NoCapEff { path })
}

/// `Ok` when `have` holds every one of `needed`; otherwise names the missing ones.
pub fn require(what: &'static str, needed: &[Cap], have: u64) -> Result<(), CapsError> {
    let missing: Vec<Cap> = needed
        .iter()
        .copied()
        .filter(|c| have & (1u64 << *c as u32) == 0)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapsError::Missing {
            what,
            missing,
            have,
        })
    }
}

/// What loading the programs needs on the kernel `release`: CAP_BPF and
/// CAP_PERFMON, and before 5.11 (BPF memory charged to RLIMIT_MEMLOCK,
/// which aya raises) CAP_SYS_RESOURCE unless the limit is unlimited already.
pub fn for_bpf(release: &str, memlock_unlimited: bool) -> Vec<Cap> {
    let mut caps = vec![Cap::Bpf, Cap::Perfmon];
    let charged = crate::policy::kernel_version(release).is_none_or(|v| v < (5, 11));
    if charged && !memlock_unlimited {
        caps.push(Cap::SysResource);
    }
    caps
}

/// Whether this process's RLIMIT_MEMLOCK is unlimited.
pub fn memlock_unlimited() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    ok && limit.rlim_cur == libc::RLIM_INFINITY
}

/// Checks this process (through `proc_root`) for `needed`.
pub fn require_own(proc_root: &Path, what: &'static str, needed: &[Cap]) -> Result<(), CapsError> {
    require(what, needed, effective(&proc_root.join("self/status"))?)
}

/// linux/capability.h's `_LINUX_CAPABILITY_VERSION_3`: 64 bits in two words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Keeps only `keep` (of what this thread has) in its effective and
/// permitted sets, and nothing inheritable, so that nothing can raise the
/// rest again; ambient capabilities outside them go with them. For the
/// calling thread only, as capset(2) is: threads created afterwards
/// inherit the result, so call it before any other thread exists.
pub fn retain_only(keep: &[Cap]) -> std::io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a v3 header and the two data words capget(2) fills for it.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mask: u64 = keep.iter().fold(0, |m, c| m | 1u64 << *c as u32);
    for (i, d) in data.iter_mut().enumerate() {
        let word = (mask >> (32 * i)) as u32;
        d.permitted &= word;
        d.effective &= d.permitted;
        d.inheritable = 0;
    }
    // SAFETY: as above; capset(2) only reads them.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_exactly_what_is_missing() {
        let have = 1 << 23; // CAP_SYS_NICE only
        let err = require(
            "`affinity run`",
            &[Cap::Bpf, Cap::Perfmon, Cap::SysNice],
            have,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`affinity run` needs CAP_BPF, CAP_PERFMON: missing from this process's effective capabilities (CapEff 0x800000); run it as root, or grant them (e.g. `setpriv --inh-caps +bpf,+perfmon --ambient-caps +bpf,+perfmon affinity ...`, or AmbientCapabilities= in a systemd unit)"
        );
        let all = (1 << 23) | (1 << 38) | (1 << 39);
        assert!(require("x", &[Cap::Bpf, Cap::Perfmon, Cap::SysNice], all).is_ok());
    }

    #[test]
    fn memlock_needs_sys_resource_only_before_5_11() {
        use Cap::*;
        assert_eq!(
            for_bpf("5.10.0-32-cloud-amd64", false),
            [Bpf, Perfmon, SysResource]
        );
        assert_eq!(for_bpf("5.10.0-32-cloud-amd64", true), [Bpf, Perfmon]);
        assert_eq!(for_bpf("5.11.0", false), [Bpf, Perfmon]);
        assert_eq!(for_bpf("6.18.0", false), [Bpf, Perfmon]);
    }

    #[test]
    fn reads_cap_eff_from_a_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        fs::write(
            &status,
            "Name:\taffinity\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n",
        )
        .unwrap();
        assert_eq!(effective(&status).unwrap(), 0x1ff_ffff_ffff);
        fs::write(&status, "Name:\taffinity\n").unwrap();
        assert!(matches!(
            effective(&status),
            Err(CapsError::NoCapEff { .. })
        ));
    }
}
