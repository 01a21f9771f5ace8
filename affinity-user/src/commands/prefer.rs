use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct PreferArgs {}
#[derive(Debug, clap::Args)]
pub struct UnpreferArgs {}

pub fn run_prefer(_args: PreferArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
pub fn run_unprefer(_args: UnpreferArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
