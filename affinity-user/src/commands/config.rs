//! `affinity config --default`: the embedded default policy as a rules file,
//! a starting point for `--config`.

use std::process::ExitCode;

use anyhow::Result;

use crate::policy::DEFAULT_TOML;

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Print the embedded default policy (what runs without --config).
    #[arg(long, required = true)]
    pub default: bool,
}

pub fn run(_args: ConfigArgs) -> Result<ExitCode> {
    print!("{DEFAULT_TOML}");
    Ok(ExitCode::SUCCESS)
}
