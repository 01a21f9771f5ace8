//! Carrying out the engine's actions. Every effect reports its outcome
//! back to the engine as an event, and the engine decides what follows
//! (pinned: never again; gone: forget it; refused: say so once, try later).

use std::{collections::VecDeque, io::Write};

use super::{
    Core, PolicyMaps,
    kernel::{Kernel, SetAffinityError},
    report::Report,
};
use crate::policy::{Action, CpuSet, Event};

impl<K: Kernel, W: Write> Core<K, W> {
    pub fn execute(&mut self, actions: Vec<Action>, maps: &mut impl PolicyMaps) {
        if !actions.is_empty() {
            self.epoch += 1;
        }
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            if let Some(outcome) = self.effect(action, maps) {
                queue.extend(self.engine.handle(outcome));
            }
        }
    }

    fn effect(&mut self, action: Action, maps: &mut impl PolicyMaps) -> Option<Event> {
        match action {
            Action::SetAffinity {
                pid,
                start_time,
                comm,
                mask,
            } => return self.set_affinity(pid, start_time, comm, mask),
            Action::SetPolicy {
                pid,
                applied,
                preferred,
            } => {
                if let Err(e) = maps.set_policy(pid, &applied, preferred.as_ref()) {
                    self.error(format!("writing the policy map for pid {pid}: {e:#}"));
                }
            }
            Action::ClearPolicy { pid } => {
                if let Err(e) = maps.clear_policy(pid) {
                    self.error(format!("clearing the policy map for pid {pid}: {e:#}"));
                }
            }
            Action::ReportViolation {
                pid,
                comm,
                cpu,
                allowed,
                run_ns,
            } => {
                *self
                    .stats
                    .violations_by_comm
                    .entry(comm.clone())
                    .or_default() += 1;
                self.reporter.report(&Report::Violation {
                    pid,
                    comm,
                    cpu,
                    allowed: allowed.to_string(),
                    run_us: (run_ns as f64 / 100.0).round() / 10.0,
                });
            }
            Action::ReportPinned { pid, comm } => {
                self.reporter.report(&Report::Pinned { pid, comm });
            }
            Action::ReportKernelManaged { pid, comm } => {
                self.reporter.report(&Report::KernelManaged { pid, comm });
            }
            Action::ReportFollowsIrq { pid, comm, irq } => {
                self.reporter.report(&Report::FollowsIrq { pid, comm, irq });
            }
            Action::ReportFollowsWorkqueue { pid, comm } => {
                self.reporter
                    .report(&Report::FollowsWorkqueue { pid, comm });
            }
            Action::ReportAffinityChanged {
                pid,
                comm,
                mask,
                by_pid,
                by_comm,
            } => {
                self.reporter.report(&Report::AffinityChanged {
                    pid,
                    comm,
                    mask: mask.to_string(),
                    by_pid,
                    by_comm,
                });
            }
            Action::ReportResync { what } => {
                self.stats.resyncs += 1;
                self.reporter.report(&Report::Resync { what });
            }
            Action::ReportRefused {
                pid,
                comm,
                mask,
                message,
            } => {
                self.stats.refused += 1;
                self.reporter.report(&Report::Refused {
                    pid,
                    comm,
                    mask: mask.to_string(),
                    message,
                });
            }
            Action::Forget { pid, comm } => {
                if let Some(comm) = comm {
                    self.reporter.report(&Report::Exited { pid, comm });
                }
            }
        }
        None
    }

    fn set_affinity(
        &mut self,
        pid: u32,
        start_time: u64,
        comm: String,
        mask: CpuSet,
    ) -> Option<Event> {
        if self.opts.observe {
            // Never answered: the engine does not ask again until the
            // policy changes.
            self.reporter.report(&Report::WouldApply {
                pid,
                comm,
                mask: mask.to_string(),
            });
            return None;
        }
        Some(match self.kernel.set_affinity(pid, start_time, &mask) {
            Ok(now) => {
                self.stats.applied += 1;
                self.reporter.report(&Report::Applied {
                    pid,
                    comm,
                    mask: now.to_string(),
                });
                Event::Applied {
                    pid,
                    start_time,
                    requested: mask,
                    mask: now,
                }
            }
            Err(SetAffinityError::Gone(_)) => Event::KthreadExit { pid },
            Err(SetAffinityError::Pinned(_)) => Event::Pinned { pid, start_time },
            Err(SetAffinityError::Offline { .. }) => Event::Overtaken { pid, start_time },
            Err(e) => Event::Refused {
                pid,
                start_time,
                mask,
                errno: e.errno(),
                message: format!("{e:#}"),
            },
        })
    }
}
