//! `affinity run`: the daemon.
//!
//! Three pieces, read one at a time: [`prepare`] checks every input and
//! claims the control socket before anything changes; [`start`] loads the
//! programs and sets the first masks, with the signals already installed;
//! [`event_loop`] reacts until a signal or a fatal error, and [`shutdown`]
//! is the one way out (restore if asked, summary, detach), whatever ended
//! the loop.
//!
//! Single-threaded tokio: every kernel event, control request and timer is
//! handled in turn by one [`Core`], so the registry needs no locks and a
//! hotplug event is never handled concurrently with another change. What
//! could block the loop runs elsewhere: control clients and metrics
//! scrapers in their own tasks, the /proc rescan on the blocking pool,
//! report lines through a bounded queue to a writer thread, and (`--irqs`)
//! every read and write of /proc/irq and the workqueue files on the
//! steering worker's thread, handed the latest state to follow.

use std::{
    collections::VecDeque, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    net::TcpListener,
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{Instant, Interval, MissedTickBehavior, interval, sleep_until},
};

use crate::{
    daemon::{
        Core, Options, Stats, coalesce,
        control::{self, ControlCall, ControlServer, Request, Response},
        irq::{Steering, worker::SteerWorker},
        left, metrics,
        noise::NoiseNames,
        output::{LineQueue, QUEUE_LINES},
        report::{ColorChoice, Format, Report, Reporter},
    },
    input::BadInput,
    kernel::bpf::{
        self, Attribution, Counters, EMBEDDED_OBJECT, LogSink, Observer, ObserverConfig,
    },
    kernel::btf::KernelBtf,
    kernel::caps::{self, Cap},
    kernel::irq::IrqFs,
    kernel::procfs::ProcKernel,
    kernel::rescan,
    kernel::sysfs::{self, Machine, Scan},
    kernel::wire::WireEvent,
    policy::{Config, CpuSet, Engine, IrqbalancePolicy, Kthread, Preference, Target},
};

mod control_reload;
mod listen_addr;
mod shutdown;

use control_reload::{handle_request, reload};
use listen_addr::parse_listen_addr;
use shutdown::shutdown;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: super::PolicyArgs,
    /// Report only: change no CPU mask at all.
    #[arg(long)]
    pub observe: bool,
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Same as `--format json`.
    #[arg(long)]
    pub json: bool,
    /// Colour human output: auto (a terminal, unless NO_COLOR or TERM=dumb), always or never.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: ColorChoice,
    /// Serve Prometheus metrics on this address, HOST:PORT or IP:PORT (e.g. localhost:9105).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub metrics: Option<SocketAddr>,
    /// Label the violation counter by comm (the 20 most frequent, the rest as "other").
    #[arg(long)]
    pub metrics_by_comm: bool,
    /// On exit, put back the masks kthreads had before the daemon changed them.
    #[arg(long)]
    pub restore_on_exit: bool,
    /// Control socket for `affinity prefer` / `unprefer`, in a directory
    /// only root can write.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Show every record from the eBPF programs, and their own log (aya-log), on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    #[command(flatten)]
    pub roots: super::Roots,
    /// How to name who moved a kthread: `auto` uses fexit where the kernel
    /// allows it and otherwise names nobody; `syscalls` uses the syscall
    /// tracepoints, at a cost to every syscall of every task; `fexit` and
    /// `syscalls` refuse to start without their programs.
    #[arg(long, value_enum, default_value_t = Attribution::Auto, value_name = "HOW")]
    pub attribute: Attribution,
    /// Bytes of the hotplug ring buffer (for tests that force drops).
    #[arg(long, hide = true, value_name = "BYTES")]
    pub hotplug_ring_bytes: Option<u32>,
    /// Also steer IRQs, /proc/irq/default_smp_affinity and the unbound
    /// workqueue cpumask to housekeeping (or `[[irq]]` rules). Those reads
    /// and writes run on a thread of their own, never on the event loop: a
    /// write can wait for a hotplug step to finish (the workqueue cpumask
    /// takes the hotplug lock).
    #[arg(long)]
    pub irqs: bool,
    /// With --irqs: steer IRQ affinity even while an irqbalance runs (by
    /// default it is left to irqbalance, and the CPUs to ban in its
    /// configuration are reported once).
    #[arg(long, requires = "irqs")]
    pub irqs_over_irqbalance: bool,
    /// The event loop (hotplug records in, masks out) runs under SCHED_FIFO
    /// at this priority (1-99), as stalld and rtla run their own threads, so
    /// that a busy CPU cannot delay the reaction to a hotplug step; 0 runs it
    /// at normal priority. Default: 1 when enforcing (the lowest real-time
    /// priority: ahead of every normal task, behind every real-time one;
    /// BENCHMARKS.md has what it buys), 0 under --observe. Needs
    /// CAP_SYS_NICE; the default falls back to normal priority with a
    /// warning where the kernel refuses it (RT group scheduling).
    #[arg(long, value_name = "PRIO", value_parser = clap::value_parser!(u8).range(0..=99))]
    pub rt_priority: Option<u8>,
    /// Every this many seconds, a `noise` record per non-housekeeping CPU:
    /// what took time there (kthread runs, hard IRQs, softirqs), by source.
    /// 0 turns noise observation off: the hard IRQ and softirq programs are
    /// not attached.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub noise_interval: u64,
}

/// `--rt-priority` when enforcing and not given: see BENCHMARKS.md §3.
const DEFAULT_RT_PRIORITY: u8 = 1;

/// How long after its creation a new kthread is read from /proc: its
/// creator binds, renames and re-affines it right after the rename we saw.
const NEW_KTHREAD_DELAY: Duration = Duration::from_millis(20);
const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// How often the kernel's isolation settings are re-read: a cgroup v2
/// partition made or removed at run time raises no event the daemon can
/// wait on, and the three small files cost microseconds.
const ISOLATION_EVERY: Duration = Duration::from_secs(1);
/// How soon a mask the kernel narrowed during a hotplug step is tried again,
/// and for how long after the step at that pace (5.10's cpuset took over
/// 50 ms under TCG to add a CPU just online).
const RETRY_NARROWED: Duration = Duration::from_millis(50);
const RETRY_NARROWED_FOR: Duration = Duration::from_secs(2);
const SUMMARY_EVERY: Duration = Duration::from_secs(10);
const COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// How long a reload's reply waits for the steering worker to apply the
/// new `[[irq]]` and `[[workqueue]]` rules (the client waits
/// [`control::REPLY_TIMEOUT`]).
const RELOAD_STEER_WAIT: Duration = Duration::from_secs(5);

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

/// Everything checked before anything is changed.
struct Prepared {
    machine: Machine,
    config: Config,
    /// Housekeeping from the kernel's isolation files, or as given.
    housekeeping: Housekeeping,
    control: ControlServer,
    metrics: Option<TcpListener>,
}

/// How H is found: `--housekeeping`, else the config or the kernel's
/// isolation settings, minus `--isolate`.
pub(super) struct Housekeeping {
    explicit: Option<CpuSet>,
    isolate: Option<CpuSet>,
}

impl Housekeeping {
    /// `--isolate` and `--housekeeping` as given, checked against `width`.
    pub(super) fn parse(
        isolate: Option<&str>,
        housekeeping: Option<&str>,
        width: u32,
    ) -> Result<Housekeeping> {
        let parse = |flag: &str, list: &str| {
            CpuSet::parse(list, width).map_err(|e| BadInput::err(format!("--{flag} {list:?}: {e}")))
        };
        Ok(Housekeeping {
            isolate: isolate.map(|l| parse("isolate", l)).transpose()?,
            explicit: housekeeping.map(|l| parse("housekeeping", l)).transpose()?,
        })
    }

    /// H for `m`, refused when the flags leave no online housekeeping CPU.
    /// The rule shared with `plan`: flags that do so are a mistake; a config
    /// or kernel that does gets a warning.
    pub(super) fn checked(&self, m: &Machine, config: &Config) -> Result<CpuSet> {
        let hk = self.of(m, config);
        if hk.and(&m.topology.online).is_empty() {
            if self.explicit.is_some() || self.isolate.is_some() {
                return Err(BadInput::err(
                    "--housekeeping/--isolate: that leaves no online housekeeping CPU (kthreads would have nowhere preferred to run)",
                ));
            }
            eprintln!(
                "affinity: warning: no online housekeeping CPU; kthreads fall back to all online CPUs"
            );
        }
        Ok(hk)
    }

    fn of(&self, m: &Machine, config: &Config) -> CpuSet {
        let mut hk = match &self.explicit {
            Some(h) => h.clone(),
            None => m.housekeeping(&config.housekeeping),
        };
        if let Some(iso) = &self.isolate {
            hk = hk.and_not(iso);
        }
        hk
    }
}

async fn prepare(args: &RunArgs) -> Result<Prepared> {
    let machine = Machine::read(&args.roots.sys, &args.roots.proc)
        .context("reading the machine's CPU state")?;
    let width = machine.topology.width;
    let config = args.policy.rules(&machine.topology)?;
    let housekeeping = args.policy.housekeeping(width)?;
    // What it needs, not who it is: BPF and perf events for the programs
    // (--observe too), and CAP_SYS_NICE to set masks unless observing.
    let mut needed = caps::for_bpf(&machine.kernel, caps::memlock_unlimited());
    if !args.observe || args.rt_priority.is_some_and(|p| p > 0) {
        needed.push(Cap::SysNice);
    }
    caps::require_own(&args.roots.proc, "`affinity run`", &needed)?;
    // The single-instance check: before any mask or map is touched.
    let control = ControlServer::bind(&args.socket)?;
    let metrics = match args.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?,
        ),
        None => None,
    };
    Ok(Prepared {
        machine,
        config,
        housekeeping,
        control,
        metrics,
    })
}

type DaemonCore = Core<ProcKernel, LineQueue>;

/// The running daemon's state, owned by the loop.
struct Running {
    core: DaemonCore,
    /// IRQs, default_smp_affinity, the workqueue cpumask, on the
    /// steering worker's thread. `--irqs` only.
    steer: Option<SteerWorker>,
    observer: Observer,
    machine: Machine,
    config: Config,
    housekeeping: Housekeeping,
    signals: Signals,
    control: mpsc::Receiver<ControlCall>,
    metrics: Option<watch::Sender<Arc<String>>>,
    /// Where the masks left in place are recorded at shutdown.
    masks_file: PathBuf,
}

struct Signals {
    int: Signal,
    term: Signal,
    /// Reload the rules file (systemd's ExecReload).
    hup: Signal,
}

async fn run_async(args: RunArgs) -> Result<ExitCode> {
    let prepared = prepare(&args).await?;
    // Installed before the first mask is set: a Ctrl-C from here on ends
    // in the shutdown path, never in the default action.
    let signals = Signals {
        int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
    };
    let mut running = start(&args, prepared, signals)?;
    crate::kernel::give_back_freed_memory();
    let result = event_loop(&mut running, &args).await;
    shutdown(running, result)
}

fn start(args: &RunArgs, p: Prepared, signals: Signals) -> Result<Running> {
    let Prepared {
        machine,
        config,
        housekeeping,
        control,
        metrics: metrics_listener,
    } = p;
    let width = machine.topology.width;
    let hk = housekeeping.checked(&machine, &config)?;
    let kernel_btf = KernelBtf::read(&args.roots.sys.join("kernel/btf/vmlinux"))
        .context("this kernel has no usable BTF (CONFIG_DEBUG_INFO_BTF), which affinity needs")?;
    let init_pidns = bpf::init_pidns(&args.roots.proc).with_context(|| {
        format!(
            "reading {}: the daemon must run in the initial pid namespace",
            args.roots.proc.join("self/ns/pid").display()
        )
    })?;
    let obs_cfg = ObserverConfig {
        hotplug_ring_bytes: args.hotplug_ring_bytes,
        attribution: args.attribute,
        noise: args.noise_interval > 0,
        ..ObserverConfig::new(
            kernel_btf,
            width,
            machine.topology.online.words().to_vec(),
            init_pidns,
        )
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
    // This thread runs the event loop; threads started later (output,
    // scans) reset to normal priority.
    match (args.rt_priority, args.observe) {
        (Some(0), _) | (None, true) => {}
        (Some(prio), _) => crate::kernel::sched::fifo_for_this_thread(prio)
            .with_context(|| format!("--rt-priority {prio}: sched_setscheduler(SCHED_FIFO)"))?,
        (None, false) => {
            if let Err(e) = crate::kernel::sched::fifo_for_this_thread(DEFAULT_RT_PRIORITY) {
                eprintln!(
                    "affinity: warning: the event loop runs at normal priority (SCHED_FIFO {DEFAULT_RT_PRIORITY} refused: {e}); a busy CPU can delay the reaction to hotplug"
                );
            }
        }
    }
    // Loaded and attached: from here on the daemon updates maps (CAP_BPF)
    // and sets masks (CAP_SYS_NICE), nothing else. Before the output
    // thread starts, so that every thread has only these.
    let mut keep = vec![Cap::Bpf];
    if !args.observe {
        keep.push(Cap::SysNice);
    }
    caps::retain_only(&keep)
        .context("dropping the capabilities the loaded programs no longer need")?;

    let opts = Options {
        observe: args.observe,
        restore_on_exit: args.restore_on_exit,
    };
    let engine = Engine::new(machine.topology.clone(), hk.clone(), config.rules.clone())
        .with_kernel(&machine.kernel)
        .with_boot_isolation(&machine.isolated, &machine.nohz_full);
    let mut steer = args.irqs.then(|| {
        let mut steer = Steering::new(
            machine.topology.clone(),
            hk.clone(),
            config.irq.clone(),
            config.workqueue.clone(),
            IrqFs::new(&args.roots.proc, &args.roots.sys, width),
            &opts,
        );
        if args.irqs_over_irqbalance {
            steer
                .engine
                .set_irqbalance_policy(IrqbalancePolicy::Override);
        }
        steer
    });
    let kernel = ProcKernel::new(&args.roots.proc, &args.roots.sys, width);
    let out =
        LineQueue::spawn(std::io::stdout(), QUEUE_LINES).context("starting the output thread")?;
    let format = if args.json { Format::Json } else { args.format };
    let steer_out = out.share();
    let mut core = Core::new(
        engine,
        kernel,
        Reporter::with_output(out, format, args.color),
        opts,
    );
    core.start(&mut observer)
        .context("reading the kthreads in /proc")?;
    // A hotplug between reading the machine and attaching the programs.
    core.converge(&mut observer, false);
    if let Some(steer) = &mut steer {
        steer.start(&config.irq, &config.workqueue, &mut core);
    } else if !config.irq.is_empty() || !config.workqueue.is_empty() {
        eprintln!(
            "affinity: warning: the rules file has [[irq]] or [[workqueue]] rules, which apply only with --irqs"
        );
    }

    // From here on the worker does every /proc/irq and workqueue read and
    // write; started after the capabilities were dropped, at normal
    // priority (SCHED_RESET_ON_FORK).
    let steer = steer
        .map(|steer| {
            SteerWorker::spawn(steer, Reporter::with_output(steer_out, format, args.color))
                .context("starting the IRQ steering thread")
        })
        .transpose()?;
    let (control_tx, control_rx) = mpsc::channel(control::MAX_CLIENTS);
    control.spawn(control_tx);
    let metrics = metrics_listener.map(|listener| {
        let (tx, rx) = watch::channel(Arc::new(String::new()));
        metrics::spawn_server(listener, rx);
        tx
    });
    core.reporter.report(&Report::Started {
        pid: std::process::id(),
        observe: args.observe,
        registered: core.managed_count(),
        pinned: core.pinned_count(),
        online: core.engine.online().to_string(),
        housekeeping: hk.to_string(),
    });
    crate::notify::ready(args.observe, core.managed_count(), core.pinned_count());
    Ok(Running {
        core,
        steer,
        observer,
        machine,
        config,
        housekeeping,
        signals,
        control: control_rx,
        metrics,
        masks_file: left::path_for(&args.socket),
    })
}

/// Start-up parses the kernel's BTF (several MB, twice: the layout and the
/// tp_btf attach) and reads every kthread; glibc keeps the freed heap
/// mapped unless asked. What the daemon holds from here on is small.
fn timer(every: Duration) -> Interval {
    let mut t = interval(every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t.reset();
    t
}

async fn event_loop(r: &mut Running, args: &RunArgs) -> Result<()> {
    let width = r.machine.topology.width;
    let mut rescan = timer(RESCAN_EVERY);
    let mut isolation = timer(ISOLATION_EVERY);
    let mut summary = timer(SUMMARY_EVERY);
    let mut counters = timer(COUNTERS_EVERY);
    let noise_every = Duration::from_secs(args.noise_interval.max(1));
    let mut noise = timer(noise_every);
    let mut noise_since = Instant::now();
    let mut pending_new: VecDeque<(Instant, u32)> = VecDeque::new();
    let mut batch = Vec::new();
    let mut last_summary = r.core.stats.clone();
    let mut last_metrics: Option<Stats> = None;
    // The maps were created at load, so every count is this daemon's: a
    // baseline read here would hide what was dropped while the first masks
    // were set (seconds under emulation), and no resync would follow.
    let mut seen_counters = Counters::default();
    // The scan under way, and the epoch it started in.
    let mut scan: Option<(JoinHandle<std::io::Result<Scan>>, u64)> = None;
    let mut lost_since_scan = false;
    // Scans until the next full one (rescan.rs); 0: the next one is full.
    let mut quick_scans_left = 0;
    // Until when a refusal after a hotplug step is retried every RETRY_NARROWED.
    let mut quick_until: Option<Instant> = None;
    publish_metrics(r, &mut last_metrics, args.metrics_by_comm);

    loop {
        let next_new = pending_new.front().map(|(t, _)| *t);
        // Unbiased: under any load every branch gets its turn; hotplug
        // records are still taken first within a batch (next_batch).
        tokio::select! {
            _ = r.signals.int.recv() => return Ok(()),
            _ = r.signals.term.recv() => return Ok(()),
            _ = r.signals.hup.recv() => {
                // Reported either way; nobody to answer.
                let _ = reload(r, args);
            }
            res = r.observer.next_batch(&mut batch) => {
                res.context("reading the eBPF ring buffers")?;
                r.core.stats.records += batch.len() as u64;
                // The kernel re-affining a managed kthread may follow an
                // isolated partition made or removed: housekeeping is read
                // first, so that the new masks are judged by the new
                // housekeeping instead of the old being put back.
                if batch
                    .iter()
                    .any(|e| matches!(e, Ok(WireEvent::SetAffinity { by_kernel: true, .. })))
                {
                    housekeeping_check(r, args)?;
                }
                coalesce(&mut batch);
                // Masks are set as the records are handled: counted from here.
                let refused = r.core.stats.refused;
                let mut hotplug = false;
                for event in batch.drain(..) {
                    if args.verbose {
                        eprintln!("affinity: record {event:?}");
                    }
                    match event {
                        Ok(event) => {
                            hotplug |= matches!(event, WireEvent::Hotplug { .. });
                            if let Some(pid) = r.core.on_wire(event, &mut r.observer) {
                                pending_new.push_back((Instant::now() + NEW_KTHREAD_DELAY, pid));
                            }
                        }
                        Err(e) => r.core.reporter.report(&Report::Error { message: format!("undecodable eBPF record: {e}") }),
                    }
                }
                if hotplug {
                    r.core.converge(&mut r.observer, false);
                    if let Some(steer) = &r.steer {
                        steer.follow(r.core.engine.topology(), r.core.engine.housekeeping());
                    }
                    // A CPU just online may not be in the cpuset's
                    // effective CPUs yet (5.10 updates them from a
                    // workqueue), so the kernel narrows the mask: retried
                    // at a rescan in RETRY_NARROWED, not a whole period on.
                    if r.core.stats.refused > refused {
                        quick_until = Some(Instant::now() + RETRY_NARROWED_FOR);
                        rescan.reset_after(RETRY_NARROWED);
                    }
                }
            }
            Some(call) = r.control.recv() => {
                if call.request == Request::Reload {
                    match reload(r, args) {
                        Ok(done) => done.answer(call.reply),
                        Err(message) => {
                            let _ = call.reply.send(Response::refusal(message));
                        }
                    }
                } else {
                    let mut response = handle_request(&mut r.core, &call, width, &mut r.observer);
                    // The steering engine is beside the core, not in it:
                    // its rows as of the worker's last job.
                    if let (Some(view), Some(steer)) = (&mut response.view, &r.steer) {
                        view.steering = steer.rows().to_vec();
                    }
                    // The client may have given up: nothing to do then.
                    let _ = call.reply.send(response);
                }
            }
            gone = async { r.steer.as_mut().expect("guarded").changed().await }, if r.steer.is_some() => {
                gone?;
                // Its refusals and errors, for the summaries and metrics.
                if let Some(steer) = &mut r.steer {
                    steer.absorb(&mut r.core.stats);
                }
            }
            _ = sleep_until(next_new.unwrap_or_else(Instant::now)), if next_new.is_some() => {
                let now = Instant::now();
                while let Some(&(t, pid)) = pending_new.front() {
                    if t > now {
                        break;
                    }
                    pending_new.pop_front();
                    r.core.kthread_created(pid, &mut r.observer);
                }
            }
            done = async { (&mut scan.as_mut().expect("guarded").0).await }, if scan.is_some() => {
                let epoch = scan.take().map_or(0, |s| s.1);
                // A scan that straddled a change is dropped; the next tick
                // makes another.
                if epoch == r.core.epoch() {
                    let result = done.unwrap_or_else(|e| Err(std::io::Error::other(format!("the /proc scan failed: {e}"))));
                    r.core.reconcile(result, &mut r.observer);
                }
                r.core.converge(&mut r.observer, lost_since_scan);
                lost_since_scan = false;
                match quick_until {
                    Some(until) if Instant::now() < until && r.core.any_refused() => {
                        rescan.reset_after(RETRY_NARROWED);
                    }
                    _ => quick_until = None,
                }
            }
            _ = isolation.tick() => housekeeping_check(r, args)?,
            _ = rescan.tick() => {
                // IRQs follow every hotplug step (above), housekeeping change and new IRQ;
                // an irqbalance that appears or goes away is seen here.
                if let Some(steer) = &r.steer {
                    steer.rescan(r.core.engine.topology(), r.core.engine.housekeeping());
                }
                // Right after a hotplug step the active CPUs may not be
                // the online ones yet: full scans until it has settled.
                let full = quick_scans_left == 0 || quick_until.is_some();
                let believed = (!full).then(|| believed(&r.core.engine));
                if start_scan(&mut scan, args, width, r.core.epoch(), believed) {
                    quick_scans_left = match full {
                        true => rescan::FULL_EVERY - 1,
                        false => quick_scans_left - 1,
                    };
                }
            }
            _ = counters.tick() => {
                let now = r.observer.counters()?;
                let lost = (now.dropped + now.hotplug_dropped)
                    .saturating_sub(seen_counters.dropped + seen_counters.hotplug_dropped);
                if lost > 0 {
                    r.core.stats.drops = now.dropped + now.hotplug_dropped;
                    r.core.reporter.report(&Report::Drops { count: lost });
                    // Whatever those records said, the kernel says it again.
                    r.core.converge(&mut r.observer, true);
                    lost_since_scan = true;
                    // A quick scan under way cannot see a lost rename or
                    // reused pid: the next one is full.
                    if !start_scan(&mut scan, args, width, r.core.epoch(), None) {
                        quick_scans_left = 0;
                    }
                }
                set_violation_counters(&mut r.core.stats, &now);
                r.core.stats.lines_dropped = r.core.reporter.out_mut().dropped();
                seen_counters = now;
            }
            _ = noise.tick(), if args.noise_interval > 0 => {
                let now = Instant::now();
                noise_tick(r, args, now.duration_since(noise_since))?;
                noise_since = now;
            }
            _ = summary.tick() => {
                refresh_violation_counters(r)?;
                if r.core.stats != last_summary {
                    let s = r.core.summary();
                    r.core.reporter.report(&s);
                    last_summary = r.core.stats.clone();
                }
            }
        }
        publish_metrics(r, &mut last_metrics, args.metrics_by_comm);
    }
}

/// The noise programs' totals, read and turned into one record per watched
/// CPU for the interval that just ended.
fn noise_tick(r: &mut Running, args: &RunArgs, elapsed: Duration) -> Result<()> {
    let samples = r
        .observer
        .noise()
        .context("reading the noise totals from the eBPF map")?;
    let core = &mut r.core;
    let watched = core.engine.online().and_not(core.engine.housekeeping());
    let names = NoiseNamer {
        engine: &core.engine,
        roots: &args.roots,
    };
    let out = core.noise.interval(
        &samples,
        &watched,
        elapsed.as_millis() as u64,
        &names,
        &mut core.stats.noise_ns,
    );
    for n in out {
        core.reporter.report(&Report::Noise(n));
    }
    Ok(())
}

/// Names of what made noise: a kthread's comm from the registry, else
/// from /proc (a per-CPU kthread the engine does not keep); an IRQ's
/// actions from /sys/kernel/irq.
struct NoiseNamer<'a> {
    engine: &'a Engine,
    roots: &'a super::Roots,
}

impl NoiseNames for NoiseNamer<'_> {
    fn comm(&self, pid: u32) -> Option<String> {
        match self.engine.entry(pid) {
            Some(e) => Some(e.comm.clone()),
            None => sysfs::read_stat(&self.roots.proc, pid).map(|(comm, ..)| comm),
        }
    }
    fn irq_actions(&self, irq: u32) -> Option<String> {
        sysfs::irq_actions(&self.roots.sys, irq)
    }
}

fn set_violation_counters(stats: &mut Stats, now: &Counters) {
    stats.suppressed = now.suppressed;
    stats.violations_seen = now.violations;
}

/// The programs' violation counters read now, so that a summary's seen,
/// reported and rate-limited figures come from one moment: every report
/// already handled was counted before it was sent.
fn refresh_violation_counters(r: &mut Running) -> Result<()> {
    let now = r.observer.counters()?;
    set_violation_counters(&mut r.core.stats, &now);
    Ok(())
}

/// Reads /proc on the blocking pool, unless a scan is under way already
/// (then returns false): every kthread in full, or, given what the daemon
/// believes, only what differs from it ([`rescan::quick_scan`]).
fn start_scan(
    scan: &mut Option<(JoinHandle<std::io::Result<Scan>>, u64)>,
    args: &RunArgs,
    width: u32,
    epoch: u64,
    believed: Option<rescan::Believed>,
) -> bool {
    if scan.is_some() {
        return false;
    }
    let proc = args.roots.proc.clone();
    let task = tokio::task::spawn_blocking(move || match believed {
        Some(b) => rescan::quick_scan(&proc, width, &b),
        None => sysfs::scan_kthreads(&proc, width),
    });
    *scan = Some((task, epoch));
    true
}

/// Every kthread as the engine believes it is, for a quick scan.
fn believed(engine: &Engine) -> rescan::Believed {
    rescan::Believed {
        kthreads: engine
            .entries()
            .map(|e| {
                let k = Kthread {
                    pid: e.pid,
                    comm: e.comm.clone(),
                    flags: e.flags,
                    start_time: e.start_time,
                    cpus_allowed: e.current.clone(),
                };
                (e.pid, k)
            })
            .collect(),
        online: Some(engine.online().clone()),
    }
}

/// Re-reads the kernel's isolation settings (cpuset partitions change at
/// run time): a few small sysfs files.
fn housekeeping_check(r: &mut Running, args: &RunArgs) -> Result<()> {
    if r.housekeeping.explicit.is_some() {
        return Ok(());
    }
    let width = r.machine.topology.width;
    let Ok(iso) = sysfs::Isolation::read(&args.roots.sys, width) else {
        return Ok(());
    };
    let m = Machine {
        isolated: iso.isolated,
        nohz_full: iso.nohz_full,
        cpuset_isolated: iso.cpuset_isolated,
        kthreads: Vec::new(),
        steering: crate::policy::SteerScan::default(),
        ..r.machine.clone()
    };
    let hk = r.housekeeping.of(&m, &r.config);
    if &hk != r.core.engine.housekeeping() {
        r.observer
            .set_isolated(m.topology.possible.and_not(&hk).words())?;
        r.core.housekeeping_changed(hk, &mut r.observer);
    }
    Ok(())
}

/// Renders the metrics body when a counter moved; scrapers read the last one.
fn publish_metrics(r: &Running, last: &mut Option<Stats>, by_comm: bool) {
    let Some(tx) = &r.metrics else { return };
    if last.as_ref() == Some(&r.core.stats) {
        return;
    }
    let s = &r.core.stats;
    let body = metrics::render(&metrics::MetricsView {
        version: env!("CARGO_PKG_VERSION"),
        kernel: &r.machine.kernel,
        violations: s.violations(),
        violations_seen: s.violations_seen,
        violations_by_comm: &s.violations_by_comm,
        by_comm,
        applied: s.applied,
        hotplug: s.hotplug,
        drops: s.drops,
        suppressed: s.suppressed,
        errors: s.errors,
        resyncs: s.resyncs,
        refused: s.refused,
        registered: r.core.managed_count(),
        pinned: r.core.pinned_count(),
        reaction: &s.reaction,
        noise: &s.noise_ns,
    });
    let _ = tx.send(Arc::new(body));
    *last = Some(s.clone());
}
