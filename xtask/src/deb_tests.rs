//! The package cargo-deb builds from the staged files, with the stand-in
//! binary of the install tests (the real one needs a release build):
//! its exact contents and modes (`dpkg-deb -c`), its control fields and
//! conffiles, and, as root, `dpkg -i`, `-r` (the config stays) and `-P`
//! (nothing stays) in a scratch root. cargo-deb comes from the bootstrap
//! (`cargo xtask test` installs it); without it these fail under CI=true.

use std::{fs, path::Path, process::Command};

use super::*;
use crate::install::tests::fake_binary;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether cargo-deb is there; a skip (with the reason) only outside CI.
fn have_cargo_deb() -> bool {
    if bootstrap::on_path("cargo-deb").is_some() {
        return true;
    }
    let why = "cargo-deb is not installed (cargo xtask test installs it)";
    assert!(!in_ci(), "{why}");
    eprintln!("skipped: {why}");
    false
}

fn stdout(cmd: &mut Command) -> String {
    output(cmd).unwrap()
}

/// `dpkg-deb -c`: (mode string, path) of every regular file.
fn files_in(deb: &Path) -> Vec<(String, String)> {
    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(deb));
    let mut files: Vec<_> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols[1], "0/0", "owned by root: {l}");
            (cols[0].to_string(), cols[5].to_string())
        })
        .collect();
    files.sort_by(|a, b| a.1.cmp(&b.1));
    files
}

#[test]
fn the_package_holds_exactly_what_install_puts_in_usr() {
    if !have_cargo_deb() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_binary(tmp.path());
    let target = tmp.path().join("target");
    let deb = package(&bin, &target, false).unwrap();
    assert_eq!(
        deb,
        target.join(format!(
            "debian/affinity_{}-1_amd64.deb",
            env!("CARGO_PKG_VERSION")
        ))
    );
    let rw = "-rw-r--r--".to_string();
    let mut expected = vec![
        ("-rwxr-xr-x".to_string(), "./usr/bin/affinity".to_string()),
        (rw.clone(), "./lib/systemd/system/affinity.service".into()),
        (rw.clone(), "./etc/affinity/affinity.toml".into()),
        (
            rw.clone(),
            "./usr/share/bash-completion/completions/affinity".into(),
        ),
        (
            rw.clone(),
            "./usr/share/zsh/vendor-completions/_affinity".into(),
        ),
        (
            rw.clone(),
            "./usr/share/fish/vendor_completions.d/affinity.fish".into(),
        ),
        (rw.clone(), "./usr/share/doc/affinity/copyright".into()),
    ];
    // The stand-in writes two pages; the real binary's ten go the same way
    // through the `*.1` asset.
    for page in ["affinity", "affinity-run"] {
        expected.push((rw.clone(), format!("./usr/share/man/man1/{page}.1")));
    }
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(files_in(&deb), expected);

    let field = |name: &str| -> String {
        stdout(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "affinity");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert_eq!(field("Section"), "admin");
    assert_eq!(field("Architecture"), "amd64");
    let conffiles = stdout(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert_eq!(conffiles, "/etc/affinity/affinity.toml\n");
}

/// Every file under `root` but dpkg's own database, relative to `root`.
fn installed(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel.starts_with("var/lib/dpkg") {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn dpkg_installs_removes_keeping_the_config_and_purges_in_a_scratch_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let why = "dpkg --root needs root";
        assert!(!in_ci(), "{why}");
        eprintln!("skipped: {why}");
        return;
    }
    if !have_cargo_deb() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_binary(tmp.path());
    let deb = package(&bin, &tmp.path().join("target"), false).unwrap();
    let root = tmp.path().join("root");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        stdout(
            Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                // The scratch root has no libc6 to satisfy Depends.
                .arg("--force-depends")
                .args(args),
        )
    };
    dpkg(&["-i", deb.to_str().unwrap()]);
    let mut all = vec![
        "etc/affinity/affinity.toml".to_string(),
        "lib/systemd/system/affinity.service".into(),
        "usr/bin/affinity".into(),
        "usr/share/bash-completion/completions/affinity".into(),
        "usr/share/doc/affinity/copyright".into(),
        "usr/share/fish/vendor_completions.d/affinity.fish".into(),
        "usr/share/man/man1/affinity-run.1".into(),
        "usr/share/man/man1/affinity.1".into(),
        "usr/share/zsh/vendor-completions/_affinity".into(),
    ];
    all.sort();
    assert_eq!(installed(&root), all);

    dpkg(&["-r", "affinity"]);
    assert_eq!(installed(&root), ["etc/affinity/affinity.toml"]);
    let status = dpkg(&["-s", "affinity"]);
    assert!(
        status
            .lines()
            .any(|l| l == "Status: deinstall ok config-files"),
        "{status}"
    );

    dpkg(&["-P", "affinity"]);
    assert_eq!(installed(&root), Vec::<String>::new());
    // Every directory the package made went with it.
    let left: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["var"]);
}
