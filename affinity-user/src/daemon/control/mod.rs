//! The control socket: `affinity prefer` / `unprefer` talk to the running
//! daemon over a Unix socket. One JSON object per line each way: the client
//! writes a [`Request`] and a newline, the daemon answers one [`Response`]
//! and a newline, then closes.
//!
//! # Who may connect
//!
//! Three fences, each enough on its own for a root daemon:
//! - the socket lives in a directory owned by root (or by the daemon's own
//!   euid, which is what unit tests run as) that nobody else may write to;
//!   [`ControlServer::bind`] creates it with mode 0700 if it is missing and
//!   refuses one that is a symlink, someone else's, or group/other-writable;
//! - the socket is created with mode 0600 (never chmod-ed after the fact, so
//!   there is no window in which it is open to everybody);
//! - every client's peer credentials are checked before a byte is read:
//!   uid 0, or the daemon's euid.
//!
//! Nothing at the socket path is ever followed or deleted unless it is a
//! socket nobody listens on (a daemon that was killed left it). A socket
//! that answers means another daemon runs: [`ControlServer::bind`] fails, so
//! it doubles as the single-instance check. Call it (or [`preflight`],
//! which changes nothing at all) before the daemon changes anything else.
//!
//! # How the event loop uses it
//!
//! ```ignore
//! let server = ControlServer::bind(&socket)?;          // early, before BPF is loaded
//! let (tx, mut rx) = tokio::sync::mpsc::channel(16);
//! let _control = server.spawn(tx);
//! loop {
//!     tokio::select! {
//!         Some(call) = rx.recv() => {
//!             let response = handle(call.request);
//!             let _ = call.reply.send(response);        // the client may have gone
//!         }
//!         // ...
//!     }
//! }
//! ```
//!
//! [`ControlServer::spawn`] runs the accept loop as its own task and every
//! client in a task of its own, so the event loop only ever sees complete
//! requests: a client that connects and sends nothing, sends slowly, or
//! never reads its answer costs a task and a timeout, not the loop's
//! attention. At most [`MAX_CLIENTS`] clients are served at once; more are
//! told the daemon is busy. Each client gets [`READ_TIMEOUT`] to send its
//! line (at most [`MAX_REQUEST`] bytes), the loop gets [`SEND_TIMEOUT`] to
//! take the request and [`REPLY_TIMEOUT`] to answer it, and the answer gets
//! [`WRITE_TIMEOUT`] to be written. Accept errors (EMFILE and the like) are
//! reported once per streak and retried after a short pause; they never end
//! the task.
//!
//! The task ends when the loop drops its receiver, or when it is aborted or
//! its runtime shuts down; the socket file goes with it (only if it is still
//! the socket this server created: same device and inode).

use std::{
    fs,
    io::{self, ErrorKind},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{DirBuilderExt, FileTypeExt, MetadataExt},
            net::UnixListener as StdUnixListener,
        },
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
    task::JoinHandle,
    time::timeout,
};

mod view;

pub use view::{LiveKthread, LiveRegistration, LiveSteer, LiveView, SteerFile};

pub const DEFAULT_SOCKET: &str = "/run/affinity/control.sock";

/// Clients served at once; beyond that a client is told the daemon is busy.
pub const MAX_CLIENTS: usize = 16;
/// Longest request line, without its newline. Real requests are ~100 bytes.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client has to send its request once connected.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client waits for the event loop to take its request.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client waits for the event loop's answer. Shorter than the 10 s
/// [`call`] waits, so the client hears why rather than timing out itself.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(8);
/// How long writing the answer may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept: EMFILE and ENFILE do not clear at once, and
/// retrying in a tight loop would starve the event loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    /// The daemon's live registry: `affinity status`, `verify`, `prefer --list`.
    Status,
    /// Read the rules file again (as SIGHUP does): `affinity reload`.
    Reload,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    /// The answer to [`Request::Status`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<Box<LiveView>>,
}

impl Response {
    pub fn refusal(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            message: message.into(),
            view: None,
        }
    }

    pub fn done(message: impl Into<String>) -> Self {
        Response {
            ok: true,
            message: message.into(),
            view: None,
        }
    }
}

/// One client's request, handed to the event loop. Send the answer on
/// `reply`; if the client has gone by then, the send fails and that is fine.
#[derive(Debug)]
pub struct ControlCall {
    pub request: Request,
    /// Who asked, from the socket's peer credentials: `uid 0, pid 4242`.
    pub client: String,
    pub reply: oneshot::Sender<Response>,
}

/// A bound control socket, not yet accepting: see the module docs.
#[derive(Debug)]
pub struct ControlServer {
    listener: StdUnixListener,
    socket: SocketFile,
}

/// The socket file this process created; removed on drop if it still is.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Another daemon may have replaced a socket we lost track of (or an
        // admin put something there): only our own inode goes.
        if let Ok(m) = fs::symlink_metadata(&self.path)
            && m.file_type().is_socket()
            && m.dev() == self.dev
            && m.ino() == self.ino
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    clients: usize,
    max_request: usize,
    read: Duration,
    send: Duration,
    reply: Duration,
    write: Duration,
    backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            clients: MAX_CLIENTS,
            max_request: MAX_REQUEST,
            read: READ_TIMEOUT,
            send: SEND_TIMEOUT,
            reply: REPLY_TIMEOUT,
            write: WRITE_TIMEOUT,
            backoff: ACCEPT_BACKOFF,
        }
    }
}

impl ControlServer {
    /// Checks (or creates) the socket's directory, makes sure no other
    /// daemon listens on `path`, removes a stale socket, and binds a new one
    /// with mode 0600. Does not need a tokio runtime; [`Self::spawn`] does.
    pub fn bind(path: &Path) -> Result<Self> {
        ensure_dir(&socket_dir(path))?;
        if inspect(path)? == Existing::Stale {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("removing the stale socket {}", path.display()));
                }
            }
        }
        let listener = bind_private(path).with_context(|| format!("binding {}", path.display()))?;
        let meta = fs::symlink_metadata(path)
            .with_context(|| format!("inspecting the new socket {}", path.display()))?;
        // From here on the file is ours: dropping the guard removes it.
        let socket = SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let mode = meta.mode() & 0o777;
        if !meta.file_type().is_socket() || mode != 0o600 {
            bail!(
                "{} came out with mode {mode:04o} instead of 0600; refusing to serve on it",
                path.display()
            );
        }
        Ok(ControlServer { listener, socket })
    }

    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Starts accepting clients in a task of its own; each complete request
    /// goes to `requests`. See the module docs for the limits and timeouts.
    /// Must be called inside a tokio runtime.
    pub fn spawn(self, requests: mpsc::Sender<ControlCall>) -> JoinHandle<()> {
        self.spawn_with(requests, Limits::default())
    }

    fn spawn_with(self, requests: mpsc::Sender<ControlCall>, limits: Limits) -> JoinHandle<()> {
        let ControlServer { listener, socket } = self;
        tokio::spawn(async move {
            // Held for the task's lifetime, so the socket file goes however it ends.
            let _socket = socket;
            let listener = match listener
                .set_nonblocking(true)
                .and_then(|()| UnixListener::from_std(listener))
            {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("affinity: error: control socket: registering the listener: {e}");
                    return;
                }
            };
            accept_loop(listener, requests, limits).await;
        })
    }
}

async fn accept_loop(listener: UnixListener, requests: mpsc::Sender<ControlCall>, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.clients));
    let busy = line(&Response::refusal(
        "the affinity daemon is busy with other control clients; try again",
    ));
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            // Nobody left to answer requests: the daemon is shutting down.
            () = requests.closed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                failing = false;
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let requests = requests.clone();
                        tokio::spawn(async move {
                            serve_client(stream, &requests, limits).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        // A fresh socket's send buffer is empty, so this
                        // never blocks; a client that never reads just
                        // loses the message.
                        let _ = stream.try_write(busy.as_bytes());
                    }
                }
            }
            Err(e) => {
                if !failing {
                    eprintln!(
                        "affinity: warning: control socket: accepting a client: {e}; retrying"
                    );
                    failing = true;
                }
                tokio::time::sleep(limits.backoff).await;
            }
        }
    }
}

async fn serve_client(
    mut stream: UnixStream,
    requests: &mpsc::Sender<ControlCall>,
    limits: Limits,
) {
    if let Some(response) = answer(&mut stream, requests, limits).await {
        let _ = timeout(limits.write, reply(&mut stream, &response)).await;
    }
}

/// What to tell the client, or `None` when nobody is there to hear it.
async fn answer(
    stream: &mut UnixStream,
    requests: &mpsc::Sender<ControlCall>,
    limits: Limits,
) -> Option<Response> {
    let cred = stream.peer_cred().ok();
    let uid = cred.map(|c| c.uid());
    if !uid.is_some_and(peer_allowed) {
        return Some(Response::refusal(
            "only root may control the affinity daemon",
        ));
    }
    let request = match timeout(limits.read, read_line(stream, limits.max_request)).await {
        Err(_) => {
            return Some(Response::refusal(format!(
                "no request within {:?}",
                limits.read
            )));
        }
        Ok(Err(_)) | Ok(Ok(Line::Empty)) => return None,
        Ok(Ok(Line::TooLong)) => {
            return Some(Response::refusal(format!(
                "request longer than {} bytes",
                limits.max_request
            )));
        }
        Ok(Ok(Line::Complete(bytes))) => match serde_json::from_slice::<Request>(&bytes) {
            Ok(r) => r,
            Err(e) => return Some(Response::refusal(format!("malformed request: {e}"))),
        },
    };
    let (tx, rx) = oneshot::channel();
    let client = match cred.and_then(|c| c.pid()) {
        Some(pid) => format!("uid {}, pid {pid}", uid.unwrap_or_default()),
        None => format!("uid {}", uid.unwrap_or_default()),
    };
    let call = ControlCall {
        request,
        client,
        reply: tx,
    };
    match timeout(limits.send, requests.send(call)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Some(Response::refusal("the affinity daemon is shutting down")),
        Err(_) => {
            return Some(Response::refusal(
                "the affinity daemon is busy and did not take the request; try again",
            ));
        }
    }
    Some(match timeout(limits.reply, rx).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => Response::refusal("the affinity daemon dropped the request unanswered"),
        Err(_) => Response::refusal(format!(
            "the affinity daemon did not answer within {:?}; the request may still take effect",
            limits.reply
        )),
    })
}

fn peer_allowed(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

enum Line {
    Complete(Vec<u8>),
    TooLong,
    Empty,
}

async fn read_line(stream: &mut UnixStream, max: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    // One byte over the cap tells a line of exactly `max` bytes plus its
    // newline from a longer one.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    BufReader::new((&mut *stream).take(limit))
        .read_until(b'\n', &mut buf)
        .await?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        Ok(Line::Complete(buf))
    } else if buf.len() > max {
        Ok(Line::TooLong)
    } else if buf.is_empty() {
        Ok(Line::Empty)
    } else {
        // The client closed its side without a newline: the line is whole.
        Ok(Line::Complete(buf))
    }
}

fn line(response: &Response) -> String {
    // Two plain fields: serialising cannot fail, but if it ever did the
    // client should still get a line it can parse.
    let mut line = serde_json::to_string(response)
        .unwrap_or_else(|_| r#"{"ok":false,"message":"unserialisable response"}"#.into());
    line.push('\n');
    line
}

/// Writes one answer line and closes the write side.
pub async fn reply(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    stream.write_all(line(response).as_bytes()).await?;
    stream.shutdown().await
}

fn socket_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses a control socket directory that someone other than root (or
/// this process's euid) could tamper with: a symlink, not a directory,
/// owned by another user, or writable by group or others. Changes nothing.
pub fn check_dir(dir: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(dir)
        .with_context(|| format!("inspecting the control socket directory {}", dir.display()))?;
    verify_dir(dir, &meta)
}

fn verify_dir(dir: &Path, meta: &fs::Metadata) -> Result<()> {
    let d = dir.display();
    let ft = meta.file_type();
    if ft.is_symlink() {
        bail!("refusing the control socket directory {d}: it is a symlink");
    }
    if !ft.is_dir() {
        bail!(
            "refusing the control socket directory {d}: it is {}, not a directory",
            describe(ft)
        );
    }
    let me = euid();
    if meta.uid() != 0 && meta.uid() != me {
        let whom = if me == 0 {
            "root".to_string()
        } else {
            format!("root or uid {me}")
        };
        bail!(
            "refusing the control socket directory {d}: it is owned by uid {}, not {whom}",
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "refusing the control socket directory {d}: it is writable by group or others (mode {mode:04o})"
        );
    }
    Ok(())
}

/// Creates the directory (mode 0700; its parent must exist) or checks the
/// one that is there.
fn ensure_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) => return verify_dir(dir, &meta),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!("inspecting the control socket directory {}", dir.display())
            });
        }
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        // Someone made it meanwhile: judge whatever is there now.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "creating the control socket directory {} (its parent must exist)",
                    dir.display()
                )
            });
        }
    }
    check_dir(dir)
}

/// Everything [`ControlServer::bind`] checks, changing nothing: the
/// directory (a missing one is fine if its parent is a directory, since
/// bind would create it) and the socket path (another daemon listening, or
/// something other than a socket there, is an error).
pub fn preflight(path: &Path) -> Result<()> {
    let dir = socket_dir(path);
    match fs::symlink_metadata(&dir) {
        Ok(meta) => verify_dir(&dir, &meta)?,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let parent = socket_dir(&dir);
            if !fs::metadata(&parent).is_ok_and(|m| m.is_dir()) {
                bail!(
                    "cannot create the control socket directory {}: {} is not a directory",
                    dir.display(),
                    parent.display()
                );
            }
            return Ok(());
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("inspecting the control socket directory {}", dir.display())
            });
        }
    }
    inspect(path).map(|_| ())
}

#[derive(Debug, PartialEq, Eq)]
enum Existing {
    Nothing,
    /// A socket nobody listens on.
    Stale,
}

fn inspect(path: &Path) -> Result<Existing> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        bail!(
            "refusing to bind the control socket at {}: something else is there ({}); remove it if it is not needed",
            path.display(),
            describe(ft)
        );
    }
    if listening(path).with_context(|| format!("probing the socket {}", path.display()))? {
        bail!(
            "another affinity daemon is already listening on {}",
            path.display()
        );
    }
    Ok(Existing::Stale)
}

fn describe(ft: fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symlink"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "an unknown kind of file"
    }
}

/// Whether something accepts connections on the socket at `path`. The
/// connect is non-blocking: a blocking one waits for as long as the other
/// side's backlog is full, and a wedged daemon would then wedge this one.
fn listening(path: &Path) -> io::Result<bool> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "path too long for a Unix socket",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    // SAFETY: socket() has no memory preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: addr is initialised and `len` lies within it (checked above).
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // EAGAIN: a listener whose backlog is full, still a listener.
        Some(libc::EAGAIN) | Some(libc::EINPROGRESS) => Ok(true),
        Some(libc::ECONNREFUSED) | Some(libc::ENOENT) => Ok(false),
        _ => Err(e),
    }
}

/// Binds with umask 0177, so the socket is born 0600.
///
/// The umask is process-wide, so the bind runs on a thread of its own that
/// first unshares its filesystem attributes (CLONE_FS, no privilege
/// needed): the umask it sets then is its alone, and other threads (the
/// test harness's, tokio's blocking pool) never see it. Where unshare is
/// refused (a seccomp filter), the process-wide umask is changed around the
/// bind and restored; that is only safe while no other thread creates
/// files, which holds for the daemon, since it binds before it starts any.
fn bind_private(path: &Path) -> io::Result<StdUnixListener> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd,
            // root and umask from the rest of the process.
            unsafe { libc::unshare(libc::CLONE_FS) };
            // SAFETY: umask cannot fail.
            let old = unsafe { libc::umask(0o177) };
            let bound = StdUnixListener::bind(path);
            // SAFETY: as above.
            unsafe { libc::umask(old) };
            bound
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the bind thread panicked")))
    })
}

/// Client side: sends one request, waits for the answer.
pub async fn call(path: &Path, request: &Request) -> Result<Response> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            bail!(
                "permission denied on {}: only root may control the affinity daemon",
                path.display()
            )
        }
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
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
    timeout(
        Duration::from_secs(10),
        BufReader::new(stream).read_line(&mut answer),
    )
    .await
    .context("the daemon did not answer within 10 s")?
    .context("reading the daemon's answer")?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    serde_json::from_str(&answer)
        .with_context(|| format!("malformed answer from the daemon: {answer:?}"))
}

#[cfg(test)]
mod tests;
