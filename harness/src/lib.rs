//! The real `affinity` binary as a daemon, and its `--format json` event
//! stream: one home for the kernel tests (`affinity-tests`) and the bench
//! (`xtask`). It does not depend on `affinity-user`, so xtask can use it
//! without building the eBPF object.

use std::{
    fmt,
    io::{self, BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

pub use serde_json::Value;

/// Why a wait ended without the event.
#[derive(Debug)]
pub enum WaitError {
    /// The daemon exited first.
    Exited {
        status: ExitStatus,
        events: Vec<Value>,
        stderr: Vec<String>,
    },
    TimedOut {
        timeout: Duration,
        events: Vec<Value>,
    },
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Exited {
                status,
                events,
                stderr,
            } => write!(
                f,
                "the daemon exited ({status}); events: {events:#?}\nstderr: {stderr:#?}"
            ),
            WaitError::TimedOut { timeout, events } => {
                write!(f, "nothing within {timeout:?}; events: {events:#?}")
            }
        }
    }
}

impl std::error::Error for WaitError {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A reader thread that panicked leaves its data as it was: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Daemon {
    child: Option<Child>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Its private control socket.
    pub socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `bin run --format json` with a private control socket, the
    /// rules in `config` if any, and `args`; returns at once. Lines on its
    /// stderr are kept, and echoed with a `[affinity]` prefix if `echo`.
    pub fn spawn(bin: &Path, config: Option<&str>, args: &[&str], echo: bool) -> io::Result<Self> {
        Self::spawn_as(bin, config, args, echo, &[], None)
    }

    /// [`Daemon::spawn`] through `prefix` (`setpriv --reuid ...`, which
    /// execs it: the pid stays the daemon's), with its directory, rules
    /// file and a copy of `bin` owned by `owner` so that a non-root daemon
    /// may use them.
    pub fn spawn_as(
        bin: &Path,
        config: Option<&str>,
        args: &[&str],
        echo: bool,
        prefix: &[&str],
        owner: Option<u32>,
    ) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("control.sock");
        // Another user may not reach the build tree (a clone under /root):
        // it runs a copy in its own directory.
        let copy;
        let bin = match owner {
            Some(_) => {
                copy = dir.path().join("affinity");
                std::fs::copy(bin, &copy)?;
                copy.as_path()
            }
            None => bin,
        };
        let mut cmd = match prefix.split_first() {
            Some((wrapper, wrapper_args)) => {
                let mut c = Command::new(wrapper);
                c.args(wrapper_args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if let Some(uid) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), None)?;
        }
        cmd.arg("run")
            .args(["--format", "json", "--socket"])
            .arg(&socket);
        if let Some(config) = config {
            let path = dir.path().join("rules.toml");
            std::fs::write(&path, config)?;
            if let Some(uid) = owner {
                std::os::unix::fs::chown(&path, Some(uid), None)?;
            }
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let ev = events.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let v: Value = serde_json::from_str(&line).unwrap_or_else(
                        |e| serde_json::json!({"type": "not_json", "line": line, "error": e.to_string()}),
                    );
                    lock(&ev).push(v);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let er = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("[affinity] {line}");
                    }
                    lock(&er).push(line);
                }
            });
        }
        Ok(Daemon {
            child: Some(child),
            events,
            stderr,
            socket,
            dir,
        })
    }

    /// The directory its socket and config live in (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn events(&self) -> Vec<Value> {
        lock(&self.events).clone()
    }

    /// Events seen after `skip` earlier ones.
    pub fn events_since(&self, skip: usize) -> Vec<Value> {
        lock(&self.events).iter().skip(skip).cloned().collect()
    }

    pub fn stderr(&self) -> Vec<String> {
        lock(&self.stderr).clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits for an event matching `pred`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, WaitError> {
        let start = Instant::now();
        loop {
            if let Some(v) = lock(&self.events).iter().find(|v| pred(v)) {
                return Ok(v.clone());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                // Its last lines may still be on the way.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(v) = lock(&self.events).iter().find(|v| pred(v)) {
                    return Ok(v.clone());
                }
                return Err(WaitError::Exited {
                    status,
                    events: self.events(),
                    stderr: self.stderr(),
                });
            }
            if start.elapsed() > timeout {
                return Err(WaitError::TimedOut {
                    timeout,
                    events: self.events(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// `sig`, then waits up to 10 s for the exit (then SIGKILL). Returns
    /// the status, once the reader threads have taken the last lines.
    pub fn stop_with(&mut self, sig: i32) -> io::Result<ExitStatus> {
        self.signal(sig);
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("the daemon was stopped already"))?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "the daemon did not exit within 10 s of signal {sig}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
