//! The `affinity` binary's commands that need neither root nor BPF: check,
//! plan (on a snapshot fixture) and their error paths. Every malformed
//! input must exit 2 with a message that says what and where.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "a binary, test or bench target of affinity-user sees the library's dependencies too"
)]

use std::{path::PathBuf, process::Command};

use serde_json::Value;

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

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .display()
        .to_string()
}

/// Writes `content` to a temp file and runs `plan --snapshot numa64 --config it`.
fn plan_with_config(content: &[u8]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, content).unwrap();
    affinity(&[
        "plan",
        "--snapshot",
        &fixture("numa64.json"),
        "--config",
        path.to_str().unwrap(),
        "--json",
    ])
}

fn bad_config(content: &str, expect: &str) {
    let (code, _, err) = plan_with_config(content.as_bytes());
    assert_eq!(code, 2, "exit 2 for {content:?}; stderr: {err}");
    assert!(
        err.contains(expect),
        "message for {content:?} should contain {expect:?}: {err}"
    );
}

fn rule(prefer: &str) -> String {
    format!("[[rule]]\nmatch = \"khugepaged\"\nprefer = \"{prefer}\"\n")
}

#[test]
fn bad_cpulists_name_the_character() {
    bad_config(
        &rule("3-1"),
        "rules.toml:3:10: prefer: range 3-1 ends before it starts at character 3",
    );
    bad_config(
        &rule("0-"),
        "rules.toml:3:10: prefer: expected the end of the range after \"0-\" at character 3",
    );
    bad_config(
        &rule("99999"),
        "CPU 99999 is beyond this machine's 64 CPUs (0-63) at character 1",
    );
    bad_config(
        &rule("a"),
        "rules.toml:3:10: prefer: expected a CPU number, found 'a' at character 1",
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_position() {
    bad_config(
        "[[rule]]\nmatch = \"x\"\nprefer = \"1\"\ncpus = \"2\"\n",
        "rules.toml:4:1: unknown field `cpus`",
    );
    bad_config(
        "[housekeepin]\ncpus = \"auto\"\n",
        "rules.toml:1:2: unknown field `housekeepin`",
    );
}

#[test]
fn duplicate_rules_are_an_error() {
    bad_config(
        &format!("{}\n{}", rule("1"), rule("2")),
        "rules.toml:6:9: a second rule for khugepaged (first at line 2)",
    );
}

#[test]
fn nodes_that_do_not_exist_are_an_error() {
    bad_config(
        &rule("node:7"),
        "rules.toml:3:11: rule for khugepaged: node 7 does not exist on this machine (nodes: 0, 1, 2, 3)",
    );
}

#[test]
fn empty_and_binary_files_are_rejected() {
    bad_config("", "the file is empty");
    let (code, _, err) = plan_with_config(&[0x7f, b'E', b'L', b'F', 0xff, 0xfe, 0, 1, 2]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not UTF-8 text (invalid byte at offset 4)"),
        "{err}"
    );
}

#[test]
fn every_error_is_listed_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        "[[rule]]\nmatch = \"a\"\nprefer = \"3-1\"\n\n[[rule]]\nmatch = \"b\"\nprefer = \"x\"\n",
    )
    .unwrap();
    let (code, _, err) = affinity(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains(":3:10:") && err.contains(":7:10:"),
        "both errors: {err}"
    );
}

#[test]
fn examples_check_clean() {
    for ex in ["rt-host.toml", "vm-host.toml"] {
        let (code, out, err) = affinity(&[
            "plan",
            "--snapshot",
            &fixture("numa64.json"),
            "--config",
            &example(ex),
        ]);
        assert_eq!(code, 0, "{ex}: {err}");
        assert!(out.contains("kthreads would change"), "{out}");
    }
}

#[test]
fn snapshot_with_missing_keys_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap.json");
    let mut snap: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("numa64.json")).unwrap()).unwrap();
    snap.as_object_mut().unwrap().remove("online");
    std::fs::write(&path, serde_json::to_string_pretty(&snap).unwrap()).unwrap();
    let (code, _, err) = affinity(&["plan", "--snapshot", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing field `online`"), "{err}");
    std::fs::write(&path, "{\"kernel\": 5}").unwrap();
    let (code, _, err) = affinity(&["plan", "--snapshot", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("snap.json:1:"), "{err}");
}

#[test]
fn hypothetical_cpu_lists_are_checked() {
    let snap = fixture("numa64.json");
    let (code, _, err) = affinity(&["plan", "--snapshot", &snap, "--offline", "64"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--offline: CPU 64 is beyond this machine's 64 CPUs"),
        "{err}"
    );
    let (code, _, err) = affinity(&["plan", "--snapshot", &snap, "--offline", "0-63"]);
    assert_eq!(code, 2);
    assert!(err.contains("no CPU online"), "{err}");
}

fn plan_json(extra: &[&str]) -> Value {
    let snap = fixture("numa64.json");
    let mut args = vec!["plan", "--snapshot", snap.as_str(), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = affinity(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("plan --json prints JSON")
}

fn row<'a>(plan: &'a Value, comm: &str) -> &'a Value {
    plan["kthreads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["comm"] == comm)
        .unwrap_or_else(|| panic!("no {comm} in {plan}"))
}

fn masks(plan: &Value, comm: &str) -> (String, String, String) {
    let r = row(plan, comm);
    (
        r["applied"].as_str().unwrap().into(),
        r["current"].as_str().unwrap().into(),
        r["action"].as_str().unwrap().into(),
    )
}

#[test]
fn plan_on_a_64_cpu_4_node_snapshot() {
    let p = plan_json(&[]);
    // isolcpus/nohz_full 48-63: housekeeping 0-47.
    assert_eq!(
        (p["online"].as_str(), p["housekeeping"].as_str()),
        (Some("0-63"), Some("0-47"))
    );
    assert_eq!(
        masks(&p, "kswapd0"),
        ("0-15".into(), "0-15".into(), "keep".into())
    );
    assert_eq!(row(&p, "kswapd0")["rule"], "kswapd*");
    assert_eq!(row(&p, "kswapd0")["preferred"], "0-15");
    // Node 3 is entirely isolated: last resort, housekeeping ∩ online.
    assert_eq!(
        masks(&p, "kswapd3"),
        ("0-47".into(), "48-63".into(), "set".into())
    );
    assert_eq!(
        masks(&p, "khugepaged"),
        ("0-47".into(), "0-63".into(), "set".into())
    );
    // An IRQ thread's mask is its IRQ's: moved through /proc/irq, never set.
    assert_eq!(
        masks(&p, "irq/45-eth0"),
        ("48".into(), "48".into(), "follows_irq".into())
    );
    assert_eq!(row(&p, "irq/45-eth0")["follows_irq"], 45);
    assert_eq!(
        masks(&p, "ksoftirqd/63"),
        ("63".into(), "63".into(), "pinned".into())
    );
    // An unbound kworker's CPUs are the workqueue cpumask's.
    assert_eq!(
        masks(&p, "kworker/u130:1-events_unbound"),
        ("0-63".into(), "0-63".into(), "follows_workqueue".into())
    );
    assert_eq!(
        row(&p, "kworker/u130:1-events_unbound")["follows_workqueue"],
        true
    );
    assert_eq!(p["kthreads"].as_array().unwrap().len(), 16);
}

#[test]
fn plan_with_hypothetical_hotplug_and_isolation() {
    // Node 0 offline: its kswapd falls back to the other housekeeping CPUs.
    let p = plan_json(&["--offline", "0-15"]);
    assert_eq!(p["online"], "16-63");
    assert_eq!(masks(&p, "kswapd0").0, "16-47");
    assert_eq!(masks(&p, "kswapd1").0, "16-31");
    // Isolating node 1 too.
    let p = plan_json(&["--isolate", "16-31"]);
    assert_eq!(p["housekeeping"], "0-15,32-47");
    assert_eq!(masks(&p, "kswapd1").0, "0-15,32-47");
    assert_eq!(masks(&p, "kswapd2").0, "32-47");
    // An explicit housekeeping set replaces the kernel's.
    let p = plan_json(&["--housekeeping", "0-3"]);
    assert_eq!(masks(&p, "khugepaged").0, "0-3");
    assert_eq!(
        masks(&p, "kswapd1").0,
        "0-3",
        "node 1 has no housekeeping CPU: last resort"
    );
}

#[test]
fn plan_table_is_aligned() {
    let (code, out, _) = affinity(&["plan", "--snapshot", &fixture("numa64.json")]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("online 0-63, housekeeping 0-47"));
    let col = lines[1].find("ACTION").unwrap();
    assert!(
        lines[2..lines.len() - 1].iter().all(|l| l.len() > col),
        "{out}"
    );
    assert!(out.ends_with("4 of 16 kthreads would change\n"), "{out}");
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    use std::os::{
        fd::{FromRawFd, OwnedFd},
        unix::process::ExitStatusExt,
    };
    let snap = fixture("numa64.json");
    let vm = example("vm-host.toml");
    let cases: [&[&str]; 12] = [
        &["plan", "--snapshot", &snap],
        &["plan", "--snapshot", &snap, "--json"],
        &["plan", "--snapshot", &snap, "--format", "json"],
        &["status", "--socket", "/nonexistent/affinity.sock"],
        &["status", "--socket", "/nonexistent/affinity.sock", "--json"],
        &["verify", "--socket", "/nonexistent/affinity.sock"],
        &["snapshot"],
        &["snapshot", "--format", "human"],
        &["check", "--snapshot", &snap, &vm],
        &["check", "--json", "--snapshot", &snap, &vm],
        &["doctor"],
        &["doctor", "--json"],
    ];
    for args in cases {
        // Like `| head -0`: a pipe whose reader is gone before the first line.
        let mut fds = [0; 2];
        // SAFETY: a valid array for the two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(read);
        let out = Command::new(env!("CARGO_BIN_EXE_affinity"))
            .args(args)
            .stdout(std::process::Stdio::from(write))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            out.status
        );
    }
}

fn affinity_stdin(args: &[&str], input: &[u8]) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The command may refuse before reading stdin; a closed pipe is fine then.
    let _ = child.stdin.take().unwrap().write_all(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn json_switch_is_shared_and_records_carry_time_and_schema() {
    let snap = fixture("numa64.json");
    for switch in [&["--json"][..], &["--format", "json"]] {
        let mut args = vec!["plan", "--snapshot", snap.as_str()];
        args.extend_from_slice(switch);
        let (code, out, err) = affinity(&args);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(v["ts"].as_u64().unwrap() > 1_600_000_000_000, "{v}");
        assert_eq!(v["schema"], 1);
        assert!(v["kthreads"].is_array());
    }
    let (code, out, _) = affinity(&["plan", "--snapshot", &snap, "--format", "human"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).is_err());
    let (code, _, err) = affinity(&["plan", "--snapshot", &snap, "--format", "yaml"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn status_json_says_where_it_came_from_and_verify_exits_on_drift() {
    let sock = ["--socket", "/nonexistent/affinity.sock"];
    let mut args = vec!["status", "--format", "json"];
    args.extend_from_slice(&sock);
    let (code, out, err) = affinity(&args);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["daemon_running"], false);
    assert_eq!(v["source"], "local");
    assert_eq!(v["schema"], 1);
    let rows = v["kthreads"].as_array().unwrap();
    assert!(!rows.is_empty());
    let drift = rows.iter().filter(|r| r["drift"] == true).count();
    assert_eq!(v["drift"].as_u64().unwrap() as usize, drift);
    for r in rows {
        let by = r["managed_by"].as_str().unwrap();
        assert!(
            [
                "kernel_pinned",
                "kernel_preferred",
                "follows_irq",
                "follows_workqueue",
                "affinity",
                "nobody"
            ]
            .contains(&by),
            "{r}"
        );
    }

    let (_, human, _) = affinity(&["status", sock[0], sock[1]]);
    assert!(human.contains("no daemon is running"), "{human}");
    assert!(
        human.contains("CURRENT") && human.contains("MANAGED_BY"),
        "{human}"
    );

    let (code, out, err) = affinity(&["verify", sock[0], sock[1]]);
    assert_eq!(code, i32::from(drift > 0), "{out}{err}");
    if drift == 0 {
        assert!(out.contains("ok:"), "{out}");
    } else {
        assert!(out.contains(&format!("drift: {drift} kthreads")), "{out}");
        // Only the drifted rows are listed: header, two preamble lines, the rows, the verdict.
        assert_eq!(out.lines().count(), drift + 4, "{out}");
    }
}

#[test]
fn check_validates_against_a_snapshot_and_reads_stdin() {
    let snap = fixture("numa64.json");
    let vm = example("vm-host.toml");
    let (code, out, err) = affinity(&["check", "--snapshot", &snap, &vm]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"), "{out}");

    let text = std::fs::read(&vm).unwrap();
    let (code, out, err) = affinity_stdin(&["check", "--snapshot", &snap, "-"], &text);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("<stdin>: ok"), "{out}");

    let snap_text = std::fs::read(&snap).unwrap();
    let (code, out, err) = affinity_stdin(&["check", "--snapshot", "-", &vm], &snap_text);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = affinity_stdin(&["check", "--snapshot", "-", "-"], &snap_text);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("only one"), "{err}");

    let (code, _, err) = affinity_stdin(&["check", "-"], b"[[rule]]\ncomm = \"x\"\nbogus = 1\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("<stdin>"), "{err}");
}

#[test]
fn a_missing_file_is_bad_input() {
    for args in [
        &["check", "/nonexistent/rules.toml"][..],
        &["plan", "--config", "/nonexistent/rules.toml"],
        &["plan", "--snapshot", "/nonexistent/snap.json"],
        &["status", "-c", "/nonexistent/rules.toml"],
    ] {
        let (code, _, err) = affinity(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("/nonexistent/") && err.contains("no such file"),
            "{err}"
        );
    }
}

#[test]
fn run_flags_are_checked_before_anything_starts() {
    let (code, _, err) = affinity(&["run", "--metrics", "9105"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("e.g. localhost:9105"), "{err}");
    let (code, _, err) = affinity(&["run", "--color", "sometimes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("auto") && err.contains("never"), "{err}");
}

#[test]
fn a_hex_mask_where_a_cpu_list_goes_gets_a_hint() {
    let snap = fixture("numa64.json");
    let (code, _, err) = affinity(&["plan", "--snapshot", &snap, "--isolate", "0x3"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("hex CPU mask") && err.contains("write the CPU list 0-1"),
        "{err}"
    );
}

#[test]
fn flags_that_leave_no_housekeeping_are_refused_alike() {
    let snap = fixture("numa64.json");
    for flags in [
        &["--housekeeping", ""][..],
        &["--isolate", "0-63"],
        &["--housekeeping", "3", "--offline", "3"],
    ] {
        let mut args = vec!["plan", "--snapshot", snap.as_str()];
        args.extend_from_slice(flags);
        let (code, _, err) = affinity(&args);
        assert_eq!(code, 2, "{flags:?}: {err}");
        assert!(err.contains("no online housekeeping CPU"), "{err}");
    }
    let (code, _, err) = affinity(&["plan", "--snapshot", &snap, "--isolate", "0"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn prefer_refuses_an_empty_cpu_list_before_asking_a_daemon() {
    for cpus in ["", "  "] {
        let (code, _, err) = affinity(&[
            "prefer",
            "khugepaged",
            cpus,
            "--socket",
            "/nonexistent/affinity.sock",
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("empty CPU list") && err.contains("unprefer"),
            "{err}"
        );
    }
}

#[test]
fn the_default_policy_prints_as_a_file_that_checks_clean() {
    let (code, out, err) = affinity(&["config", "--default"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("match = \"kswapd*\""), "{out}");
    let (code, out, err) = affinity_stdin(&["check", "-"], out.as_bytes());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (3 rules)"), "{out}");
    let (code, _, err) = affinity(&["config"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn check_warns_with_the_line_on_rules_that_can_never_apply() {
    let snap = fixture("numa64.json");
    let rules = fixture("never-applies.toml");
    let (code, out, err) = affinity(&["check", "--snapshot", &snap, &rules]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (8 rules, 6 warnings)"), "{out}");
    for (line, what) in [
        (1, "kswpad*: matches no kthread"),
        (5, "sshd: matches no kthread"),
        (9, "pid 999999: matches no kthread"),
        (
            13,
            "KSWAPD*: matches no kthread on this machine (comms are matched case-sensitively)",
        ),
        (17, "at most 15 characters"),
        (
            29,
            "the rule at line 25 (match = \"*\") takes every kthread first",
        ),
    ] {
        assert!(
            err.contains(&format!("never-applies.toml:{line}: warning: rule for"))
                && err
                    .lines()
                    .any(|l| l.contains(&format!(":{line}: ")) && l.contains(what)),
            "line {line} {what}: {err}"
        );
    }
    // kswapd* (line 21) and * (line 25) do apply.
    assert!(!err.contains(":21:") && !err.contains(":25:"), "{err}");
    let (code, _, err) = affinity(&["check", "--strict", "--snapshot", &snap, &rules]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn plan_says_what_the_daemon_would_do_for_a_kthread_the_kernel_manages() {
    // khugepaged on housekeeping 0-47; what if cpu47 went offline? On 6.12
    // the daemon narrows its mask to 0-46; on 7.x the kernel manages every
    // unbound kthread and the daemon leaves 0-47 alone (it can only run on
    // 0-46 anyway), so the plan must say "keep" there.
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("numa64.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let action_on = |kernel: &str| {
        let mut snap = base.clone();
        snap["kernel"] = kernel.into();
        for k in snap["kthreads"].as_array_mut().unwrap() {
            if k["comm"] == "khugepaged" {
                k["cpus_allowed"] = "0-47".into();
            }
        }
        let path = dir.path().join(format!("{kernel}.json"));
        std::fs::write(&path, snap.to_string()).unwrap();
        let path = path.display().to_string();
        let (code, out, err) =
            affinity(&["plan", "--snapshot", &path, "--offline", "47", "--json"]);
        assert_eq!(code, 0, "{err}");
        let plan: Value = serde_json::from_str(&out).unwrap();
        let row = plan["kthreads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["comm"] == "khugepaged")
            .cloned()
            .unwrap();
        assert_eq!(row["applied"], "0-46", "{row}");
        row["action"].as_str().unwrap().to_string()
    };
    assert_eq!(action_on("6.12.48+deb12-cloud-amd64"), "set");
    assert_eq!(action_on("7.3.4+deb13-cloud-amd64"), "keep");
}

#[test]
fn check_speaks_json_with_every_error_and_warning() {
    let snap = fixture("numa64.json");
    let rules = fixture("never-applies.toml");
    let (code, out, err) = affinity(&["check", "--format", "json", "--snapshot", &snap, &rules]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "", "JSON mode says it all on stdout");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true, "{v:#}");
    assert_eq!(v["rules"], 8, "{v:#}");
    assert_eq!(v["irq_rules"], 0, "{v:#}");
    assert_eq!(v["errors"], serde_json::json!([]), "{v:#}");
    let lines: Vec<u64> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 5, 9, 13, 17, 29], "{v:#}");
    assert_eq!(
        v["warnings"][0]["message"],
        "rule for kswpad*: matches no kthread on this machine (only kthreads are managed; userspace processes never are)"
    );
    assert!(v["schema"].is_number() && v["ts"].is_number(), "{v:#}");
    let (code, _, _) = affinity(&["check", "--json", "--strict", "--snapshot", &snap, &rules]);
    assert_eq!(code, 1, "--strict with warnings");

    let (code, out, err) = affinity_stdin(
        &["check", "--json", "-"],
        b"[[rule]]\nmatch = \"x\"\nprefer = 1\nbogus = 1\n",
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(err, "", "JSON mode says it all on stdout");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["file"], "<stdin>");
    assert_eq!(v["valid"], false);
    assert_eq!(v["rules"], Value::Null);
    assert_eq!(
        v["errors"],
        serde_json::json!([
            {"line": 3, "column": 10, "message": "prefer must be a string such as \"housekeeping\", \"node\" or \"0-3\", not an integer"},
            {"line": 4, "column": 1, "message": "unknown field `bogus`, expected one of `match`, `pid`, `prefer`"},
        ])
    );
}

#[test]
fn check_warns_when_housekeeping_has_no_online_cpu_on_the_machine() {
    let mut snap: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("numa64.json")).unwrap()).unwrap();
    snap["online"] = "0-62".into();
    let dir = tempfile::tempdir().unwrap();
    let snap_path = dir.path().join("snap.json");
    std::fs::write(&snap_path, snap.to_string()).unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "# offline-only housekeeping\n[housekeeping]\ncpus = \"63\"\n",
    )
    .unwrap();
    let (code, out, err) = affinity(&[
        "check",
        "--snapshot",
        snap_path.to_str().unwrap(),
        rules.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "a warning, not an error: {err}");
    assert!(out.contains("ok (0 rules, 1 warning)"), "{out}");
    assert!(
        err.contains(
            "rules.toml:2: warning: housekeeping cpus 63 has no online CPU here (online: 0-62): kthreads fall back to every online CPU"
        ),
        "{err}"
    );
    std::fs::write(&rules, "[housekeeping]\ncpus = \"62-63\"\n").unwrap();
    let (code, _, err) = affinity(&[
        "check",
        "--strict",
        "--snapshot",
        snap_path.to_str().unwrap(),
        rules.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "one online CPU is enough: {err}");
    assert_eq!(err, "");
}

#[test]
fn snapshot_is_json_by_default_and_summarises_with_format_human() {
    let (code, out, err) = affinity(&["snapshot"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["kthreads"].as_array().is_some_and(|k| !k.is_empty()));
    assert!(
        v.get("ts").is_none(),
        "exactly the snapshot's keys: plan reads it back"
    );
    let (code, out, err) = affinity(&["snapshot", "--format", "human"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("kernel "), "{out}");
    assert_eq!(
        lines[2],
        format!("online            {}", v["online"].as_str().unwrap()),
        "{out}"
    );
    // Two reads of /proc: kworkers come and go between them, so the count
    // is not compared.
    let kthreads = lines
        .iter()
        .find(|l| l.starts_with("kthreads "))
        .unwrap_or_else(|| panic!("no kthreads line: {out}"));
    assert!(
        kthreads.starts_with("kthreads          ")
            && kthreads.ends_with(" pinned by the kernel)")
            && kthreads.contains(" movable, "),
        "{out}"
    );
    // Then the steering the snapshot recorded, as many IRQs as in its JSON.
    let irqs = v["steering"]["irqs"].as_array().map_or(0, Vec::len);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("irqs              {irqs} (default affinity "))),
        "{irqs} IRQs: {out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("workqueue cpumask ")),
        "{out}"
    );
}
