//! Checked decoding of ring-buffer records from the eBPF programs.
//!
//! A record is a [`Header`] followed by the kind's body. The length is
//! checked against the kind before anything is read, and the bytes are
//! copied out with `read_unaligned`: nothing is transmuted in place.

use std::mem::size_of;

use affinity_common::{
    EventKind, Header, HotplugEvent, NoiseKey, NoiseKind, NoiseStat, SOFTIRQ_NAMES,
    SetAffinityEvent, TASK_COMM_LEN, TaskEvent, phase,
};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("record of {len} bytes is shorter than its header")]
    Short { len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record is {len} bytes, expected {expected}")]
    Length {
        kind: EventKind,
        len: usize,
        expected: usize,
    },
    #[error("hotplug record has unknown phase {0}")]
    Phase(u32),
    #[error("noise entry has unknown source kind {0}")]
    NoiseKind(u32),
    #[error("noise entry names softirq vector {0}, beyond the kernel's {max}", max = SOFTIRQ_NAMES.len())]
    SoftIrqVector(u32),
}

/// One CPU's total for one source, from the NOISE map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseSample {
    pub cpu: u32,
    pub source: NoiseSource,
    pub count: u64,
    pub total_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoiseSource {
    Kthread {
        pid: u32,
    },
    HardIrq {
        irq: u32,
    },
    /// An index into [`SOFTIRQ_NAMES`].
    SoftIrq {
        vector: u32,
    },
}

impl NoiseSource {
    pub fn kind(self) -> NoiseKind {
        match self {
            NoiseSource::Kthread { .. } => NoiseKind::Kthread,
            NoiseSource::HardIrq { .. } => NoiseKind::HardIrq,
            NoiseSource::SoftIrq { .. } => NoiseKind::SoftIrq,
        }
    }
}

/// A NOISE entry, checked: a kind the programs do not write, or a softirq
/// vector the kernel does not have, is an error rather than a guess.
pub fn noise_sample(cpu: u32, key: NoiseKey, stat: NoiseStat) -> Result<NoiseSample, WireError> {
    let source = match NoiseKind::from_u32(key.kind).ok_or(WireError::NoiseKind(key.kind))? {
        NoiseKind::Kthread => NoiseSource::Kthread { pid: key.id },
        NoiseKind::HardIrq => NoiseSource::HardIrq { irq: key.id },
        NoiseKind::SoftIrq if (key.id as usize) < SOFTIRQ_NAMES.len() => {
            NoiseSource::SoftIrq { vector: key.id }
        }
        NoiseKind::SoftIrq => return Err(WireError::SoftIrqVector(key.id)),
    };
    Ok(NoiseSample {
        cpu,
        source,
        count: stat.count,
        total_ns: stat.total_ns,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotplugPhase {
    OfflineBegin,
    OfflineDone,
    OnlineDone,
    /// A teardown step failed and the kernel brought the CPU back.
    OfflineAborted,
    /// A bring-up step failed and the kernel took the CPU down again.
    OnlineAborted,
}

/// A decoded record. `ts_ns` is CLOCK_MONOTONIC, `on_cpu` where the program ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireEvent {
    Hotplug {
        ts_ns: u64,
        cpu: u32,
        phase: HotplugPhase,
        state: i32,
        /// The failed step's return value (aborted phases), else 0.
        ret: i32,
        /// The programs' step counter after this step, to acknowledge.
        seq: u64,
    },
    Violation {
        ts_ns: u64,
        task: TaskRecord,
        cpu: u32,
        /// How long it ran there.
        run_ns: u64,
    },
    Migrate {
        ts_ns: u64,
        task: TaskRecord,
        dest_cpu: u32,
    },
    KthreadNew {
        ts_ns: u64,
        task: TaskRecord,
    },
    KthreadExit {
        ts_ns: u64,
        task: TaskRecord,
    },
    SetAffinity {
        ts_ns: u64,
        target_pid: u32,
        caller_pid: u32,
        caller_tgid: u32,
        caller_comm: String,
        ret: i32,
        /// From the kernel's own re-affine (set_cpus_allowed_ptr), not a
        /// sched_setaffinity() call; the caller is whoever ran it.
        by_kernel: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub pid: u32,
    pub tgid: u32,
    pub flags: u32,
    pub comm: String,
}

fn read<T: Copy>(bytes: &[u8], kind: EventKind) -> Result<T, WireError> {
    if bytes.len() < size_of::<T>() {
        return Err(WireError::Length {
            kind,
            len: bytes.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: length checked above; T is a #[repr(C)] integer-only type from
    // affinity-common for which every bit pattern is valid.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// The kernel's comm: NUL-terminated within 16 bytes, not always UTF-8.
pub fn comm_to_string(comm: &[u8; TASK_COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn task(e: &TaskEvent) -> TaskRecord {
    TaskRecord {
        pid: e.pid,
        tgid: e.tgid,
        flags: e.flags,
        comm: comm_to_string(&e.comm),
    }
}

pub fn decode(bytes: &[u8]) -> Result<WireEvent, WireError> {
    if bytes.len() < size_of::<Header>() {
        return Err(WireError::Short { len: bytes.len() });
    }
    // SAFETY: as in `read`; the header is checked before its kind is trusted.
    let header: Header = unsafe { bytes.as_ptr().cast::<Header>().read_unaligned() };
    let kind = EventKind::from_u32(header.kind).ok_or(WireError::UnknownKind(header.kind))?;
    let ts_ns = header.ts_ns;
    Ok(match kind {
        EventKind::Hotplug => {
            let e: HotplugEvent = read(bytes, kind)?;
            let phase = match e.phase {
                phase::OFFLINE_BEGIN => HotplugPhase::OfflineBegin,
                phase::OFFLINE_DONE => HotplugPhase::OfflineDone,
                phase::ONLINE_DONE => HotplugPhase::OnlineDone,
                phase::OFFLINE_ABORTED => HotplugPhase::OfflineAborted,
                phase::ONLINE_ABORTED => HotplugPhase::OnlineAborted,
                other => return Err(WireError::Phase(other)),
            };
            WireEvent::Hotplug {
                ts_ns,
                cpu: e.target_cpu,
                phase,
                state: e.state,
                ret: e.ret,
                seq: e.seq,
            }
        }
        EventKind::Violation => {
            let e: TaskEvent = read(bytes, kind)?;
            WireEvent::Violation {
                ts_ns,
                task: task(&e),
                cpu: e.cpu,
                run_ns: e.run_ns,
            }
        }
        EventKind::Migrate => {
            let e: TaskEvent = read(bytes, kind)?;
            WireEvent::Migrate {
                ts_ns,
                task: task(&e),
                dest_cpu: e.cpu,
            }
        }
        EventKind::KthreadNew => WireEvent::KthreadNew {
            ts_ns,
            task: task(&read(bytes, kind)?),
        },
        EventKind::KthreadExit => WireEvent::KthreadExit {
            ts_ns,
            task: task(&read(bytes, kind)?),
        },
        EventKind::SetAffinity | EventKind::Reaffine => {
            let e: SetAffinityEvent = read(bytes, kind)?;
            WireEvent::SetAffinity {
                ts_ns,
                target_pid: e.target_pid,
                caller_pid: e.caller_pid,
                caller_tgid: e.caller_tgid,
                caller_comm: comm_to_string(&e.caller_comm),
                ret: e.ret,
                by_kernel: kind == EventKind::Reaffine,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_entries_are_checked() {
        let stat = NoiseStat {
            count: 3,
            total_ns: 9_000,
        };
        let key = |kind, id| NoiseKey { kind, id };
        assert_eq!(
            noise_sample(2, key(2, 24), stat),
            Ok(NoiseSample {
                cpu: 2,
                source: NoiseSource::HardIrq { irq: 24 },
                count: 3,
                total_ns: 9_000
            })
        );
        assert_eq!(
            noise_sample(1, key(1, 77), stat).map(|s| s.source),
            Ok(NoiseSource::Kthread { pid: 77 })
        );
        assert_eq!(
            noise_sample(1, key(3, 9), stat).map(|s| s.source),
            Ok(NoiseSource::SoftIrq { vector: 9 })
        );
        assert_eq!(
            noise_sample(1, key(3, 10), stat),
            Err(WireError::SoftIrqVector(10))
        );
        assert_eq!(
            noise_sample(1, key(0, 1), stat),
            Err(WireError::NoiseKind(0))
        );
    }

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value for a test fixture.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: EventKind) -> Header {
        Header {
            kind: kind as u32,
            cpu: 0,
            ts_ns: 42,
        }
    }

    #[test]
    fn decodes_hotplug() {
        let e = HotplugEvent {
            header: header(EventKind::Hotplug),
            target_cpu: 1,
            phase: phase::OFFLINE_ABORTED,
            state: 200,
            ret: -11,
            seq: 7,
        };
        assert_eq!(
            decode(&bytes_of(&e)),
            Ok(WireEvent::Hotplug {
                ts_ns: 42,
                cpu: 1,
                phase: HotplugPhase::OfflineAborted,
                state: 200,
                ret: -11,
                seq: 7,
            })
        );
    }

    #[test]
    fn a_kernel_reaffine_is_a_setaffinity_record_marked_by_kernel() {
        for (kind, by_kernel) in [(EventKind::SetAffinity, false), (EventKind::Reaffine, true)] {
            let e = SetAffinityEvent {
                header: header(kind),
                target_pid: 38,
                caller_pid: 30,
                caller_tgid: 30,
                ret: 0,
                caller_comm: *b"cpuhp/1\0\0\0\0\0\0\0\0\0",
            };
            assert_eq!(
                decode(&bytes_of(&e)),
                Ok(WireEvent::SetAffinity {
                    ts_ns: 42,
                    target_pid: 38,
                    caller_pid: 30,
                    caller_tgid: 30,
                    caller_comm: "cpuhp/1".into(),
                    ret: 0,
                    by_kernel,
                })
            );
        }
    }

    #[test]
    fn decodes_task_comm_without_nul() {
        let e = TaskEvent {
            header: header(EventKind::Violation),
            pid: 7,
            tgid: 7,
            flags: 0x200000,
            cpu: 3,
            comm: *b"0123456789abcdef",
            run_ns: 180_000,
        };
        let WireEvent::Violation {
            task, cpu, run_ns, ..
        } = decode(&bytes_of(&e)).unwrap()
        else {
            panic!("wrong kind")
        };
        assert_eq!(
            (task.comm.as_str(), cpu, run_ns),
            ("0123456789abcdef", 3, 180_000)
        );
    }

    #[test]
    fn rejects_truncated_and_unknown_records() {
        let e = TaskEvent {
            header: header(EventKind::KthreadNew),
            pid: 1,
            tgid: 1,
            flags: 0,
            cpu: 0,
            comm: [0; 16],
            run_ns: 0,
        };
        let b = bytes_of(&e);
        assert!(matches!(
            decode(&b[..b.len() - 1]),
            Err(WireError::Length { .. })
        ));
        assert_eq!(decode(&b[..4]), Err(WireError::Short { len: 4 }));
        let mut bad = b.clone();
        bad[0] = 99;
        assert_eq!(decode(&bad), Err(WireError::UnknownKind(99)));
        let h = HotplugEvent {
            header: header(EventKind::Hotplug),
            target_cpu: 1,
            phase: 9,
            state: 0,
            ret: 0,
            seq: 0,
        };
        assert_eq!(decode(&bytes_of(&h)), Err(WireError::Phase(9)));
    }
}
