//! The running daemon's registry as `affinity status` sees it: every
//! kthread's record from the engine (the one owner of that state) and the
//! runtime registrations with who made them. Serialised as the `view` of a
//! [`super::Response`] to [`super::Request::Status`].

use serde::{Deserialize, Serialize};

use crate::policy::{Engine, MaskFile, SteerEngine, SteerState, cli_form};

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
    /// With `--irqs`: every IRQ, the default IRQ affinity and the
    /// workqueue cpumasks the daemon keeps (absent without --irqs and from
    /// older daemons).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steering: Vec<LiveSteer>,
}

/// The file a steering row is about, by the word its live records use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SteerFile {
    Irq,
    IrqDefault,
    Workqueue,
}

impl SteerFile {
    /// The file's kind, its IRQ number and its workqueue's name.
    pub fn of(file: MaskFile) -> (SteerFile, Option<u32>, Option<String>) {
        match file {
            MaskFile::Irq(n) => (SteerFile::Irq, Some(n), None),
            MaskFile::IrqDefault => (SteerFile::IrqDefault, None, None),
            MaskFile::Workqueue => (SteerFile::Workqueue, None, None),
            MaskFile::NamedWorkqueue(n) => (SteerFile::Workqueue, None, Some(n.to_string())),
        }
    }

    /// As the live report names it.
    pub fn what(self, irq: Option<u32>, actions: &[String], workqueue: Option<&str>) -> String {
        match (self, irq, workqueue) {
            (SteerFile::Irq, Some(n), _) if actions.is_empty() => format!("irq {n}"),
            (SteerFile::Irq, Some(n), _) => format!("irq {n} ({})", actions.join(", ")),
            (SteerFile::IrqDefault, ..) => "default IRQ affinity".into(),
            (SteerFile::Workqueue, _, Some(name)) => format!("workqueue {name} cpumask"),
            _ => "workqueue cpumask".into(),
        }
    }
}

/// One mask the daemon keeps, as its steering engine has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSteer {
    pub file: SteerFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irq: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workqueue: Option<String>,
    pub rule: Option<String>,
    /// What the policy puts it on.
    pub applied: String,
    /// As last read back.
    pub current: String,
    /// Where the kernel delivers (an IRQ) or runs the workers (a named
    /// workqueue), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<String>,
    pub state: SteerState,
}

impl LiveSteer {
    pub fn all(engine: &SteerEngine) -> Vec<LiveSteer> {
        engine
            .entries()
            .map(|e| {
                let (file, irq, workqueue) = SteerFile::of(e.file);
                LiveSteer {
                    file,
                    irq,
                    actions: e.actions.clone(),
                    workqueue,
                    rule: e.rule.clone(),
                    applied: e.desired.to_string(),
                    current: e.current.to_string(),
                    effective: e.effective.as_ref().map(ToString::to_string),
                    state: e.state,
                }
            })
            .collect()
    }
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
            steering: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        CpuSet, Preference, SteerEvent, SteerScan, Topology, WorkqueueRule, WqName,
    };

    #[test]
    fn steering_rows_are_the_engine_s_entries_and_old_views_still_load() {
        let s = |l: &str| CpuSet::parse(l, 2).unwrap();
        let mut engine =
            SteerEngine::new(Topology::single_node(s("0-1"), s("0-1")), s("0"), vec![])
                .with_workqueue_rules(vec![WorkqueueRule {
                    target: "writeback".into(),
                    prefer: Preference::Housekeeping,
                    line: 1,
                }]);
        engine.handle(SteerEvent::Scan(SteerScan {
            workqueue: Some(s("0")),
            workqueues: vec![(WqName::new("writeback").unwrap(), s("0-1"))],
            ..SteerScan::default()
        }));
        let rows = LiveSteer::all(&engine);
        assert_eq!(
            serde_json::to_value(&rows).unwrap(),
            serde_json::json!([
                {"file": "workqueue", "rule": null, "applied": "0", "current": "0", "state": "steered"},
                {"file": "workqueue", "workqueue": "writeback", "rule": "writeback", "applied": "0",
                    "current": "0-1", "effective": "0", "state": "pending"},
            ])
        );
        let back: Vec<LiveSteer> =
            serde_json::from_value(serde_json::to_value(&rows).unwrap()).unwrap();
        assert_eq!(back, rows);
        // A daemon from before steering was in its view.
        let old = serde_json::json!({"kernel": "6.18", "online": "0-1", "housekeeping": "0",
            "observe": false, "kthreads": [], "registrations": []});
        let v: LiveView = serde_json::from_value(old).unwrap();
        assert!(v.steering.is_empty());
    }
}
