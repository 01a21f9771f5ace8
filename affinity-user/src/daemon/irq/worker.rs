//! The steering worker: one thread owns the [`Steering`] after start-up and
//! does every read and write of /proc/irq and the workqueue files, and the
//! irqbalance lookup, so that the event loop never waits on them (writing
//! the workqueue cpumask takes the CPU hotplug lock: under back-to-back
//! hotplug that held the loop, and control requests, for seconds).
//!
//! The loop hands it work through one slot per kind, not a queue: the
//! latest CPUs and housekeeping to follow (and whether to look for
//! irqbalance), the latest reload's rules. A hotplug storm rewrites the
//! slot; the worker takes whatever is there when it is free, so at most one
//! job runs and one waits, whatever the rate. Handing work over takes the
//! slots' lock, which the worker holds only to swap them, never across I/O.
//!
//! Reports go through the worker's own [`Reporter`] (in the daemon a second
//! handle on the same output queue). Its counts, the rows for `affinity
//! status` and each reload's outcome come back through a watch channel the
//! loop reads without waiting ([`SteerWorker::changed`]).

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc},
    thread,
    time::Duration,
};

use tokio::sync::watch;

use super::{SteerKernel, Steering};
use crate::{
    daemon::{Stats, control::LiveSteer, report::Reporter},
    policy::{CpuSet, IrqRule, Topology, WorkqueueRule},
};

/// What the worker says after each job.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// The engine's rows, for `affinity status`.
    pub rows: Arc<Vec<LiveSteer>>,
    /// Its counts since start-up (start-up's own went to the core).
    pub refused: u64,
    pub errors: u64,
    /// The last reload applied: its number and how many IRQs and
    /// workqueues changed rule or mask.
    pub rules: (u64, usize),
    /// Jobs done: a follow (with its scan) counts one, rules one.
    pub jobs: u64,
}

struct Follow {
    topology: Topology,
    housekeeping: CpuSet,
    /// Look for irqbalance first (the periodic rescan, not every hotplug
    /// step: it reads every /proc/PID/comm).
    irqbalance: bool,
}

#[derive(Default)]
struct Slots {
    follow: Option<Follow>,
    rules: Option<(u64, Vec<IrqRule>, Vec<WorkqueueRule>)>,
    stop: bool,
}

type Shared = Arc<(Mutex<Slots>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Slots> {
    // The worker never panics holding the lock (it only swaps the slots).
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The loop's side of the worker.
pub struct SteerWorker {
    shared: Shared,
    published: watch::Receiver<Published>,
    /// Sent once, by the worker leaving: how many masks it restored.
    finished: mpsc::Receiver<usize>,
    thread: Option<thread::JoinHandle<()>>,
    generation: u64,
    /// The worker's counts already added to the core's.
    absorbed: (u64, u64),
}

/// The worker is gone without being asked to stop (it panicked).
#[derive(Debug)]
pub struct WorkerGone;

impl std::fmt::Display for WorkerGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the IRQ steering worker stopped unexpectedly")
    }
}

impl std::error::Error for WorkerGone {}

/// A reload's rules handed to the worker.
pub struct RulesTicket {
    generation: u64,
    published: watch::Receiver<Published>,
}

impl RulesTicket {
    /// How many IRQs and workqueues changed rule or mask, once the worker
    /// has applied these rules (or a later reload's, which replaced them
    /// before it was free); `None` if it stopped first.
    pub async fn applied(mut self) -> Option<usize> {
        let g = self.generation;
        let p = self.published.wait_for(|p| p.rules.0 >= g).await.ok()?;
        Some(p.rules.1)
    }
}

impl SteerWorker {
    /// Starts the thread, which owns `steering` and reports to `reporter`
    /// from here on.
    pub fn spawn<S, W>(steering: Steering<S>, reporter: Reporter<W>) -> io::Result<SteerWorker>
    where
        S: SteerKernel + Send + 'static,
        W: Write + Send + 'static,
    {
        let shared: Shared = Arc::default();
        let (tx, published) = watch::channel(Published {
            rows: Arc::new(LiveSteer::all(&steering.engine)),
            ..Published::default()
        });
        let (finished_tx, finished) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name("affinity-steer".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    let restored = work(steering, reporter, &shared, &tx);
                    // After the reporter is dropped (in work): the output
                    // writer sees this handle closed before shutdown waits on it.
                    let _ = finished_tx.send(restored);
                }
            })?;
        Ok(SteerWorker {
            shared,
            published,
            finished,
            thread: Some(thread),
            generation: 0,
            absorbed: (0, 0),
        })
    }

    /// After a hotplug step: follow these CPUs and housekeeping, then the
    /// files as they are. Never waits on the worker.
    pub fn follow(&self, topology: &Topology, housekeeping: &CpuSet) {
        self.hand_over(topology, housekeeping, false);
    }

    /// The periodic rescan: [`follow`](Self::follow), looking for
    /// irqbalance first.
    pub fn rescan(&self, topology: &Topology, housekeeping: &CpuSet) {
        self.hand_over(topology, housekeeping, true);
    }

    fn hand_over(&self, topology: &Topology, housekeeping: &CpuSet, irqbalance: bool) {
        let mut slots = lock(&self.shared);
        // Only the latest state matters; a pending irqbalance lookup stays.
        let irqbalance = irqbalance || slots.follow.as_ref().is_some_and(|f| f.irqbalance);
        slots.follow = Some(Follow {
            topology: topology.clone(),
            housekeeping: housekeeping.clone(),
            irqbalance,
        });
        drop(slots);
        self.shared.1.notify_one();
    }

    /// A reload's `[[irq]]` and `[[workqueue]]` rules, applied by the worker
    /// as a diff; the ticket says when and what changed.
    pub fn replace_rules(&mut self, rules: Vec<IrqRule>, wq: Vec<WorkqueueRule>) -> RulesTicket {
        self.generation += 1;
        lock(&self.shared).rules = Some((self.generation, rules, wq));
        self.shared.1.notify_one();
        RulesTicket {
            generation: self.generation,
            published: self.published.clone(),
        }
    }

    /// The engine's rows as of the last job.
    pub fn rows(&self) -> Arc<Vec<LiveSteer>> {
        self.published.borrow().rows.clone()
    }

    /// Waits until the worker has done a job; `Err` if it is gone.
    pub async fn changed(&mut self) -> Result<(), WorkerGone> {
        self.published.changed().await.map_err(|_| WorkerGone)
    }

    /// Adds what the worker counted since the last call to `stats`.
    pub fn absorb(&mut self, stats: &mut Stats) {
        let p = self.published.borrow_and_update();
        stats.refused += p.refused - self.absorbed.0;
        stats.errors += p.errors - self.absorbed.1;
        self.absorbed = (p.refused, p.errors);
    }

    /// Asks the worker to stop after the job under way (those waiting are
    /// dropped) and, with `--restore-on-exit`, to put back every mask it
    /// wrote. Returns at once: [`finish`](Self::finish) waits.
    pub fn stop(&self) {
        lock(&self.shared).stop = true;
        self.shared.1.notify_one();
    }

    /// Waits up to `timeout` for the worker asked to [`stop`](Self::stop);
    /// its last counts go to `stats`. How many masks it restored, or `None`
    /// if it did not finish in time (a write still waiting on the kernel)
    /// or was gone.
    pub fn finish(mut self, timeout: Duration, stats: &mut Stats) -> Option<usize> {
        let restored = self.finished.recv_timeout(timeout).ok();
        if restored.is_some()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
        self.absorb(stats);
        restored
    }
}

/// The worker's loop: take the slots, do what they say, publish; restore
/// when asked to stop.
fn work<S: SteerKernel, W: Write>(
    mut steering: Steering<S>,
    mut reporter: Reporter<W>,
    shared: &Shared,
    tx: &watch::Sender<Published>,
) -> usize {
    let mut stats = Stats::default();
    let mut rules_done = (0, 0);
    let mut jobs = 0;
    loop {
        let (follow, rules) = {
            let mut slots = shared
                .1
                .wait_while(lock(shared), |s| {
                    s.follow.is_none() && s.rules.is_none() && !s.stop
                })
                .unwrap_or_else(PoisonError::into_inner);
            if slots.stop {
                break;
            }
            (slots.follow.take(), slots.rules.take())
        };
        if let Some((generation, irq, wq)) = rules {
            let changed = steering.replace_rules(irq, wq, &mut reporter, &mut stats);
            rules_done = (generation, changed);
            jobs += 1;
        }
        if let Some(f) = follow {
            if f.irqbalance {
                steering.look_for_irqbalance(&mut reporter, &mut stats);
            }
            steering.sync(&f.topology, &f.housekeeping, &mut reporter, &mut stats);
            jobs += 1;
        }
        tx.send_replace(Published {
            rows: Arc::new(LiveSteer::all(&steering.engine)),
            refused: stats.refused,
            errors: stats.errors,
            rules: rules_done,
            jobs,
        });
    }
    let restored = steering.restore();
    drop(reporter);
    restored
}

#[cfg(test)]
mod tests;
