//! Running the real `affinity` binary as a daemon and reading its JSON
//! event stream.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The `affinity` binary under test: `AFFINITY_BIN` (set by xtask) or the
/// workspace's debug build.
pub fn affinity_bin() -> PathBuf {
    std::env::var_os("AFFINITY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/affinity")
        })
}

pub struct Daemon {
    child: Option<Child>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `affinity run --format json` with `args` and a private control
    /// socket, and waits for its `started` event.
    pub fn start(args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        Self::start_in(dir, args)
    }

    pub fn start_with_config(config: &str, args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, config).expect("writing the config");
        let path = path.to_str().unwrap().to_string();
        let mut all = vec!["--config", path.as_str()];
        all.extend_from_slice(args);
        Self::start_in(dir, &all)
    }

    fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Daemon {
        let socket = dir.path().join("control.sock");
        let mut child = Command::new(affinity_bin())
            .arg("run")
            .args(["--format", "json", "--socket"])
            .arg(&socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", affinity_bin().display()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("daemon printed a non-JSON line {line:?}: {e}"));
                ev.lock().unwrap().push(v);
            }
        });
        let err = child.stderr.take().unwrap();
        let er = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[affinity] {line}");
                er.lock().unwrap().push(line);
            }
        });
        let mut d = Daemon {
            child: Some(child),
            events,
            stderr,
            socket,
            _dir: dir,
        };
        d.wait_event(Duration::from_secs(20), "the started event", |e| {
            e["type"] == "started"
        });
        d
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for an event matching `pred`; panics with everything seen so far.
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.events.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "daemon exited ({status}) while waiting for {what}; events: {:#?}\nstderr: {:#?}",
                    self.events(),
                    self.stderr()
                );
            }
            if start.elapsed() > timeout {
                panic!("no {what} within {timeout:?}; events: {:#?}", self.events());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Events seen after `skip` earlier ones.
    pub fn events_since(&self, skip: usize) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .skip(skip)
            .cloned()
            .collect()
    }

    pub fn is_alive(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// SIGTERM (or `sig`), then waits for the exit; returns its status.
    pub fn stop_with(&mut self, sig: i32) -> ExitStatus {
        self.signal(sig);
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("daemon did not exit within 10 s of signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
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
