//! The masks a stopping daemon leaves in place, written next to its control
//! socket so that `affinity restore` can later give exactly those back to
//! the kernel's policy, and no mask someone else set.
//!
//! It lives in the socket's directory (/run/affinity by default): a tmpfs
//! that a reboot clears, as it should, since pids and start times name
//! nothing after one. The unit keeps the directory across a stop
//! (RuntimeDirectoryPreserve=yes).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One kthread whose mask the daemon set and left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftMask {
    pub pid: u32,
    /// /proc/PID/stat field 22: with the pid, names the kthread exactly.
    pub start_time: u64,
    pub comm: String,
    /// The mask as the daemon left it (a cpulist).
    pub set: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftMasks {
    pub schema: u32,
    /// `uname -r` of the kernel they were set on.
    pub kernel: String,
    pub kthreads: Vec<LeftMask>,
}

pub const SCHEMA: u32 = 1;

#[derive(Debug, Error)]
pub enum LeftError {
    #[error("writing {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not a record of masks left by the daemon: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path} has schema {found}; this affinity reads schema {SCHEMA}")]
    Schema { path: String, found: u32 },
}

/// Where the daemon using `socket` records what it leaves.
pub fn path_for(socket: &Path) -> PathBuf {
    socket.with_file_name("masks.json")
}

/// Writes `left` atomically (a temporary file renamed over the old one),
/// so a reader never sees half a record.
pub fn write(path: &Path, left: &LeftMasks) -> Result<(), LeftError> {
    let err = |source| LeftError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(left)
        .map_err(io::Error::other)
        .map_err(err)?;
    fs::write(&tmp, text + "\n").map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// The record at `path`; `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<LeftMasks>, LeftError> {
    let name = path.display().to_string();
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LeftError::Read { path: name, source }),
    };
    let left: LeftMasks = serde_json::from_str(&text).map_err(|source| LeftError::Parse {
        path: name.clone(),
        source,
    })?;
    if left.schema != SCHEMA {
        return Err(LeftError::Schema {
            path: name,
            found: left.schema,
        });
    }
    Ok(Some(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_next_to_the_socket_and_refuses_other_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("control.sock"));
        assert_eq!(path, dir.path().join("masks.json"));
        assert!(read(&path).unwrap().is_none(), "no record is not an error");
        let left = LeftMasks {
            schema: SCHEMA,
            kernel: "6.12.1".into(),
            kthreads: vec![LeftMask {
                pid: 43,
                start_time: 12,
                comm: "khugepaged".into(),
                set: "0".into(),
            }],
        };
        write(&path, &left).unwrap();
        assert_eq!(read(&path).unwrap(), Some(left.clone()));
        assert!(!path.with_extension("json.tmp").exists());
        fs::write(
            &path,
            "{\"schema\": 9, \"kernel\": \"x\", \"kthreads\": []}",
        )
        .unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .ends_with("has schema 9; this affinity reads schema 1")
        );
        fs::write(&path, "garbage").unwrap();
        assert!(
            read(&path)
                .unwrap_err()
                .to_string()
                .contains("is not a record of masks left by the daemon")
        );
    }
}
