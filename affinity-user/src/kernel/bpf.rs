//! Loading and attaching the embedded eBPF object, and the handles userspace
//! keeps on it: the event ring buffer, the policy maps, the counters.
//!
//! Dropping the [`Observer`] detaches every program and frees every map.

use std::{os::unix::fs::MetadataExt, path::Path, time::Duration};

use affinity_common::{
    COUNTERS_LEN, Counter, CpuMask, HotplugView, MASK_WORDS, NoiseKey, NoiseStat, Policy, globals,
    maps, programs,
};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, FExit, TracePoint},
};
use aya_log::EbpfLogger;
use thiserror::Error;
use tokio::io::unix::AsyncFd;

use crate::{
    kernel::btf::{BtfError, KernelBtf},
    kernel::wire::{self, WireEvent},
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
    #[error("eBPF map NOISE: {0}")]
    Noise(#[from] wire::WireError),
    #[error("waiting for eBPF events: {0}")]
    Io(#[from] std::io::Error),
    #[error("--attribute {asked}: {why}")]
    Attribution { asked: Attribution, why: String },
}

/// How the daemon names who moved a kthread (`--attribute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Attribution {
    /// fexit on sched_setaffinity() where the kernel allows BPF
    /// trampolines; where it refuses, nobody is named (masks are still
    /// restored).
    #[default]
    Auto,
    /// fexit, or refuse to start.
    Fexit,
    /// The sys_enter/sys_exit tracepoints of sched_setaffinity, or refuse
    /// to start. They send every syscall of every task through the tracing
    /// slow path (~8 % on a syscall-heavy loop, BENCHMARKS.md).
    Syscalls,
    /// No caller is named; the cheapest.
    Off,
}

impl std::fmt::Display for Attribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let name = self.to_possible_value().expect("no skipped variants");
        f.write_str(name.get_name())
    }
}

pub struct ObserverConfig {
    /// The running kernel's layout and the types the programs attach to.
    pub btf: KernelBtf,
    /// Our own sched_setaffinity calls are not reported back to us.
    pub daemon_tgid: u32,
    /// Per-pid rate limit of violation reports, enforced in the kernel.
    pub report_interval: Duration,
    /// Mask width in CPUs (every possible CPU): bounds the programs' loops.
    pub width: u32,
    /// The online CPUs now: the programs' view of them starts from this,
    /// written before the hotplug programs are attached.
    pub online: Vec<u64>,
    /// (st_dev, st_ino) of the initial pid namespace, see [`init_pidns`].
    pub init_pidns: (u64, u64),
    /// Which programs name callers of sched_setaffinity(), if any.
    pub attribution: Attribution,
    /// Size of the hotplug ring instead of the object's 64 KiB (a power of
    /// two, at least a page): the tests shrink it to force drops.
    pub hotplug_ring_bytes: Option<u32>,
    /// Attach the hard IRQ and softirq programs of the noise report.
    pub noise: bool,
}

impl ObserverConfig {
    /// The daemon's settings for a machine: our own calls not reported,
    /// violations at most every 500 ms per pid, callers named by fexit
    /// where it loads, the object's ring sizes.
    pub fn new(btf: KernelBtf, width: u32, online: Vec<u64>, init_pidns: (u64, u64)) -> Self {
        ObserverConfig {
            btf,
            daemon_tgid: std::process::id(),
            report_interval: Duration::from_millis(500),
            width,
            online,
            init_pidns,
            attribution: Attribution::Auto,
            hotplug_ring_bytes: None,
            noise: true,
        }
    }
}

/// (st_dev, st_ino) of our pid namespace, which must be the initial one for
/// pids to name kthreads: callers of sched_setaffinity() in any other are
/// not reported.
pub fn init_pidns(proc_root: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(proc_root.join("self/ns/pid"))?;
    Ok((m.dev(), m.ino()))
}

/// Totals of the per-CPU counters kept by the programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub dropped: u64,
    pub suppressed: u64,
    pub violations: u64,
    pub hotplug_dropped: u64,
}

/// How many records one [`Observer::next_batch`] takes from the main ring
/// at most: the event loop gets its turn between batches whatever the rate.
pub const BATCH_MAX: usize = 512;

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
    hotplug: AsyncFd<RingBuf<MapData>>,
    events: AsyncFd<RingBuf<MapData>>,
    logs: AsyncFd<EbpfLogger<Box<dyn log::Log>>>,
    allowed: HashMap<MapData, u32, Policy>,
    view: Array<MapData, HotplugView>,
    ack: Array<MapData, u64>,
    isolated: Array<MapData, CpuMask>,
    counters: PerCpuArray<MapData, u64>,
    noise: PerCpuHashMap<MapData, NoiseKey, NoiseStat>,
    /// Optional programs that could not be attached on this kernel, and why.
    pub unavailable: Vec<(&'static str, String)>,
    // Last: held only so that the programs and links stay attached until
    // the observer drops, after the maps above.
    _ebpf: Ebpf,
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
        let l = &cfg.btf.layout;
        let interval = cfg.report_interval.as_nanos() as u64;
        let words_used = cfg.width.div_ceil(64).clamp(1, MASK_WORDS as u32);
        let (ns_dev, ns_ino) = cfg.init_pidns;
        // The loader parses the whole kernel BTF for CO-RE relocations,
        // which Rust eBPF does not emit, and aya has no constructor without
        // that parse. Dropped at once, before anything else is built: it is
        // the daemon's peak memory, so nothing else may be alive beside it.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        super::give_back_freed_memory();
        if let Some(bytes) = cfg.hotplug_ring_bytes {
            loader.map_max_entries(maps::HOTPLUG_EVENTS, bytes);
        }
        let mut ebpf = loader
            .override_global(globals::TASK_FLAGS_OFF, &l.task_flags, true)
            .override_global(globals::TASK_PID_OFF, &l.task_pid, true)
            .override_global(globals::TASK_TGID_OFF, &l.task_tgid, true)
            .override_global(globals::TASK_COMM_OFF, &l.task_comm, true)
            .override_global(globals::CPUHP_AP_ACTIVE, &l.cpuhp_ap_active, true)
            .override_global(globals::CPUHP_TEARDOWN_CPU, &l.cpuhp_teardown_cpu, true)
            .override_global(globals::DAEMON_TGID, &cfg.daemon_tgid, true)
            .override_global(globals::REPORT_INTERVAL_NS, &interval, true)
            .override_global(globals::MASK_WORDS_USED, &words_used, true)
            .override_global(globals::INIT_PIDNS_DEV, &ns_dev, true)
            .override_global(globals::INIT_PIDNS_INO, &ns_ino, true)
            .load(object)
            .map_err(ObserverError::Load)?;

        // The view of the online CPUs, before any hotplug program runs.
        let mut view = Array::try_from(take(&mut ebpf, maps::CPUHP_VIEW)?)
            .map_err(map_err(maps::CPUHP_VIEW))?;
        let online = to_mask(&cfg.online);
        view.set(
            0,
            HotplugView {
                seq: 0,
                online,
                low: online,
                high: online,
            },
            0,
        )
        .map_err(map_err(maps::CPUHP_VIEW))?;

        let logger: Box<dyn log::Log> = Box::new(LogAdapter(sink));
        let logs =
            EbpfLogger::init_with_logger(&mut ebpf, logger).map_err(|e| ObserverError::Map {
                map: "AYA_LOGS",
                detail: e.to_string(),
            })?;
        let logs = register(logs)?;

        let attach_btf = cfg.btf.attach.to_aya()?;
        let btf = &attach_btf;
        for &(program, tracepoint) in programs::BTF_TRACEPOINTS {
            if !cfg.noise && programs::NOISE.contains(&program) {
                continue;
            }
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or(ObserverError::Map {
                    map: "programs",
                    detail: format!("{program} missing from object"),
                })?
                .try_into()
                .map_err(|source| ObserverError::Program { program, source })?;
            prog.load(tracepoint, btf)
                .map_err(|source| ObserverError::Program { program, source })?;
            prog.attach()
                .map_err(|source| ObserverError::Program { program, source })?;
        }
        // Who moved a kthread: fexit where BPF trampolines work; the
        // syscall tracepoints (which tax every syscall) only when asked.
        // Either way the daemon still restores masks.
        let mut unavailable = Vec::new();
        let asked = cfg.attribution;
        match asked {
            Attribution::Auto | Attribution::Fexit => {
                if let Err(e) = attach_fexits(&mut ebpf, btf) {
                    if asked == Attribution::Fexit {
                        return Err(ObserverError::Attribution {
                            asked,
                            why: format!("the kernel refused fexit: {e:#}"),
                        });
                    }
                    unavailable.push((
                        programs::SETAFFINITY_FEXIT,
                        format!(
                            "fexit: {e:#}; the syscall tracepoints, which slow every syscall of every task, only with --attribute syscalls"
                        ),
                    ));
                }
            }
            Attribution::Syscalls => {
                ensure_tracefs();
                attach_syscall_tracepoints(&mut ebpf).map_err(|e| {
                    ObserverError::Attribution {
                        asked,
                        why: format!(
                            "the syscall tracepoints did not attach (CONFIG_FTRACE_SYSCALLS, tracefs): {e:#}"
                        ),
                    }
                })?;
            }
            Attribution::Off => {}
        }
        // Given back before the rings are mapped (8 MB resident at once).
        drop(attach_btf);
        super::give_back_freed_memory();

        let events =
            RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?).map_err(map_err(maps::EVENTS))?;
        let hotplug = RingBuf::try_from(take(&mut ebpf, maps::HOTPLUG_EVENTS)?)
            .map_err(map_err(maps::HOTPLUG_EVENTS))?;
        let ack = Array::try_from(take(&mut ebpf, maps::HOTPLUG_ACK)?)
            .map_err(map_err(maps::HOTPLUG_ACK))?;
        let allowed =
            HashMap::try_from(take(&mut ebpf, maps::ALLOWED)?).map_err(map_err(maps::ALLOWED))?;
        let isolated =
            Array::try_from(take(&mut ebpf, maps::ISOLATED)?).map_err(map_err(maps::ISOLATED))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?)
            .map_err(map_err(maps::COUNTERS))?;
        let noise =
            PerCpuHashMap::try_from(take(&mut ebpf, maps::NOISE)?).map_err(map_err(maps::NOISE))?;
        Ok(Observer {
            hotplug: register(hotplug)?,
            events: register(events)?,
            logs,
            allowed,
            view,
            ack,
            isolated,
            counters,
            noise,
            unavailable,
            _ebpf: ebpf,
        })
    }

    /// Waits until there are records, then decodes every hotplug record
    /// and at most [`BATCH_MAX`] others, hotplug records first. Records that
    /// fail to decode are returned as errors, not dropped.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Result<WireEvent, wire::WireError>>,
    ) -> Result<(), ObserverError> {
        // Records may be waiting from a batch that stopped at its bound,
        // with no new wake-up to come.
        if !self.drain(out) {
            tokio::select! {
                biased;
                guard = self.hotplug.readable_mut() => guard?.clear_ready(),
                guard = self.events.readable_mut() => guard?.clear_ready(),
                guard = self.logs.readable_mut() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
            self.drain(out);
        }
        Ok(())
    }

    /// Takes what is in the rings now (hotplug first, all of it; then up to
    /// the bound). Returns whether anything was taken.
    fn drain(&mut self, out: &mut Vec<Result<WireEvent, wire::WireError>>) -> bool {
        let before = out.len();
        let ring = self.hotplug.get_mut();
        while let Some(item) = ring.next() {
            out.push(wire::decode(&item));
        }
        let ring = self.events.get_mut();
        for _ in 0..BATCH_MAX {
            let Some(item) = ring.next() else { break };
            out.push(wire::decode(&item));
        }
        out.len() > before
    }

    /// Sets what the programs judge `pid` against: the mask applied and the
    /// preferred CPUs (empty: none).
    pub fn set_policy(
        &mut self,
        pid: u32,
        applied: &[u64],
        preferred: &[u64],
    ) -> Result<(), ObserverError> {
        let policy = Policy {
            applied: to_mask(applied),
            preferred: to_mask(preferred),
        };
        self.allowed
            .insert(pid, policy, 0)
            .map_err(map_err(maps::ALLOWED))
    }

    /// The programs' view of the hotplug state: (seq, online CPUs).
    pub fn hotplug_view(&self) -> Result<(u64, Vec<u64>), ObserverError> {
        let v = self.view.get(&0, 0).map_err(map_err(maps::CPUHP_VIEW))?;
        Ok((v.seq, v.online.words.to_vec()))
    }

    /// Corrects the programs' view of the online CPUs (when sysfs, read
    /// with no hotplug operation under way, says otherwise). Closes the
    /// window of unacknowledged steps too: the caller has just acted on
    /// the corrected set.
    pub fn correct_online(&mut self, online: &[u64]) -> Result<u64, ObserverError> {
        let mut v = self.view.get(&0, 0).map_err(map_err(maps::CPUHP_VIEW))?;
        v.online = to_mask(online);
        v.low = v.online;
        v.high = v.online;
        self.view.set(0, v, 0).map_err(map_err(maps::CPUHP_VIEW))?;
        self.acknowledge(v.seq)?;
        Ok(v.seq)
    }

    /// Tells the programs that the masks for every hotplug step up to `seq`
    /// are in place: runs are judged against the online set now only.
    pub fn acknowledge(&mut self, seq: u64) -> Result<(), ObserverError> {
        self.ack.set(0, seq, 0).map_err(map_err(maps::HOTPLUG_ACK))
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

    /// Every (cpu, source) total the noise programs have summed so far,
    /// checked (see [`wire::noise_sample`]); entries with nothing counted
    /// on a CPU are left out.
    pub fn noise(&self) -> Result<Vec<wire::NoiseSample>, ObserverError> {
        let mut out = Vec::new();
        for entry in self.noise.iter() {
            let (key, per_cpu) = match entry {
                Ok(e) => e,
                // An LRU entry evicted between the key walk and the lookup.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(maps::NOISE)(e)),
            };
            for (cpu, stat) in per_cpu.iter().enumerate() {
                if stat.count != 0 {
                    out.push(wire::noise_sample(cpu as u32, key, *stat)?);
                }
            }
        }
        Ok(out)
    }

    pub fn counters(&self) -> Result<Counters, ObserverError> {
        let sum = |c: Counter| -> Result<u64, ObserverError> {
            let v = self
                .counters
                .get(&(c as u32), 0)
                .map_err(map_err(maps::COUNTERS))?;
            Ok(v.iter().sum())
        };
        const _: () = assert!(COUNTERS_LEN == 4);
        Ok(Counters {
            dropped: sum(Counter::Dropped)?,
            suppressed: sum(Counter::Suppressed)?,
            violations: sum(Counter::Violations)?,
            hotplug_dropped: sum(Counter::HotplugDropped)?,
        })
    }
}

/// Classic tracepoints attach through tracefs, which a minimal system may
/// not have mounted. Mount it where the kernel expects it; if that fails the
/// attach below fails and says so.
fn attach_fexits(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), aya::programs::ProgramError> {
    let attached = (|| {
        for &(program, function) in programs::FEXITS {
            let prog: &mut FExit = ebpf.program_mut(program).expect("in object").try_into()?;
            prog.load(function, btf)?;
            prog.attach()?;
        }
        Ok(())
    })();
    if attached.is_err() {
        // Loaded but not attached is not left behind: a program the kernel
        // holds for nothing.
        for &(program, _) in programs::FEXITS {
            if let Some(p) = ebpf.program_mut(program)
                && let Ok(p) = <&mut FExit>::try_from(p)
            {
                let _ = p.unload();
            }
        }
    }
    attached
}

fn attach_syscall_tracepoints(ebpf: &mut Ebpf) -> Result<(), aya::programs::ProgramError> {
    for &(program, category, name) in programs::SYSCALL_TRACEPOINTS {
        let prog: &mut TracePoint = ebpf.program_mut(program).expect("in object").try_into()?;
        prog.load()?;
        prog.attach(category, name)?;
    }
    Ok(())
}

fn ensure_tracefs() {
    let dir = Path::new("/sys/kernel/tracing");
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
