//! One module per `affinity` subcommand; each exposes `run(args) -> Result<ExitCode>`.

pub mod check;
pub mod plan;
pub mod prefer;
pub mod run;
pub mod snapshot;
pub mod status;

pub use crate::input::{BadInput, EXIT_BAD_INPUT};
