//! The `affinity` daemon under measurement: started with a config, its JSON
//! events collected, stopped with SIGTERM.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub struct Daemon {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    _dir: PathBuf,
}

impl Daemon {
    pub fn start(bin: &Path, config: Option<&str>, extra: &[&str]) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(format!("affinity-bench-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--format", "json", "--socket"])
            .arg(dir.join("control.sock"));
        if let Some(cfg) = config {
            fs::write(dir.join("rules.toml"), cfg)?;
            cmd.arg("--config").arg(dir.join("rules.toml"));
        }
        cmd.args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("starting affinity")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped");
        let ev = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    ev.lock().expect("events lock").push(v);
                }
            }
        });
        let d = Daemon {
            child,
            events,
            _dir: dir,
        };
        d.wait(Duration::from_secs(30), |e| e["type"] == "started")?;
        Ok(d)
    }

    pub fn wait(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(v) = self
                .events
                .lock()
                .expect("events lock")
                .iter()
                .find(|v| pred(v))
            {
                return Ok(v.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the daemon did not report the expected event within {timeout:?}")
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events lock").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) -> Result<Vec<Value>> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        std::thread::sleep(Duration::from_millis(200));
        if !status.success() {
            bail!("affinity exited with {status}");
        }
        Ok(self.events())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
