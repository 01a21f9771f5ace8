//! `[[irq]]` rules through the binary: a malformed one is bad input (exit
//! 2, its line named) before anything is changed.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "a binary, test or bench target of affinity-user sees the library's dependencies too"
)]

use std::{path::PathBuf, process::Command};

fn affinity(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(args)
        .output()
        .expect("running affinity");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn numa64() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/numa64.json")
        .display()
        .to_string()
}

const GOOD: &str = "[[rule]]\nmatch = \"*\"\nprefer = \"housekeeping\"\n\n[[irq]]\nmatch = \"nvme*\"\nprefer = \"node\"\n\n[[irq]]\nmatch = 36\nprefer = \"0-1\"\n";

#[test]
fn check_accepts_irq_rules_and_names_the_line_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, GOOD).unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = affinity(&["check", "--snapshot", &numa64(), p]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    std::fs::write(
        &path,
        format!("{GOOD}\n[[irq]]\nmatch = 36\nprefer = \"node:9\"\n"),
    )
    .unwrap();
    let (code, _, err) = affinity(&["check", "--snapshot", &numa64(), p]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":14:9: a second [[irq]] rule for irq 36 (first at line 10)"),
        "{err}"
    );
    std::fs::write(
        &path,
        format!("{GOOD}\n[[irq]]\nmatch = 37\nprefer = \"node:9\"\n"),
    )
    .unwrap();
    let (code, _, err) = affinity(&["check", "--snapshot", &numa64(), p]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":15:11: rule for irq 37: node 9 does not exist on this machine"),
        "{err}"
    );
}

#[test]
fn check_counts_workqueue_rules_and_names_the_line_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    let good = "[[workqueue]]\nmatch = \"writeback\"\nprefer = \"0-1\"\n";
    std::fs::write(&path, good).unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = affinity(&["check", "--snapshot", &numa64(), "--json", p]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["workqueue_rules"], &v["irq_rules"]),
        (&1.into(), &0.into()),
        "{v}"
    );
    std::fs::write(
        &path,
        format!("{good}\n[[workqueue]]\nmatch = \"blkcg*\"\nprefer = \"node:9\"\n"),
    )
    .unwrap();
    let (code, _, err) = affinity(&["check", "--snapshot", &numa64(), p]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(":7:11: rule for blkcg*: node 9 does not exist on this machine"),
        "{err}"
    );
}

/// The config is read before root, the control socket or BPF: a bad one
/// stops `run` with nothing changed, as root or not.
#[test]
fn run_refuses_a_malformed_irq_rule_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, "[[irq]]\nmatch = \"nvme*\"\nprefer = \"nodes\"\n").unwrap();
    let socket = dir.path().join("ctl/control.sock");
    let (code, out, err) = affinity(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rules.toml:3:10: prefer: "), "{err}");
    assert!(err.contains("did you mean \"node\"?"), "{err}");
    assert_eq!(out, "", "no report: the daemon never started");
    assert!(!dir.path().join("ctl").exists(), "no socket directory made");
}

/// A snapshot with IRQs and workqueue cpumasks: `plan` says what `run
/// --irqs` would write; one from before they were recorded has none.
#[test]
fn plan_shows_what_run_irqs_would_do_to_irqs_and_workqueues() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.json");
    std::fs::write(
        &snap,
        r#"{"kernel": "6.18.0", "possible": "0-3", "online": "0-3", "isolated": "2-3",
            "nohz_full": "", "cpuset_isolated": "", "nodes": {"0": "0-3"}, "kthreads": [],
            "steering": {"irqs": [{"irq": 36, "actions": ["nvme0q1"], "affinity": "0-3", "effective": "2"},
                                  {"irq": 37, "actions": ["eth0"], "affinity": "0-1", "effective": "1"}],
                "default_affinity": "0-3", "workqueue": "0-1",
                "workqueues": {"writeback": "0-3", "blkcg_punt_bio": "0-3"}}}"#,
    )
    .unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[irq]]\nmatch = \"nvme*\"\nprefer = \"0\"\n\n[[workqueue]]\nmatch = \"writeback\"\nprefer = \"1\"\n",
    )
    .unwrap();
    let (s, r) = (snap.to_str().unwrap(), rules.to_str().unwrap());
    let (code, out, err) = affinity(&["plan", "--snapshot", s, "--config", r, "--json"]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["steering"],
        serde_json::json!([
            {"file": "irq_default", "rule": null, "applied": "0-1", "current": "0-3", "action": "set"},
            {"file": "irq", "irq": 36, "actions": ["nvme0q1"], "rule": "nvme*", "applied": "0", "current": "0-3", "action": "set"},
            {"file": "irq", "irq": 37, "actions": ["eth0"], "rule": null, "applied": "0-1", "current": "0-1", "action": "keep"},
            {"file": "workqueue", "rule": null, "applied": "0-1", "current": "0-1", "action": "keep"},
            {"file": "workqueue", "workqueue": "writeback", "rule": "writeback", "applied": "1", "current": "0-3", "action": "set"},
        ])
    );
    let (code, out, _) = affinity(&["plan", "--snapshot", s, "--config", r]);
    assert_eq!(code, 0);
    assert!(
        out.ends_with(
            "MASK (with --irqs)           RULE       APPLIED  CURRENT  ACTION\n\
             default IRQ affinity         -          0-1      0-3      set\n\
             irq 36 (nvme0q1)             nvme*      0        0-3      set\n\
             workqueue writeback cpumask  writeback  1        0-3      set\n\
             irq 37 (eth0)                -          0-1      0-1      keep\n\
             workqueue cpumask            -          0-1      0-1      keep\n\
             3 of 5 masks would change with --irqs\n"
        ),
        "{out}"
    );
    let (code, out, _) = affinity(&["plan", "--snapshot", &numa64(), "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.get("steering").is_none(), "an old snapshot: {v}");
}

#[test]
fn check_warns_of_irq_and_workqueue_rules_matching_nothing_on_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap.json");
    std::fs::write(
        &snap,
        r#"{"kernel": "6.18.0", "possible": "0-3", "online": "0-3", "isolated": "",
            "nohz_full": "", "cpuset_isolated": "", "nodes": {"0": "0-3"}, "kthreads": [],
            "steering": {"irqs": [{"irq": 36, "actions": ["nvme0q1"], "affinity": "0-3"}],
                "workqueue": "0-3", "workqueues": {"writeback": "0-3"}}}"#,
    )
    .unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[workqueue]]\nmatch = \"nosuch_wq\"\nprefer = \"0\"\n\n[[irq]]\nmatch = \"nvme*\"\nprefer = \"0\"\n\n[[irq]]\nmatch = \"eth*\"\nprefer = \"0\"\n\n[[workqueue]]\nmatch = \"writeback\"\nprefer = \"0\"\n",
    )
    .unwrap();
    let (s, r) = (snap.to_str().unwrap(), rules.to_str().unwrap());
    let (code, out, err) = affinity(&["check", "--snapshot", s, "--json", r]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["warnings"],
        serde_json::json!([
            {"line": 2, "message": "[[workqueue]] rule for nosuch_wq: matches no workqueue with a cpumask on this machine (it applies to matching ones that appear later)"},
            {"line": 10, "message": "[[irq]] rule for eth*: matches no IRQ on this machine (it applies to matching IRQs that appear later)"},
        ])
    );
    // An old snapshot knows no IRQs: nothing to say about them.
    let (code, out, _) = affinity(&["check", "--snapshot", &numa64(), "--json", r]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
}
