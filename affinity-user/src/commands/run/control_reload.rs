//! The daemon's answers to the outside: SIGHUP / `affinity reload` (the
//! rules file read again, applied as a diff) and the control socket's
//! requests. Split from `run.rs` to keep it readable; they work on the
//! running daemon's state ([`Running`], [`DaemonCore`]).

use tokio::sync::oneshot;

use super::*;
use crate::daemon::irq::worker::RulesTicket;

/// A reload applied to the kthreads; its IRQ and workqueue rules, if they
/// changed, handed to the steering worker.
pub(super) struct Reloaded {
    /// `PATH: N kthreads changed rule or preference`
    kthreads: String,
    irqs: Option<RulesTicket>,
}

impl Reloaded {
    /// Replies to `affinity reload` once the worker has applied the rules
    /// (from a task of its own, so the loop goes on), or at once when it has
    /// none to apply.
    pub(super) fn answer(self, reply: oneshot::Sender<Response>) {
        let Reloaded { kthreads, irqs } = self;
        let Some(ticket) = irqs else {
            let _ = reply.send(Response::done(format!("{kthreads}, 0 IRQs rule or mask")));
            return;
        };
        tokio::spawn(async move {
            let irqs = match tokio::time::timeout(RELOAD_STEER_WAIT, ticket.applied()).await {
                Ok(Some(n)) => format!("{n} IRQs rule or mask"),
                Ok(None) => "the IRQ rules not applied (the steering thread stopped)".into(),
                Err(_) => format!(
                    "the IRQ and workqueue rules not applied yet (the steering thread has waited on the kernel for over {} s); they apply when it is free",
                    RELOAD_STEER_WAIT.as_secs()
                ),
            };
            // The client may have given up: nothing to do then.
            let _ = reply.send(Response::done(format!("{kthreads}, {irqs}")));
        });
    }
}

/// SIGHUP and `affinity reload`: the rules file read again. A valid one
/// replaces the rules as a diff (only kthreads whose rule or preference
/// changes are touched); an invalid one changes nothing and every error is
/// reported with its line and column.
pub(super) fn reload(r: &mut Running, args: &RunArgs) -> Result<Reloaded, String> {
    let path = match &args.policy.config {
        None => {
            return Err(
                "the daemon runs the embedded default policy (no --config): there is no rules file to read again"
                    .into(),
            );
        }
        Some(p) if p.as_os_str() == "-" => {
            return Err(
                "the rules came from stdin (--config -), which cannot be read again".into(),
            );
        }
        Some(p) => p,
    };
    let shown = path.display().to_string();
    let config = match sysfs::load_config(path, r.core.engine.topology()) {
        Ok(c) => c,
        Err(e) => {
            let message = format!("{e:#}");
            r.core.reporter.report(&Report::ReloadRefused {
                path: shown.clone(),
                message: message.clone(),
            });
            return Err(format!(
                "{shown} not applied, the running policy is unchanged: {message}"
            ));
        }
    };
    let changed = r.core.replace_rules(config.rules.clone(), &mut r.observer);
    let mut irqs = None;
    if config.irq != r.config.irq || config.workqueue != r.config.workqueue {
        match &mut r.steer {
            Some(steer) => {
                irqs = Some(steer.replace_rules(config.irq.clone(), config.workqueue.clone()));
            }
            None => r.core.reporter.report(&Report::Error {
                message: format!(
                    "reload: {shown}'s [[irq]] or [[workqueue]] rules changed, but they are applied only with --irqs"
                ),
            }),
        }
    }
    r.config = config;
    // Its [housekeeping] section may say something else now.
    if let Err(e) = housekeeping_check(r, args) {
        r.core.reporter.report(&Report::Error {
            message: format!("reload: housekeeping: {e:#}"),
        });
    }
    r.core.reporter.report(&Report::Reloaded {
        path: shown.clone(),
        changed,
    });
    Ok(Reloaded {
        kthreads: format!("{shown}: {changed} kthreads changed rule or preference"),
        irqs,
    })
}

pub(super) fn handle_request(
    core: &mut DaemonCore,
    call: &ControlCall,
    width: u32,
    observer: &mut Observer,
) -> Response {
    let target = |t: &str| match t.parse::<u32>() {
        Ok(pid) => Target::Pid(pid),
        Err(_) => Target::Comm(t.into()),
    };
    let result = match &call.request {
        Request::Prefer {
            target: t,
            prefer,
            update,
        } => match Preference::parse(prefer, width) {
            Ok(p) => core
                .register(target(t), p, *update, &call.client, observer)
                .map(|()| format!("{t} now prefers {prefer}"))
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{prefer:?}: {e}")),
        },
        Request::Unprefer { target: t } => core
            .unregister(&target(t), observer)
            .map(|()| format!("{t} no longer has a runtime preference"))
            .map_err(|e| e.to_string()),
        Request::Status => {
            return Response {
                view: Some(Box::new(core.view())),
                ..Response::done("the running daemon's registry")
            };
        }
        Request::Reload => Err("reload is answered by the event loop".into()),
    };
    match result {
        Ok(message) => Response::done(message),
        Err(message) => Response::refusal(message),
    }
}
