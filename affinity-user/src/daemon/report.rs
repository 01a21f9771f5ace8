//! Live reports: one line per event, human or JSON, and the periodic summary.

use std::{
    io::{IsTerminal, Write},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::policy::IrqOwner;

mod steer;
pub use steer::{SteerKind, SteerReport};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// One reported event. Serialised as `{"type": "...", ...}`: this is the
/// `--format json` wire format documented in the README.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    Started {
        pid: u32,
        observe: bool,
        /// `managed` on the wire, the word the human line uses too.
        #[serde(rename = "managed")]
        registered: usize,
        pinned: usize,
        online: String,
        housekeeping: String,
    },
    Hotplug {
        cpu: u32,
        online: bool,
    },
    /// The daemon finished reacting to a hotplug step: masks set, and how long
    /// after the kernel's tracepoint the last one landed.
    HotplugHandled {
        cpu: u32,
        online: bool,
        applied: u64,
        latency_us: f64,
        /// CLOCK_MONOTONIC ns when the step's masks were in place: set
        /// against when the hotplug operation returned (the bench does).
        done_ns: u64,
    },
    Applied {
        pid: u32,
        comm: String,
        mask: String,
    },
    /// `--observe`: what would have been applied.
    WouldApply {
        pid: u32,
        comm: String,
        mask: String,
    },
    /// The kernel judged a run outside every allowed set; `run_us`: how long.
    Violation {
        pid: u32,
        comm: String,
        cpu: u32,
        allowed: String,
        run_us: f64,
    },
    /// A hotplug step failed and the kernel rolled the CPU back: `online`
    /// is where it is now.
    HotplugAborted {
        cpu: u32,
        online: bool,
        step: i32,
        ret: i32,
    },
    /// The daemon's view differed from the kernel's and was corrected.
    Resync {
        what: String,
    },
    /// The kernel would not take a mask; tried again later, said once.
    Refused {
        pid: u32,
        comm: String,
        mask: String,
        message: String,
    },
    AffinityChanged {
        pid: u32,
        comm: String,
        mask: String,
        by_pid: Option<u32>,
        by_comm: Option<String>,
    },
    Pinned {
        pid: u32,
        comm: String,
    },
    /// The kernel itself manages this kthread's affinity (6.14+); we report instead of fighting.
    KernelManaged {
        pid: u32,
        comm: String,
    },
    /// An IRQ thread: its mask is its IRQ's (`/proc/irq/N`), never set directly.
    FollowsIrq {
        pid: u32,
        comm: String,
        irq: u32,
    },
    /// An unbound workqueue worker (`kworker/u*`): the kernel pins it to the
    /// workqueue cpumask (which `--irqs` steers), never set directly.
    FollowsWorkqueue {
        pid: u32,
        comm: String,
    },
    /// Another IRQ balancer runs (`with`, pid `pid`): `winner` sets IRQ
    /// affinity; `banned_cpus` (the non-housekeeping CPUs) is what to tell
    /// it to avoid. Said when it appears, restarts or the list changes.
    IrqConflict {
        with: Balancer,
        pid: u32,
        winner: IrqOwner,
        banned_cpus: String,
    },
    /// That balancer is gone: the daemon steers IRQs again.
    IrqConflictEnded {
        with: Balancer,
        pid: u32,
    },
    Exited {
        pid: u32,
        comm: String,
    },
    Drops {
        count: u64,
    },
    Error {
        message: String,
    },
    Summary {
        violations: u64,
        suppressed: u64,
        applied: u64,
        hotplug: u64,
        drops: u64,
        records: u64,
        violations_seen: u64,
        /// `managed` on the wire, the word the human line uses too.
        #[serde(rename = "managed")]
        registered: usize,
        pinned: usize,
        resyncs: u64,
        refused: u64,
        /// Report lines not written because stdout was not keeping up.
        lines_dropped: u64,
    },
    Stopped {
        restored: usize,
    },
    /// SIGHUP or `affinity reload`: the rules file was read again and its
    /// rules are in force; `changed` kthreads got another rule or preference.
    Reloaded {
        path: String,
        changed: usize,
    },
    /// The rules file could not be used: the running policy is unchanged.
    ReloadRefused {
        path: String,
        message: String,
    },
    /// `affinity apply` is done: of `managed` kthreads, `set` were given a
    /// mask, `in_place` are where the policy puts them now.
    ApplyDone {
        managed: usize,
        set: u64,
        in_place: usize,
        refused: u64,
        errors: u64,
    },
    /// IRQs, the default IRQ affinity, the workqueue cpumask: the record
    /// carries its own `type` (`irq_set`, `workqueue_set`…).
    /// One watched CPU's interval: what took time there, by source.
    Noise(super::noise::CpuNoise),
    #[serde(untagged)]
    Steer(SteerReport),
}

/// The IRQ balancers the daemon knows to live beside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    Irqbalance,
}

pub struct Reporter<W: Write> {
    out: W,
    format: Format,
    color: bool,
    /// Human format: `pinned`, `follows_irq` and `follows_workqueue`
    /// reports before the first other report, folded into a line each so
    /// start-up is not dozens of lines of per-CPU kthreads.
    folding: Option<Folded>,
}

#[derive(Default)]
struct Folded {
    pinned: Vec<String>,
    irq: Vec<String>,
    workqueue: Vec<String>,
}

/// `--color`: whether human output is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set or TERM is `dumb`.
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// The decision, from what `auto` looks at; pure so it can be tested.
    pub fn decide(self, is_terminal: bool, no_color: Option<&str>, term: Option<&str>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                is_terminal && no_color.is_none_or(str::is_empty) && term != Some("dumb")
            }
        }
    }

    /// The decision for this process's stdout and environment.
    pub fn for_stdout(self) -> bool {
        let no_color = std::env::var("NO_COLOR").ok();
        let term = std::env::var("TERM").ok();
        self.decide(
            std::io::stdout().is_terminal(),
            no_color.as_deref(),
            term.as_deref(),
        )
    }
}

impl<W: Write> Reporter<W> {
    /// Reports to `out`, coloured as `--color` decides for stdout.
    pub fn with_output(out: W, format: Format, color: ColorChoice) -> Self {
        Self::new(out, format, color.for_stdout())
    }

    pub fn new(out: W, format: Format, color: bool) -> Self {
        Reporter {
            out,
            format,
            color,
            folding: Some(Folded::default()),
        }
    }

    pub fn report(&mut self, r: &Report) {
        if self.format == Format::Human
            && let Some(pending) = &mut self.folding
        {
            match r {
                Report::Pinned { pid, comm } => {
                    pending.pinned.push(format!("{comm}[{pid}]"));
                    return;
                }
                Report::FollowsIrq { pid, comm, irq } => {
                    pending.irq.push(format!("{comm}[{pid}]:{irq}"));
                    return;
                }
                Report::FollowsWorkqueue { pid, comm } => {
                    pending.workqueue.push(format!("{comm}[{pid}]"));
                    return;
                }
                _ => {}
            }
            let pending = self.folding.take().unwrap_or_default();
            for (list, word, what) in [
                (
                    &pending.pinned,
                    "pinned",
                    "kthreads pinned by the kernel, left alone",
                ),
                (
                    &pending.irq,
                    "pinned",
                    "IRQ threads following their IRQ's affinity (/proc/irq), left alone",
                ),
                (
                    &pending.workqueue,
                    "follows_workqueue",
                    "unbound workqueue workers follow the workqueue cpumask",
                ),
            ] {
                if !list.is_empty() {
                    let line = format!(
                        "{} {word} {} {what}: {}",
                        clock(),
                        list.len(),
                        list.join(" ")
                    );
                    let _ = writeln!(self.out, "{line}");
                }
            }
        }
        let line = match self.format {
            Format::Json => json_record(r),
            Format::Human => human(r, self.color),
        };
        // A closed stdout (a pipe whose reader went away) must not stop enforcement.
        let _ = writeln!(self.out, "{line}").and_then(|_| self.out.flush());
    }

    pub fn out_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Version of the JSON record format; `started` carries it so consumers can
/// tell which fields to expect.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch, the `ts` of every JSON record.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Adds `ts` (and with `schema`, the schema version) to a JSON object: the
/// stamp on every daemon record and every subcommand's JSON document.
pub fn stamp(v: &mut serde_json::Value, schema: bool) {
    if let Some(obj) = v.as_object_mut() {
        obj.insert("ts".into(), unix_ms().into());
        if schema {
            obj.insert("schema".into(), JSON_SCHEMA_VERSION.into());
        }
    }
}

/// One JSON line: the record plus `ts`, and on `started` the schema version.
pub fn json_record(r: &Report) -> String {
    let mut v = serde_json::to_value(r).expect("reports serialise");
    stamp(&mut v, matches!(r, Report::Started { .. }));
    v.to_string()
}

fn clock() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn human(r: &Report, color: bool) -> String {
    let task = |pid: &u32, comm: &str| format!("{pid:>7} {comm:<16}");
    let steer_kind: String;
    let (kind, code, text) = match r {
        Report::Started {
            pid,
            observe,
            registered,
            pinned,
            online,
            housekeeping,
        } => (
            "started",
            "1",
            format!(
                "pid {pid}{}: {registered} kthreads managed, {pinned} pinned by the kernel; online {online}, housekeeping {housekeeping}",
                if *observe { " (observe only)" } else { "" }
            ),
        ),
        Report::Hotplug { cpu, online } => (
            "hotplug",
            "36",
            format!(
                "cpu{cpu} {}",
                if *online { "online" } else { "going offline" }
            ),
        ),
        Report::HotplugHandled {
            cpu,
            online,
            applied,
            latency_us,
            ..
        } => (
            "handled",
            "36",
            format!(
                "cpu{cpu} {}: {applied} masks applied {latency_us} µs after the kernel event",
                if *online { "online" } else { "offline" }
            ),
        ),
        Report::Applied { pid, comm, mask } => {
            ("applied", "32", format!("{} -> {mask}", task(pid, comm)))
        }
        Report::WouldApply { pid, comm, mask } => (
            "would_apply",
            "33",
            format!("{} -> {mask} (observe)", task(pid, comm)),
        ),
        Report::Violation {
            pid,
            comm,
            cpu,
            allowed,
            run_us,
        } => (
            "VIOLATION",
            "1;31",
            if *run_us > 0.0 {
                format!(
                    "{} ran {run_us} µs on cpu{cpu}, allowed {allowed}",
                    task(pid, comm)
                )
            } else {
                format!(
                    "{} migrated to cpu{cpu}, allowed {allowed}",
                    task(pid, comm)
                )
            },
        ),
        Report::HotplugAborted {
            cpu,
            online,
            step,
            ret,
        } => (
            "ABORTED",
            "1;33",
            format!(
                "cpu{cpu} {} failed at step {step} ({ret}); the kernel rolled it back {}",
                if *online { "teardown" } else { "bring-up" },
                if *online { "online" } else { "offline" }
            ),
        ),
        Report::Resync { what } => ("resync", "1;33", format!("corrected: {what}")),
        Report::Refused {
            pid,
            comm,
            mask,
            message,
        } => (
            "refused",
            "1;31",
            format!("{} -> {mask} refused: {message}", task(pid, comm)),
        ),
        Report::AffinityChanged {
            pid,
            comm,
            mask,
            by_pid,
            by_comm,
        } => {
            let who = match (by_pid, by_comm) {
                (Some(p), Some(c)) => format!("by {c} (pid {p})"),
                _ => "by the kernel or an unknown caller".to_string(),
            };
            (
                "changed",
                "35",
                format!("{} mask set to {mask} {who}", task(pid, comm)),
            )
        }
        Report::Pinned { pid, comm } => (
            "pinned",
            "2",
            format!(
                "{} pinned by the kernel (PF_NO_SETAFFINITY)",
                task(pid, comm)
            ),
        ),
        Report::KernelManaged { pid, comm } => (
            "kernel",
            "2",
            format!("{} affinity managed by the kernel itself", task(pid, comm)),
        ),
        Report::FollowsIrq { pid, comm, irq } => (
            "follows_irq",
            "2",
            format!(
                "{} follows IRQ {irq}'s affinity (/proc/irq/{irq}), its own mask is left alone",
                task(pid, comm)
            ),
        ),
        Report::FollowsWorkqueue { pid, comm } => (
            "follows_workqueue",
            "2",
            format!(
                "{} follows the workqueue cpumask (/sys/devices/virtual/workqueue/cpumask), its own mask is left alone",
                task(pid, comm)
            ),
        ),
        Report::IrqConflict {
            with: Balancer::Irqbalance,
            pid,
            winner,
            banned_cpus,
        } => {
            let ban = if banned_cpus.is_empty() {
                "no CPU is outside housekeeping, so there is nothing to ban".to_string()
            } else {
                format!(
                    "to keep IRQs off CPUs {banned_cpus}, set IRQBALANCE_BANNED_CPULIST={banned_cpus} in /etc/default/irqbalance (irqbalance before 1.8: IRQBALANCE_BANNED_CPUS=<hex mask>) and restart it"
                )
            };
            let who = match winner {
                IrqOwner::Irqbalance => {
                    "IRQ affinity is left to it (--irqs-over-irqbalance: steer anyway)"
                }
                IrqOwner::Affinity => {
                    "--irqs-over-irqbalance: affinity steers IRQs anyway and puts back what irqbalance moves"
                }
            };
            (
                "irq_conflict",
                "1;33",
                format!("irqbalance (pid {pid}) is running: {who}; {ban}"),
            )
        }
        Report::IrqConflictEnded {
            with: Balancer::Irqbalance,
            pid,
        } => (
            "irq_conflict_ended",
            "33",
            format!("irqbalance (pid {pid}) is gone: affinity steers IRQs again"),
        ),
        Report::Exited { pid, comm } => ("exited", "2", task(pid, comm)),
        Report::Drops { count } => (
            "DROPS",
            "1;33",
            format!("{count} events lost (ring buffer full)"),
        ),
        Report::Error { message } => ("error", "1;31", message.clone()),
        Report::Summary {
            violations,
            suppressed,
            applied,
            hotplug,
            drops,
            records,
            violations_seen,
            registered,
            pinned,
            resyncs,
            refused,
            lines_dropped,
        } => (
            "summary",
            "1",
            format!(
                // Seen = reported + rate-limited + in flight (a run is
                // reported when it ends) or lost; the counters are read
                // just before the summary, so this never goes negative.
                "{violations_seen} violations seen by the kernel: {violations} reported, {suppressed} rate-limited, {} not (yet) reported; {applied} masks applied, {refused} refused, {hotplug} hotplug events, {resyncs} resyncs, {records} records, {drops} drops, {lines_dropped} report lines dropped; {registered} managed, {pinned} pinned",
                violations_seen.saturating_sub(violations + suppressed)
            ),
        ),
        Report::Reloaded { path, changed } => (
            "reloaded",
            "1;32",
            format!("{path}: {changed} kthreads changed rule or preference"),
        ),
        Report::ReloadRefused { path, message } => (
            "reload",
            "1;31",
            format!("{path} not applied, the running policy is unchanged: {message}"),
        ),
        Report::Stopped { restored } => (
            "stopped",
            "1",
            format!("restored {restored} original masks"),
        ),
        Report::ApplyDone {
            managed,
            set,
            in_place,
            refused,
            errors,
        } => (
            "done",
            if in_place == managed && *refused == 0 && *errors == 0 {
                "32"
            } else {
                "31"
            },
            format!(
                "{in_place} of {managed} managed kthreads where the policy puts them ({set} masks set, {refused} refused, {errors} errors); nothing follows hotplug from here on"
            ),
        ),
        Report::Steer(s) => {
            steer_kind = s.kind();
            let (code, text) = s.human();
            (steer_kind.as_str(), code, text)
        }
        Report::Noise(n) => ("noise", "2", n.human()),
    };
    format!(
        "{} {} {text}",
        clock(),
        paint(color, code, &format!("{kind:<10}"))
    )
}

#[cfg(test)]
mod tests;
