//! Planning at scale: 10,000 kthreads on an 8,192-CPU, 8-node machine with
//! the embedded default policy, then a CPU going offline (every mask
//! recomputed).

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "a binary, test or bench target of affinity-user sees the library's dependencies too"
)]

use std::{collections::BTreeMap, hint::black_box};

use affinity::{
    commands::plan::{WhatIf, plan},
    kernel::sysfs::Machine,
    policy::{Config, CpuSet, Engine, Event, Kthread, PF_KTHREAD, PF_NO_SETAFFINITY, Topology},
};
use criterion::{Criterion, criterion_group, criterion_main};

const CPUS: u32 = 8192;
const NODES: u32 = 8;
const KTHREADS: u32 = 10_000;

fn machine() -> Machine {
    let all = CpuSet::full(CPUS);
    let per = CPUS / NODES;
    let nodes: BTreeMap<u32, CpuSet> = (0..NODES)
        .map(|n| {
            (
                n,
                CpuSet::parse(&format!("{}-{}", n * per, (n + 1) * per - 1), CPUS).unwrap(),
            )
        })
        .collect();
    let kthreads = (0..KTHREADS)
        .map(|i| {
            let (comm, flags, mask) = match i % 10 {
                0 => (format!("kswapd{}", i % NODES), PF_KTHREAD, all.clone()),
                1 => (
                    format!("ksoftirqd/{}", i % CPUS),
                    PF_KTHREAD | PF_NO_SETAFFINITY,
                    nodes[&0].clone(),
                ),
                _ => (format!("kworker-like/{i}"), PF_KTHREAD, all.clone()),
            };
            Kthread {
                pid: i + 2,
                comm,
                flags,
                start_time: i as u64,
                cpus_allowed: mask,
            }
        })
        .collect();
    Machine {
        kernel: "6.12.0".into(),
        topology: Topology {
            width: CPUS,
            possible: all.clone(),
            online: all,
            nodes,
        },
        isolated: CpuSet::parse("4096-8191", CPUS).unwrap(),
        nohz_full: CpuSet::empty(CPUS),
        cpuset_isolated: CpuSet::empty(CPUS),
        kthreads,
        steering: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let m = machine();
    let config = Config::embedded_default();
    c.bench_function("plan 10k kthreads on 8192 CPUs", |b| {
        b.iter(|| black_box(plan(&m, &config, &WhatIf::default())))
    });

    let hk = m.housekeeping(&config.housekeeping);
    let mut engine = Engine::new(m.topology.clone(), hk, config.rules.clone());
    for k in &m.kthreads {
        engine.handle(Event::KthreadNew(k.clone()));
    }
    let mut cpu = 0;
    c.bench_function("offline+online one CPU, 10k kthreads on 8192 CPUs", |b| {
        b.iter(|| {
            cpu = (cpu + 1) % 4096;
            black_box(engine.handle(Event::CpuOfflineBegin { cpu }));
            black_box(engine.handle(Event::CpuOnline { cpu, node: Some(0) }));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
