//! The `affinity` daemon under measurement: the shared harness
//! (`affinity-harness`, also the kernel tests'), started with a config,
//! its JSON events collected, stopped with SIGTERM.

use std::{path::Path, time::Duration};

use affinity_harness::Value;
use anyhow::{Context, Result, bail};

pub struct Daemon(affinity_harness::Daemon);

impl Daemon {
    pub fn start(bin: &Path, config: Option<&str>, extra: &[&str]) -> Result<Daemon> {
        let mut d = affinity_harness::Daemon::spawn(bin, config, extra, false)
            .with_context(|| format!("starting {}", bin.display()))?;
        d.wait_for(Duration::from_secs(30), |e| e["type"] == "started")
            .context("waiting for the daemon to start")?;
        Ok(Daemon(d))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// The first event since the first `skip` matching `pred`, within `timeout`.
    pub fn wait_since(
        &mut self,
        skip: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let start = std::time::Instant::now();
        loop {
            if let Some(v) = self.0.events_since(skip).into_iter().find(|v| pred(v)) {
                return Some(v);
            }
            if start.elapsed() > timeout || !self.0.is_alive() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn event_count(&self) -> usize {
        self.0.events().len()
    }

    /// SIGTERM; the events it printed, once it has exited 0.
    pub fn stop(mut self) -> Result<Vec<Value>> {
        let status = self.0.stop_with(libc::SIGTERM)?;
        if !status.success() {
            bail!("affinity exited with {status}");
        }
        Ok(self.0.events())
    }
}
