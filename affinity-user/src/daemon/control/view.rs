//! The running daemon's registry as `affinity status` sees it: every
//! kthread's record from the engine (the one owner of that state) and the
//! runtime registrations with who made them. Serialised as the `view` of a
//! [`super::Response`] to [`super::Request::Status`].

use serde::{Deserialize, Serialize};

use crate::policy::{Engine, cli_form};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveView {
    pub kernel: String,
    pub online: String,
    pub housekeeping: String,
    /// `--observe`: the daemon sets nothing, so drift is expected.
    pub observe: bool,
    pub kthreads: Vec<LiveKthread>,
    /// Tried in this order, before the rules file's rules.
    pub registrations: Vec<LiveRegistration>,
    /// The last noise interval of every watched CPU (absent from older
    /// daemons, empty before the first interval or with no CPU watched).
    #[serde(default)]
    pub noise: Vec<crate::daemon::noise::CpuNoise>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveKthread {
    pub pid: u32,
    pub comm: String,
    /// The rule's match, or `runtime` for an `affinity prefer` registration.
    pub rule: Option<String>,
    pub preferred: Option<String>,
    /// What the policy puts it on (its current mask when not managed).
    pub applied: String,
    /// Its mask as the daemon last read it back.
    pub current: String,
    pub pinned: bool,
    pub kernel_managed: bool,
    /// An IRQ thread following IRQ N (absent from older daemons).
    #[serde(default)]
    pub follows_irq: Option<u32>,
    /// An unbound workqueue worker (absent from older daemons).
    #[serde(default)]
    pub follows_workqueue: bool,
    /// Managed, and not where the policy puts it.
    pub drift: bool,
    /// The kernel refused the applied mask with this errno.
    pub refused_errno: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRegistration {
    /// As `affinity unprefer` takes it: a pid or a comm glob.
    pub target: String,
    pub prefer: String,
    /// The client that registered it: `uid 0, pid 4242`.
    pub by: String,
    /// The kthreads it holds now.
    pub pids: Vec<u32>,
}

impl LiveView {
    pub fn of(engine: &Engine, observe: bool) -> LiveView {
        let online = engine.online();
        let kthreads = engine
            .entries()
            .map(|e| LiveKthread {
                pid: e.pid,
                comm: e.comm.clone(),
                rule: e.rule.clone(),
                preferred: e.preferred.as_ref().map(ToString::to_string),
                applied: if e.managed() { &e.applied } else { &e.current }.to_string(),
                current: e.current.to_string(),
                pinned: e.pinned(),
                kernel_managed: e.kernel_managed,
                follows_irq: e.follows_irq,
                follows_workqueue: e.follows_workqueue,
                drift: !e.in_place(online),
                refused_errno: e
                    .refused
                    .as_ref()
                    .filter(|r| r.mask == e.applied)
                    .map(|r| r.errno),
            })
            .collect();
        let registrations = engine
            .registrations()
            .iter()
            .map(|r| LiveRegistration {
                target: cli_form(&r.rule.target),
                prefer: r.rule.prefer.to_string(),
                by: r.by.clone(),
                pids: engine
                    .entries()
                    .filter(|e| e.rule.as_deref() == Some("runtime"))
                    .filter(|e| engine.registration_of(e.pid, &e.comm) == Some(&r.rule.target))
                    .map(|e| e.pid)
                    .collect(),
            })
            .collect();
        LiveView {
            kernel: engine.kernel().unwrap_or_default().to_string(),
            online: online.to_string(),
            housekeeping: engine.housekeeping().to_string(),
            observe,
            kthreads,
            registrations,
            noise: Vec::new(),
        }
    }
}
