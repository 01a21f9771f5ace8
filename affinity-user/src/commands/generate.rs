//! `affinity generate` (hidden): man pages and shell completions from the
//! clap definitions, for `cargo xtask install` and packages. Prints the
//! path of every file it writes, one per line.

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result};
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// affinity.1 and affinity-SUBCOMMAND.1 for every visible subcommand.
    Man {
        /// Directory to write them to (created if missing).
        dir: PathBuf,
    },
    /// The completion script for SHELL, under the name that shell looks for.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
        /// Directory to write it to (created if missing).
        dir: PathBuf,
    },
}

/// `cli` is the binary's whole command (`Cli::command()`), which lives in
/// main.rs.
pub fn run(args: GenerateArgs, cli: clap::Command) -> Result<ExitCode> {
    let written = match args.what {
        What::Man { dir } => man_pages(cli, &dir)?,
        What::Completions { shell, dir } => vec![completions(cli, shell, &dir)?],
    };
    for path in written {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn create(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// One page for the command and one per visible subcommand (not `help`,
/// not this one), each named after its display name (`affinity-run.1`).
pub fn man_pages(cli: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    create(dir)?;
    let mut cli = cli.disable_help_subcommand(true);
    // Gives every subcommand its display name and the propagated version.
    cli.build();
    let pages = std::iter::once(cli.clone()).chain(
        cli.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .cloned()
            .collect::<Vec<_>>(),
    );
    // The footer names the program, not the subcommand ("run 0.1.0").
    let source = format!("affinity {}", cli.get_version().unwrap_or_default());
    pages
        .map(|cmd| {
            let man = clap_mangen::Man::new(cmd).source(source.clone());
            man.generate_to(dir)
                .with_context(|| format!("writing {}", dir.join(man.get_filename()).display()))
        })
        .collect()
}

/// Unlike the man pages, completions offer hidden subcommands and flags
/// too: clap_complete's choice (hidden is not forbidden), kept.
pub fn completions(mut cli: clap::Command, shell: Shell, dir: &Path) -> Result<PathBuf> {
    create(dir)?;
    let name = cli.get_name().to_string();
    clap_complete::generate_to(shell, &mut cli, name, dir)
        .with_context(|| format!("writing the {shell} completions to {}", dir.display()))
}
