//! One module per `affinity` subcommand; each exposes `run(args) -> Result<ExitCode>`.

pub mod apply;
pub mod check;
pub mod config;
pub mod doctor;
pub mod generate;
pub mod plan;
pub mod prefer;
pub mod restore;
pub mod run;
pub mod snapshot;
pub mod status;

pub use crate::input::{BadInput, EXIT_BAD_INPUT};

use crate::daemon::report::Format;

/// The output switch shared by every subcommand that prints data.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Same as `--format json`.
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    pub fn is_json(&self) -> bool {
        self.json || self.format == Format::Json
    }
}

/// Prints `value` as one pretty JSON document with `ts` and `schema` added.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(value)?;
    crate::daemon::report::stamp(&mut v, true);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
