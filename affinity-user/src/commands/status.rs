use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

pub fn run(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
