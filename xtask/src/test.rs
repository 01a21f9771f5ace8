//! `cargo xtask test`: everything CI runs.

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct TestArgs {}

pub fn test(_args: TestArgs) -> Result<()> {
    anyhow::bail!("not written yet")
}
