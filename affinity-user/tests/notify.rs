//! `affinity run` under `Type=notify`, the part that needs neither root nor
//! BPF: a daemon that cannot start must not tell systemd it is ready (nor
//! stopping: it never started). READY=1 itself, after the first masks, is
//! sent by code the unit tests in src/notify.rs check byte for byte; the
//! daemon's own run needs the kernel tests.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "a binary, test or bench target of affinity-user sees the library's dependencies too"
)]

use std::{io::ErrorKind, os::unix::net::UnixDatagram, process::Command, time::Duration};

#[test]
fn a_daemon_that_fails_to_start_sends_systemd_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    // An unreadable sysfs fails the very first step, before the control
    // socket, the programs or any mask.
    let out = Command::new(env!("CARGO_BIN_EXE_affinity"))
        .args(["run", "--sys", "/nonexistent", "--socket"])
        .arg(dir.path().join("control/control.sock"))
        .env("NOTIFY_SOCKET", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "affinity: error: reading the machine's CPU state: reading /nonexistent/devices/system/cpu/possible: No such file or directory (os error 2)\n"
    );
    // The daemon has exited: anything it sent is queued already.
    systemd
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 256];
    match systemd.recv(&mut buf) {
        Ok(n) => panic!("told systemd {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{e}"
        ),
    }
}
