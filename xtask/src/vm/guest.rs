//! One VM boot: the guest script, vng under a deadline with its output
//! streamed and logged, and the retry rule.

use std::{
    fmt,
    fs::{self, File},
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    kernel::Kernel,
    profile::Profile,
    tools::{Accel, Tools},
};
use crate::build::{TestBinaries, workspace_root};

/// The guest script's first line: after it, a failure is the tests' and is
/// never retried.
const STARTED: &str = "affinity-vm-guest: started";
/// Printed for every failed test executable: `... failed NAME (exit N)`.
const FAILED: &str = "affinity-vm-guest: failed ";
/// What QEMU prints when KVM cannot run the guest (a nested /dev/kvm).
const KVM_FATAL: &str = "KVM internal error";
/// The script's last line.
const DONE: &str = "affinity-vm-guest: done";

/// Single-quoted for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_path(p: &Path) -> Result<String> {
    p.to_str()
        .map(quote)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Writes the script the guest runs: every test executable `profile` runs,
/// with one test thread, from the tests package's directory as `cargo test`
/// would.
pub fn write_script(
    bins: &TestBinaries,
    label: &str,
    profile: &Profile,
    vm_dir: &Path,
) -> Result<PathBuf> {
    let mut s = format!("#!/bin/sh\necho {}\n", quote(STARTED));
    s.push_str(&format!(
        "export AFFINITY_BIN={} AFFINITY_VM=1 AFFINITY_VM_KERNEL={} AFFINITY_VM_PROFILE={}\n",
        quote_path(&bins.affinity)?,
        quote(label),
        quote(profile.name)
    ));
    if let Ok(ci) = std::env::var("CI") {
        s.push_str(&format!("export CI={}\n", quote(&ci)));
    }
    s.push_str(&format!(
        "cd {} || exit 1\n",
        quote_path(&workspace_root().join("tests"))?
    ));
    s.push_str(
        "echo \"affinity-vm-guest: kernel $(uname -r), online $(cat /sys/devices/system/cpu/online), \
         present $(cat /sys/devices/system/cpu/present), \
         isolated $(cat /sys/devices/system/cpu/isolated), nohz_full $(cat /sys/devices/system/cpu/nohz_full)\"\n\
         for n in /sys/devices/system/node/node[0-9]*; do \
         echo \"affinity-vm-guest: ${n##*/}: cpus $(cat $n/cpulist), $(grep MemTotal $n/meminfo | sed 's/.*MemTotal: *//')\"; \
         done\n\
         rc=0\n",
    );
    // host_* targets need what a virtme-ng guest cannot do (see their docs),
    // e.g. loop mounts; a profile's own targets run only in its boot.
    // One test per process, each timed: under TCG the whole run has a
    // budget (README, CI), and the log must say which test spends it.
    for (name, exe) in bins.tests.iter().filter(|(n, _)| profile.runs_on(n, label)) {
        let name = quote(name);
        s.push_str(&format!(
            "echo \"affinity-vm-guest: running \"{name}\n\
             exe={}\n\
             tests=$(\"$exe\" --list --format terse) || {{ rc=1; echo \"{FAILED}\"{name}\" (exit 1)\"; }}\n\
             for t in $(echo \"$tests\" | sed -n 's/: test$//p'); do\n\
             s=$(date +%s)\n\
             \"$exe\" --exact \"$t\" --test-threads=1\n\
             r=$?\n\
             echo \"affinity-vm-guest: \"{name}\" $t took $(( $(date +%s) - s )) s (exit $r)\"\n\
             if [ $r -ne 0 ]; then rc=1; echo \"{FAILED}\"{name}\"::$t (exit $r)\"; fi\n\
             done\n",
            quote_path(exe)?
        ));
    }
    s.push_str(&format!("echo \"{DONE} (exit $rc)\"\nexit $rc\n"));
    fs::create_dir_all(vm_dir)?;
    let path = vm_dir.join(format!("guest-{label}-{}.sh", profile.name));
    fs::write(&path, s).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The KVM probe's guest script: only the start marker.
pub fn write_probe(vm_dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(vm_dir)?;
    let path = vm_dir.join("kvm-probe.sh");
    fs::write(&path, format!("#!/bin/sh\necho {}\n", quote(STARTED)))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub struct Boot {
    /// vng's exit code; None when killed (timeout, signal).
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The signal that killed vng, if one did.
    pub signal: Option<i32>,
    /// When the guest script printed its first line.
    pub guest_started: Option<Duration>,
    pub done: bool,
    pub failed_tests: Vec<String>,
    pub elapsed: Duration,
}

impl Boot {
    /// A QEMU crash or hang before the guest ran anything (seen in about 1
    /// of 40 boots on QEMU 7.2): the only case worth a second boot.
    fn retryable(&self) -> bool {
        self.guest_started.is_none() && (self.code == Some(255) || self.timed_out)
    }

    /// "exit 3", "killed by signal 9", "timed out".
    fn status(&self) -> String {
        match (self.timed_out, self.code, self.signal) {
            (true, _, _) => "timed out".into(),
            (_, Some(c), _) => format!("vng exit {c}"),
            (_, None, Some(s)) => format!("vng killed by signal {s}"),
            (_, None, None) => "vng status unknown".into(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    TestsFailed {
        status: String,
        tests: Vec<String>,
    },
    TimedOut {
        guest_started: bool,
    },
    NeverStarted {
        status: String,
    },
    /// vng exited 0 but the script never finished: not a pass.
    Incomplete,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Passed => write!(f, "passed"),
            Verdict::TestsFailed { status, tests } if tests.is_empty() => {
                write!(f, "the guest failed ({status})")
            }
            Verdict::TestsFailed { status, tests } => {
                write!(f, "{} failed ({status})", tests.join(", "))
            }
            Verdict::TimedOut {
                guest_started: true,
            } => write!(f, "timed out in the tests"),
            Verdict::TimedOut {
                guest_started: false,
            } => write!(f, "timed out before the guest started"),
            Verdict::NeverStarted { status } => {
                write!(f, "the VM died before the guest started ({status})")
            }
            Verdict::Incomplete => write!(f, "the guest script did not finish"),
        }
    }
}

pub struct Outcome {
    pub verdict: Verdict,
    pub elapsed: Duration,
    /// Time until the guest script started.
    pub boot: Option<Duration>,
    pub retried: bool,
}

/// Boots `kernel` running `script`, once more only if QEMU died before the
/// guest started.
pub fn run_with_retry(
    tools: &Tools,
    kernel: &Kernel,
    profile: &Profile,
    script: &Path,
    accel: Accel,
    timeout: Duration,
    log: &Path,
) -> Result<Outcome> {
    let mut log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let label = format!("{}/{}", kernel.label, profile.name);
    let vm = Vm {
        tools,
        vmlinuz: &kernel.vmlinuz,
        profile,
        accel,
    };
    let mut b = boot(&vm, script, timeout, Some(&mut log_file), &label)?;
    let mut retried = false;
    if b.retryable() {
        eprintln!(
            "xtask: VM {label}: QEMU died before the guest started ({}); retrying once",
            b.status()
        );
        writeln!(log_file, "==== retry ====")?;
        retried = true;
        b = boot(&vm, script, timeout, Some(&mut log_file), &label)?;
    }
    let verdict = if b.timed_out {
        Verdict::TimedOut {
            guest_started: b.guest_started.is_some(),
        }
    } else if b.guest_started.is_none() {
        Verdict::NeverStarted { status: b.status() }
    } else if b.code != Some(0) || !b.failed_tests.is_empty() {
        Verdict::TestsFailed {
            status: b.status(),
            tests: b.failed_tests,
        }
    } else if !b.done {
        Verdict::Incomplete
    } else {
        Verdict::Passed
    };
    Ok(Outcome {
        verdict,
        elapsed: b.elapsed,
        boot: b.guest_started,
        retried,
    })
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// How many boots are under way: SIGINT and SIGTERM are caught while any
/// is (boots run in parallel), and get their default back after the last.
static BOOTS: Mutex<usize> = Mutex::new(0);

struct ForwardSignals;

impl ForwardSignals {
    fn install() -> ForwardSignals {
        let mut n = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
        if *n == 0 {
            for sig in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: the handler only stores to an atomic.
                unsafe { libc::signal(sig, interrupted as *const () as libc::sighandler_t) };
            }
        }
        *n += 1;
        ForwardSignals
    }
}

impl Drop for ForwardSignals {
    fn drop(&mut self) {
        let mut n = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            for sig in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: restoring the default disposition.
                unsafe { libc::signal(sig, libc::SIG_DFL) };
            }
        }
    }
}

/// What vng boots: a kernel image in a guest of `profile`'s shape.
pub struct Vm<'a> {
    pub tools: &'a Tools,
    pub vmlinuz: &'a Path,
    pub profile: &'a Profile,
    pub accel: Accel,
}

/// One vng run of `vm` under a deadline, its output streamed with a
/// `[label]` prefix and copied to `log`.
pub fn boot(
    vm: &Vm,
    script: &Path,
    timeout: Duration,
    mut log: Option<&mut File>,
    label: &str,
) -> Result<Boot> {
    let mut cmd = Command::new(&vm.tools.vng);
    if vm.accel == Accel::Tcg {
        // One TCG thread: multi-threaded TCG crashed QEMU early in boot in
        // 1 of 42 runs on QEMU 7.2 on these machines; single-threaded gave
        // 16 of 16.
        cmd.args(["--disable-kvm", "--qemu-opts=-accel tcg,thread=single"]);
    }
    // Without --disable-kvm, vng uses KVM whenever /dev/kvm is accessible.
    cmd.arg("--run")
        .arg(vm.vmlinuz)
        .args(vm.profile.vng_args())
        .arg("--rwdir")
        .arg(
            script
                .parent()
                .context("guest script without a directory")?,
        )
        .arg("--")
        .arg("sh")
        .arg(script)
        .env("PATH", &vm.tools.path)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills QEMU and virtiofsd too.
        .process_group(0);

    // Ctrl-C no longer reaches the VM through the terminal: forward it.
    let _forward = ForwardSignals::install();
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting vng")?;
    let pgid = child.id() as libc::pid_t;
    let kill_group = || {
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    };

    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    for (is_err, stream) in [(false, stdout), (true, stderr)] {
        let Some(stream) = stream else { continue };
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send((is_err, line)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let mut b = Boot {
        code: None,
        signal: None,
        timed_out: false,
        guest_started: None,
        done: false,
        failed_tests: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut exited_at: Option<Instant> = None;
    let mut streams_open = true;
    loop {
        let next = if streams_open {
            rx.recv_timeout(Duration::from_millis(100))
        } else {
            std::thread::sleep(Duration::from_millis(100));
            Err(mpsc::RecvTimeoutError::Disconnected)
        };
        match next {
            Ok((is_err, line)) => {
                if line.contains(STARTED) && b.guest_started.is_none() {
                    b.guest_started = Some(start.elapsed());
                }
                if line.contains(DONE) {
                    b.done = true;
                }
                // QEMU does not exit on this one; it hangs until the
                // timeout (2 min for the KVM probe on these machines).
                if line.contains(KVM_FATAL) && exited_at.is_none() {
                    kill_group();
                    let status = child.wait()?;
                    b.code = status.code();
                    b.signal = status.signal();
                    exited_at = Some(Instant::now());
                }
                if let Some(rest) = line.split(FAILED).nth(1) {
                    let name = rest.rsplit_once(" (exit").map_or(rest, |(n, _)| n);
                    b.failed_tests.push(name.to_string());
                }
                if let Some(log) = log.as_deref_mut() {
                    writeln!(log, "{line}")?;
                }
                if is_err {
                    eprintln!("[{label}] {line}");
                } else {
                    println!("[{label}] {line}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => streams_open = false,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if exited_at.is_none() {
            if let Some(status) = child.try_wait()? {
                b.code = status.code();
                b.signal = status.signal();
                exited_at = Some(Instant::now());
                // Whatever vng left behind would hold the pipes open.
                kill_group();
            } else if start.elapsed() > timeout {
                b.timed_out = true;
                kill_group();
                let status = child.wait()?;
                b.code = status.code();
                b.signal = status.signal();
                exited_at = Some(Instant::now());
            } else if INTERRUPTED.load(Ordering::SeqCst) {
                kill_group();
                let _ = child.wait();
                bail!("interrupted; the VM was killed");
            }
        }
        // vng is gone; its output is complete once the pipes close (or,
        // should something outlive the group kill, 5 s later).
        if exited_at.is_some_and(|t| !streams_open || t.elapsed() > Duration::from_secs(5)) {
            break;
        }
    }
    b.elapsed = start.elapsed();
    if let Some(log) = log {
        writeln!(
            log,
            "==== vng exit {:?}, signal {:?}, timed out {}, {:.1} s ====",
            b.code,
            b.signal,
            b.timed_out,
            b.elapsed.as_secs_f64()
        )?;
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(code: Option<i32>, timed_out: bool, started: bool) -> Boot {
        Boot {
            code,
            signal: None,
            timed_out,
            guest_started: started.then_some(Duration::from_secs(10)),
            done: false,
            failed_tests: Vec::new(),
            elapsed: Duration::from_secs(20),
        }
    }

    #[test]
    fn only_a_crash_or_hang_before_the_guest_started_is_retried() {
        assert!(boot(Some(255), false, false).retryable());
        assert!(boot(None, true, false).retryable());
        // The guest ran: whatever happened is the tests' business.
        assert!(!boot(Some(255), false, true).retryable());
        assert!(!boot(None, true, true).retryable());
        // Other early failures are not QEMU crashes.
        assert!(!boot(Some(1), false, false).retryable());
        assert!(!boot(Some(101), false, true).retryable());
    }

    #[test]
    fn sh_quoting() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
