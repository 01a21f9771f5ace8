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

/// Where sysfs and procfs are (hidden flags, for tests): parameters, never
/// globals, in every command that reads the machine.
#[derive(Debug, Clone, clap::Args)]
pub struct Roots {
    /// Root of sysfs.
    #[arg(long, default_value = "/sys", hide = true)]
    pub sys: std::path::PathBuf,
    /// Root of procfs.
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc: std::path::PathBuf,
}

/// The policy flags `run` and `apply` share: one definition, one parse.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Rules file (TOML, `-` for stdin); without it the embedded default
    /// (the kernel 7.0 policy) applies.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Treat these CPUs as isolated too (removed from housekeeping).
    #[arg(long, value_name = "CPULIST")]
    pub isolate: Option<String>,
    /// Use exactly these CPUs as housekeeping, overriding the kernel's view.
    #[arg(long, value_name = "CPULIST")]
    pub housekeeping: Option<String>,
}

impl PolicyArgs {
    /// The rules file checked against `topology`, or the embedded default.
    pub fn rules(
        &self,
        topology: &crate::policy::Topology,
    ) -> anyhow::Result<crate::policy::Config> {
        match &self.config {
            Some(path) => crate::kernel::sysfs::load_config(path, topology),
            None => Ok(crate::policy::Config::embedded_default()),
        }
    }

    /// `--isolate` and `--housekeeping`, checked against `width`.
    fn housekeeping(&self, width: u32) -> anyhow::Result<run::Housekeeping> {
        run::Housekeeping::parse(self.isolate.as_deref(), self.housekeeping.as_deref(), width)
    }
}

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
