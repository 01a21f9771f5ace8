//! Engine tests: the policy's promises, as unit and property tests.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{config::CommGlob, *};

const W: u32 = 8;

fn set(list: &str) -> CpuSet {
    CpuSet::parse(list, W).unwrap()
}

fn topo(online: &str) -> Topology {
    Topology {
        width: W,
        possible: set("0-7"),
        online: set(online),
        nodes: BTreeMap::from([(0, set("0-3")), (1, set("4-7"))]),
    }
}

fn kt(pid: u32, comm: &str, mask: &str) -> Kthread {
    Kthread {
        pid,
        comm: comm.into(),
        flags: PF_KTHREAD,
        start_time: pid as u64,
        cpus_allowed: set(mask),
    }
}

fn rule(comm: &str, prefer: Preference) -> Rule {
    Rule {
        target: Target::Comm(comm.into()),
        prefer,
    }
}

fn sets(actions: &[Action]) -> Vec<(u32, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetAffinity { pid, mask, .. } => Some((*pid, mask.to_string())),
            _ => None,
        })
        .collect()
}

#[test]
fn applied_falls_back_from_preferred_to_housekeeping_to_online() {
    let mut e = Engine::new(
        topo("0-7"),
        set("0-3"),
        vec![rule("a", Preference::Cpus(set("2,6")))],
    );
    assert_eq!(
        sets(&e.handle(Event::KthreadNew(kt(1, "a", "0-7")))),
        [(1, "2".into())]
    );
    // CPU 2 goes: P∩H∩O is empty, so H∩O.
    assert_eq!(
        sets(&e.handle(Event::CpuOfflineBegin { cpu: 2 })),
        [(1, "0-1,3".into())]
    );
    // Every housekeeping CPU goes: O.
    for cpu in [0, 1, 3] {
        e.handle(Event::CpuOfflineBegin { cpu });
    }
    assert_eq!(e.entry(1).unwrap().applied.to_string(), "4-7");
    // CPU 2 returns: back to the preference.
    assert_eq!(
        sets(&e.handle(Event::CpuOnline {
            cpu: 2,
            node: Some(0)
        })),
        [(1, "2".into())]
    );
}

#[test]
fn offline_begin_acts_at_once_and_done_changes_nothing_more() {
    let mut e = Engine::new(
        topo("0-7"),
        set("0-7"),
        vec![rule("a", Preference::Cpus(set("1-2")))],
    );
    e.handle(Event::KthreadNew(kt(1, "a", "0-7")));
    assert_eq!(
        sets(&e.handle(Event::CpuOfflineBegin { cpu: 1 })),
        [(1, "2".into())]
    );
    assert!(e.handle(Event::CpuOfflineDone { cpu: 1 }).is_empty());
}

#[test]
fn a_node_gaining_its_first_cpu_pulls_its_kthreads_onto_it() {
    let mut t = topo("0-3");
    t.nodes.insert(2, CpuSet::empty(W)); // memory-only node
    let mut e = Engine::new(t, set("0-7"), vec![rule("kswapd*", Preference::OwnNode)]);
    // No CPU on node 2 yet: last resort, housekeeping ∩ online.
    e.handle(Event::KthreadNew(kt(9, "kswapd2", "0-7")));
    assert_eq!(e.entry(9).unwrap().applied.to_string(), "0-3");
    // CPU 6 comes online on node 2.
    assert_eq!(
        sets(&e.handle(Event::CpuOnline {
            cpu: 6,
            node: Some(2)
        })),
        [(9, "6".into())]
    );
    // And a second one joins the preference as it comes.
    assert_eq!(
        sets(&e.handle(Event::CpuOnline {
            cpu: 7,
            node: Some(2)
        })),
        [(9, "6-7".into())]
    );
}

#[test]
fn unprefer_by_name_of_a_glob_registration_names_the_glob() {
    let mut e = Engine::new(topo("0-7"), set("0-7"), vec![]);
    e.handle(Event::KthreadNew(kt(5, "khugepaged", "0-7")));
    e.register(
        Target::Comm(CommGlob::new("khuge*")),
        Preference::Cpus(set("0")),
        false,
        "uid 0, pid 42",
    )
    .unwrap();
    let regs = e.registrations();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].rule.target.to_string(), "khuge*");
    assert_eq!(regs[0].by, "uid 0, pid 42");
    // prefer and unprefer agree that khugepaged is registered, and both
    // name the registration that holds it.
    let again = e
        .register(
            Target::Comm("khugepaged".into()),
            Preference::Cpus(set("1")),
            false,
            "test",
        )
        .unwrap_err();
    assert_eq!(
        again.to_string(),
        "khugepaged already has a runtime preference (0, registered as \"khuge*\"); pass --update to change it"
    );
    let err = e
        .unregister(&Target::Comm("khugepaged".into()))
        .unwrap_err();
    assert_eq!(
        err,
        RegistryError::RegisteredVia {
            target: "khugepaged".into(),
            via: "khuge*".into()
        }
    );
    assert!(
        err.to_string().contains("affinity unprefer 'khuge*'"),
        "{err}"
    );
    assert_eq!(
        e.entry(5).unwrap().applied.to_string(),
        "0",
        "nothing removed"
    );
    e.unregister(&Target::Comm(CommGlob::new("khuge*")))
        .unwrap();
    assert!(e.registrations().is_empty());
    assert!(matches!(
        e.unregister(&Target::Comm("khugepaged".into())),
        Err(RegistryError::NotRegistered(_))
    ));
}

#[test]
fn registering_twice_fails_and_update_succeeds() {
    let mut e = Engine::new(topo("0-7"), set("0-7"), vec![]);
    e.handle(Event::KthreadNew(kt(5, "khugepaged", "0-7")));
    assert_eq!(
        sets(
            &e.register(
                Target::Comm("khugepaged".into()),
                Preference::Cpus(set("1")),
                false,
                "test",
            )
            .unwrap()
        ),
        [(5, "1".into())]
    );
    let err = e
        .register(Target::Pid(5), Preference::Cpus(set("2")), false, "test")
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::AlreadyRegistered { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--update"));
    assert_eq!(
        e.entry(5).unwrap().applied.to_string(),
        "1",
        "a refused registration changes nothing"
    );
    assert_eq!(
        sets(
            &e.register(Target::Pid(5), Preference::Cpus(set("2")), true, "test")
                .unwrap()
        ),
        [(5, "2".into())]
    );
    assert!(matches!(
        e.register(
            Target::Comm("nope".into()),
            Preference::Housekeeping,
            false,
            "test"
        ),
        Err(RegistryError::NoSuchKthread(_))
    ));
    assert!(matches!(
        e.register(Target::Pid(5), Preference::Node(9), true, "test"),
        Err(RegistryError::NoSuchNode(9))
    ));
    e.unregister(&Target::Pid(5)).unwrap();
    // The comm registration still holds pid 5: unprefer says so.
    assert_eq!(
        e.unregister(&Target::Pid(5)),
        Err(RegistryError::RegisteredVia {
            target: "pid 5".into(),
            via: "khugepaged".into()
        })
    );
    assert_eq!(e.entry(5).unwrap().applied.to_string(), "1");
    e.unregister(&Target::Comm("khugepaged".into())).unwrap();
    assert!(matches!(
        e.unregister(&Target::Pid(5)),
        Err(RegistryError::NotRegistered(_))
    ));
}

#[test]
fn non_kthreads_are_never_acted_on() {
    let mut e = Engine::new(
        topo("0-7"),
        set("0-3"),
        vec![rule("*", Preference::Housekeeping)],
    );
    let mut bash = kt(100, "bash", "0-7");
    bash.flags = 0;
    assert!(e.handle(Event::KthreadNew(bash)).is_empty());
    assert!(e.entry(100).is_none());
    assert!(e.handle(Event::CpuOfflineBegin { cpu: 1 }).is_empty());
    assert!(matches!(
        e.register(Target::Pid(100), Preference::Housekeeping, false, "test"),
        Err(RegistryError::NoSuchKthread(_))
    ));
}

#[test]
fn pinned_kthreads_are_reported_once_and_never_set() {
    let mut e = Engine::new(
        topo("0-7"),
        set("0-3"),
        vec![rule("*", Preference::Housekeeping)],
    );
    let mut k = kt(14, "ksoftirqd/5", "5");
    k.flags |= PF_NO_SETAFFINITY;
    let a = e.handle(Event::KthreadNew(k));
    assert_eq!(
        a,
        [Action::ReportPinned {
            pid: 14,
            comm: "ksoftirqd/5".into()
        }]
    );
    assert!(e.handle(Event::CpuOfflineBegin { cpu: 1 }).is_empty());
    assert!(e.handle(Event::HousekeepingChanged(set("0"))).is_empty());
    assert!(matches!(
        e.register(Target::Pid(14), Preference::Housekeeping, false, "test"),
        Err(RegistryError::Pinned { .. })
    ));
}

#[test]
fn foreign_changes_are_reported_and_undone_and_violations_judged() {
    let mut e = Engine::new(
        topo("0-7"),
        set("0-7"),
        vec![rule("a", Preference::Cpus(set("0")))],
    );
    e.handle(Event::KthreadNew(kt(1, "a", "0")));
    let a = e.handle(Event::AffinityChanged {
        pid: 1,
        mask: set("3"),
        by_pid: Some(7),
        by_comm: Some("taskset".into()),
    });
    assert!(matches!(
        &a[0],
        Action::ReportAffinityChanged {
            by_pid: Some(7),
            ..
        }
    ));
    assert_eq!(sets(&a), [(1, "0".into())]);
    let ran = |cpu| Event::Ran {
        pid: 1,
        comm: "from the record".into(),
        cpu,
        run_ns: 42_000,
    };
    assert_eq!(
        e.handle(ran(3)),
        [Action::ReportViolation {
            pid: 1,
            comm: "a".into(),
            cpu: 3,
            allowed: set("0"),
            run_ns: 42_000,
        }]
    );
    // The kernel judged it against every online set of its hotplug step,
    // so the engine does not judge again against the mask of now.
    assert_eq!(e.handle(ran(0)).len(), 1);
}

#[test]
fn exit_forgets_and_a_reused_pid_is_a_new_kthread() {
    let mut e = Engine::new(
        topo("0-7"),
        set("0-7"),
        vec![rule("a", Preference::Cpus(set("1")))],
    );
    e.handle(Event::KthreadNew(kt(1, "a", "0-7")));
    assert_eq!(
        e.handle(Event::KthreadExit { pid: 1 }),
        [
            Action::ClearPolicy { pid: 1 },
            Action::Forget {
                pid: 1,
                comm: Some("a".into())
            }
        ]
    );
    assert!(e.handle(Event::KthreadExit { pid: 1 }).is_empty());
    let mut again = kt(1, "b", "0-7");
    again.start_time = 99;
    assert!(
        e.handle(Event::KthreadNew(again)).is_empty(),
        "no rule for b: unmanaged"
    );
    assert_eq!(e.entry(1).unwrap().start_time, 99);
}

fn arb_cpuset() -> impl Strategy<Value = CpuSet> {
    (0u64..256).prop_map(|bits| CpuSet::from_words(W, &[bits]))
}

fn arb_pref() -> impl Strategy<Value = Preference> {
    prop_oneof![
        arb_cpuset().prop_map(Preference::Cpus),
        Just(Preference::Housekeeping),
        (0u32..2).prop_map(Preference::Node),
        Just(Preference::OwnNode),
    ]
}

#[derive(Clone, Debug)]
enum Hp {
    Off(u32),
    On(u32),
    Hk(CpuSet),
}

fn arb_hp() -> impl Strategy<Value = Hp> {
    prop_oneof![
        (0u32..W).prop_map(Hp::Off),
        (0u32..W).prop_map(Hp::On),
        arb_cpuset().prop_map(Hp::Hk)
    ]
}

fn engine_with(prefs: &[Preference], hk: &CpuSet, online: &CpuSet) -> Engine {
    let rules = prefs
        .iter()
        .enumerate()
        .map(|(i, p)| rule(&format!("k{i}"), p.clone()))
        .collect();
    let mut t = topo("0-7");
    t.online = online.clone();
    let mut e = Engine::new(t, hk.clone(), rules);
    for i in 0..prefs.len() {
        perfect_kernel(
            &mut e,
            Event::KthreadNew(kt(i as u32 + 1, &format!("k{i}"), "0-7")),
        );
    }
    e
}

/// Handles `event` and answers every SetAffinity as a kernel that takes
/// every mask would, until nothing more is asked.
fn perfect_kernel(e: &mut Engine, event: Event) {
    let mut queue = std::collections::VecDeque::from(e.handle(event));
    while let Some(a) = queue.pop_front() {
        if let Action::SetAffinity {
            pid,
            start_time,
            mask,
            ..
        } = a
        {
            queue.extend(e.handle(Event::Applied {
                pid,
                start_time,
                requested: mask.clone(),
                mask,
            }));
        }
    }
}

fn check_invariants(e: &Engine) -> Result<(), TestCaseError> {
    let o = e.online().clone();
    let ho = e.housekeeping().and(&o);
    for en in e.entries().filter(|en| en.managed()) {
        prop_assert!(
            en.applied.is_subset(&o) || o.is_empty(),
            "applied {} ⊄ online {}",
            en.applied,
            o
        );
        if !ho.is_empty() {
            prop_assert!(
                en.applied.is_subset(&ho),
                "applied {} ⊄ H∩O {}",
                en.applied,
                ho
            );
        }
        if let Some(p) = &en.preferred {
            let pho = p.and(&ho);
            if !pho.is_empty() {
                prop_assert_eq!(&en.applied, &pho);
            }
        }
        prop_assert_eq!(
            &en.current,
            &en.applied,
            "every change was turned into a SetAffinity, and its result taken"
        );
        prop_assert!(en.requested.is_none(), "nothing left unanswered");
    }
    Ok(())
}

proptest! {
    #[test]
    fn invariants_hold_after_any_event_sequence(
        prefs in proptest::collection::vec(arb_pref(), 1..6),
        hk in arb_cpuset(),
        events in proptest::collection::vec(arb_hp(), 0..30),
    ) {
        let mut e = engine_with(&prefs, &hk, &set("0-7"));
        check_invariants(&e)?;
        for ev in events {
            let (event, cpu) = match ev {
                Hp::Off(c) => (Event::CpuOfflineBegin { cpu: c }, Some(c)),
                Hp::On(c) => (Event::CpuOnline { cpu: c, node: Some(c / 4) }, Some(c)),
                Hp::Hk(h) => (Event::HousekeepingChanged(h), None),
            };
            // The kernel never offlines its last CPU.
            if matches!(event, Event::CpuOfflineBegin { .. }) && e.online().weight() == 1 && e.online().contains(cpu.unwrap()) {
                continue;
            }
            perfect_kernel(&mut e, event);
            check_invariants(&e)?;
        }
    }

    #[test]
    fn hotplug_round_trips_do_not_drift(
        prefs in proptest::collection::vec(arb_pref(), 1..6),
        hk in arb_cpuset(),
        cpus in proptest::collection::vec(1u32..W, 1..6),
    ) {
        let mut e = engine_with(&prefs, &hk, &set("0-7"));
        let start: Vec<CpuSet> = e.entries().map(|en| en.applied.clone()).collect();
        for c in &cpus {
            e.handle(Event::CpuOfflineBegin { cpu: *c });
            e.handle(Event::CpuOfflineDone { cpu: *c });
        }
        for c in cpus.iter().rev() {
            e.handle(Event::CpuOnline { cpu: *c, node: Some(c / 4) });
        }
        let end: Vec<CpuSet> = e.entries().map(|en| en.applied.clone()).collect();
        prop_assert_eq!(start, end);
    }

    #[test]
    fn non_kthreads_never_produce_actions(pref in arb_pref(), flags in any::<u32>()) {
        let mut e = Engine::new(topo("0-7"), set("0-3"), vec![rule("*", pref)]);
        let mut k = kt(1, "bash", "0-7");
        k.flags = flags & !PF_KTHREAD;
        prop_assert!(e.handle(Event::KthreadNew(k)).is_empty());
        let offline = e.handle(Event::CpuOfflineBegin { cpu: 2 });
        prop_assert!(offline.is_empty());
    }
}

#[test]
fn a_kernel_managed_kthread_is_set_only_where_the_preference_differs_from_the_kernels() {
    // Housekeeping 0-3 on a 7.x kernel: the kernel keeps every unbound
    // kthread on housekeeping ∩ online itself.
    let rules = vec![
        rule("kthreadd", Preference::Housekeeping),
        rule("narrow", Preference::Cpus(set("1"))),
    ];
    let mut e = Engine::new(topo("0-7"), set("0-3"), rules).with_kernel("7.3.4-cloud-amd64");
    // Already where the kernel put it: nothing to set.
    assert_eq!(
        sets(&e.handle(Event::KthreadNew(kt(2, "kthreadd", "0-3")))),
        []
    );
    assert_eq!(
        sets(&e.handle(Event::KthreadNew(kt(3, "narrow", "0-3")))),
        [(3, "1".into())]
    );
    e.handle(Event::Applied {
        pid: 3,
        start_time: 3,
        requested: set("1"),
        mask: set("1"),
    });
    // cpu2 goes: kthreadd can only run on 0-1,3 anyway; no mask is left behind.
    assert_eq!(sets(&e.handle(Event::CpuOfflineBegin { cpu: 2 })), []);
    assert_eq!(e.entry(2).unwrap().applied.to_string(), "0-1,3");
    // cpu1 goes: the narrow preference falls back to housekeeping ∩ online,
    // which the kernel would not do for it (its mask is 1): set.
    assert_eq!(
        sets(&e.handle(Event::CpuOfflineBegin { cpu: 1 })),
        [(3, "0,3".into())]
    );
    // The kernel re-affines kthreadd on online to what the policy says: left alone.
    e.handle(Event::CpuOnline {
        cpu: 2,
        node: Some(0),
    });
    assert_eq!(
        sets(&e.handle(Event::AffinityChanged {
            pid: 2,
            mask: set("0,2-3"),
            by_pid: None,
            by_comm: None,
        })),
        []
    );
    // Before 6.14 the kernel manages nothing: the same kthread is set.
    let mut old = Engine::new(
        topo("0-7"),
        set("0-3"),
        vec![rule("kthreadd", Preference::Housekeeping)],
    )
    .with_kernel("6.12.117");
    old.handle(Event::KthreadNew(kt(2, "kthreadd", "0-3")));
    assert_eq!(
        sets(&old.handle(Event::CpuOfflineBegin { cpu: 2 })),
        [(2, "0-1,3".into())]
    );
}

#[test]
fn replacing_the_rules_touches_only_kthreads_whose_result_changed() {
    let mut e = Engine::new(
        topo("0-7"),
        set("0-7"),
        vec![
            rule("khugepaged", Preference::Cpus(set("1"))),
            rule("kswapd*", Preference::Cpus(set("0"))),
        ],
    );
    for k in [
        kt(5, "khugepaged", "0-7"),
        kt(6, "kswapd0", "0-7"),
        kt(7, "oom_reaper", "0-7"),
    ] {
        e.handle(Event::KthreadNew(k));
    }
    // The engine's masks are in place (as the executor would report them).
    for (pid, mask) in [(5, "1"), (6, "0")] {
        e.handle(Event::Applied {
            pid,
            start_time: pid as u64,
            requested: set(mask),
            mask: set(mask),
        });
    }
    let (actions, changed) = e.replace_rules(vec![
        rule("khugepaged", Preference::Cpus(set("1"))),
        rule("oom_reaper", Preference::Cpus(set("2-3"))),
    ]);
    assert_eq!(changed, 2, "kswapd0 loses its rule, oom_reaper gains one");
    assert_eq!(sets(&actions), [(7, "2-3".into())]);
    assert!(
        actions.iter().all(|a| !matches!(
            a,
            Action::SetPolicy { pid: 5, .. } | Action::SetAffinity { pid: 5, .. }
        )),
        "khugepaged's result did not change: untouched: {actions:?}"
    );
    assert!(
        actions.contains(&Action::ClearPolicy { pid: 6 }),
        "{actions:?}"
    );
    let k = e.entry(6).unwrap();
    assert_eq!(
        (k.state, k.applied.to_string()),
        (State::Unmanaged, "0".into()),
        "left where it is"
    );
    assert_eq!(e.entry(7).unwrap().rule.as_deref(), Some("oom_reaper"));
    // The same rules again: nothing at all.
    let (again, changed) = e.replace_rules(vec![
        rule("khugepaged", Preference::Cpus(set("1"))),
        rule("oom_reaper", Preference::Cpus(set("2-3"))),
    ]);
    assert_eq!((again.len(), changed), (0, 0), "{again:?}");
}

/// 6.12 with nohz_full=6-7: the kernel's own mask for khugepaged is 0-5.
fn on_6_12(rules: Vec<Rule>) -> Engine {
    Engine::new(topo("0-7"), set("0-5"), rules)
        .with_kernel("6.12.117-cloud-amd64")
        .with_boot_isolation(&set(""), &set("6-7"))
}

fn took(e: &mut Engine, pid: u32, mask: &str) -> Vec<Action> {
    e.handle(Event::Applied {
        pid,
        start_time: pid as u64,
        requested: set(mask),
        mask: set(mask),
    })
}

#[test]
fn a_kthread_the_daemon_stops_managing_goes_back_to_the_kernel_without_a_clip() {
    let narrow = || vec![rule("khugepaged", Preference::Cpus(set("0")))];
    let mut e = on_6_12(narrow());
    assert_eq!(
        sets(&e.handle(Event::KthreadNew(kt(7, "khugepaged", "0-5")))),
        [(7, "0".into())]
    );
    took(&mut e, 7, "0");
    // Its rule goes (a reload): the kernel's policy over every possible
    // CPU, so no user_cpus_ptr of ours clips the kernel's next re-affine.
    let (actions, changed) = e.replace_rules(Vec::new());
    assert_eq!((sets(&actions), changed), (vec![(7, "0-5".into())], 1));
    assert!(actions.contains(&Action::ClearPolicy { pid: 7 }));
    // What the kernel made of it is the kernel's: no refusal, no retry.
    assert_eq!(took(&mut e, 7, "0-5"), []);
    assert_eq!(e.entry(7).unwrap().current.to_string(), "0-5");
    assert_eq!(sets(&e.handle(Event::Tick)), []);

    // `unprefer` the same way, and only for what the daemon set.
    let mut e = on_6_12(Vec::new());
    e.handle(Event::KthreadNew(kt(7, "khugepaged", "0-5")));
    e.handle(Event::KthreadNew(kt(8, "oom_reaper", "0-5")));
    let t = |c: &str| Target::Comm(CommGlob::new(c));
    assert_eq!(
        sets(
            &e.register(t("khugepaged"), Preference::Cpus(set("0")), false, "t")
                .unwrap()
        ),
        [(7, "0".into())]
    );
    took(&mut e, 7, "0");
    assert_eq!(
        sets(&e.unregister(&t("khugepaged")).unwrap()),
        [(7, "0-5".into())]
    );
    // Registered where it already was: never set, so nothing to hand back.
    e.register(t("oom_reaper"), Preference::Cpus(set("0-5")), false, "t")
        .unwrap();
    assert_eq!(sets(&e.unregister(&t("oom_reaper")).unwrap()), []);
}

#[test]
fn a_stopping_daemon_hands_back_the_kernels_policy_or_someone_elses_mask() {
    let rules = vec![
        rule("khugepaged", Preference::Cpus(set("0"))),
        rule("oom_reaper", Preference::Cpus(set("0"))),
        rule("ksmd", Preference::Cpus(set("0-5"))),
    ];
    let mut e = on_6_12(rules);
    // The kernel's own mask; one another tool set; one never touched.
    e.handle(Event::KthreadNew(kt(7, "khugepaged", "0-5")));
    e.handle(Event::KthreadNew(kt(8, "oom_reaper", "2")));
    e.handle(Event::KthreadNew(kt(9, "ksmd", "0-5")));
    took(&mut e, 7, "0");
    took(&mut e, 8, "0");
    let back: Vec<(u32, String)> = e
        .handed_back()
        .map(|(k, mask)| (k.pid, mask.to_string()))
        .collect();
    assert_eq!(back, [(7, "0-5".into()), (8, "2".into())]);
}

#[test]
fn an_irq_thread_follows_its_irq_and_is_never_set() {
    // Every unbound kthread prefers housekeeping, as by default; the IRQ
    // thread's mask is its IRQ's, on isolated cpu 6 now.
    let mut e = Engine::new(
        topo("0-7"),
        set("0-3"),
        vec![rule("*", Preference::Housekeeping)],
    )
    .with_kernel("7.3.4-cloud-amd64");
    let actions = e.handle(Event::KthreadNew(kt(40, "irq/9-acpi", "6")));
    assert_eq!(sets(&actions), []);
    assert_eq!(
        actions,
        [Action::ReportFollowsIrq {
            pid: 40,
            comm: "irq/9-acpi".into(),
            irq: 9
        }]
    );
    let entry = e.entry(40).unwrap();
    assert_eq!((entry.follows_irq, entry.kernel_managed), (Some(9), false));
    // Not judged, not put back when the IRQ moves it, not retried.
    for a in [
        Event::CpuOfflineBegin { cpu: 6 },
        Event::AffinityChanged {
            pid: 40,
            mask: set("7"),
            by_pid: None,
            by_comm: None,
        },
        Event::Tick,
    ] {
        assert_eq!(sets(&e.handle(a)), []);
    }
    let t = Target::Comm(CommGlob::new("irq/9-acpi"));
    assert!(matches!(
        e.register(t, Preference::Cpus(set("0")), false, "t"),
        Err(RegistryError::FollowsIrq { irq: 9, .. })
    ));
}

#[test]
fn the_kernel_re_affining_a_kthread_it_manages_onto_the_policy_is_not_reported() {
    let mut e = Engine::new(
        topo("0-7"),
        set("0-3"),
        vec![rule("khugepaged", Preference::Housekeeping)],
    )
    .with_kernel("7.3.4-cloud-amd64");
    e.handle(Event::KthreadNew(kt(7, "khugepaged", "0-3")));
    e.handle(Event::CpuOfflineBegin { cpu: 3 });
    e.handle(Event::CpuOnline {
        cpu: 3,
        node: Some(0),
    });
    // The kernel's re-affine at the online step, heard from its fexit.
    let changed = |mask: &str| Event::AffinityChanged {
        pid: 7,
        mask: set(mask),
        by_pid: Some(30),
        by_comm: Some("cpuhp/3".into()),
    };
    assert_eq!(e.handle(changed("0-3")), []);
    // The same mask again: nothing either.
    assert_eq!(e.handle(changed("0-3")), []);
    // Somewhere the policy does not put it: said, and put back.
    let actions = e.handle(changed("5"));
    assert!(
        matches!(actions[0], Action::ReportAffinityChanged { pid: 7, .. }),
        "{actions:?}"
    );
    assert_eq!(sets(&actions), [(7, "0-3".into())]);
}

#[test]
fn a_kthread_the_kernel_keeps_in_place_across_an_offline_step_is_judged_by_its_real_mask() {
    let judged = |actions: &[Action]| -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SetPolicy { applied, .. } => Some(applied.to_string()),
                _ => None,
            })
            .collect()
    };
    let rules = || vec![rule("khugepaged", Preference::Housekeeping)];
    // 7.x: the kernel leaves khugepaged's mask 0-3 while cpu3 goes; until
    // the teardown deactivates cpu3 the scheduler may still put it there.
    let mut e = Engine::new(topo("0-7"), set("0-3"), rules()).with_kernel("7.3.4-cloud-amd64");
    e.handle(Event::KthreadNew(kt(7, "khugepaged", "0-3")));
    let actions = e.handle(Event::CpuOfflineBegin { cpu: 3 });
    assert_eq!(sets(&actions), []);
    assert_eq!(judged(&actions), ["0-3"]);
    assert_eq!(e.entry(7).unwrap().applied.to_string(), "0-2");
    // Before 6.14 the daemon narrows it, and judges by what it set.
    let mut e = Engine::new(topo("0-7"), set("0-3"), rules()).with_kernel("6.12.117");
    e.handle(Event::KthreadNew(kt(7, "khugepaged", "0-3")));
    let actions = e.handle(Event::CpuOfflineBegin { cpu: 3 });
    assert_eq!(sets(&actions), [(7, "0-2".into())]);
    assert_eq!(judged(&actions), ["0-2"]);
}

#[test]
fn an_unbound_kworker_follows_the_workqueue_mask_and_a_per_cpu_one_is_pinned() {
    let mut e = Engine::new(
        topo("0-7"),
        set("0-3"),
        vec![rule("*", Preference::Housekeeping)],
    );
    let pinned = |pid, comm| {
        let mut k = kt(pid, comm, "0-7");
        k.flags |= PF_NO_SETAFFINITY;
        k
    };
    assert_eq!(
        e.handle(Event::KthreadNew(pinned(50, "kworker/u16:1"))),
        [Action::ReportFollowsWorkqueue {
            pid: 50,
            comm: "kworker/u16:1".into()
        }]
    );
    assert_eq!(
        e.handle(Event::KthreadNew(pinned(51, "kworker/3:1"))),
        [Action::ReportPinned {
            pid: 51,
            comm: "kworker/3:1".into()
        }]
    );
    // One found pinned only when its mask is refused (EINVAL) says the same.
    let k = kt(52, "kworker/u16:2", "6");
    let start_time = k.start_time;
    let first = e.handle(Event::KthreadNew(k));
    assert_eq!(sets(&first), [(52, "0-3".into())]);
    let after = e.handle(Event::Pinned {
        pid: 52,
        start_time,
    });
    assert_eq!(
        after,
        [
            Action::ClearPolicy { pid: 52 },
            Action::ReportFollowsWorkqueue {
                pid: 52,
                comm: "kworker/u16:2".into()
            }
        ]
    );
}
