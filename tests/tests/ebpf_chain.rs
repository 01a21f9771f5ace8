//! The eBPF chain end to end on the running kernel: the embedded object
//! loads, attaches to the cpuhp tracepoints, and hotplug of cpu1 reaches
//! userspace through the ring buffer with the right CPU and direction.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use affinity::{
    kernel::{
        bpf::{EMBEDDED_OBJECT, LogSink, Observer, ObserverConfig},
        btf::KernelBtf,
        wire::{HotplugPhase, WireEvent},
    },
    policy::CpuSet,
};
use affinity_tests::{CpuOffline, all_cpus_online, kernel_tests_can_run};

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl LogSink for Logs {
    fn log(&self, _level: log::Level, message: String) {
        self.0.lock().unwrap().push(message);
    }
}

fn load(logs: Logs) -> Observer {
    let btf = KernelBtf::read("/sys/kernel/btf/vmlinux".as_ref())
        .unwrap_or_else(|e| panic!("reading the kernel's BTF: {e}"));
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let width = CpuSet::parse(&possible, 8192).unwrap().last().unwrap() + 1;
    let cfg = ObserverConfig {
        btf,
        daemon_tgid: std::process::id(),
        report_interval: Duration::from_millis(100),
        width,
        online: CpuSet::parse(&online, width).unwrap().words().to_vec(),
        init_pidns: affinity::kernel::bpf::init_pidns("/proc".as_ref()).unwrap(),
        hotplug_ring_bytes: None,
        attribution: affinity::kernel::bpf::Attribution::Off,
        noise: true,
    };
    Observer::load(EMBEDDED_OBJECT, &cfg, logs)
        .unwrap_or_else(|e| panic!("loading the eBPF object: {e:#}"))
}

/// Collects hotplug events until `done` says the wanted ones are there.
async fn hotplug_events(
    obs: &mut Observer,
    seen: &mut Vec<(u32, HotplugPhase)>,
    done: impl Fn(&[(u32, HotplugPhase)]) -> bool,
) {
    let mut batch = Vec::new();
    let wait = async {
        while !done(seen) {
            obs.next_batch(&mut batch)
                .await
                .expect("reading the ring buffer");
            for event in batch.drain(..) {
                if let WireEvent::Hotplug { cpu, phase, .. } = event.expect("a well-formed record")
                {
                    seen.push((cpu, phase));
                }
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        panic!("hotplug events did not arrive within 10 s; got {seen:?}");
    }
}

#[test]
fn cpu1_offline_and_online_reach_userspace() {
    if !kernel_tests_can_run("cpu1_offline_and_online_reach_userspace") {
        return;
    }
    all_cpus_online();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let logs = Logs::default();
        let mut obs = load(logs.clone());
        let mut seen = Vec::new();
        {
            let _offline = CpuOffline::new(1);
            hotplug_events(&mut obs, &mut seen, |s| {
                s.contains(&(1, HotplugPhase::OfflineDone))
            })
            .await;
        }
        hotplug_events(&mut obs, &mut seen, |s| {
            s.contains(&(1, HotplugPhase::OnlineDone))
        })
        .await;

        assert_eq!(
            seen,
            [
                (1, HotplugPhase::OfflineBegin),
                (1, HotplugPhase::OfflineDone),
                (1, HotplugPhase::OnlineDone)
            ],
            "each transition once, in order, for cpu1"
        );
        let counters = obs.counters().expect("reading counters");
        assert_eq!(counters.dropped, 0, "no record may be lost at this rate");
        assert_eq!(counters.hotplug_dropped, 0);
        // The programs' own view: one step down, one up, and cpu1 online
        // again; nothing acknowledged, so the window is still open.
        let (seq, online) = obs.hotplug_view().expect("reading the view");
        assert_eq!(seq, 2, "one step per direction");
        let now = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        let width = online.len() as u32 * 64;
        assert_eq!(
            CpuSet::from_words(width, &online).to_string(),
            CpuSet::parse(&now, width).unwrap().to_string()
        );
        // aya-log records travel their own ring buffer; give the last one a moment.
        let mut batch = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), obs.next_batch(&mut batch)).await;
        let logs = logs.0.lock().unwrap();
        assert!(
            logs.iter().any(|l| l.starts_with("cpu1 teardown starts")),
            "the aya-log record of the teardown reached userspace: {logs:?}"
        );
    });
}
