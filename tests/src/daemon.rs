//! The real `affinity` binary as a daemon, for the kernel tests: the shared
//! harness (`affinity-harness`, also the bench's) with failures as panics.

use std::{path::PathBuf, process::ExitStatus, time::Duration};

use affinity_harness::Value;

/// The `affinity` binary under test: `AFFINITY_BIN` (set by xtask) or the
/// workspace's debug build.
pub fn affinity_bin() -> PathBuf {
    std::env::var_os("AFFINITY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/affinity")
        })
}

/// How long a daemon may take to load its programs and set the first
/// masks. Seconds normally; under TCG emulation on a loaded 2-core host,
/// 5.10's verifier was seen to need more than 20 s.
const STARTED_WITHIN: Duration = Duration::from_secs(60);

pub struct Daemon {
    inner: affinity_harness::Daemon,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `affinity run --format json` with `args` and a private control
    /// socket, and waits for its `started` event.
    pub fn start(args: &[&str]) -> Daemon {
        Self::launch(None, args)
    }

    pub fn start_with_config(config: &str, args: &[&str]) -> Daemon {
        Self::launch(Some(config), args)
    }

    /// Started through `prefix` (e.g. setpriv) as `owner`; see
    /// `affinity_harness::Daemon::spawn_as`.
    pub fn start_as(prefix: &[&str], owner: u32, config: &str, args: &[&str]) -> Daemon {
        Self::launch_as(Some(config), args, prefix, Some(owner))
    }

    fn launch(config: Option<&str>, args: &[&str]) -> Daemon {
        Self::launch_as(config, args, &[], None)
    }

    fn launch_as(
        config: Option<&str>,
        args: &[&str],
        prefix: &[&str],
        owner: Option<u32>,
    ) -> Daemon {
        let bin = affinity_bin();
        let inner = affinity_harness::Daemon::spawn_as(&bin, config, args, true, prefix, owner)
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let socket = inner.socket.clone();
        let mut d = Daemon { inner, socket };
        d.wait_event(STARTED_WITHIN, "the started event", |e| {
            e["type"] == "started"
        });
        d
    }

    pub fn events(&self) -> Vec<Value> {
        self.inner.events()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.inner.stderr()
    }

    /// Where its socket and rules file (`rules.toml`) live.
    pub fn dir(&self) -> &std::path::Path {
        self.inner.dir()
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Waits for an event matching `pred`; panics with everything seen so
    /// far. Every line the daemon printed must have been JSON.
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let v = self
            .inner
            .wait_for(timeout, pred)
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        if let Some(bad) = self.events().iter().find(|e| e["type"] == "not_json") {
            panic!("the daemon printed a line that is not JSON: {bad}");
        }
        v
    }

    /// Events seen after `skip` earlier ones.
    pub fn events_since(&self, skip: usize) -> Vec<Value> {
        self.inner.events_since(skip)
    }

    pub fn is_alive(&mut self) -> bool {
        self.inner.is_alive()
    }

    pub fn signal(&self, sig: i32) {
        self.inner.signal(sig);
    }

    /// `sig`, then waits for the exit; returns its status.
    pub fn stop_with(&mut self, sig: i32) -> ExitStatus {
        self.inner
            .stop_with(sig)
            .unwrap_or_else(|e| panic!("stopping the daemon: {e}"))
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }
}
