//! The daemon's answers to the outside: SIGHUP / `affinity reload` (the
//! rules file read again, applied as a diff) and the control socket's
//! requests. Split from `run.rs` to keep it readable; they work on the
//! running daemon's state ([`Running`], [`DaemonCore`]).

use super::*;

/// SIGHUP and `affinity reload`: the rules file read again. A valid one
/// replaces the rules as a diff (only kthreads whose rule or preference
/// changes are touched); an invalid one changes nothing and every error is
/// reported with its line and column.
pub(super) fn reload(r: &mut Running, args: &RunArgs) -> Result<String, String> {
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
    let mut irqs_changed = 0;
    if config.irq != r.config.irq || config.workqueue != r.config.workqueue {
        match &mut r.steer {
            Some(steer) => {
                irqs_changed = steer.replace_rules(
                    config.irq.clone(),
                    config.workqueue.clone(),
                    &mut r.core.reporter,
                    &mut r.core.stats,
                );
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
    Ok(format!(
        "{shown}: {changed} kthreads changed rule or preference, {irqs_changed} IRQs rule or mask"
    ))
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
