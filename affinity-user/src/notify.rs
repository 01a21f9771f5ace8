//! Readiness for systemd (`Type=notify`): the sd_notify protocol, which is
//! one datagram of `KEY=VALUE` lines sent to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call does
//! nothing. A failed send is a warning, never fatal: the daemon enforcing
//! without systemd knowing matters less than the daemon enforcing.

use std::{
    ffi::OsString,
    io,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
    path::Path,
};

pub const ENV: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("${ENV}={0:?} is neither an absolute path nor an @abstract name")]
    Address(OsString),
    #[error("${ENV}={0:?}: {1}")]
    Socket(OsString, #[source] io::Error),
    #[error("sending to ${ENV}: {0}")]
    Send(#[source] io::Error),
}

/// Where `$NOTIFY_SOCKET` (given as `var`) says to send; `None` when unset.
pub fn address(var: Option<OsString>) -> Result<Option<SocketAddr>, NotifyError> {
    let Some(var) = var else { return Ok(None) };
    let bytes = var.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(Path::new(&var)),
        // Empty, relative, or systemd 254's vsock: none reach us here.
        _ => return Err(NotifyError::Address(var)),
    };
    addr.map(Some).map_err(|e| NotifyError::Socket(var, e))
}

/// Sends `state` (newline-separated assignments) as one datagram to `to`.
pub fn send_to(to: &SocketAddr, state: &str) -> Result<(), NotifyError> {
    let sock = UnixDatagram::unbound().map_err(NotifyError::Send)?;
    let sent = sock
        .send_to_addr(state.as_bytes(), to)
        .map_err(NotifyError::Send)?;
    if sent != state.len() {
        return Err(NotifyError::Send(io::Error::other(format!(
            "sent {sent} of {} bytes",
            state.len()
        ))));
    }
    Ok(())
}

/// Sends `state` where `$NOTIFY_SOCKET` says, if it is set.
pub fn notify(state: &str) -> Result<(), NotifyError> {
    match address(std::env::var_os(ENV))? {
        Some(to) => send_to(&to, state),
        None => Ok(()),
    }
}

/// The `READY=1` message: the programs are attached and the first masks set.
pub fn ready_message(observe: bool, managed: usize, pinned: usize) -> String {
    let mode = if observe { "observing" } else { "enforcing" };
    format!("READY=1\nSTATUS={mode}: {managed} kthreads managed, {pinned} pinned by the kernel")
}

pub const STOPPING: &str = "STOPPING=1\nSTATUS=stopping";

/// Tells systemd the daemon is ready; warns on stderr if that fails.
pub fn ready(observe: bool, managed: usize, pinned: usize) {
    warn_on_error(notify(&ready_message(observe, managed, pinned)));
}

/// Tells systemd the daemon is stopping; warns on stderr if that fails.
pub fn stopping() {
    warn_on_error(notify(STOPPING));
}

fn warn_on_error(result: Result<(), NotifyError>) {
    if let Err(e) = result {
        eprintln!("affinity: warning: telling systemd: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> Vec<u8> {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn a_path_socket_receives_the_exact_ready_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let to = address(Some(path.clone().into_os_string()))
            .unwrap()
            .unwrap();
        send_to(&to, &ready_message(false, 12, 3)).unwrap();
        assert_eq!(
            recv(&listener),
            b"READY=1\nSTATUS=enforcing: 12 kthreads managed, 3 pinned by the kernel"
        );
        send_to(&to, STOPPING).unwrap();
        assert_eq!(recv(&listener), b"STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn an_abstract_socket_receives_the_exact_message() {
        // Abstract names are per network namespace, not per directory:
        // the pid keeps concurrent test runs apart.
        let name = format!("affinity-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let to = address(Some(format!("@{name}").into())).unwrap().unwrap();
        assert_eq!(to.as_abstract_name(), Some(name.as_bytes()));
        send_to(&to, &ready_message(true, 0, 7)).unwrap();
        assert_eq!(
            recv(&listener),
            b"READY=1\nSTATUS=observing: 0 kthreads managed, 7 pinned by the kernel"
        );
    }

    #[test]
    fn unset_means_nothing_to_do_and_bad_addresses_are_named() {
        assert!(address(None).unwrap().is_none());
        for bad in ["", "run/notify", "vsock:2:1234"] {
            let e = address(Some(bad.into())).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("$NOTIFY_SOCKET={bad:?} is neither an absolute path nor an @abstract name")
            );
        }
    }

    #[test]
    fn nobody_listening_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let to = SocketAddr::from_pathname(dir.path().join("gone.sock")).unwrap();
        let e = send_to(&to, STOPPING).unwrap_err();
        assert!(
            matches!(&e, NotifyError::Send(io) if io.kind() == io::ErrorKind::NotFound),
            "{e:?}"
        );
    }
}
