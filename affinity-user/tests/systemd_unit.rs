//! `packaging/affinity.service`: the hardening directives it must keep, and
//! systemd's own verdict on it (`systemd-analyze verify` clean, `security`
//! rating "OK" or better). systemd-analyze is part of Debian's `systemd`
//! package, which `cargo xtask test` installs; without it these tests fail
//! rather than skip, so a CI machine cannot pass them by lacking the tool.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "a binary, test or bench target of affinity-user sees the library's dependencies too"
)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const SYSTEMD_ANALYZE: &str = "systemd-analyze";
/// What the unit's ExecStart names; `cargo xtask install` rewrites it.
const SHIPPED_BINARY: &str = "/usr/bin/affinity";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit_text() -> String {
    fs::read_to_string(repo().join("packaging/affinity.service")).unwrap()
}

/// Every `Key=Value` line as `(section, key, value)`, comments skipped.
fn directives(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.to_string(), v.to_string()));
        } else {
            panic!("not a directive, comment or section: {line:?}");
        }
    }
    out
}

/// The values a `[Service]` key is set to, in order.
fn service(all: &[(String, String, String)], key: &str) -> Vec<String> {
    all.iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

fn systemd_analyze(args: &[&str]) -> Output {
    systemd_analyze_with(args, None)
}

/// With `man`, `verify` looks the unit's `Documentation=man:` pages up there.
fn systemd_analyze_with(args: &[&str], man: Option<&Path>) -> Output {
    let mut cmd = Command::new(SYSTEMD_ANALYZE);
    if let Some(dir) = man {
        cmd.env("MANPATH", dir);
    }
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {SYSTEMD_ANALYZE} ({e}): install Debian's `systemd` package (cargo xtask test does)"
            )
        })
}

/// The unit in `dir` with ExecStart naming `binary`, as `xtask install` does
/// for its prefix: `verify` checks that the binary exists.
fn unit_pointing_at(dir: &Path, binary: &Path) -> PathBuf {
    let text = unit_text();
    let line = format!("ExecStart={SHIPPED_BINARY} ");
    assert!(text.contains(&line), "ExecStart must start with {line:?}");
    let rewritten = text.replace(&line, &format!("ExecStart={} ", binary.display()));
    let path = dir.join("affinity.service");
    fs::write(&path, rewritten).unwrap();
    path
}

#[test]
fn the_unit_keeps_its_hardening() {
    let all = directives(&unit_text());
    let one = |key: &str| -> String {
        let v = service(&all, key);
        assert_eq!(v.len(), 1, "[Service] {key} set {} times: {v:?}", v.len());
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/affinity run --config /etc/affinity/affinity.toml"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(
        one("CapabilityBoundingSet"),
        "CAP_BPF CAP_PERFMON CAP_SYS_NICE CAP_SYS_RESOURCE"
    );
    // Root keeps its bounding set anyway; ambient capabilities would only
    // matter for another user, and must not widen anything.
    assert!(service(&all, "AmbientCapabilities").is_empty());
    // Kernels before 5.11 charge the BPF maps to it.
    assert_eq!(one("LimitMEMLOCK"), "infinity");
    assert!(
        service(&all, "User").is_empty(),
        "the daemon checks for root"
    );
    // What it writes is the control socket's directory, nothing else.
    assert_eq!(one("RuntimeDirectory"), "affinity");
    assert_eq!(one("RuntimeDirectoryMode"), "0700");
    // masks.json must outlive a stop for `affinity restore`.
    assert_eq!(one("RuntimeDirectoryPreserve"), "yes");
    assert!(service(&all, "ReadWritePaths").is_empty());
    assert_eq!(one("ProtectSystem"), "strict");
    for key in [
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ] {
        assert_eq!(one(key), "yes", "{key}");
    }
    assert_eq!(one("RestrictAddressFamilies"), "AF_UNIX AF_INET AF_INET6");
    assert_eq!(one("SystemCallArchitectures"), "native");
    // An allow list only: a deny list after it (~@privileged, ~@debug)
    // would take bpf or perf_event_open away again.
    assert_eq!(
        service(&all, "SystemCallFilter"),
        ["@system-service bpf perf_event_open sched_setaffinity"]
    );
    assert_eq!(
        all.iter()
            .filter(|(s, _, _)| s == "Install")
            .map(|(_, k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["WantedBy=multi-user.target"]
    );
}

#[test]
fn systemd_analyze_verify_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_pointing_at(dir.path(), Path::new(env!("CARGO_BIN_EXE_affinity")));
    // The pages `Documentation=man:affinity(1)` names, as installed.
    let man = dir.path().join("man");
    let generated = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(["generate", "man"])
        .arg(man.join("man1"))
        .output()
        .unwrap();
    assert!(generated.status.success());
    let out = systemd_analyze_with(&["verify", unit.to_str().unwrap()], Some(&man));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // Unknown keys and bad values are only warnings, exit status 0.
    assert_eq!(stderr, "", "verify warned");
}

#[test]
fn verify_catches_a_missing_binary() {
    // The check above can fail: the same unit naming nothing fails verify.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_pointing_at(dir.path(), &dir.path().join("no-such-affinity"));
    let out = systemd_analyze(&["verify", "--man=no", unit.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-affinity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `→ Overall exposure level for affinity.service: 2.4 OK 🙂` → (2.4, "OK").
fn overall_exposure(report: &str) -> (f64, String) {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no overall exposure line in:\n{report}"));
    let rest = line.rsplit_once(": ").unwrap().1;
    let mut words = rest.split_whitespace();
    let level = words.next().unwrap().parse().unwrap();
    (level, words.next().unwrap().to_string())
}

#[test]
fn exposure_parsing_reads_the_figure_and_the_word() {
    assert_eq!(
        overall_exposure("x\n→ Overall exposure level for a.service: 9.6 UNSAFE 😨\n"),
        (9.6, "UNSAFE".to_string())
    );
}

#[test]
fn systemd_rates_the_unit_ok_or_better() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_pointing_at(dir.path(), Path::new(env!("CARGO_BIN_EXE_affinity")));
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        unit.to_str().unwrap(),
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (level, word) = overall_exposure(&report);
    // systemd's scale: below 1.0 SAFE (0 PERFECT), below 5.0 OK.
    assert!(
        level < 5.0 && ["OK", "SAFE", "PERFECT"].contains(&word.as_str()),
        "exposure {level} {word}:\n{report}"
    );
    // The README states the figure; it must be this one.
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let stated = format!("exposure level {level:.1} {word}");
    assert!(
        readme.contains(&stated),
        "README.md should say {stated:?} (systemd 252's rating of the unit)"
    );
}
