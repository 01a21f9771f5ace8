//! The control socket: `affinity prefer` / `unprefer` talk to the running
//! daemon over a Unix socket that only root may use (mode 0600, and the
//! peer's credentials are checked too, in case the mode is loosened).
//!
//! One JSON object per line each way.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

pub const DEFAULT_SOCKET: &str = "/run/affinity/control.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `target` is a pid or a comm; `prefer` a cpulist, `housekeeping`, `node` or `node:N`.
    Prefer {
        target: String,
        prefer: String,
        update: bool,
    },
    Unprefer {
        target: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    pub fn bind(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // A socket left by a daemon that was killed: nobody listens on it.
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another affinity daemon is already listening on {}",
                    path.display()
                );
            }
            fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Accepts one client and reads its request. Clients that are not root
    /// get a refusal and `None`.
    pub async fn accept(&self) -> Result<Option<(Request, UnixStream)>> {
        let (mut stream, _) = self
            .listener
            .accept()
            .await
            .context("accepting a control client")?;
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        if uid != 0 {
            let _ = reply(
                &mut stream,
                &Response {
                    ok: false,
                    message: "only root may control the affinity daemon".into(),
                },
            )
            .await;
            return Ok(None);
        }
        let mut line = String::new();
        let read = tokio::time::timeout(
            Duration::from_secs(2),
            BufReader::new(&mut stream).read_line(&mut line),
        )
        .await;
        match read {
            Ok(Ok(n)) if n > 0 => match serde_json::from_str(&line) {
                Ok(req) => Ok(Some((req, stream))),
                Err(e) => {
                    let _ = reply(
                        &mut stream,
                        &Response {
                            ok: false,
                            message: format!("malformed request: {e}"),
                        },
                    )
                    .await;
                    Ok(None)
                }
            },
            _ => Ok(None),
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

pub async fn reply(stream: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(response).expect("responses serialise");
    line.push('\n');
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await
}

/// Client side: sends one request, waits for the answer.
pub async fn call(path: &Path, request: &Request) -> Result<Response> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!(
                "permission denied on {}: only root may control the affinity daemon",
                path.display()
            )
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            bail!(
                "no affinity daemon is running (nothing listens on {}); start one with `affinity run`",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .await
        .context("sending the request")?;
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stream).read_line(&mut answer),
    )
    .await
    .context("the daemon did not answer within 10 s")?
    .context("reading the daemon's answer")?;
    serde_json::from_str(&answer)
        .with_context(|| format!("malformed answer from the daemon: {answer:?}"))
}
