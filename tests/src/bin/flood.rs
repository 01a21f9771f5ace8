//! `flood UID SECONDS THREADS PID...`: drops to UID, then calls
//! sched_setaffinity(2) on the PIDs as fast as THREADS threads can for
//! SECONDS, and prints how many calls were made and how many failed. The
//! kernel tests run it as `nobody` against kthreads to show that refused
//! calls cannot flood the daemon.

#![allow(
    unused_crate_dependencies,
    reason = "a helper binary of the test crate, which sees all of its dependencies"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uid, seconds, threads, pids @ ..] = args.as_slice() else {
        eprintln!("usage: flood UID SECONDS THREADS PID...");
        std::process::exit(2);
    };
    let uid: u32 = uid.parse().expect("UID is a number");
    let seconds: u64 = seconds.parse().expect("SECONDS is a number");
    let threads: usize = threads.parse().expect("THREADS is a number");
    let pids: Arc<Vec<i32>> = Arc::new(pids.iter().map(|p| p.parse().expect("a pid")).collect());
    // SAFETY: plain syscalls; group first, or setgid would be refused.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
        assert_eq!(libc::setgid(uid), 0, "setgid");
        assert_eq!(libc::setuid(uid), 0, "setuid");
    }
    let calls = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (pids, calls, failed) = (pids.clone(), calls.clone(), failed.clone());
            std::thread::spawn(move || {
                let mask: u64 = 1;
                while Instant::now() < deadline {
                    for &pid in pids.iter() {
                        // SAFETY: the mask outlives the call; its size is passed.
                        let r = unsafe {
                            libc::syscall(libc::SYS_sched_setaffinity, pid, 8usize, &mask)
                        };
                        calls.fetch_add(1, Ordering::Relaxed);
                        if r != 0 {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a flood thread");
    }
    println!(
        "{} {}",
        calls.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}
