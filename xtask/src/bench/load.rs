//! Load on the machine: context switches, CPU hotplug of cpu1, and the
//! kernel's BPF run-time statistics switched on while they are measured.

use std::{
    fs,
    io::{Read, Write},
    time::Instant,
};

use anyhow::{Context, Result};

/// Two threads on CPU 0 bouncing a byte over two pipes: every round trip is
/// two context switches through sched_switch. Returns ns per round trip.
pub fn ping_pong(round_trips: u32) -> f64 {
    fn pin_to_cpu0() {
        // SAFETY: a zeroed cpu_set_t with CPU 0 set, for the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let (mut a_rx, mut b_tx) = std::io::pipe().expect("pipe");
    let (mut b_rx, mut a_tx) = std::io::pipe().expect("pipe");
    let echo = std::thread::spawn(move || {
        pin_to_cpu0();
        let mut buf = [0u8; 1];
        for _ in 0..round_trips {
            a_rx.read_exact(&mut buf).expect("ping-pong pipe read");
            a_tx.write_all(&buf).expect("ping-pong pipe write");
        }
    });
    pin_to_cpu0();
    let mut buf = [0u8; 1];
    let start = Instant::now();
    for _ in 0..round_trips {
        b_tx.write_all(&buf).expect("ping-pong pipe write");
        b_rx.read_exact(&mut buf).expect("ping-pong pipe read");
    }
    let elapsed = start.elapsed();
    echo.join().expect("the echo thread");
    elapsed.as_nanos() as f64 / round_trips as f64
}

pub fn set_cpu1(online: bool) -> Result<()> {
    fs::write(
        "/sys/devices/system/cpu/cpu1/online",
        if online { "1" } else { "0" },
    )
    .context("hotplugging cpu1")
}

/// Brings cpu1 back online however the benchmark ends.
pub struct Cpu1Guard;

impl Drop for Cpu1Guard {
    fn drop(&mut self) {
        let _ = set_cpu1(true);
    }
}

/// Turns the kernel's BPF run-time statistics on for its lifetime.
pub struct BpfStats;

impl BpfStats {
    pub fn enable() -> Result<Self> {
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}
