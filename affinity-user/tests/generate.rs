//! `affinity generate` (hidden): the man pages and shell completions that
//! `cargo xtask install` ships, generated from the clap definitions. `man`
//! (man-db) and `bash` must be present: `cargo xtask test` installs them.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "a binary, test or bench target of affinity-user sees the library's dependencies too"
)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const SUBCOMMANDS: [&str; 13] = [
    "run", "apply", "check", "snapshot", "plan", "status", "verify", "config", "prefer",
    "unprefer", "reload", "restore", "doctor",
];

/// Runs `affinity generate ARGS`, returning the paths it says it wrote.
fn generate(args: &[&str], dir: &Path) -> Vec<PathBuf> {
    let out = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .arg("generate")
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn tool(name: &str) -> Command {
    let cmd = Command::new(name);
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success(),
        "{name} is missing (cargo xtask test installs it)"
    );
    cmd
}

#[test]
fn one_man_page_per_visible_subcommand_that_man_renders() {
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("share/man/man1");
    let written = generate(&["man"], &man1);
    let mut expected = vec![man1.join("affinity.1")];
    expected.extend(SUBCOMMANDS.map(|s| man1.join(format!("affinity-{s}.1"))));
    assert_eq!(written, expected);
    let mut on_disk: Vec<_> = fs::read_dir(&man1)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    on_disk.sort();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(on_disk, sorted, "nothing else in the directory");

    for (page, name) in expected.iter().zip(
        std::iter::once("affinity".to_string()).chain(SUBCOMMANDS.map(|s| format!("affinity-{s}"))),
    ) {
        let roff = fs::read_to_string(page).unwrap();
        let th = format!(".TH {name} 1  \"affinity {}\" ", env!("CARGO_PKG_VERSION"));
        assert!(
            roff.lines().any(|l| l == th),
            "{}: no {th:?}",
            page.display()
        );
        let out = tool("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "200")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{}: {stderr}",
            page.display()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .nth(3)
                .unwrap()
                .trim_start()
                .starts_with(&format!("{name} - ")),
            "{}: the NAME section should start with {name}:\n{text}",
            page.display()
        );
    }
    // The hidden subcommand is for installers, not in the manual.
    let top = fs::read_to_string(man1.join("affinity.1")).unwrap();
    assert!(top.contains("affinity\\-run(1)"), "{top}");
    assert!(!top.contains("generate"), "{top}");
}

#[test]
fn completions_for_bash_zsh_and_fish_under_their_usual_names() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, file) in [
        ("bash", "affinity.bash"),
        ("zsh", "_affinity"),
        ("fish", "affinity.fish"),
    ] {
        let written = generate(&["completions", shell], dir.path());
        assert_eq!(written, [dir.path().join(file)], "{shell}");
    }
    let bash = dir.path().join("affinity.bash");
    let out = tool("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "bash -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What bash offers after `affinity ch` and `affinity run --obs`.
    for (words, expect) in [
        ("affinity ch", "check"),
        ("affinity run --obs", "--observe"),
    ] {
        let script = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _affinity affinity \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             echo \"${{COMPREPLY[*]}}\"",
            bash.display()
        );
        let out = tool("bash").args(["-c", &script]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{expect}\n"),
            "{words}"
        );
    }
    let bash = fs::read_to_string(bash).unwrap();
    // Registered for the command, and offering every subcommand.
    assert!(
        bash.lines()
            .any(|l| l.starts_with("    complete -F _affinity ")),
        "{bash}"
    );
    let zsh = fs::read_to_string(dir.path().join("_affinity")).unwrap();
    assert_eq!(zsh.lines().next(), Some("#compdef affinity"));
    let fish = fs::read_to_string(dir.path().join("affinity.fish")).unwrap();
    for sub in SUBCOMMANDS {
        assert!(bash.contains(&format!("affinity,{sub})")), "bash: {sub}");
        assert!(zsh.contains(&format!("'{sub}:")), "zsh: {sub}");
        assert!(fish.contains(&format!("-f -a \"{sub}\"")), "fish: {sub}");
    }
}

#[test]
fn an_unknown_shell_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(["generate", "completions", "tcsh", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
