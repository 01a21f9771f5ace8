//! [`shutdown`], the daemon's one way out, whatever ended the loop. Split
//! from `run.rs` to keep it readable.

use super::*;

/// How long the last report lines may take to leave on exit.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// How long the steering worker may take, on exit, to finish its job (a
/// workqueue cpumask write waits for a hotplug step) and restore.
const STEER_STOP: Duration = Duration::from_secs(10);

/// The one way out: restore (if asked), the last summary, detach.
pub(super) fn shutdown(mut r: Running, result: Result<()>) -> Result<ExitCode> {
    crate::notify::stopping();
    if let Err(e) = &result {
        r.core.reporter.report(&Report::Error {
            message: format!("stopping: {e:#}"),
        });
    }
    // The worker finishes the job under way, drops those waiting and
    // restores (if asked) while the kthreads are.
    if let Some(steer) = &r.steer {
        steer.stop();
    }
    let mut restored = r.core.restore_originals();
    if let Some(steer) = r.steer.take() {
        match steer.finish(STEER_STOP, &mut r.core.stats) {
            Some(n) => restored += n,
            None => r.core.reporter.report(&Report::Error {
                message: format!(
                    "the IRQ steering thread did not stop within {} s (a write to /proc/irq or a workqueue cpumask still waits on the kernel): with --restore-on-exit, IRQ and workqueue masks may not be back",
                    STEER_STOP.as_secs()
                ),
            }),
        }
    }
    let kthreads = r.core.masks_left();
    if !kthreads.is_empty() {
        let record = left::LeftMasks {
            schema: left::SCHEMA,
            kernel: r.machine.kernel.clone(),
            kthreads,
        };
        if let Err(e) = left::write(&r.masks_file, &record) {
            r.core.reporter.report(&Report::Error {
                message: format!("{e:#}; `affinity restore` will need --all"),
            });
        }
    }
    // Best effort: a summary with slightly older counters beats none.
    let _ = refresh_violation_counters(&mut r);
    r.core.stats.lines_dropped = r.core.reporter.out_mut().dropped();
    let s = r.core.summary();
    r.core.reporter.report(&s);
    r.core.reporter.report(&Report::Stopped { restored });
    r.core.reporter.out_mut().finish(OUTPUT_DRAIN);
    // Programs and links detach when the observer drops.
    drop(r);
    result.map(|()| ExitCode::SUCCESS)
}
