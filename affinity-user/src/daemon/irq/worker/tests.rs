//! The worker against files in memory whose writes can be held, like a
//! write to the workqueue cpumask waiting for the CPU hotplug lock.

use std::{
    sync::{Arc, Condvar, Mutex},
    time::Instant,
};

use super::*;
use crate::{
    daemon::{
        Options,
        irq::tests::{FakeFiles, rules, s, topo},
        report::Format,
        tests::khugepaged_on,
    },
    kernel::irq::WriteError,
    policy::{MaskFile, Preference, SteerScan, Target},
};

#[derive(Default)]
struct GateState {
    open: bool,
    /// Writes waiting for the gate now.
    waiting: u32,
    scans: u32,
    irqbalance_lookups: u32,
    /// /proc/irq cannot be read.
    fail_scans: bool,
    writes: Vec<(MaskFile, String)>,
}

/// Holds every write while closed; counts what the worker does.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<GateState>, Condvar)>);

impl Gate {
    fn open() -> Gate {
        let g = Gate::default();
        g.set(true);
        g
    }
    fn set(&self, open: bool) {
        self.0.0.lock().unwrap().open = open;
        self.0.1.notify_all();
    }
    fn state<T>(&self, f: impl FnOnce(&GateState) -> T) -> T {
        f(&self.0.0.lock().unwrap())
    }
    /// Waits (up to 5 s) until `until` holds.
    fn wait(&self, until: impl Fn(&GateState) -> bool) -> bool {
        let (g, _) = self
            .0
            .1
            .wait_timeout_while(self.0.0.lock().unwrap(), Duration::from_secs(5), |st| {
                !until(st)
            })
            .unwrap();
        until(&g)
    }
}

struct Gated {
    files: FakeFiles,
    gate: Gate,
}

impl SteerKernel for Gated {
    fn scan(&self) -> io::Result<SteerScan> {
        let mut g = self.gate.0.0.lock().unwrap();
        g.scans += 1;
        if g.fail_scans {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        self.files.scan()
    }
    fn write(&mut self, file: MaskFile, mask: &CpuSet) -> Result<(), WriteError> {
        let (lock, cv) = &*self.gate.0;
        let mut g = lock.lock().unwrap();
        g.waiting += 1;
        cv.notify_all();
        let mut g = cv.wait_while(g, |st| !st.open).unwrap();
        g.waiting -= 1;
        let r = self.files.write(file, mask);
        if r.is_ok() {
            g.writes.push((file, mask.to_string()));
        }
        r
    }
    fn read_back(&self, file: MaskFile) -> io::Result<(CpuSet, Option<CpuSet>)> {
        self.files.read_back(file)
    }
    fn irqbalance(&self) -> Option<u32> {
        self.gate.0.0.lock().unwrap().irqbalance_lookups += 1;
        None
    }
}

/// Started (IRQ 24, the default and the workqueue on 0, housekeeping 0)
/// with the gate open, then the gate closed and the counts cleared.
fn started() -> (Steering<Gated>, Reporter<Vec<u8>>, Stats, Gate) {
    let gate = Gate::open();
    let opts = Options {
        observe: false,
        restore_on_exit: true,
    };
    let files = Gated {
        files: FakeFiles::new(),
        gate: gate.clone(),
    };
    let mut st = Steering::new(topo("0-1"), s("0"), rules(), vec![], files, &opts);
    let mut rep = Reporter::new(Vec::new(), Format::Json, false);
    let mut stats = Stats::default();
    assert!(
        st.first_scan(&rules(), &[], &mut rep, &mut stats)
            .is_empty()
    );
    gate.set(false);
    *gate.0.0.lock().unwrap() = GateState::default();
    (st, rep, stats, gate)
}

/// Every write after start-up, in order: what the worker did.
fn writes(gate: &Gate) -> Vec<(MaskFile, String)> {
    gate.state(|g| g.writes.clone())
}

fn all_three(mask: &str) -> Vec<(MaskFile, String)> {
    [MaskFile::IrqDefault, MaskFile::Irq(24), MaskFile::Workqueue]
        .into_iter()
        .map(|f| (f, mask.to_string()))
        .collect()
}

#[test]
fn a_write_waiting_on_the_kernel_does_not_hold_the_loop() {
    let (st, rep, mut stats, gate) = started();
    let (mut core, mut maps) = khugepaged_on("0-3");
    let worker = SteerWorker::spawn(st, rep).unwrap();
    let (tx, handled) = mpsc::channel();
    // The loop, on its own thread: a hotplug step that the IRQs follow
    // (housekeeping grows to 0-1: three writes), then a control request
    // (khugepaged to prefer 2-3). Against the steering on the loop
    // (`Steering::sync` in place of `follow`) the request waited for the
    // gate and this test failed.
    let event_loop = thread::spawn(move || {
        worker.follow(&topo("0-1"), &s("0-1"));
        core.register(
            Target::Comm("khugepaged".into()),
            Preference::Cpus(crate::daemon::tests::set("2-3")),
            false,
            "uid 0, pid 4242",
            &mut maps,
        )
        .unwrap();
        tx.send(core.kernel.sets.clone()).unwrap();
        worker
    });
    assert!(
        gate.wait(|g| g.waiting == 1),
        "the first write is under way"
    );
    let sets = handled.recv_timeout(Duration::from_secs(2));
    let still_waiting = gate.state(|g| g.waiting);
    gate.set(true);
    let worker = event_loop.join().unwrap();
    assert_eq!(
        sets.expect("the control request is handled while the write waits"),
        [(38, "2-3".to_string())]
    );
    assert_eq!(still_waiting, 1);
    // Once the kernel lets go the job ends (the masks are their originals
    // again: nothing to restore).
    assert!(gate.wait(|g| g.writes.len() == 3), "{:?}", writes(&gate));
    worker.stop();
    assert_eq!(worker.finish(Duration::from_secs(5), &mut stats), Some(0));
    assert_eq!(writes(&gate), all_three("0-1"));
    assert_eq!((stats.refused, stats.errors), (0, 0));
}

#[test]
fn follows_queued_behind_a_waiting_write_make_one_more_scan() {
    let (st, rep, mut stats, gate) = started();
    let worker = SteerWorker::spawn(st, rep).unwrap();
    worker.follow(&topo("0-1"), &s("0-1"));
    assert!(
        gate.wait(|g| g.waiting == 1),
        "the first job waits on a write"
    );
    // A storm: housekeeping back and forth, a rescan among them; the last
    // says housekeeping 0.
    for i in 0..100 {
        let hk = if i % 2 == 0 { "0-1" } else { "0" };
        if i == 50 {
            worker.rescan(&topo("0-1"), &s(hk));
        } else {
            worker.follow(&topo("0-1"), &s(hk));
        }
    }
    gate.set(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker.published.borrow().jobs < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    // Nothing else is left for it to do.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(worker.published.borrow().jobs, 2);
    assert_eq!(gate.state(|g| (g.scans, g.irqbalance_lookups)), (2, 1));
    assert_eq!(writes(&gate), [all_three("0-1"), all_three("0")].concat());
    let rows = worker.rows();
    let irq24 = rows.iter().find(|r| r.irq == Some(24)).unwrap();
    assert_eq!((irq24.applied.as_str(), irq24.current.as_str()), ("0", "0"));
    worker.stop();
    assert_eq!(worker.finish(Duration::from_secs(5), &mut stats), Some(3));
}

#[test]
fn a_reload_is_answered_with_what_the_worker_changed_and_its_counts_reach_the_core() {
    let (st, rep, mut stats, gate) = started();
    gate.set(true);
    let mut worker = SteerWorker::spawn(st, rep).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // No rules: the nvme IRQ (kernel managed) loses its rule, nothing else
    // changes.
    let ticket = worker.replace_rules(vec![], vec![]);
    let changed =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), ticket.applied()).await });
    assert_eq!(changed.unwrap(), Some(1));
    // A scan that fails is an error, counted by the worker and added to
    // the core's once.
    gate.0.0.lock().unwrap().fail_scans = true;
    stats.errors = 7;
    worker.follow(&topo("0-1"), &s("0"));
    let follow_done = async {
        while worker.published.borrow().jobs < 2 {
            worker.changed().await.unwrap();
        }
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), follow_done).await })
        .unwrap();
    worker.absorb(&mut stats);
    assert_eq!(stats.errors, 8);
    worker.stop();
    assert_eq!(worker.finish(Duration::from_secs(5), &mut stats), Some(3));
    assert_eq!((stats.errors, stats.refused), (8, 0));
}

#[test]
fn stopping_finishes_the_job_under_way_and_drops_the_waiting_one() {
    let (st, rep, mut stats, gate) = started();
    let worker = SteerWorker::spawn(st, rep).unwrap();
    // Under way: housekeeping 0-1 (IRQ 24, the default and the workqueue
    // to 0-1), held at its first write; waiting: back to 0.
    worker.follow(&topo("0-1"), &s("0-1"));
    assert!(gate.wait(|g| g.waiting == 1));
    worker.follow(&topo("0-1"), &s("0"));
    worker.stop();
    let opener = thread::spawn({
        let gate = gate.clone();
        move || {
            thread::sleep(Duration::from_millis(200));
            gate.set(true);
        }
    });
    // The three writes of the job under way, none of the waiting one's;
    // those masks are their originals again, so nothing to restore.
    assert_eq!(worker.finish(Duration::from_secs(5), &mut stats), Some(0));
    opener.join().unwrap();
    assert_eq!(writes(&gate), all_three("0-1"));
    assert_eq!(gate.state(|g| g.scans), 1);
}

#[test]
fn a_worker_still_waiting_on_the_kernel_at_stop_is_not_waited_for_past_the_timeout() {
    let (st, rep, mut stats, gate) = started();
    let worker = SteerWorker::spawn(st, rep).unwrap();
    worker.follow(&topo("0-1"), &s("0-1"));
    assert!(gate.wait(|g| g.waiting == 1));
    worker.stop();
    let start = Instant::now();
    assert_eq!(worker.finish(Duration::from_millis(300), &mut stats), None);
    let waited = start.elapsed();
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(3)).contains(&waited),
        "{waited:?}"
    );
    // The kernel lets go: the detached thread ends the job and restores.
    gate.set(true);
    assert!(gate.wait(|g| g.writes.len() == 3), "{:?}", writes(&gate));
}
