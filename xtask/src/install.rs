//! `cargo xtask install`: the release binary, the systemd unit, the default
//! config, man pages and shell completions, where a distribution puts them.
//!
//! The man pages, completions and config come from the binary itself
//! (`affinity generate ...`, `affinity config --default`), so they always
//! match the clap definitions and the embedded policy of what is installed.

use std::{
    fs,
    io::{ErrorKind, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    bootstrap::output,
    build::{self, BuildArgs, workspace_root},
};

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Installation prefix: PREFIX/bin/affinity, PREFIX/share/man, ...
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Stage everything under this directory instead of / (for packages).
    #[arg(long)]
    pub destdir: Option<PathBuf>,
    /// Install this binary instead of building the release one.
    #[arg(long, hide = true)]
    pub binary: Option<PathBuf>,
}

/// Where the unit's ExecStart points in packaging/affinity.service.
const SHIPPED_EXEC: &str = "ExecStart=/usr/bin/affinity ";

/// Every installed path, before DESTDIR.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    pub binary: PathBuf,
    pub unit: PathBuf,
    pub config: PathBuf,
    pub man1: PathBuf,
    pub bash: PathBuf,
    pub zsh: PathBuf,
    pub fish: PathBuf,
}

impl Layout {
    pub fn new(prefix: &Path) -> Layout {
        let usr = prefix == Path::new("/usr");
        let share = prefix.join("share");
        Layout {
            binary: prefix.join("bin/affinity"),
            // systemd reads /lib/systemd/system and /usr/local/lib/systemd/system
            // (Debian 12 has not merged /lib into /usr for dpkg yet).
            unit: if usr {
                PathBuf::from("/lib/systemd/system/affinity.service")
            } else {
                prefix.join("lib/systemd/system/affinity.service")
            },
            // The unit reads it there whatever the prefix.
            config: PathBuf::from("/etc/affinity/affinity.toml"),
            man1: share.join("man/man1"),
            bash: share.join("bash-completion/completions/affinity"),
            // Debian's zsh looks in vendor-completions for packaged files and
            // in /usr/local/share/zsh/site-functions for local ones.
            zsh: if usr {
                share.join("zsh/vendor-completions/_affinity")
            } else {
                share.join("zsh/site-functions/_affinity")
            },
            fish: share.join("fish/vendor_completions.d/affinity.fish"),
        }
    }
}

/// `path` under `destdir`: DESTDIR=/tmp/root, /usr/bin/x -> /tmp/root/usr/bin/x.
fn staged(destdir: Option<&Path>, path: &Path) -> PathBuf {
    match destdir {
        Some(d) => d.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

/// The unit with ExecStart naming `binary`.
pub fn unit_for(unit: &str, binary: &Path) -> Result<String> {
    ensure!(
        unit.matches(SHIPPED_EXEC).count() == 1,
        "packaging/affinity.service should have exactly one line starting {SHIPPED_EXEC:?}"
    );
    Ok(unit.replace(SHIPPED_EXEC, &format!("ExecStart={} ", binary.display())))
}

const CONFIG_HEADER: &str = "\
# /etc/affinity/affinity.toml: the rules affinity.service runs with
# (`affinity run --config /etc/affinity/affinity.toml`). Installed once as
# the embedded default policy; upgrades never overwrite it. Check an edit
# with `affinity check /etc/affinity/affinity.toml` before restarting the
# service. Rules are tried in order; the first whose `match` (a glob on
# the comm) or `pid` fits gives the kthread its `prefer`: \"node\",
# \"node:N\", \"housekeeping\" or a cpulist such as \"0-3\".

";

/// Writes `bytes` to `dest` with `mode` through a temporary file and a
/// rename, like install(1): a running binary is replaced, not truncated.
fn put(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = dest.parent().context("an installed file has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.xtask-install",
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The mode given to open is filtered by the umask; this one is not.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, dest)
    };
    write().with_context(|| format!("installing {}", dest.display()))
}

/// Runs the binary about to be installed and returns its stdout.
fn ask(binary: &Path, args: &[&str]) -> Result<String> {
    output(Command::new(binary).args(args))
}

/// What `affinity generate ... DIR` wrote, one path per line.
fn generated(binary: &Path, args: &[&str], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut all = args.to_vec();
    let dir = dir.to_str().context("a staging path that is UTF-8")?;
    all.push(dir);
    let files: Vec<PathBuf> = ask(binary, &all)?.lines().map(PathBuf::from).collect();
    ensure!(
        !files.is_empty(),
        "`affinity {}` wrote nothing",
        all.join(" ")
    );
    Ok(files)
}

/// Installs `binary` and everything generated from it; returns every path
/// written (under `destdir`), and says whether an existing config was kept.
pub fn install_from(
    binary: &Path,
    prefix: &Path,
    destdir: Option<&Path>,
) -> Result<(Vec<PathBuf>, bool)> {
    ensure!(
        prefix.is_absolute(),
        "--prefix must be absolute: {}",
        prefix.display()
    );
    let layout = Layout::new(prefix);
    let at = |p: &Path| staged(destdir, p);
    let mut done = Vec::new();

    let bin = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    put(&at(&layout.binary), &bin, 0o755)?;
    done.push(at(&layout.binary));

    let unit_src = workspace_root().join("packaging/affinity.service");
    let unit =
        fs::read_to_string(&unit_src).with_context(|| format!("reading {}", unit_src.display()))?;
    put(
        &at(&layout.unit),
        unit_for(&unit, &layout.binary)?.as_bytes(),
        0o644,
    )?;
    done.push(at(&layout.unit));

    let config = at(&layout.config);
    let default = ask(binary, &["config", "--default"])?;
    let kept = match fs::symlink_metadata(&config) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            put(
                &config,
                format!("{CONFIG_HEADER}{default}").as_bytes(),
                0o644,
            )?;
            done.push(config);
            false
        }
        Err(e) => return Err(e).with_context(|| format!("looking at {}", config.display())),
    };

    // Generated in a staging directory, then put in place with their modes:
    // generate knows the names, install the modes.
    static STAGINGS: AtomicU32 = AtomicU32::new(0);
    let staging = std::env::temp_dir().join(format!(
        "affinity-install-{}-{}",
        std::process::id(),
        STAGINGS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&staging);
    let mut installs = Vec::new();
    for page in generated(binary, &["generate", "man"], &staging.join("man"))? {
        let name = page.file_name().context("a man page has a name")?;
        installs.push((page.clone(), at(&layout.man1.join(name))));
    }
    for (shell, dest) in [
        ("bash", &layout.bash),
        ("zsh", &layout.zsh),
        ("fish", &layout.fish),
    ] {
        let files = generated(
            binary,
            &["generate", "completions", shell],
            &staging.join(shell),
        )?;
        let [file] = files.as_slice() else {
            bail!("`affinity generate completions {shell}` wrote {files:?}, not one file");
        };
        installs.push((file.clone(), at(dest)));
    }
    for (from, to) in installs {
        let bytes = fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        ensure!(!bytes.is_empty(), "{} is empty", from.display());
        put(&to, &bytes, 0o644)?;
        done.push(to);
    }
    fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    Ok((done, kept))
}

pub fn install(args: &InstallArgs) -> Result<()> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => build::build(&BuildArgs { release: true })?,
    };
    let (done, kept) = install_from(&binary, &args.prefix, args.destdir.as_deref())?;
    for path in &done {
        eprintln!("xtask: installed {}", path.display());
    }
    if kept {
        eprintln!(
            "xtask: kept the existing {} (the new default: `affinity config --default`)",
            staged(
                args.destdir.as_deref(),
                Path::new("/etc/affinity/affinity.toml")
            )
            .display()
        );
    }
    if args.destdir.is_none() {
        eprintln!("xtask: to start it: systemctl daemon-reload && systemctl enable --now affinity");
    }
    Ok(())
}

#[cfg(test)]
#[path = "install_tests.rs"]
pub(crate) mod tests;
