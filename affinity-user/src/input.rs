//! Errors that are the user's input being wrong, wherever they are found.

/// Exit status for input the user got wrong: a config, a CPU list, a pid, a snapshot.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Marks an error as the user's input being wrong, so `main` exits with
/// [`EXIT_BAD_INPUT`] instead of 1. The message is the whole story: it names
/// what was wrong and where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl BadInput {
    pub fn err(msg: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(BadInput(msg.into()))
    }
}
