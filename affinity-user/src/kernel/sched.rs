//! The daemon's own scheduling: `--rt-priority` puts the event loop, which
//! reads the hotplug records and sets the masks, under SCHED_FIFO, as
//! stalld and rtla do for their own threads, so that a loaded CPU does not
//! delay the reaction to a hotplug step.

use std::io;

/// Puts the calling thread (only it) under SCHED_FIFO at `priority`
/// (1-99). SCHED_RESET_ON_FORK: threads and processes it starts later
/// run at normal priority.
pub fn fifo_for_this_thread(priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: param outlives the call; pid 0 is the calling thread.
    let ret = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's scheduling policy (without SCHED_RESET_ON_FORK).
pub fn policy_of_this_thread() -> io::Result<i32> {
    // SAFETY: no pointers; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_getscheduler(0) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret & !libc::SCHED_RESET_ON_FORK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_without_the_capability_is_refused_and_keeps_its_policy() {
        // Unit tests run unprivileged in `cargo test`, and as root in CI:
        // either way the call reports what happened, and a refusal changes
        // nothing.
        let t = std::thread::spawn(|| {
            let before = policy_of_this_thread().unwrap();
            match fifo_for_this_thread(1) {
                Ok(()) => assert_eq!(policy_of_this_thread().unwrap(), libc::SCHED_FIFO),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
                    assert_eq!(policy_of_this_thread().unwrap(), before);
                }
            }
        });
        t.join().unwrap();
    }
}
