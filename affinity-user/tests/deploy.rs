//! `deploy/`: the DaemonSet validated offline against the Kubernetes schema
//! (kubernetes-validate from PyPI, schemas bundled, which `cargo xtask
//! test` installs in a venv), the privileges it asks for, and the daemon
//! arguments of the DaemonSet and the Containerfile, parsed by the real
//! binary. Without the validator the schema tests fail under CI=true and
//! say why they skip otherwise.

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

use serde_json::{Value, json};

/// Where `cargo xtask test` installs it (xtask/src/bootstrap.rs).
const VENV: &str = "/var/cache/affinity-tools/kubernetes-validate";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The venv's bin directory, or `None` (a skip, which CI does not allow).
fn venv_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("AFFINITY_KUBERNETES_VALIDATE_VENV")
        .map_or_else(|| PathBuf::from(VENV), PathBuf::from)
        .join("bin");
    if bin.join("kubernetes-validate").is_file() {
        return Some(bin);
    }
    let why = format!(
        "no kubernetes-validate in {}: `cargo xtask test` installs it",
        bin.display()
    );
    assert!(!in_ci(), "{why}");
    eprintln!("skipped: {why}");
    None
}

/// Runs the validator with no network at all where we can make sure of that
/// (root: a network namespace of its own), to prove it needs none.
fn validate(bin: &Path, file: &Path) -> Output {
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("unshare");
        c.arg("--net").arg(bin.join("kubernetes-validate"));
        c
    } else {
        Command::new(bin.join("kubernetes-validate"))
    };
    cmd.args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(file)
        .output()
        .unwrap()
}

/// The manifest as JSON, through the venv's PyYAML (kubernetes-validate's
/// own dependency).
fn manifest(bin: &Path) -> Value {
    let out = Command::new(bin.join("python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(deploy("daemonset.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_daemonset_passes_the_kubernetes_schema_offline() {
    let Some(bin) = venv_bin() else { return };
    let out = validate(&bin, &deploy("daemonset.yaml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("passed for resource daemonset/affinity against version 1.37"),
        "{stdout}"
    );
}

#[test]
fn the_validator_rejects_a_broken_daemonset() {
    let Some(bin) = venv_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("daemonset.yaml");
    let text = fs::read_to_string(deploy("daemonset.yaml")).unwrap();
    assert!(text.contains("containerPort: 9105"));
    fs::write(
        &broken,
        text.replace("containerPort: 9105", "containerPort: \"metrics\""),
    )
    .unwrap();
    let out = validate(&bin, &broken);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("containerPort: 'metrics' is not of type 'integer'"),
        "{said}"
    );
}

#[test]
fn the_daemonset_asks_for_the_capabilities_and_nothing_privileged() {
    let Some(bin) = venv_bin() else { return };
    let ds = manifest(&bin);
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], Value::Null);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"], json!([{ "operator": "Exists" }]));
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        c["securityContext"],
        json!({
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsUser": 0,
            "runAsGroup": 0,
            "capabilities": {
                "drop": ["ALL"],
                "add": ["BPF", "PERFMON", "SYS_NICE", "SYS_RESOURCE"],
            },
            "seccompProfile": { "type": "RuntimeDefault" },
        })
    );
    assert_eq!(
        c["volumeMounts"],
        json!([
            { "name": "sys", "mountPath": "/sys", "readOnly": true },
            { "name": "run", "mountPath": "/run/affinity" },
        ])
    );
    assert_eq!(
        pod["volumes"],
        json!([
            { "name": "sys", "hostPath": { "path": "/sys", "type": "Directory" } },
            { "name": "run", "hostPath": { "path": "/run/affinity", "type": "DirectoryOrCreate" } },
        ])
    );
    // One port, the one the daemon is told to serve and Prometheus to scrape.
    assert_eq!(
        c["ports"],
        json!([{ "name": "metrics", "containerPort": 9105, "protocol": "TCP" }])
    );
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9105");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let metrics = args.iter().position(|a| *a == "--metrics").unwrap();
    assert_eq!(args[metrics + 1], "0.0.0.0:9105");
    // The image's default command is the same as the DaemonSet's.
    assert_eq!(args, containerfile_cmd());
}

/// The runtime stage's `CMD [...]`, as JSON.
fn containerfile_cmd() -> Vec<String> {
    let text = fs::read_to_string(deploy("Containerfile")).unwrap();
    let cmds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("CMD "))
        .collect();
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    serde_json::from_str(cmds[0]).unwrap()
}

#[test]
fn the_containerfile_builds_then_ships_only_the_binary_and_config_on_debian_slim() {
    let text = fs::read_to_string(deploy("Containerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms,
        [
            "FROM docker.io/library/rust:1.95-bookworm AS build",
            "FROM docker.io/library/debian:bookworm-slim",
        ]
    );
    let copies: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("COPY --from="))
        .collect();
    assert_eq!(
        copies,
        [
            "COPY --from=build /out/usr/bin/affinity /usr/bin/affinity",
            "COPY --from=build /out/etc/affinity/affinity.toml /etc/affinity/affinity.toml",
        ]
    );
    assert!(
        text.lines()
            .any(|l| l == "RUN cargo xtask install --prefix /usr --destdir /out")
    );
    assert!(
        text.lines()
            .any(|l| l == r#"ENTRYPOINT ["/usr/bin/affinity"]"#)
    );
}

#[test]
fn the_image_command_parses_as_affinity_arguments() {
    // clap checks every argument before it acts on --help: exit 0 means
    // every flag and value in CMD is one `affinity` accepts.
    let cmd = containerfile_cmd();
    let out = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(&cmd)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And a wrong one would not.
    let out = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(["run", "--metrics", "9105", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
