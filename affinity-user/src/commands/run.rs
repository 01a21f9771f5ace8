//! `affinity run`: the daemon's event loop.
//!
//! Single-threaded tokio: every kernel event, control request and timer is
//! handled in turn by one [`Core`], so the registry needs no locks and a
//! hotplug event is never handled concurrently with another change.

use std::{
    collections::VecDeque, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    bpf::{EMBEDDED_OBJECT, LogSink, Observer, ObserverConfig},
    btf::KernelLayout,
    commands::BadInput,
    daemon::{
        Core, Options, coalesce,
        control::{self, ControlServer, Request, Response},
        kernel::ProcKernel,
        metrics,
        report::{Format, Report, Reporter},
    },
    policy::{CpuSet, Engine, Preference, Target},
    sysfs,
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Rules file (TOML); without it the embedded default (the kernel 7.0 policy) applies.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Report only: change no CPU mask at all.
    #[arg(long)]
    pub observe: bool,
    /// Treat these CPUs as isolated too (removed from housekeeping).
    #[arg(long, value_name = "CPULIST")]
    pub isolate: Option<String>,
    /// Use exactly these CPUs as housekeeping, overriding the kernel's view.
    #[arg(long, value_name = "CPULIST")]
    pub housekeeping: Option<String>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Serve Prometheus metrics on this address (loopback unless you say otherwise).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// On exit, put back the masks kthreads had before the daemon changed them.
    #[arg(long)]
    pub restore_on_exit: bool,
    /// Control socket for `affinity prefer` / `unprefer`.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Show every record from the eBPF programs, and their own log (aya-log), on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// Root of sysfs (for tests).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sys: PathBuf,
    /// Root of procfs (for tests).
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc: PathBuf,
}

/// How long after its creation a new kthread is read from /proc: its
/// creator binds, renames and re-affines it right after the rename we saw.
const NEW_KTHREAD_DELAY: Duration = Duration::from_millis(20);
const RESCAN_EVERY: Duration = Duration::from_secs(2);
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

struct StderrLog {
    verbose: bool,
}

impl LogSink for StderrLog {
    fn log(&self, level: log::Level, message: String) {
        if self.verbose || level <= log::Level::Warn {
            eprintln!("affinity: ebpf {level}: {message}");
        }
    }
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> Result<ExitCode> {
    let machine =
        sysfs::Machine::read(&args.sys, &args.proc).context("reading the machine's CPU state")?;
    let width = machine.topology.width;
    let config = match &args.config {
        Some(path) => sysfs::load_config(path, &machine.topology)?,
        None => crate::policy::Config::embedded_default(),
    };
    let parse = |flag: &str, list: &str| {
        CpuSet::parse(list, width).map_err(|e| BadInput::err(format!("--{flag} {list:?}: {e}")))
    };
    let isolate = args
        .isolate
        .as_deref()
        .map(|l| parse("isolate", l))
        .transpose()?;
    let explicit = args
        .housekeeping
        .as_deref()
        .map(|l| parse("housekeeping", l))
        .transpose()?;
    let housekeeping = |m: &sysfs::Machine| {
        let mut hk = match &explicit {
            Some(h) => h.clone(),
            None => m.housekeeping(&config.housekeeping),
        };
        if let Some(iso) = &isolate {
            hk = hk.and_not(iso);
        }
        hk
    };
    let hk = housekeeping(&machine);
    if hk.and(&machine.topology.online).is_empty() {
        eprintln!(
            "affinity: warning: no online housekeeping CPU; kthreads fall back to all online CPUs"
        );
    }

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`affinity run` needs root: it loads BPF programs and sets kthread affinity (even --observe loads BPF)"
        );
    }
    let layout = KernelLayout::from_btf_file(&args.sys.join("kernel/btf/vmlinux"))
        .context("this kernel has no usable BTF (CONFIG_DEBUG_INFO_BTF), which affinity needs")?;
    let obs_cfg = ObserverConfig {
        layout,
        daemon_tgid: std::process::id(),
        report_interval: Duration::from_millis(500),
    };
    let mut observer = Observer::load(
        EMBEDDED_OBJECT,
        &obs_cfg,
        StderrLog {
            verbose: args.verbose,
        },
    )
    .context("loading the eBPF programs")?;
    for (program, why) in &observer.unavailable {
        eprintln!(
            "affinity: warning: {program} not attached ({why}); callers of sched_setaffinity will not be named"
        );
    }
    observer.set_isolated(machine.topology.possible.and_not(&hk).words())?;

    let kernel_version = machine.kernel.clone();
    let opts = Options {
        observe: args.observe,
        restore_on_exit: args.restore_on_exit,
        kernel_manages: Box::new(move |k| {
            crate::policy::kernel_manages_affinity(&kernel_version, k)
        }),
    };
    let engine = Engine::new(machine.topology.clone(), hk.clone(), config.rules.clone());
    let kernel = ProcKernel::new(&args.proc, width);
    let mut core = Core::new(engine, kernel, Reporter::stdout(args.format), opts);
    core.start(&mut observer);

    let control = ControlServer::bind(&args.socket)?;
    let metrics_listener = match args.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?,
        ),
        None => None,
    };
    core.reporter.report(&Report::Started {
        pid: std::process::id(),
        observe: args.observe,
        registered: core.managed_count(),
        pinned: core.pinned_count(),
        online: core.engine.online().to_string(),
        housekeeping: hk.to_string(),
    });

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut rescan = interval(RESCAN_EVERY);
    let mut summary = interval(SUMMARY_EVERY);
    let mut counters = interval(COUNTERS_EVERY);
    for t in [&mut rescan, &mut summary, &mut counters] {
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t.reset();
    }
    let mut pending_new: VecDeque<(Instant, u32)> = VecDeque::new();
    let mut batch = Vec::new();
    let mut last_summary = core.stats.clone();
    let mut seen_counters = observer.counters()?;

    loop {
        let next_new = pending_new.front().map(|(t, _)| *t);
        tokio::select! {
            biased;
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            r = observer.next_batch(&mut batch) => {
                r?;
                core.stats.records += batch.len() as u64;
                coalesce(&mut batch);
                for event in batch.drain(..) {
                    if args.verbose {
                        eprintln!("affinity: record {event:?}");
                    }
                    match event {
                        Ok(event) => {
                            if let Some(pid) = core.on_wire(event, &mut observer) {
                                pending_new.push_back((Instant::now() + NEW_KTHREAD_DELAY, pid));
                            }
                        }
                        Err(e) => core.reporter.report(&Report::Error { message: format!("undecodable eBPF record: {e}") }),
                    }
                }
            }
            _ = sleep_until(next_new.unwrap_or_else(Instant::now)), if next_new.is_some() => {
                let now = Instant::now();
                while pending_new.front().is_some_and(|(t, _)| *t <= now) {
                    let (_, pid) = pending_new.pop_front().expect("checked");
                    core.kthread_created(pid, &mut observer);
                }
            }
            accepted = control.accept() => {
                if let Some((request, mut stream)) = accepted? {
                    let response = handle_request(&mut core, request, width, &mut observer);
                    let _ = control::reply(&mut stream, &response).await;
                }
            }
            Some(conn) = async { Some(metrics_listener.as_ref()?.accept().await) }, if metrics_listener.is_some() => {
                if let Ok((stream, _)) = conn {
                    let body = metrics::render(&core.stats, &metrics::Gauges { registered: core.managed_count(), pinned: core.pinned_count() });
                    tokio::spawn(metrics::serve_one(stream, body));
                }
            }
            _ = rescan.tick() => {
                if explicit.is_none()
                    // Only the isolation files: a whole Machine::read would
                    // scan /proc a second time on every tick.
                    && let Ok(iso) = sysfs::Isolation::read(&args.sys, width) {
                        let m = sysfs::Machine {
                            isolated: iso.isolated,
                            nohz_full: iso.nohz_full,
                            cpuset_isolated: iso.cpuset_isolated,
                            kthreads: Vec::new(),
                            ..machine.clone()
                        };
                        let hk = housekeeping(&m);
                        if &hk != core.engine.housekeeping() {
                            observer.set_isolated(m.topology.possible.and_not(&hk).words())?;
                            core.housekeeping_changed(hk, &mut observer);
                        }
                    }
                core.rescan(&mut observer);
            }
            _ = counters.tick() => {
                let now = observer.counters()?;
                if now.dropped > seen_counters.dropped {
                    core.stats.drops = now.dropped;
                    core.reporter.report(&Report::Drops { count: now.dropped - seen_counters.dropped });
                }
                core.stats.suppressed = now.suppressed;
                core.stats.violations_seen = now.violations;
                seen_counters = now;
            }
            _ = summary.tick() => {
                if core.stats != last_summary {
                    let s = core.summary();
                    core.reporter.report(&s);
                    last_summary = core.stats.clone();
                }
            }
        }
    }

    let restored = core.restore_originals();
    let s = core.summary();
    core.reporter.report(&s);
    core.reporter.report(&Report::Stopped { restored });
    // Programs detach when the observer drops.
    drop(observer);
    Ok(ExitCode::SUCCESS)
}

fn handle_request(
    core: &mut Core<ProcKernel, std::io::Stdout>,
    request: Request,
    width: u32,
    observer: &mut Observer,
) -> Response {
    let target = |t: &str| match t.parse::<u32>() {
        Ok(pid) => Target::Pid(pid),
        Err(_) => Target::Comm(t.to_string()),
    };
    let result = match request {
        Request::Prefer {
            target: t,
            prefer,
            update,
        } => match Preference::parse(&prefer, width) {
            Ok(p) => core
                .register(target(&t), p, update, observer)
                .map(|()| format!("{t} now prefers {prefer}"))
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{prefer:?}: {e}")),
        },
        Request::Unprefer { target: t } => core
            .unregister(&target(&t), observer)
            .map(|()| format!("{t} no longer has a runtime preference"))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(message) => Response { ok: true, message },
        Err(message) => Response { ok: false, message },
    }
}
