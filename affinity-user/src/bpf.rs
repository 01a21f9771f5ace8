//! Loading and attaching the embedded eBPF object, and the handles userspace
//! keeps on it: the event ring buffer, the policy maps, the counters.
//!
//! Dropping the [`Observer`] detaches every program and frees every map.

use std::{os::fd::OwnedFd, time::Duration};

use affinity_common::{COUNTERS_LEN, Counter, CpuMask, MASK_WORDS, globals, maps, programs};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FExit, TracePoint},
};
use aya_log::EbpfLogger;
use thiserror::Error;
use tokio::io::unix::AsyncFd;

use crate::{
    btf::{BtfError, KernelLayout},
    wire::{self, WireEvent},
};

/// The eBPF object built from `affinity-ebpf` by build.rs.
pub static EMBEDDED_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("AFFINITY_EBPF_OBJECT"));

#[derive(Debug, Error)]
pub enum ObserverError {
    #[error(
        "this affinity binary was built without its eBPF object (the nightly toolchain or bpf-linker was missing); rebuild it with `cargo xtask build`"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {map}: {detail}")]
    Map { map: &'static str, detail: String },
    #[error("reading kernel BTF for tp_btf programs: {0}")]
    KernelBtf(#[source] aya::BtfError),
    #[error("waiting for eBPF events: {0}")]
    Io(#[from] std::io::Error),
}

pub struct ObserverConfig {
    pub layout: KernelLayout,
    /// Our own sched_setaffinity calls are not reported back to us.
    pub daemon_tgid: u32,
    /// Per-pid rate limit of violation reports, enforced in the kernel.
    pub report_interval: Duration,
}

/// Totals of the per-CPU counters kept by the programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub dropped: u64,
    pub suppressed: u64,
    pub violations: u64,
}

/// Receives aya-log records from the programs.
pub trait LogSink: Send + Sync + 'static {
    fn log(&self, level: log::Level, message: String);
}

struct LogAdapter<S>(S);

impl<S: LogSink> log::Log for LogAdapter<S> {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.log(record.level(), record.args().to_string());
    }
    fn flush(&self) {}
}

pub struct Observer {
    events: AsyncFd<RingBuf<MapData>>,
    logs: AsyncFd<EbpfLogger<Box<dyn log::Log>>>,
    allowed: HashMap<MapData, u32, CpuMask>,
    isolated: Array<MapData, CpuMask>,
    counters: PerCpuArray<MapData, u64>,
    /// Optional programs that could not be attached on this kernel, and why.
    pub unavailable: Vec<(&'static str, String)>,
    // Last: programs are detached when this drops.
    ebpf: Ebpf,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> ObserverError {
    move |e| ObserverError::Map {
        map,
        detail: e.to_string(),
    }
}

impl Observer {
    /// Loads `object`, attaches every program and starts draining aya-log
    /// records into `sink`. Must be called within a tokio runtime.
    pub fn load(
        object: &[u8],
        cfg: &ObserverConfig,
        sink: impl LogSink,
    ) -> Result<Self, ObserverError> {
        if object.is_empty() {
            return Err(ObserverError::NoObject);
        }
        let l = &cfg.layout;
        let interval = cfg.report_interval.as_nanos() as u64;
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::TASK_FLAGS_OFF, &l.task_flags, true)
            .override_global(globals::TASK_PID_OFF, &l.task_pid, true)
            .override_global(globals::TASK_TGID_OFF, &l.task_tgid, true)
            .override_global(globals::TASK_COMM_OFF, &l.task_comm, true)
            .override_global(globals::CPUHP_AP_ACTIVE, &l.cpuhp_ap_active, true)
            .override_global(globals::CPUHP_TEARDOWN_CPU, &l.cpuhp_teardown_cpu, true)
            .override_global(globals::DAEMON_TGID, &cfg.daemon_tgid, true)
            .override_global(globals::REPORT_INTERVAL_NS, &interval, true)
            .load(object)
            .map_err(ObserverError::Load)?;

        let logger: Box<dyn log::Log> = Box::new(LogAdapter(sink));
        let logs =
            EbpfLogger::init_with_logger(&mut ebpf, logger).map_err(|e| ObserverError::Map {
                map: "AYA_LOGS",
                detail: e.to_string(),
            })?;
        let logs = register(logs)?;

        let btf = Btf::from_sys_fs().map_err(ObserverError::KernelBtf)?;
        for &(program, tracepoint) in programs::BTF_TRACEPOINTS {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or(ObserverError::Map {
                    map: "programs",
                    detail: format!("{program} missing from object"),
                })?
                .try_into()
                .map_err(|source| ObserverError::Program { program, source })?;
            prog.load(tracepoint, &btf)
                .map_err(|source| ObserverError::Program { program, source })?;
            prog.attach()
                .map_err(|source| ObserverError::Program { program, source })?;
        }
        // Who moved a kthread: fexit where BPF trampolines work, else the
        // syscall tracepoints (which tax every syscall), else nobody named:
        // the daemon still restores masks.
        let mut unavailable = Vec::new();
        let fexit = (|| -> Result<(), aya::programs::ProgramError> {
            for &(program, function) in programs::FEXITS {
                let prog: &mut FExit = ebpf.program_mut(program).expect("in object").try_into()?;
                prog.load(function, &btf)?;
                prog.attach()?;
            }
            Ok(())
        })();
        if let Err(fexit_err) = fexit {
            ensure_tracefs();
            let tracepoints = (|| -> Result<(), aya::programs::ProgramError> {
                for &(program, category, name) in programs::SYSCALL_TRACEPOINTS {
                    let prog: &mut TracePoint =
                        ebpf.program_mut(program).expect("in object").try_into()?;
                    prog.load()?;
                    prog.attach(category, name)?;
                }
                Ok(())
            })();
            if let Err(tp_err) = tracepoints {
                unavailable.push((
                    programs::SETAFFINITY_FEXIT,
                    format!("fexit: {fexit_err:#}; syscall tracepoints: {tp_err:#}"),
                ));
            }
        }

        let events = RingBuf::try_from(ebpf.take_map(maps::EVENTS).ok_or(ObserverError::Map {
            map: maps::EVENTS,
            detail: "missing from object".into(),
        })?)
        .map_err(map_err(maps::EVENTS))?;
        let allowed =
            HashMap::try_from(take(&mut ebpf, maps::ALLOWED)?).map_err(map_err(maps::ALLOWED))?;
        let isolated =
            Array::try_from(take(&mut ebpf, maps::ISOLATED)?).map_err(map_err(maps::ISOLATED))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
            .map_err(map_err(maps::COUNTERS))?;
        Ok(Observer {
            events: register(events)?,
            logs,
            allowed,
            isolated,
            counters,
            unavailable,
            ebpf,
        })
    }

    /// Waits until there are records and decodes all that are there.
    /// Records that fail to decode are returned as errors, not dropped.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Result<WireEvent, wire::WireError>>,
    ) -> Result<(), ObserverError> {
        tokio::select! {
            guard = self.events.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    out.push(wire::decode(&item));
                }
                guard.clear_ready();
            }
            guard = self.logs.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
        Ok(())
    }

    /// Sets the policy mask the programs judge `pid` against.
    pub fn set_allowed(&mut self, pid: u32, words: &[u64]) -> Result<(), ObserverError> {
        self.allowed
            .insert(pid, to_mask(words), 0)
            .map_err(map_err(maps::ALLOWED))
    }

    pub fn remove_allowed(&mut self, pid: u32) -> Result<(), ObserverError> {
        match self.allowed.remove(&pid) {
            Ok(()) => Ok(()),
            // Already gone: the exit program removes entries itself.
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(maps::ALLOWED)(e)),
        }
    }

    /// CPUs no movable, unregistered kthread should run on.
    pub fn set_isolated(&mut self, words: &[u64]) -> Result<(), ObserverError> {
        self.isolated
            .set(0, to_mask(words), 0)
            .map_err(map_err(maps::ISOLATED))
    }

    pub fn counters(&self) -> Result<Counters, ObserverError> {
        let sum = |c: Counter| -> Result<u64, ObserverError> {
            let v = self
                .counters
                .get(&(c as u32), 0)
                .map_err(map_err(maps::COUNTERS))?;
            Ok(v.iter().sum())
        };
        debug_assert_eq!(COUNTERS_LEN, 3);
        Ok(Counters {
            dropped: sum(Counter::Dropped)?,
            suppressed: sum(Counter::Suppressed)?,
            violations: sum(Counter::Violations)?,
        })
    }

    /// (name, run count, total run time ns) of each program, as the kernel
    /// counts them while BPF statistics are enabled ([`enable_run_time_stats`]).
    pub fn program_stats(&self) -> Vec<(String, u64, Duration)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_string(), info.run_count(), info.run_time()))
            })
            .collect()
    }
}

/// Turns on the kernel's per-program run-time accounting until the fd drops.
pub fn enable_run_time_stats() -> std::io::Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Classic tracepoints attach through tracefs, which a minimal system may
/// not have mounted. Mount it where the kernel expects it; if that fails the
/// attach below fails and says so.
fn ensure_tracefs() {
    let dir = std::path::Path::new("/sys/kernel/tracing");
    if dir.join("events").exists() || !dir.is_dir() {
        return;
    }
    // SAFETY: NUL-terminated literals; mount(2) reads them only.
    unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        );
    }
}

fn register<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: both users (the events ring buffer and the aya-log ring
    // buffer) own their map fd and keep it open until they drop, which is
    // after the AsyncFd that wraps them has deregistered it.
    unsafe { AsyncFd::register(inner) }.map_err(|e| std::io::Error::other(e.to_string()))
}

fn take(ebpf: &mut Ebpf, map: &'static str) -> Result<aya::maps::Map, ObserverError> {
    ebpf.take_map(map).ok_or(ObserverError::Map {
        map,
        detail: "missing from object".into(),
    })
}

fn to_mask(words: &[u64]) -> CpuMask {
    let mut mask = CpuMask::EMPTY;
    let n = words.len().min(MASK_WORDS);
    mask.words[..n].copy_from_slice(&words[..n]);
    mask
}
