//! NUMA hotplug, only a VM can show it: run by `cargo xtask vm-test` in its
//! NUMA guest (`AFFINITY_VM_PROFILE=numa`): 4 vCPUs in two nodes, node 0 =
//! CPUs 0-1 and node 1 = CPUs 2-3, each with 1 GiB, booted with `maxcpus=2`
//! so node 1's CPUs are present but offline, and no isolation (housekeeping
//! is every CPU). Node 1 has memory, so kswapd1 and kcompactd1 exist from
//! boot although none of its CPUs is online.
//!
//! The default policy prefers a node's own CPUs for kswapdN and kcompactdN;
//! with none of them online the mask falls back to housekeeping ∩ online.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{fs, path::Path, time::Duration};

use affinity_tests::{
    MasksGuard, cpu_online, daemon::Daemon, kernel_tests_can_run, mask_of, pid_of, placed_mask,
    wait_for,
};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);
const SYS_CPU: &str = "/sys/devices/system/cpu";
const SYS_NODE: &str = "/sys/devices/system/node";

/// Node 1's kthreads, which follow CPUs 2-3.
const NODE1: [&str; 2] = ["kswapd1", "kcompactd1"];
/// Node 0's, which stay on CPUs 0-1.
const NODE0: [&str; 2] = ["kswapd0", "kcompactd0"];

/// These tests assert the NUMA guest's layout; anywhere else they cannot run.
fn in_numa_vm(test: &str) -> Option<MasksGuard> {
    if !kernel_tests_can_run(test) {
        return None;
    }
    let profile = std::env::var("AFFINITY_VM_PROFILE").unwrap_or_default();
    let node1 = Path::new(SYS_NODE).join("node1").exists();
    if profile != "numa" || !node1 {
        let why = format!(
            "needs the vm-test NUMA guest (AFFINITY_VM_PROFILE=numa and {SYS_NODE}/node1; \
             here: AFFINITY_VM_PROFILE={profile:?}, node1 {})",
            if node1 { "present" } else { "absent" }
        );
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("{test}: {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    Some(MasksGuard::save())
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<{}: {e}>", path.display()))
}

/// What the kernel says about CPUs and nodes, for the log and the panics.
fn topology() -> String {
    let mut s = format!(
        "online {}, present {}, possible {}",
        read(Path::new(SYS_CPU).join("online")),
        read(Path::new(SYS_CPU).join("present")),
        read(Path::new(SYS_CPU).join("possible"))
    );
    for n in 0..2 {
        s.push_str(&format!(
            "; node{n} cpulist {:?}",
            read(Path::new(SYS_NODE).join(format!("node{n}/cpulist")))
        ));
    }
    for cpu in 0..4 {
        let links: Vec<String> = fs::read_dir(Path::new(SYS_CPU).join(format!("cpu{cpu}")))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name.starts_with("node") && name[4..].parse::<u32>().is_ok()).then_some(name)
            })
            .collect();
        s.push_str(&format!("; cpu{cpu} links {links:?}"));
    }
    s
}

/// Brings a CPU that is offline at boot online, and takes it offline again
/// when dropped (also when the test panics): the next test, and the
/// guest's boot state, have CPUs 2-3 offline.
struct CpuOnline {
    cpu: u32,
    online: bool,
}

fn write_online(cpu: u32, online: bool) -> std::io::Result<()> {
    fs::write(
        Path::new(SYS_CPU).join(format!("cpu{cpu}/online")),
        if online { "1" } else { "0" },
    )
}

impl CpuOnline {
    fn new(cpu: u32) -> Self {
        assert!(!cpu_online(cpu), "cpu{cpu} is already online");
        // Armed before the write: a write that fails half-way still gets
        // the CPU taken back offline.
        let guard = CpuOnline { cpu, online: true };
        write_online(cpu, true).unwrap_or_else(|e| panic!("onlining cpu{cpu}: {e}"));
        guard
    }

    /// Takes the CPU offline now, as a step of the test.
    fn offline(mut self) {
        write_online(self.cpu, false).unwrap_or_else(|e| panic!("offlining cpu{}: {e}", self.cpu));
        self.online = false;
    }
}

impl Drop for CpuOnline {
    fn drop(&mut self) {
        if !self.online {
            return;
        }
        // Retry: a write can fail with EBUSY while another hotplug operation
        // is in flight.
        for _ in 0..50 {
            if (write_online(self.cpu, false).is_ok() || !cpu_online(self.cpu))
                && !cpu_online(self.cpu)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("FAILED to take cpu{} back offline", self.cpu);
    }
}

/// The daemon's events, one JSON line each.
fn timeline(events: &[Value]) -> String {
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the timeline says about each violation: one seen on CPU c before
/// the daemon's `hotplug` event for c coming online is a run the daemon
/// judged with the pre-hotplug mask. On 6.1 and 6.12 the kernel's own
/// `kcompactd_cpu_online` (mm/compaction.c, a CPUHP_AP_ONLINE_DYN callback,
/// gone in 6.14) sets every kcompactdN to its node's CPUs whenever a CPU
/// comes online, before that event.
fn explain_violations(events: &[Value], bad: &[&Value]) -> String {
    let mut s = String::new();
    for v in bad {
        let Some(at) = events.iter().position(|e| e == *v) else {
            continue;
        };
        let early = events[at..]
            .iter()
            .any(|e| e["type"] == "hotplug" && e["online"] == true && e["cpu"] == v["cpu"]);
        if early {
            s.push_str(&format!(
                "\n  {v}: before the daemon's hotplug event for cpu{} online; the daemon \
                 judged the run with the mask it had before the hotplug (for kcompactd1: \
                 the kernel's kcompactd_cpu_online had already moved it to node 1's CPUs)",
                v["cpu"]
            ));
        }
    }
    s
}

struct Kthreads {
    node0: Vec<(&'static str, u32)>,
    node1: Vec<(&'static str, u32)>,
}

impl Kthreads {
    fn find() -> Self {
        let pids = |names: [&'static str; 2]| names.map(|n| (n, pid_of(n))).to_vec();
        Kthreads {
            node0: pids(NODE0),
            node1: pids(NODE1),
        }
    }

    fn masks(&self) -> String {
        self.node0
            .iter()
            .chain(&self.node1)
            .map(|(n, p)| format!("{n}({p})={}", mask_of(*p)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Asserts node 0's and node 1's kthreads have these masks exactly,
    /// right now; on a mismatch, says whether they got there later.
    fn check(&self, d: &Daemon, step: &str, node0: &str, node1: &str) {
        let wrong = || -> Vec<String> {
            self.node0
                .iter()
                .map(|(n, p)| (n, p, node0))
                .chain(self.node1.iter().map(|(n, p)| (n, p, node1)))
                .filter_map(|(n, p, want)| {
                    let got = placed_mask(*p);
                    (got != want).then(|| format!("{n}({p}) has {got}, expected {want}"))
                })
                .collect()
        };
        let now = wrong();
        if now.is_empty() {
            eprintln!("vm_numa: {step}: {}", self.masks());
            return;
        }
        // Right after a CPU comes online, 5.10's cpuset has not added it to
        // its effective CPUs yet (a workqueue does that), and the kernel
        // narrows the mask the daemon sets. The daemon says so (`refused`:
        // "the kernel set ... instead") and tries again every 50 ms: those
        // kthreads must be right within 1.5 s, before a 2 s rescan would.
        // Narrowed ("the kernel set ... instead") or, when the mask holds
        // only the new CPU, refused outright (EINVAL): both the cpuset's
        // lag. A daemon under SCHED_FIFO (the default) sets the masks soon
        // enough after the step to meet the refusal as often as the
        // narrowing.
        let narrowed: Vec<u32> = d
            .events()
            .iter()
            .filter(|e| {
                e["type"] == "refused"
                    && e["message"].as_str().is_some_and(|m| {
                        m.starts_with("the kernel set ")
                            || m.ends_with("Invalid argument (os error 22)")
                    })
            })
            .filter_map(|e| e["pid"].as_u64().map(|p| p as u32))
            .collect();
        let all_narrowed = self
            .node0
            .iter()
            .chain(self.node1.iter())
            .filter(|(n, p)| now.iter().any(|w| w.starts_with(&format!("{n}({p})"))))
            .all(|(_, p)| narrowed.contains(p));
        if all_narrowed && wait_for(3 * SECOND / 2, || wrong().is_empty().then_some(())).is_some() {
            eprintln!(
                "vm_numa: {step}: {} (narrowed by the kernel's cpuset at first: {})",
                self.masks(),
                now.join("; ")
            );
            return;
        }
        let later = wait_for(3 * SECOND, || wrong().is_empty().then_some(()));
        panic!(
            "{step}: {}{}\nmasks now: {}\ntopology: {}\nevents:\n{}",
            now.join("; "),
            if later.is_some() {
                " (right within 3 s: late, not within the hotplug step)"
            } else {
                " (still wrong 3 s later)"
            },
            self.masks(),
            topology(),
            timeline(&d.events())
        );
    }
}

/// Waits for the daemon's report that the transition (`cpu`, `online`) is
/// handled, among the events after the first `skip`; checks its `hotplug`
/// event came first.
fn wait_handled(d: &mut Daemon, skip: usize, cpu: u32, online: bool) {
    let is = |e: &Value, kind: &str| e["type"] == kind && e["cpu"] == cpu && e["online"] == online;
    let handled = wait_for(20 * SECOND, || {
        let since = d.events_since(skip);
        let at = since.iter().position(|e| is(e, "hotplug_handled"))?;
        Some((since, at))
    });
    let Some((since, at)) = handled else {
        panic!(
            "no hotplug_handled for cpu{cpu} online={online} within 20 s (daemon alive: {}); \
             topology: {}; events since the step:\n{}",
            d.is_alive(),
            topology(),
            timeline(&d.events_since(skip))
        );
    };
    eprintln!("vm_numa: {}", since[at]);
    if !since[..at].iter().any(|e| is(e, "hotplug")) {
        panic!(
            "cpu{cpu} online={online}: hotplug_handled without a hotplug event before it; \
             events since the step:\n{}",
            timeline(&since)
        );
    }
}

#[test]
fn node1_kthreads_follow_node1_cpus_through_hotplug() {
    let Some(_masks) = in_numa_vm("node1_kthreads_follow_node1_cpus_through_hotplug") else {
        return;
    };
    eprintln!("vm_numa: boot topology: {}", topology());
    // cpu0 has no `online` file: the kernel's list says it all.
    assert_eq!(
        read(Path::new(SYS_CPU).join("online")),
        "0-1",
        "the NUMA guest boots with CPUs 0-1 online and 2-3 offline (maxcpus=2): {}",
        topology()
    );
    let k = Kthreads::find();
    eprintln!("vm_numa: before the daemon: {}", k.masks());

    let mut d = Daemon::start(&[]);
    let started = d
        .events()
        .into_iter()
        .find(|e| e["type"] == "started")
        .expect("the started event");
    eprintln!("vm_numa: {started}");
    // H = every CPU (no isolation), O = 0-1: node 1 has no online CPU, so its
    // kthreads fall back to H ∩ O.
    // The initial pass may still be applying after `started`.
    wait_for(5 * SECOND, || {
        k.node0
            .iter()
            .chain(&k.node1)
            .all(|(_, p)| mask_of(*p) == "0-1")
            .then_some(())
    });
    k.check(&d, "start, CPUs 2-3 offline", "0-1", "0-1");

    let mut skip = d.events().len();
    let cpu2 = CpuOnline::new(2);
    wait_handled(&mut d, skip, 2, true);
    k.check(&d, "cpu2 online", "0-1", "2");

    skip = d.events().len();
    let cpu3 = CpuOnline::new(3);
    wait_handled(&mut d, skip, 3, true);
    k.check(&d, "cpu3 online", "0-1", "2-3");

    skip = d.events().len();
    cpu3.offline();
    wait_handled(&mut d, skip, 3, false);
    k.check(&d, "cpu3 offline again", "0-1", "2");

    skip = d.events().len();
    cpu2.offline();
    wait_handled(&mut d, skip, 2, false);
    k.check(
        &d,
        "cpu2 offline again: node 1 has no online CPU",
        "0-1",
        "0-1",
    );

    assert!(d.is_alive());
    let events = d.events();
    let pids: Vec<u32> = k.node1.iter().map(|(_, p)| *p).collect();
    let bad: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["type"] == "violation"
                && (NODE1.iter().any(|n| e["comm"] == *n)
                    || e["pid"]
                        .as_u64()
                        .is_some_and(|p| pids.contains(&(p as u32))))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "violations by node 1's kthreads: {bad:?}{}\nall events:\n{}",
        explain_violations(&events, &bad),
        timeline(&events)
    );
    let errors: Vec<&Value> = events.iter().filter(|e| e["type"] == "error").collect();
    assert!(errors.is_empty(), "daemon errors: {errors:#?}");
    for (cpu, online) in [(2, true), (3, true), (3, false), (2, false)] {
        for kind in ["hotplug", "hotplug_handled"] {
            let n = events
                .iter()
                .filter(|e| e["type"] == kind && e["cpu"] == cpu && e["online"] == online)
                .count();
            assert_eq!(
                n,
                1,
                "{kind} events for cpu{cpu} online={online}:\n{}",
                timeline(&events)
            );
        }
    }
    assert!(d.stop().success());
}
