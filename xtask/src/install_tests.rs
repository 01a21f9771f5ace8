//! `install_from` with a stand-in for the affinity binary: a shell script
//! that answers `config --default` and `generate ...` the way the real one
//! does (its real output is checked in affinity-user/tests/generate.rs),
//! so these tests need no release build and no eBPF toolchain.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use super::*;

const FAKE: &str = r#"#!/bin/sh
set -e
case "$1 $2" in
"config --default") printf '[housekeeping]\ncpus = "auto"\n' ;;
"generate man")
    mkdir -p "$3"
    for p in affinity affinity-run; do
        printf '.TH %s 1  "affinity 0.1.0" \n.SH NAME\n%s\n' "$p" "$p" > "$3/$p.1"
        echo "$3/$p.1"
    done ;;
"generate completions")
    mkdir -p "$4"
    case "$3" in
    bash) f=affinity.bash; body='_affinity() { COMPREPLY=(run); }
complete -F _affinity affinity' ;;
    zsh) f=_affinity; body='#compdef affinity' ;;
    fish) f=affinity.fish; body='complete -c affinity -f -a run' ;;
    esac
    printf '%s\n' "$body" > "$4/$f"
    echo "$4/$f" ;;
*) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#;

/// The stand-in `affinity` in `dir`.
pub(crate) fn fake_binary(dir: &Path) -> PathBuf {
    let path = dir.join("affinity");
    fs::write(&path, FAKE).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
    path
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_layout_follows_the_prefix() {
    let usr = Layout::new(Path::new("/usr"));
    assert_eq!(
        usr,
        Layout {
            binary: "/usr/bin/affinity".into(),
            unit: "/lib/systemd/system/affinity.service".into(),
            config: "/etc/affinity/affinity.toml".into(),
            man1: "/usr/share/man/man1".into(),
            bash: "/usr/share/bash-completion/completions/affinity".into(),
            zsh: "/usr/share/zsh/vendor-completions/_affinity".into(),
            fish: "/usr/share/fish/vendor_completions.d/affinity.fish".into(),
        }
    );
    let local = Layout::new(Path::new("/usr/local"));
    assert_eq!(
        local.unit,
        Path::new("/usr/local/lib/systemd/system/affinity.service")
    );
    assert_eq!(
        local.zsh,
        Path::new("/usr/local/share/zsh/site-functions/_affinity")
    );
    assert_eq!(local.config, Path::new("/etc/affinity/affinity.toml"));
}

#[test]
fn everything_lands_under_destdir_with_its_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_binary(tmp.path());
    let root = tmp.path().join("root");
    let (done, kept) = install_from(&bin, Path::new("/usr"), Some(&root)).unwrap();
    assert!(!kept);
    let expected: Vec<(&str, u32)> = vec![
        ("usr/bin/affinity", 0o755),
        ("lib/systemd/system/affinity.service", 0o644),
        ("etc/affinity/affinity.toml", 0o644),
        ("usr/share/man/man1/affinity.1", 0o644),
        ("usr/share/man/man1/affinity-run.1", 0o644),
        ("usr/share/bash-completion/completions/affinity", 0o644),
        ("usr/share/zsh/vendor-completions/_affinity", 0o644),
        ("usr/share/fish/vendor_completions.d/affinity.fish", 0o644),
    ];
    assert_eq!(
        done,
        expected
            .iter()
            .map(|(p, _)| root.join(p))
            .collect::<Vec<_>>()
    );
    for (path, want) in &expected {
        let path = root.join(path);
        assert!(fs::metadata(&path).unwrap().len() > 0, "{}", path.display());
        assert_eq!(mode(&path), *want, "{}", path.display());
    }
    // Nothing else: no staging directory, no temporary files.
    let mut all = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                all.push(p);
            }
        }
    }
    assert_eq!(all.len(), expected.len(), "{all:?}");

    assert_eq!(
        fs::read(root.join("usr/bin/affinity")).unwrap(),
        FAKE.as_bytes()
    );
    let unit = fs::read_to_string(root.join("lib/systemd/system/affinity.service")).unwrap();
    let exec: Vec<_> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec,
        ["ExecStart=/usr/bin/affinity run --config /etc/affinity/affinity.toml"]
    );
    let config = fs::read_to_string(root.join("etc/affinity/affinity.toml")).unwrap();
    assert_eq!(
        config,
        format!("{CONFIG_HEADER}[housekeeping]\ncpus = \"auto\"\n")
    );
    let page = fs::read_to_string(root.join("usr/share/man/man1/affinity-run.1")).unwrap();
    assert!(page.starts_with(".TH affinity-run 1 "), "{page}");
    let bash = Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/affinity"))
        .status()
        .unwrap();
    assert!(bash.success());
}

#[test]
fn an_existing_config_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_binary(tmp.path());
    let root = tmp.path().join("root");
    install_from(&bin, Path::new("/usr/local"), Some(&root)).unwrap();
    let config = root.join("etc/affinity/affinity.toml");
    fs::write(&config, "# mine\n").unwrap();
    let (done, kept) = install_from(&bin, Path::new("/usr/local"), Some(&root)).unwrap();
    assert!(kept);
    assert!(!done.contains(&config), "{done:?}");
    assert_eq!(fs::read_to_string(&config).unwrap(), "# mine\n");
    // A dangling symlink is someone's config too.
    fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/nonexistent/affinity.toml", &config).unwrap();
    let (_, kept) = install_from(&bin, Path::new("/usr/local"), Some(&root)).unwrap();
    assert!(kept);
    assert!(fs::symlink_metadata(&config).unwrap().is_symlink());
}

#[test]
fn another_prefix_moves_the_unit_and_its_exec_start() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_binary(tmp.path());
    let root = tmp.path().join("root");
    install_from(&bin, Path::new("/opt/affinity"), Some(&root)).unwrap();
    let unit =
        fs::read_to_string(root.join("opt/affinity/lib/systemd/system/affinity.service")).unwrap();
    assert!(
        unit.lines().any(|l| l
            == "ExecStart=/opt/affinity/bin/affinity run --config /etc/affinity/affinity.toml"),
        "{unit}"
    );
    assert_eq!(mode(&root.join("opt/affinity/bin/affinity")), 0o755);
}

#[test]
fn a_relative_prefix_or_a_unit_without_exec_start_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_binary(tmp.path());
    let e = install_from(&bin, Path::new("usr"), Some(tmp.path())).unwrap_err();
    assert_eq!(e.to_string(), "--prefix must be absolute: usr");
    let e = unit_for(
        "[Service]\nExecStart=/bin/true\n",
        Path::new("/usr/bin/affinity"),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "packaging/affinity.service should have exactly one line starting \"ExecStart=/usr/bin/affinity \""
    );
}

#[test]
fn a_failing_binary_fails_the_install_with_its_message() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("affinity");
    fs::write(&bin, "#!/bin/sh\necho 'no such subcommand' >&2\nexit 2\n").unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o700)).unwrap();
    let e = install_from(&bin, Path::new("/usr"), Some(&tmp.path().join("root"))).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("no such subcommand"), "{msg}");
}
