//! Named (`WQ_SYSFS`) workqueues: their names and where the kernel runs
//! their workers.

use crate::policy::CpuSet;

/// A workqueue's name, inline so that [`MaskFile`] stays `Copy`: the
/// kernel bounds it (`WQ_NAME_LEN`, 32 bytes with the NUL on 6.x, 24
/// before), so 64 bytes hold every name any kernel has.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WqName {
    len: u8,
    bytes: [u8; WqName::MAX],
}

impl WqName {
    pub const MAX: usize = 64;

    /// None when `name` is longer than any kernel makes one.
    pub fn new(name: &str) -> Option<WqName> {
        let len = u8::try_from(name.len())
            .ok()
            .filter(|l| *l as usize <= Self::MAX)?;
        let mut bytes = [0; Self::MAX];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(WqName { len, bytes })
    }

    pub fn as_str(&self) -> &str {
        // Built from a &str and cut nowhere else.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

/// By name, as `ls` lists them (the derived order would put length first).
impl Ord for WqName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for WqName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Debug for WqName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for WqName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the workers of a workqueue whose own cpumask is `own` may run,
/// given the global unbound cpumask: the kernel ANDs the two and, when
/// nothing is left, uses the global mask instead
/// (`wqattrs_actualize_cpumask()`; the file still reads `own`).
pub fn workqueue_effective(own: &CpuSet, global: &CpuSet) -> CpuSet {
    let both = own.and(global);
    if both.is_empty() {
        global.clone()
    } else {
        both
    }
}
