use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {}

pub fn run(_args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
