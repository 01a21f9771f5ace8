use super::*;

/// A little-endian BTF built type by type, ids from 1.
#[derive(Default)]
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Builder {
    fn new() -> Self {
        Builder {
            strings: vec![0],
            next_id: 1,
            ..Default::default()
        }
    }

    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn head(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size_type: u32) -> u32 {
        let name = self.string(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        for w in [name, info, size_type] {
            self.types.extend(w.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    fn words(&mut self, words: &[u32]) {
        for w in words {
            self.types.extend(w.to_le_bytes());
        }
    }

    fn int(&mut self) -> u32 {
        let id = self.head("int", KIND_INT, 0, false, 4);
        self.words(&[32]);
        id
    }

    /// Members as (name, type, bit offset).
    fn composite(&mut self, kind: u32, name: &str, members: &[(&str, u32, u32)]) -> u32 {
        let names: Vec<u32> = members.iter().map(|(n, _, _)| self.string(n)).collect();
        let id = self.head(name, kind, members.len() as u32, false, 64);
        for (n, (_, ty, off)) in names.iter().zip(members) {
            self.words(&[*n, *ty, *off]);
        }
        id
    }

    fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
        let names: Vec<u32> = values.iter().map(|(n, _)| self.string(n)).collect();
        let id = self.head(name, KIND_ENUM, values.len() as u32, false, 4);
        for (n, (_, v)) in names.iter().zip(values) {
            self.words(&[*n, *v as u32]);
        }
        id
    }

    fn build(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend([1u8, 0]);
        let tl = self.types.len() as u32;
        for w in [HEADER_LEN as u32, 0, tl, tl, self.strings.len() as u32] {
            b.extend(w.to_le_bytes());
        }
        b.extend(&self.types);
        b.extend(&self.strings);
        b
    }
}

/// A kernel-shaped BTF: task_struct's pid and tgid inside an anonymous
/// union behind a const, comm after a bitfield struct, a forward
/// declaration of the same name first, cpuhp_state, and the attach types.
fn kernelish() -> (Vec<u8>, u32, u32) {
    let mut b = Builder::new();
    let int = b.int();
    b.head("task_struct", KIND_FWD, 0, false, 0);
    let inner = b.composite(KIND_STRUCT, "", &[("pid", int, 0), ("tgid", int, 32)]);
    let konst = b.head("", KIND_CONST, 0, false, inner);
    let anon = b.composite(KIND_UNION, "", &[("", konst, 0)]);
    // A bitfield struct: kind_flag set, bitfield size in the top 8 bits.
    let name = b.string("task_struct");
    let members = [
        (b.string("flags"), int, 0u32),
        (0, anon, 64),
        (b.string("comm"), int, (3 << 24) | 1024),
    ];
    b.types.extend(name.to_le_bytes());
    b.types
        .extend(((1u32 << 31) | (KIND_STRUCT << 24) | 3).to_le_bytes());
    b.types.extend(256u32.to_le_bytes());
    for (n, t, o) in members {
        b.words(&[n, t, o]);
    }
    b.next_id += 1;
    b.enumeration(
        "cpuhp_state",
        &[
            ("CPUHP_OFFLINE", 0),
            ("CPUHP_TEARDOWN_CPU", 90),
            ("CPUHP_AP_ACTIVE", 203),
        ],
    );
    let proto = b.head("", KIND_FUNC_PROTO, 1, false, 0);
    b.words(&[0, int]);
    let tp = b.head("btf_trace_sched_switch", KIND_TYPEDEF, 0, false, proto);
    b.head("sched_setaffinity", KIND_FUNC, 0, false, proto);
    let func = b.next_id - 1;
    (b.build(), tp, func)
}

#[test]
fn the_layout_comes_through_anonymous_members_and_bitfields() {
    let (blob, _, _) = kernelish();
    let l = BtfReader::parse(blob).unwrap().layout().unwrap();
    assert_eq!(
        l,
        KernelLayout {
            task_flags: 0,
            task_pid: 8,
            task_tgid: 12,
            task_comm: 128,
            cpuhp_ap_active: 203,
            cpuhp_teardown_cpu: 90,
        }
    );
}

#[test]
fn the_attach_btf_keeps_the_kernel_ids() {
    let (blob, tp, func) = kernelish();
    let reader = BtfReader::parse(blob).unwrap();
    let wanted = [
        ("btf_trace_sched_switch".to_string(), AttachKind::Typedef),
        ("sched_setaffinity".to_string(), AttachKind::Func),
        ("btf_trace_not_here".to_string(), AttachKind::Typedef),
        // The right name, the wrong kind: not found.
        ("sched_setaffinity".to_string(), AttachKind::Typedef),
    ];
    let found = reader.find_all(&wanted);
    assert_eq!(
        found,
        [
            (
                tp,
                "btf_trace_sched_switch".to_string(),
                AttachKind::Typedef
            ),
            (func, "sched_setaffinity".to_string(), AttachKind::Func),
        ]
    );
    let attach = AttachIds { found }.to_aya().unwrap();
    use aya_obj_kind::*;
    assert_eq!(
        attach
            .id_by_type_name_kind("btf_trace_sched_switch", TYPEDEF)
            .unwrap(),
        tp
    );
    assert_eq!(
        attach
            .id_by_type_name_kind("sched_setaffinity", FUNC)
            .unwrap(),
        func
    );
    assert!(
        attach
            .id_by_type_name_kind("btf_trace_not_here", TYPEDEF)
            .is_err()
    );
}

/// aya's kinds, by the names its lookup takes.
mod aya_obj_kind {
    pub const TYPEDEF: aya_obj::btf::BtfKind = aya_obj::btf::BtfKind::Typedef;
    pub const FUNC: aya_obj::btf::BtfKind = aya_obj::btf::BtfKind::Func;
}

#[test]
fn malformed_btf_is_an_error_naming_what() {
    let (blob, _, _) = kernelish();
    let mut bad_magic = blob.clone();
    // A big-endian BTF.
    bad_magic[0] = 0xeb;
    bad_magic[1] = 0x9f;
    let e = BtfReader::parse(bad_magic).err().unwrap().to_string();
    assert!(e.contains("magic 0x9feb, not 0xeb9f"), "{e}");

    let e = BtfReader::parse(blob[..10].to_vec())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("shorter than its header"), "{e}");

    // The type section claims more than there is.
    let mut long = blob.clone();
    long[12..16].copy_from_slice(&(blob.len() as u32 * 2).to_le_bytes());
    let e = BtfReader::parse(long).err().unwrap().to_string();
    assert!(e.contains("past the end"), "{e}");

    // The first type's kind made 31.
    let mut unknown = blob.clone();
    unknown[HEADER_LEN + 7] = 31;
    let e = BtfReader::parse(unknown).err().unwrap().to_string();
    assert!(e.contains("unknown kind 31"), "{e}");

    // A struct whose members run past the type section.
    let mut b = Builder::new();
    b.head("s", KIND_STRUCT, 5, false, 8);
    let e = BtfReader::parse(b.build()).err().unwrap().to_string();
    assert!(e.contains("runs past the type section"), "{e}");

    let mut b = Builder::new();
    b.int();
    let e = BtfReader::parse(b.build())
        .unwrap()
        .layout()
        .err()
        .unwrap()
        .to_string();
    assert_eq!(e, "kernel BTF has no struct task_struct member flags");
}

/// The running kernel's BTF, read here and by two full parsers (btf-rs
/// for the layout, aya for the ids), must agree. Under CI (whose machines
/// have BTF) a missing file is a failure.
#[test]
fn the_running_kernel_agrees_with_full_parsers() {
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
    let ours = KernelBtf::read(path).expect("reading the kernel's BTF");
    assert_eq!(ours.layout, oracle::layout(path));
    let attach = ours.attach.to_aya().unwrap();
    let full = aya::Btf::from_sys_fs().unwrap();
    let mut found = 0;
    for (name, kind) in attach_names() {
        let kind = match kind {
            AttachKind::Typedef => aya_obj_kind::TYPEDEF,
            AttachKind::Func => aya_obj_kind::FUNC,
        };
        let want = full.id_by_type_name_kind(&name, kind).ok();
        let got = attach.id_by_type_name_kind(&name, kind).ok();
        assert_eq!(got, want, "{name}");
        found += usize::from(got.is_some());
    }
    // Every tracepoint we attach to exists on every kernel we support.
    assert!(
        found >= affinity_common::programs::BTF_TRACEPOINTS.len(),
        "{found}"
    );
}

/// The layout as btf-rs resolves it, for the test above.
mod oracle {
    use btf_rs::{Btf, Type};

    use super::*;

    pub fn layout(path: &Path) -> KernelLayout {
        let btf = Btf::from_file(path).unwrap();
        KernelLayout {
            task_flags: member(&btf, "flags"),
            task_pid: member(&btf, "pid"),
            task_tgid: member(&btf, "tgid"),
            task_comm: member(&btf, "comm"),
            cpuhp_ap_active: value(&btf, "CPUHP_AP_ACTIVE"),
            cpuhp_teardown_cpu: value(&btf, "CPUHP_TEARDOWN_CPU"),
        }
    }

    fn member(btf: &Btf, name: &str) -> u32 {
        btf.resolve_types_by_name("task_struct")
            .unwrap()
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => find(btf, &s, name),
                _ => None,
            })
            .unwrap()
            / 8
    }

    fn find(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Option<u32> {
        for m in &s.members {
            let m_name = btf.resolve_name(m).unwrap_or_default();
            if m_name == name {
                return Some(m.bit_offset());
            }
            if m_name.is_empty()
                && let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
                && let Some(off) = find(btf, &inner, name)
            {
                return Some(m.bit_offset() + off);
            }
        }
        None
    }

    fn value(btf: &Btf, name: &str) -> i32 {
        for t in btf.resolve_types_by_name("cpuhp_state").unwrap() {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    if btf.resolve_name(m).unwrap() == name {
                        return m.val() as i32;
                    }
                }
            }
        }
        panic!("no {name}")
    }
}
