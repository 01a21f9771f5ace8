//! What the eBPF programs need to know about the running kernel, read from
//! its BTF at load time.
//!
//! Rust eBPF programs get no CO-RE relocations, so a struct offset compiled
//! in would be one kernel's layout. Instead the offsets and enum values are
//! looked up here and handed to the programs as read-only globals, which
//! lets one binary run on 5.8 through 6.18 and later.

use std::path::Path;

use btf_rs::{Btf, Type};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading kernel BTF from {path}: {source}")]
    Read { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no {0}")]
    Missing(String),
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf_rs::Error),
}

/// Offsets and constants of the running kernel that the programs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    pub task_flags: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub cpuhp_ap_active: i32,
    pub cpuhp_teardown_cpu: i32,
}

impl KernelLayout {
    /// `path` is normally `/sys/kernel/btf/vmlinux`.
    pub fn from_btf_file(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(KernelLayout {
            task_flags: member_offset(&btf, "task_struct", "flags")?,
            task_pid: member_offset(&btf, "task_struct", "pid")?,
            task_tgid: member_offset(&btf, "task_struct", "tgid")?,
            task_comm: member_offset(&btf, "task_struct", "comm")?,
            cpuhp_ap_active: enum_value(&btf, "cpuhp_state", "CPUHP_AP_ACTIVE")?,
            cpuhp_teardown_cpu: enum_value(&btf, "cpuhp_state", "CPUHP_TEARDOWN_CPU")?,
        })
    }
}

fn member_offset(btf: &Btf, strukt: &str, member: &str) -> Result<u32, BtfError> {
    let missing = || BtfError::Missing(format!("struct {strukt} member {member}"));
    for ty in btf.resolve_types_by_name(strukt)? {
        if let Type::Struct(s) = ty
            && let Some(bits) = find_member(btf, &s, member)?
        {
            return Ok(bits / 8);
        }
    }
    Err(missing())
}

/// Bit offset of `name` in `s`, looking through anonymous structs and
/// unions (randomized_struct_fields_start wraps most of task_struct in one).
fn find_member(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Result<Option<u32>, BtfError> {
    for m in &s.members {
        let m_name = btf.resolve_name(m).unwrap_or_default();
        if m_name == name {
            return Ok(Some(m.bit_offset()));
        }
        if m_name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = btf.resolve_chained_type(m)?
            && let Some(off) = find_member(btf, &inner, name)?
        {
            return Ok(Some(m.bit_offset() + off));
        }
    }
    Ok(None)
}

fn enum_value(btf: &Btf, enm: &str, name: &str) -> Result<i32, BtfError> {
    for ty in btf.resolve_types_by_name(enm)? {
        if let Type::Enum(e) = ty {
            for m in &e.members {
                if btf.resolve_name(m)? == name {
                    return Ok(m.val() as i32);
                }
            }
        }
    }
    Err(BtfError::Missing(format!("enum {enm} value {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs wherever the kernel exposes BTF; the layout must be plausible.
    /// Under CI (whose machines have BTF) a missing file is a failure.
    #[test]
    fn running_kernel_layout_is_plausible() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                "CI=true but no kernel BTF at {}",
                path.display()
            );
            eprintln!("SKIPPED: no kernel BTF here (set CI=true to make this a failure)");
            return;
        }
        let l = KernelLayout::from_btf_file(path).expect("resolving the layout");
        assert!(l.task_flags > 0 && l.task_pid > l.task_flags, "{l:?}");
        assert!(
            l.task_tgid == l.task_pid + 4,
            "pid and tgid are adjacent: {l:?}"
        );
        assert!(l.cpuhp_teardown_cpu < l.cpuhp_ap_active, "{l:?}");
    }
}
