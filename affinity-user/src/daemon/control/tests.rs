//! The control socket server against real sockets in a tempdir.

use std::{
    os::unix::fs::{PermissionsExt, symlink},
    time::Instant,
};

use super::*;

fn unprefer(target: &str) -> Request {
    Request::Unprefer {
        target: target.into(),
    }
}

/// The event loop's side: answers every request with its target.
fn answer_all(mut rx: mpsc::Receiver<ControlCall>) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(call) = rx.recv().await {
            n += 1;
            let message = match call.request {
                Request::Prefer { target, .. } | Request::Unprefer { target } => target,
                Request::Status => "status".into(),
                Request::Reload => "reload".into(),
            };
            let _ = call.reply.send(Response::done(message));
        }
        n
    })
}

fn umask_now() -> String {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Umask:"))
        .unwrap()
        .to_string()
}

#[test]
fn the_socket_is_born_0600_and_the_process_umask_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let before = umask_now();
    let server = ControlServer::bind(&path).unwrap();
    let meta = fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(umask_now(), before);
    drop(server);
    assert!(
        fs::symlink_metadata(&path).is_err(),
        "dropping the server removes its socket"
    );
}

#[test]
fn a_missing_directory_is_created_0700() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("affinity");
    let path = sub.join("control.sock");
    preflight(&path).unwrap();
    assert!(!sub.exists(), "preflight changes nothing");
    let _server = ControlServer::bind(&path).unwrap();
    assert_eq!(fs::metadata(&sub).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn a_missing_grandparent_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/control.sock");
    let e = format!("{:#}", ControlServer::bind(&path).unwrap_err());
    assert!(e.contains("its parent must exist"), "{e}");
    assert!(preflight(&path).is_err());
    assert!(!dir.path().join("a").exists());
}

#[test]
fn a_group_writable_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("affinity");
    fs::create_dir(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o770)).unwrap();
    let path = sub.join("control.sock");
    let e = format!("{:#}", ControlServer::bind(&path).unwrap_err());
    assert!(e.contains(&sub.display().to_string()), "{e}");
    assert!(e.contains("writable by group or others (mode 0770)"), "{e}");
    assert!(preflight(&path).is_err());
    assert!(!path.exists());
}

#[test]
fn a_symlinked_or_foreign_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    symlink(&real, &link).unwrap();
    let e = format!(
        "{:#}",
        ControlServer::bind(&link.join("control.sock")).unwrap_err()
    );
    assert!(e.contains("it is a symlink"), "{e}");
    assert!(fs::read_dir(&real).unwrap().next().is_none());

    let file = dir.path().join("file");
    fs::write(&file, "x").unwrap();
    let e = format!("{:#}", check_dir(&file).unwrap_err());
    assert!(e.contains("a regular file, not a directory"), "{e}");

    // Only root can give a directory away.
    if euid() == 0 {
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let e = format!("{:#}", check_dir(&theirs).unwrap_err());
        assert!(e.contains("owned by uid 65534, not root"), "{e}");
    }
}

#[test]
fn a_regular_file_symlink_or_directory_at_the_socket_path_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");

    fs::write(&path, "precious").unwrap();
    let e = format!("{:#}", ControlServer::bind(&path).unwrap_err());
    assert!(e.contains("a regular file"), "{e}");
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    fs::remove_file(&path).unwrap();

    let target = dir.path().join("target");
    fs::write(&target, "also precious").unwrap();
    symlink(&target, &path).unwrap();
    let e = format!("{:#}", ControlServer::bind(&path).unwrap_err());
    assert!(e.contains("a symlink"), "{e}");
    assert!(
        fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "also precious");
    fs::remove_file(&path).unwrap();

    // A dangling symlink too: binding through it would create a socket elsewhere.
    symlink(dir.path().join("nowhere"), &path).unwrap();
    assert!(ControlServer::bind(&path).is_err());
    assert!(!dir.path().join("nowhere").exists());
    fs::remove_file(&path).unwrap();

    fs::create_dir(&path).unwrap();
    let e = format!("{:#}", ControlServer::bind(&path).unwrap_err());
    assert!(e.contains("a directory"), "{e}");
    assert!(path.is_dir());
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    drop(StdUnixListener::bind(&path).unwrap());
    // A second name keeps the stale inode alive, so the new socket
    // cannot reuse its number and the comparison below means something.
    fs::hard_link(&path, dir.path().join("stale")).unwrap();
    let stale = fs::symlink_metadata(&path).unwrap().ino();
    preflight(&path).unwrap();

    let server = ControlServer::bind(&path).unwrap();
    assert_ne!(fs::symlink_metadata(&path).unwrap().ino(), stale);
    let (tx, rx) = mpsc::channel(4);
    let _server = server.spawn(tx);
    let _loop = answer_all(rx);
    assert_eq!(call(&path, &unprefer("x")).await.unwrap().message, "x");
}

#[test]
fn a_live_socket_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let first = ControlServer::bind(&path).unwrap();
    let ino = fs::symlink_metadata(&path).unwrap().ino();
    let e = format!("{:#}", ControlServer::bind(&path).unwrap_err());
    assert_eq!(
        e,
        format!(
            "another affinity daemon is already listening on {}",
            path.display()
        )
    );
    let e = format!("{:#}", preflight(&path).unwrap_err());
    assert!(e.contains("already listening"), "{e}");
    assert_eq!(fs::symlink_metadata(&path).unwrap().ino(), ino);
    drop(first);
}

#[test]
fn drop_leaves_a_file_that_replaced_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let server = ControlServer::bind(&path).unwrap();
    fs::remove_file(&path).unwrap();
    fs::write(&path, "someone else's").unwrap();
    drop(server);
    assert_eq!(fs::read_to_string(&path).unwrap(), "someone else's");
}

#[tokio::test]
async fn an_idle_client_does_not_delay_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let (tx, rx) = mpsc::channel(4);
    let _server = ControlServer::bind(&path).unwrap().spawn(tx);
    let _loop = answer_all(rx);

    let _idle = UnixStream::connect(&path).await.unwrap();
    let started = Instant::now();
    let answer = timeout(Duration::from_secs(1), call(&path, &unprefer("busy")))
        .await
        .expect("answered while the idle client still holds its connection")
        .unwrap();
    assert_eq!(answer, Response::done("busy"));
    assert!(started.elapsed() < READ_TIMEOUT);
}

#[tokio::test]
async fn a_hundred_requests_in_a_row_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let (tx, rx) = mpsc::channel(4);
    let server = ControlServer::bind(&path).unwrap().spawn(tx);
    let answered = answer_all(rx);
    for i in 0..100 {
        let r = call(&path, &unprefer(&i.to_string())).await.unwrap();
        assert_eq!((r.ok, r.message), (true, i.to_string()));
    }
    server.abort();
    let _ = server.await;
    assert_eq!(answered.await.unwrap(), 100);
    assert!(
        fs::symlink_metadata(&path).is_err(),
        "an aborted server removes its socket"
    );
}

#[tokio::test]
async fn the_wire_format_is_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let (tx, mut rx) = mpsc::channel(4);
    let _server = ControlServer::bind(&path).unwrap().spawn(tx);
    let seen = tokio::spawn(async move {
        let call = rx.recv().await.unwrap();
        let _ = call.reply.send(Response::done("done"));
        (call.request, call.client)
    });
    let mut s = UnixStream::connect(&path).await.unwrap();
    s.write_all(
        b"{\"op\":\"prefer\",\"target\":\"khugepaged\",\"prefer\":\"0-1\",\"update\":true}\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "{\"ok\":true,\"message\":\"done\"}\n");
    assert_eq!(
        seen.await.unwrap(),
        (
            Request::Prefer {
                target: "khugepaged".into(),
                prefer: "0-1".into(),
                update: true
            },
            // Who asked, for `affinity status`'s list of registrations.
            format!("uid {}, pid {}", euid(), std::process::id())
        )
    );
}

async fn raw(path: &Path, send: &[u8]) -> Response {
    let mut s = UnixStream::connect(path).await.unwrap();
    s.write_all(send).await.unwrap();
    // One line, not to EOF: a server that stops reading early closes
    // with data unread, and the kernel then resets the connection.
    let mut out = String::new();
    BufReader::new(s).read_line(&mut out).await.unwrap();
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn bad_requests_are_answered_without_reaching_the_loop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let (tx, rx) = mpsc::channel(4);
    let _server = ControlServer::bind(&path).unwrap().spawn(tx);
    let answered = answer_all(rx);

    let r = raw(&path, b"{\"op\":\"reboot\"}\n").await;
    assert!(!r.ok && r.message.starts_with("malformed request"), "{r:?}");

    let mut huge = vec![b' '; MAX_REQUEST + 1];
    huge.push(b'\n');
    let r = raw(&path, &huge).await;
    assert!(!r.ok && r.message.contains("longer than 65536"), "{r:?}");

    // Exactly the cap is still fine.
    let mut line = serde_json::to_vec(&unprefer("edge")).unwrap();
    line.resize(MAX_REQUEST, b' ');
    line.push(b'\n');
    assert_eq!(raw(&path, &line).await.message, "edge");
    assert!(!answered.is_finished());
}

fn quick() -> Limits {
    Limits {
        read: Duration::from_millis(200),
        reply: Duration::from_millis(200),
        ..Limits::default()
    }
}

#[tokio::test]
async fn an_idle_client_is_told_off_after_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let (tx, _rx) = mpsc::channel(4);
    let _server = ControlServer::bind(&path).unwrap().spawn_with(tx, quick());
    let mut s = UnixStream::connect(&path).await.unwrap();
    let mut out = String::new();
    timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.contains("no request within 200ms"), "{out}");
}

#[tokio::test]
async fn a_loop_that_does_not_answer_yields_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let (tx, mut rx) = mpsc::channel(4);
    let _server = ControlServer::bind(&path).unwrap().spawn_with(tx, quick());
    let held = tokio::spawn(async move {
        let first = rx.recv().await.unwrap();
        // The second is dropped unanswered; the first is kept, unanswered.
        drop(rx.recv().await.unwrap());
        first
    });
    let r = call(&path, &unprefer("a")).await.unwrap();
    assert!(
        !r.ok && r.message.contains("did not answer within"),
        "{r:?}"
    );
    let r = call(&path, &unprefer("b")).await.unwrap();
    assert!(!r.ok && r.message.contains("unanswered"), "{r:?}");
    drop(held.await.unwrap());
}

#[tokio::test]
async fn clients_beyond_the_limit_are_told_the_daemon_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let (tx, rx) = mpsc::channel(4);
    let limits = Limits {
        clients: 1,
        ..Limits::default()
    };
    let _server = ControlServer::bind(&path).unwrap().spawn_with(tx, limits);
    let _loop = answer_all(rx);
    let _idle = UnixStream::connect(&path).await.unwrap();
    // Let the accept loop hand the idle client its permit first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = call(&path, &unprefer("x")).await.unwrap();
    assert!(!r.ok && r.message.contains("busy"), "{r:?}");
}

#[tokio::test]
async fn the_server_ends_and_cleans_up_when_the_loop_goes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let (tx, rx) = mpsc::channel(4);
    let server = ControlServer::bind(&path).unwrap().spawn(tx);
    drop(rx);
    timeout(Duration::from_secs(2), server)
        .await
        .unwrap()
        .unwrap();
    assert!(fs::symlink_metadata(&path).is_err());
}

#[test]
fn only_root_and_the_daemons_own_uid_may_connect() {
    assert!(peer_allowed(0));
    assert!(peer_allowed(euid()));
    assert!(!peer_allowed(if euid() == 65534 { 65533 } else { 65534 }));
}
