//! Section 7, the peers: what a user would run instead of affinity to keep
//! kthreads off cpu1, measured the same way in the same run.
//!
//! - tuned's scheduler plugin with `isolated_cores=1` and its runtime
//!   thread watcher (`runtime=1`), started in the foreground on a profile
//!   of our own;
//! - tuna once, as at boot: `tuna --no_uthreads --cpus=1 --isolate`;
//! - affinity `run --isolate 1`.
//!
//! For each: the ping-pong ratio against nothing running (interleaved),
//! its CPU time while idle, the movable kthreads it left allowed on cpu1,
//! and how long after a new kthread appears (the journal thread of an ext4
//! image mounted through a loop device) it is off cpu1, and how long after
//! someone else widens a kthread it moved back onto cpu1 it undoes that.
//! Every kthread's mask is put back after each tool.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    daemon::Daemon,
    figures::{Setup, median},
    load::ping_pong,
    procfs::{cpu_ticks, kthread_comms},
};
use crate::bootstrap;

const PROFILE: &str = "affinity-bench";
const TRIPS: u32 = 200_000;

/// A running peer, stopped on drop.
enum Running {
    Affinity(Daemon),
    Tuned(Child),
    /// tuna has run and exited.
    Once,
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Affinity(d) => Some(d.pid()),
            Running::Tuned(c) => Some(c.id()),
            Running::Once => None,
        }
    }

    fn stop(self) -> Result<()> {
        match self {
            Running::Affinity(d) => d.stop().map(drop),
            Running::Tuned(mut c) => {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                c.wait().context("waiting for tuned")?;
                Ok(())
            }
            Running::Once => Ok(()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Affinity,
    Tuned,
    Tuna,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Affinity => "affinity `run --isolate 1`",
            Peer::Tuned => "tuned (scheduler, `isolated_cores=1`, `runtime=1`)",
            Peer::Tuna => "tuna once (`--no_uthreads --cpus=1 --isolate`)",
        }
    }

    fn start(self, s: &Setup) -> Result<Running> {
        match self {
            Peer::Affinity => Ok(Running::Affinity(Daemon::start(
                &s.bin,
                None,
                &["--isolate", "1"],
            )?)),
            Peer::Tuned => {
                let child = Command::new("tuned")
                    .args(["--no-dbus", "--no-socket", "--profile", PROFILE, "--log"])
                    .arg(tuned_log())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting tuned")?;
                Ok(Running::Tuned(child))
            }
            Peer::Tuna => {
                let out = Command::new("tuna")
                    .args(["--no_uthreads", "--cpus=1", "--isolate"])
                    .output()
                    .context("running tuna")?;
                if !out.status.success() {
                    bail!("tuna failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                Ok(Running::Once)
            }
        }
    }
}

fn tuned_log() -> PathBuf {
    std::env::temp_dir().join("affinity-bench-tuned.log")
}

/// The movable kthreads' masks, every user thread's mask (tuned's
/// `isolated_cores` moves every process off the isolated CPUs, init
/// included, and does not move them back when it stops: every process
/// started after would inherit CPU 0 only) and every file of IRQ and
/// workqueue affinity (tuna `--isolate` and tuned move IRQs too), put
/// back with `put_back`.
struct Masks {
    kthreads: Vec<(u32, String)>,
    threads: Vec<(libc::pid_t, libc::cpu_set_t)>,
    files: Vec<(PathBuf, String)>,
}

/// Every thread of every user process, by tid: kthreads are the other list.
fn user_threads() -> Vec<libc::pid_t> {
    let kthreads: std::collections::HashSet<u32> =
        kthread_comms().into_iter().map(|(p, _, _)| p).collect();
    let mut tids = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if kthreads.contains(&pid) {
            continue;
        }
        for t in fs::read_dir(e.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                tids.push(tid);
            }
        }
    }
    tids
}

fn get_affinity(tid: libc::pid_t) -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set outlives the call and is the size given.
    let ret = unsafe { libc::sched_getaffinity(tid, size_of_val(&set), &mut set) };
    (ret == 0).then_some(set)
}

/// /proc/irq/N/smp_affinity_list, /proc/irq/default_smp_affinity and the
/// workqueue cpumasks: each written back in the form it was read.
fn affinity_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir("/proc/irq")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("smp_affinity_list"))
        .filter(|p| p.exists())
        .collect();
    files.push("/proc/irq/default_smp_affinity".into());
    files.push("/sys/devices/virtual/workqueue/cpumask".into());
    files.extend(
        fs::read_dir("/sys/devices/virtual/workqueue")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("cpumask"))
            .filter(|p| p.exists()),
    );
    files
}

impl Masks {
    fn save() -> Masks {
        Masks {
            kthreads: movable()
                .into_iter()
                .filter_map(|p| Some((p, cpus_allowed(p)?)))
                .collect(),
            threads: user_threads()
                .into_iter()
                .filter_map(|t| Some((t, get_affinity(t)?)))
                .collect(),
            files: affinity_files()
                .into_iter()
                .filter_map(|f| {
                    let was = fs::read_to_string(&f).ok()?;
                    Some((f, was.trim().to_string()))
                })
                .collect(),
        }
    }

    fn put_back(&self) {
        for (pid, mask) in &self.kthreads {
            let _ = Command::new("taskset")
                .args(["-pc", mask, &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for (tid, set) in &self.threads {
            // Gone threads fail with ESRCH: nothing to put back.
            // SAFETY: set is a valid cpu_set_t of the size given.
            unsafe { libc::sched_setaffinity(*tid, size_of_val(set), set) };
        }
        // Managed IRQs refuse the write; they were never moved either.
        for (file, was) in &self.files {
            if fs::read_to_string(file).is_ok_and(|now| now.trim() != was) {
                let _ = fs::write(file, was);
            }
        }
    }
}

impl Drop for Masks {
    fn drop(&mut self) {
        self.put_back();
    }
}

fn movable() -> Vec<u32> {
    kthread_comms()
        .into_iter()
        .filter(|(_, c, f)| f & 0x0400_0000 == 0 && !c.starts_with("irq/"))
        .map(|(p, _, _)| p)
        .collect()
}

fn cpus_allowed(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_string())
}

/// Whether a cpulist such as "0-1,3" holds cpu1.
fn has_cpu1(list: &str) -> bool {
    list.split(',').any(|r| {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        matches!((a.trim().parse::<u32>(), b.trim().parse::<u32>()), (Ok(a), Ok(b)) if a <= 1 && 1 <= b)
    })
}

fn on_cpu1() -> usize {
    movable()
        .into_iter()
        .filter(|p| cpus_allowed(*p).is_some_and(|m| has_cpu1(&m)))
        .count()
}

/// Someone widens a kthread the tool moved off cpu1 back onto it (as a
/// script resetting masks would): how long until it is off cpu1 again
/// (None: not within `within`). Err when the tool left no kthread off cpu1.
fn foreign_change_undone(within: Duration) -> Result<Option<Duration>> {
    let pid = movable()
        .into_iter()
        .find(|p| cpus_allowed(*p).is_some_and(|m| !has_cpu1(&m)))
        .context("no movable kthread is off cpu1 to move back onto it")?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only touch it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::CPU_SET(1, &mut set);
        libc::sched_setaffinity(pid as i32, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity({pid}, 0-1): {}",
            std::io::Error::last_os_error()
        );
    }
    let start = Instant::now();
    while start.elapsed() < within {
        if cpus_allowed(pid).is_some_and(|m| !has_cpu1(&m)) {
            return Ok(Some(start.elapsed()));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(None)
}

/// An ext4 image on a tmpfs of its own, mounted through a loop device:
/// the kernel starts its journal kthread, `jbd2/loopN-8`.
struct Ext4 {
    dir: PathBuf,
}

impl Ext4 {
    fn new() -> Result<Ext4> {
        let dir = std::env::temp_dir().join("affinity-bench-ext4");
        let _ = fs::create_dir_all(dir.join("scratch"));
        let _ = fs::create_dir_all(dir.join("mnt"));
        let run = |c: &mut Command| -> Result<()> {
            let out = c.output().with_context(|| format!("running {c:?}"))?;
            if !out.status.success() {
                bail!("{c:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=32m", "affinity-bench"])
            .arg(dir.join("scratch")))?;
        let img = dir.join("scratch/fs.img");
        run(Command::new("truncate").args(["-s", "16M"]).arg(&img))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))?;
        let _ = Command::new("modprobe")
            .arg("loop")
            .stderr(Stdio::null())
            .status();
        Ok(Ext4 { dir })
    }

    /// Mounts, finds the new jbd2 kthread, and measures how long until its
    /// mask leaves cpu1 (None: not within `within`); unmounts.
    fn new_kthread_off_cpu1(&self, within: Duration) -> Result<Option<Duration>> {
        let before: Vec<u32> = kthread_comms().into_iter().map(|(p, _, _)| p).collect();
        let status = Command::new("mount")
            .args(["-o", "loop"])
            .arg(self.dir.join("scratch/fs.img"))
            .arg(self.dir.join("mnt"))
            .status()
            .context("mounting the ext4 image")?;
        if !status.success() {
            bail!("mounting the ext4 image through a loop device failed");
        }
        let start = Instant::now();
        let mut found = None;
        let mut result = None;
        while start.elapsed() < within {
            if found.is_none() {
                found = kthread_comms()
                    .into_iter()
                    .find(|(p, c, _)| c.starts_with("jbd2/loop") && !before.contains(p))
                    .map(|(p, _, _)| p);
            }
            if let Some(pid) = found
                && cpus_allowed(pid).is_some_and(|m| !has_cpu1(&m))
            {
                result = Some(start.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let _ = Command::new("umount").arg(self.dir.join("mnt")).status();
        if found.is_none() {
            bail!("no jbd2 kthread appeared after mounting the ext4 image");
        }
        Ok(result)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.join("mnt")).status();
        let _ = Command::new("umount")
            .arg(self.dir.join("scratch"))
            .status();
    }
}

/// Why tuned's scheduler plugin cannot run here, if it cannot.
fn tuned_blocker() -> Option<String> {
    let import = Command::new("/usr/bin/python3")
        .args(["-c", "import perf"])
        .output();
    match import {
        Ok(o) if o.status.success() => None,
        _ => Some(
            "tuned's scheduler plugin (`tuned/plugins/plugin_scheduler.py`) imports the Python `perf` \
             module when it loads, for its runtime thread watcher and for `isolated_cores` alike, and \
             `/usr/bin/python3 -c 'import perf'` fails here (Debian ships the module in linux-perf)"
                .into(),
        ),
    }
}

fn write_tuned_profile() -> Result<PathBuf> {
    let dir = Path::new("/etc/tuned").join(PROFILE);
    fs::create_dir_all(&dir).context("creating the tuned profile")?;
    fs::write(
        dir.join("tuned.conf"),
        "[main]\nsummary=affinity bench peer: kthreads off cpu1\n\n[scheduler]\nisolated_cores=1\nruntime=1\n",
    )
    .context("writing the tuned profile")?;
    Ok(dir)
}

/// How a peer's first measurements went.
struct Row {
    peer: Peer,
    ratio: Option<(f64, f64, f64)>,
    idle_pct: Option<f64>,
    left_on_cpu1: usize,
    new_kthread: Result<Option<Duration>>,
    /// A mask someone else changed, until it is off cpu1 again.
    put_back: Result<Option<Duration>>,
    note: Option<String>,
}

pub fn peers(md: &mut String, s: &Setup, rounds: usize, idle_secs: u64) -> Result<()> {
    eprintln!("xtask: bench 7/7: peers (tuned, tuna) beside affinity");
    bootstrap::ensure_apt(&[
        (
            "tuned",
            "the peer users run for isolation: its scheduler plugin, measured beside affinity",
        ),
        (
            "tuna",
            "the peer users run once at boot to move threads, measured beside affinity",
        ),
        (
            "e2fsprogs",
            "mkfs.ext4: a loop-mounted ext4 image makes the kernel start a kthread",
        ),
    ])?;
    let blocked = tuned_blocker();
    // tuned records the profile it ran as the active one: put back as found.
    let state: Vec<(PathBuf, Option<String>)> = ["active_profile", "profile_mode"]
        .iter()
        .map(|f| {
            let p = Path::new("/etc/tuned").join(f);
            let was = fs::read_to_string(&p).ok();
            (p, was)
        })
        .collect();
    let profile = write_tuned_profile()?;
    let ext4 = Ext4::new()?;
    let masks = Masks::save();
    let baseline = on_cpu1();
    let mut rows = Vec::new();
    for peer in [Peer::Affinity, Peer::Tuned, Peer::Tuna] {
        masks.put_back();
        let mut row = Row {
            peer,
            ratio: None,
            idle_pct: None,
            left_on_cpu1: 0,
            new_kthread: Ok(None),
            put_back: Ok(None),
            note: None,
        };
        if peer == Peer::Tuned
            && let Some(why) = &blocked
        {
            // Started anyway, so the table shows what it does here.
            row.note = Some(why.clone());
        }
        // Ping-pong, interleaved with nothing running.
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let a = ping_pong(TRIPS);
            let r = peer.start(s)?;
            std::thread::sleep(Duration::from_millis(500));
            let b = ping_pong(TRIPS);
            r.stop()?;
            masks.put_back();
            ratios.push(b / a);
        }
        let (lo, hi) = (
            ratios.iter().cloned().fold(f64::MAX, f64::min),
            ratios.iter().cloned().fold(0.0, f64::max),
        );
        row.ratio = Some((median(&mut ratios), lo, hi));
        // Idle CPU, kthreads left on cpu1, a new kthread.
        let r = peer.start(s)?;
        std::thread::sleep(Duration::from_secs(3));
        if let Some(pid) = r.pid() {
            let t0 = cpu_ticks(pid)?;
            let start = Instant::now();
            std::thread::sleep(Duration::from_secs(idle_secs));
            let ticks = cpu_ticks(pid)? - t0;
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            row.idle_pct = Some(100.0 * ticks as f64 / hz / start.elapsed().as_secs_f64());
        }
        row.left_on_cpu1 = on_cpu1();
        row.new_kthread = ext4.new_kthread_off_cpu1(Duration::from_secs(5));
        row.put_back = foreign_change_undone(Duration::from_secs(5));
        r.stop()?;
        rows.push(row);
    }
    masks.put_back();
    let _ = fs::remove_dir_all(&profile);
    for (path, was) in state {
        let _ = match was {
            Some(text) => fs::write(&path, text),
            None => fs::remove_file(&path),
        };
    }

    let _ = writeln!(
        md,
        "## 7. Peers, side by side\n\nWhat a user would run instead, to keep kthreads off cpu1, in the same run. Ping-pong: as in \
         section 1, {rounds} rounds interleaved with nothing running. Idle: the tool's own CPU time over {idle_secs} s after \
         3 s to settle (tuna has exited by then). Left on cpu1: movable kthreads (IRQ threads aside) still allowed on cpu1 \
         once it settled, of {baseline} before. New kthread: from the `mount -o loop` of an ext4 image returning until its \
         new journal kthread (`jbd2/loopN-8`) is off cpu1, polled every 0.5 ms for 5 s. Put back: a kthread the tool moved \
         off cpu1 is set to 0-1 by someone else (`sched_setaffinity`), until it is off cpu1 again, polled the same way.\n\n\
         | tool | ping-pong ratio (median, min–max) | idle CPU | left on cpu1 | new kthread off cpu1 | someone's change put back |\n|---|---|---|---|---|---|"
    );
    for r in &rows {
        let ratio = r.ratio.map_or("–".into(), |(m, lo, hi)| {
            format!("{m:.3} ({lo:.3}–{hi:.3})")
        });
        let idle = r
            .idle_pct
            .map_or("– (not running)".into(), |p| format!("{p:.3} %"));
        let within = |m: &Result<Option<Duration>>| match m {
            Ok(Some(d)) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
            Ok(None) => "not within 5 s".into(),
            Err(e) => format!("not measured: {e:#}"),
        };
        let _ = writeln!(
            md,
            "| {} | {ratio} | {idle} | {} | {} | {} |",
            r.peer.name(),
            r.left_on_cpu1,
            within(&r.new_kthread),
            within(&r.put_back)
        );
    }
    md.push('\n');
    for r in rows.iter().filter(|r| r.note.is_some()) {
        let log = fs::read_to_string(tuned_log()).unwrap_or_default();
        let said: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("scheduler") || l.contains("perf"))
            .take(3)
            .collect();
        let _ = writeln!(
            md,
            "**{}** cannot do the job here: {}. Its log says: `{}`. The figures in its row are tuned running \
             without it.\n",
            r.peer.name(),
            r.note.as_deref().unwrap_or_default(),
            if said.is_empty() {
                "(nothing about the plugin)".to_string()
            } else {
                said.join(" / ").replace('`', "'")
            }
        );
    }
    Ok(())
}
