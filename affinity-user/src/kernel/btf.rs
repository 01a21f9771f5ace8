//! What the eBPF programs need to know about the running kernel, read from
//! its BTF at load time.
//!
//! Rust eBPF programs get no CO-RE relocations, so a struct offset compiled
//! in would be one kernel's layout. Instead the offsets and enum values are
//! looked up here and handed to the programs as read-only globals, which
//! lets one binary run on 5.8 through 6.18 and later.
//!
//! The reader walks the raw type section once, keeping one offset per type
//! id, instead of building a typed tree of every one of the kernel's ~150k
//! types: parsing vmlinux BTF that way (btf-rs, and aya's own parser, each
//! once) was most of the daemon's peak memory and, under TCG, seconds of
//! its start-up. aya needs a BTF only to look up the ids its tp_btf and
//! fexit programs attach to; it gets [`KernelBtf::attach`], a BTF with
//! those few types at their kernel ids and a placeholder everywhere else.

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading kernel BTF from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(String),
    #[error("kernel BTF has no {0}")]
    Missing(String),
    #[error("building the attach BTF: {0}")]
    Attach(#[source] aya::BtfError),
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
        BtfReader::read(path)?.layout()
    }
}

/// A type the programs attach to, looked up by name and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachKind {
    /// `btf_trace_<tracepoint>`, what tp_btf programs attach to.
    Typedef,
    /// A kernel function, what fexit programs attach to.
    Func,
}

impl AttachKind {
    fn btf_kind(self) -> u32 {
        match self {
            AttachKind::Typedef => KIND_TYPEDEF,
            AttachKind::Func => KIND_FUNC,
        }
    }
}

/// Everything the loader takes from the kernel's BTF.
#[derive(Clone, Debug)]
pub struct KernelBtf {
    pub layout: KernelLayout,
    /// The attach types' kernel ids; see the module comment.
    pub attach: AttachIds,
}

/// The ids of the types the programs attach to, found by name and kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttachIds {
    found: Vec<(u32, String, AttachKind)>,
}

impl AttachIds {
    /// A BTF aya can look these up in: each found type at its kernel id, a
    /// `void *` at every id below the last. Built when aya needs it, after
    /// aya's own loader has parsed (and dropped) the full BTF, so that the
    /// two never take memory at once.
    pub fn to_aya(&self) -> Result<aya::Btf, BtfError> {
        let count = self
            .found
            .iter()
            .map(|(id, _, _)| *id + 1)
            .max()
            .unwrap_or(1);
        attach_btf(count as usize, &self.found)
    }
}

impl KernelBtf {
    /// The layout, and the attach BTF for every program of ours.
    pub fn read(path: &Path) -> Result<Self, BtfError> {
        Self::read_for(path, &attach_names())
    }

    /// The layout, and the attach BTF for `wanted` (names the kernel lacks
    /// are left out: aya's load then fails for them as with the full BTF).
    pub fn read_for(path: &Path, wanted: &[(String, AttachKind)]) -> Result<Self, BtfError> {
        let reader = BtfReader::read(path)?;
        let layout = reader.layout()?;
        let found = reader.find_all(wanted);
        Ok(KernelBtf {
            layout,
            attach: AttachIds { found },
        })
    }
}

/// Every name a tp_btf or fexit program of ours attaches to.
pub fn attach_names() -> Vec<(String, AttachKind)> {
    use affinity_common::programs;
    let tracepoints = programs::BTF_TRACEPOINTS
        .iter()
        .map(|(_, tp)| (format!("btf_trace_{tp}"), AttachKind::Typedef));
    let functions = programs::FEXITS
        .iter()
        .map(|(_, f)| (f.to_string(), AttachKind::Func));
    tracepoints.chain(functions).collect()
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;

/// The raw BTF and where each type id starts in it.
struct BtfReader {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Byte offset in `data` of type id `i + 1` (id 0 is void).
    starts: Vec<u32>,
}

/// One `struct btf_type` header.
#[derive(Clone, Copy)]
struct TypeHead {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// size or referenced type, by kind.
    size_type: u32,
    /// Where the kind-specific data after the header begins.
    extra: usize,
}

impl BtfReader {
    fn read(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let bad = |what: &str| BtfError::Malformed(what.to_string());
        if data.len() < HEADER_LEN {
            return Err(bad("shorter than its header"));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != MAGIC {
            return Err(BtfError::Malformed(format!(
                "magic {magic:#06x}, not {MAGIC:#06x} (a little-endian BTF)"
            )));
        }
        let word = |at: usize| u32_at(&data, at).map(|v| v as usize);
        let hdr_len = word(4).ok_or_else(|| bad("header"))?;
        let type_off = word(8).ok_or_else(|| bad("header"))?;
        let type_len = word(12).ok_or_else(|| bad("header"))?;
        let str_off = word(16).ok_or_else(|| bad("header"))?;
        let str_len = word(20).ok_or_else(|| bad("header"))?;
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types.end > data.len() || strings.end > data.len() {
            return Err(bad("sections past the end of the data"));
        }
        let mut starts = Vec::with_capacity(type_len / 16);
        let mut at = types.start;
        while at < types.end {
            let head = head_at(&data, at)
                .ok_or_else(|| BtfError::Malformed(format!("type at byte {at} truncated")))?;
            let extra = extra_len(head.kind, head.vlen).ok_or_else(|| {
                BtfError::Malformed(format!("type at byte {at}: unknown kind {}", head.kind))
            })?;
            starts.push(at as u32);
            at = head.extra + extra;
        }
        if at != types.end {
            return Err(bad("the last type runs past the type section"));
        }
        Ok(BtfReader {
            data,
            strings,
            starts,
        })
    }

    /// Number of type ids, void included.
    fn count(&self) -> usize {
        self.starts.len() + 1
    }

    fn head(&self, id: u32) -> Option<TypeHead> {
        let start = *self.starts.get((id as usize).checked_sub(1)?)?;
        head_at(&self.data, start as usize)
    }

    fn name(&self, name_off: u32) -> &[u8] {
        let from = self.strings.start + name_off as usize;
        let Some(rest) = self.data.get(from..self.strings.end) else {
            return b"";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn ids_named<'a>(&'a self, name: &'a str, kind: u32) -> impl Iterator<Item = u32> + 'a {
        (1..self.count() as u32).filter(move |&id| {
            self.head(id)
                .is_some_and(|h| h.kind == kind && self.name(h.name_off) == name.as_bytes())
        })
    }

    /// The first id of each wanted (name, kind), in one pass.
    fn find_all(&self, wanted: &[(String, AttachKind)]) -> Vec<(u32, String, AttachKind)> {
        let mut found = Vec::new();
        for id in 1..self.count() as u32 {
            let Some(h) = self.head(id) else { continue };
            if h.kind != KIND_TYPEDEF && h.kind != KIND_FUNC {
                continue;
            }
            let name = self.name(h.name_off);
            for (want, kind) in wanted {
                if kind.btf_kind() == h.kind
                    && want.as_bytes() == name
                    && !found.iter().any(|(_, n, k)| n == want && k == kind)
                {
                    found.push((id, want.clone(), *kind));
                }
            }
        }
        found
    }

    fn layout(&self) -> Result<KernelLayout, BtfError> {
        Ok(KernelLayout {
            task_flags: self.member_offset("task_struct", "flags")?,
            task_pid: self.member_offset("task_struct", "pid")?,
            task_tgid: self.member_offset("task_struct", "tgid")?,
            task_comm: self.member_offset("task_struct", "comm")?,
            cpuhp_ap_active: self.enum_value("cpuhp_state", "CPUHP_AP_ACTIVE")?,
            cpuhp_teardown_cpu: self.enum_value("cpuhp_state", "CPUHP_TEARDOWN_CPU")?,
        })
    }

    /// Byte offset of `member` in struct `strukt`.
    fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        for id in self.ids_named(strukt, KIND_STRUCT) {
            if let Some(bits) = self.find_member(id, member, 0) {
                return Ok(bits / 8);
            }
        }
        Err(BtfError::Missing(format!(
            "struct {strukt} member {member}"
        )))
    }

    /// Bit offset of `name` in the struct or union `id`, looking through
    /// anonymous structs and unions (randomized_struct_fields_start wraps
    /// most of task_struct in one).
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<u32> {
        let h = self.head(id)?;
        if (h.kind != KIND_STRUCT && h.kind != KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..h.vlen {
            let at = h.extra + i * 12;
            let m_name = u32_at(&self.data, at)?;
            let m_type = u32_at(&self.data, at + 4)?;
            let raw = u32_at(&self.data, at + 8)?;
            // With kind_flag set, the top 8 bits are a bitfield's size.
            let bit_offset = if h.kind_flag { raw & 0xff_ffff } else { raw };
            let m_name = self.name(m_name);
            if m_name == name.as_bytes() {
                return Some(bit_offset);
            }
            if m_name.is_empty()
                && let Some(off) = self.find_member(self.strip(m_type), name, depth + 1)
            {
                return Some(bit_offset + off);
            }
        }
        None
    }

    /// `id` through typedefs and qualifiers.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.head(id) {
                Some(h)
                    if matches!(
                        h.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = h.size_type;
                }
                _ => break,
            }
        }
        id
    }

    fn enum_value(&self, enm: &str, name: &str) -> Result<i32, BtfError> {
        for id in self.ids_named(enm, KIND_ENUM) {
            let h = self.head(id).expect("an id just listed");
            for i in 0..h.vlen {
                let at = h.extra + i * 8;
                if let (Some(n), Some(v)) = (u32_at(&self.data, at), u32_at(&self.data, at + 4))
                    && self.name(n) == name.as_bytes()
                {
                    return Ok(v as i32);
                }
            }
        }
        Err(BtfError::Missing(format!("enum {enm} value {name}")))
    }
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn head_at(data: &[u8], at: usize) -> Option<TypeHead> {
    let info = u32_at(data, at + 4)?;
    Some(TypeHead {
        name_off: u32_at(data, at)?,
        kind: (info >> 24) & 0x1f,
        vlen: (info & 0xffff) as usize,
        kind_flag: info >> 31 == 1,
        size_type: u32_at(data, at + 8)?,
        extra: at + TYPE_LEN,
    })
}

/// Bytes after the header of a type of `kind` with `vlen` entries.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        _ => return None,
    })
}

/// A BTF of `count` ids where each found (id, name, kind) is a typedef or
/// func of that name and every other id a `void *`, parsed by aya.
fn attach_btf(count: usize, found: &[(u32, String, AttachKind)]) -> Result<aya::Btf, BtfError> {
    let mut strings = vec![0u8];
    let mut named = std::collections::HashMap::new();
    for (id, name, kind) in found {
        named.insert(*id, (strings.len() as u32, *kind));
        strings.extend(name.as_bytes());
        strings.push(0);
    }
    let type_len = (count - 1) * TYPE_LEN;
    let mut blob = Vec::with_capacity(HEADER_LEN + type_len + strings.len());
    blob.extend(MAGIC.to_le_bytes());
    blob.extend([1u8, 0]); // version 1, no flags
    for word in [HEADER_LEN, 0, type_len, type_len, strings.len()] {
        blob.extend((word as u32).to_le_bytes());
    }
    for id in 1..count as u32 {
        let (name_off, kind) = match named.get(&id) {
            Some(&(off, kind)) => (off, kind.btf_kind()),
            None => (0, KIND_PTR),
        };
        blob.extend(name_off.to_le_bytes());
        blob.extend((kind << 24).to_le_bytes());
        // A typedef or func referring to void is enough for a name lookup.
        blob.extend(0u32.to_le_bytes());
    }
    blob.extend(&strings);
    aya::Btf::parse(&blob, aya::Endianness::Little).map_err(BtfError::Attach)
}

#[cfg(test)]
mod tests;
