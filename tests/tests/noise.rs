//! The noise report on the real kernel: time on the non-housekeeping CPUs
//! attributed to the kthread, hard IRQ or softirq that took it. One test
//! thread: IRQ affinity, kthread masks and sysctls are machine-wide.
//!
//! On the host cpu1 is made non-housekeeping with `--isolate 1`; in the
//! vm-test guests the boot isolates CPUs 2 and 3, and 2 is left quiet.

#![allow(
    clippy::unwrap_used,
    unused_crate_dependencies,
    reason = "every kernel test target shares the test crate's dependencies and uses some"
)]

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use affinity::policy::{CpuSet, MAX_CPUS};
use affinity_harness::Value;
use affinity_tests::{
    daemon::{Daemon, affinity_bin},
    irq::{IrqGuard, interrupt_counts},
    pid_of, set_mask, setup,
};

const SECOND: Duration = Duration::from_secs(1);
/// How long the sources are made to run on the noisy CPU.
const PROVOKE_FOR: Duration = Duration::from_secs(3);

fn cpus(path: &str) -> Vec<u32> {
    let s = fs::read_to_string(path).unwrap_or_default();
    CpuSet::parse(s.trim(), MAX_CPUS).unwrap().iter().collect()
}

/// (daemon arguments that make the watched CPUs, noisy CPU, quiet CPU).
fn watched() -> (Vec<String>, u32, Option<u32>) {
    let isolated = cpus("/sys/devices/system/cpu/isolated");
    if isolated.len() >= 2 {
        return (Vec::new(), *isolated.last().unwrap(), Some(isolated[0]));
    }
    let last = *cpus("/sys/devices/system/cpu/online").last().unwrap();
    assert!(last > 0, "one online CPU: nothing to isolate");
    (vec!["--isolate".into(), last.to_string()], last, None)
}

/// Puts a sysctl back when dropped.
struct Sysctl(&'static str, String);

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        fs::write(path, value).unwrap_or_else(|e| panic!("writing {value} to {path}: {e}"));
        Sysctl(path, old.trim().to_string())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(self.0, &self.1);
    }
}

fn pin_this_thread(cpu: u32) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the softirq thread to cpu{cpu}"
        );
    }
}

/// TCP over loopback from a thread on `cpu`: the receive side runs as the
/// NET_RX softirq on the sender's CPU.
fn loopback_traffic(cpu: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        pin_this_thread(cpu);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            client.write_all(&buf).unwrap();
            server.read_exact(&mut buf).unwrap();
            rounds += 1;
        }
        rounds
    })
}

/// Work that raises device IRQs: file writes made durable in the test's
/// directory (block or filesystem requests), and DNS lookups of the
/// archive apt uses (network receive; nothing where there is no network).
/// Disk IRQs are often managed (multi-queue), so the NIC may be the one.
fn raise_irqs(dir: &std::path::Path, until: Instant) {
    use std::net::ToSocketAddrs;
    let path = dir.join("noise-io");
    while Instant::now() < until {
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(&[7u8; 65536]).unwrap();
        f.sync_all().unwrap();
        let _ = ("deb.debian.org", 80).to_socket_addrs();
    }
    let _ = fs::remove_file(&path);
}

/// An IRQ that [`raise_irqs`] raises and whose affinity the kernel lets us set
/// to `cpu` (set now; the IrqGuard puts it back): the busiest such one.
fn irq_we_can_raise_on(cpu: u32, dir: &std::path::Path) -> Option<(u32, String)> {
    let before = interrupt_counts();
    raise_irqs(dir, Instant::now() + SECOND);
    let after = interrupt_counts();
    let mut fired: Vec<(u64, u32)> = after
        .iter()
        .filter_map(|(irq, n)| Some((n - before.get(irq)?, *irq)))
        .filter(|(d, _)| *d > 0)
        .collect();
    fired.sort_by(|a, b| b.cmp(a));
    let tried: Vec<String> = fired
        .iter()
        .map(|(d, irq)| format!("{irq} ({d} interrupts)"))
        .collect();
    let found = fired.into_iter().find_map(|(_, irq)| {
        fs::write(
            format!("/proc/irq/{irq}/smp_affinity_list"),
            cpu.to_string(),
        )
        .ok()?;
        let actions = fs::read_to_string(format!("/sys/kernel/irq/{irq}/actions")).ok()?;
        Some((irq, actions.trim().to_string()))
    });
    if found.is_none() {
        eprintln!(
            "no IRQ that file I/O or a DNS lookup raises takes an affinity here (managed or refused): {tried:?}"
        );
    }
    found
}

/// (count, total_us) per (kind, id) on `cpu`, summed over the records.
fn summed(records: &[Value], cpu: u32) -> BTreeMap<(String, u64), (u64, f64)> {
    let mut out: BTreeMap<(String, u64), (u64, f64)> = BTreeMap::new();
    for r in records.iter().filter(|r| r["cpu"] == cpu) {
        for s in r["sources"].as_array().unwrap() {
            let e = out
                .entry((
                    s["kind"].as_str().unwrap().to_string(),
                    s["id"].as_u64().unwrap(),
                ))
                .or_default();
            e.0 += s["count"].as_u64().unwrap();
            e.1 += s["total_us"].as_f64().unwrap();
        }
    }
    out
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn metric(body: &str, cpu: u32, kind: &str) -> f64 {
    let prefix =
        format!("affinity_isolated_noise_seconds_total{{cpu=\"{cpu}\",source_kind=\"{kind}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}in:\n{body}"))
        .parse()
        .unwrap()
}

#[test]
fn noise_is_attributed_to_the_kthread_irq_and_softirq_that_made_it() {
    let Some(_masks) = setup("noise_is_attributed_to_the_kthread_irq_and_softirq_that_made_it")
    else {
        return;
    };
    let _irqs = IrqGuard::save();
    let (mut args, noisy, quiet) = watched();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    // Observing: the kthread moved onto the noisy CPU stays there.
    args.extend(
        [
            "--observe",
            "--noise-interval",
            "1",
            "--metrics",
            &addr.to_string(),
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut d = Daemon::start(&args);
    // The first interval is whole.
    d.wait_event(5 * SECOND, "a first noise record", |e| e["type"] == "noise");

    let irq = irq_we_can_raise_on(noisy, d.dir());
    // khungtaskd wakes every check interval: every second, on `noisy`.
    let khungtaskd = pid_of("khungtaskd");
    let _interval = Sysctl::set("/proc/sys/kernel/hung_task_check_interval_secs", "1");
    set_mask(khungtaskd, &noisy.to_string());

    let skip = d.events().len();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = loopback_traffic(noisy, stop.clone());
    let until = Instant::now() + PROVOKE_FOR;
    if irq.is_some() {
        raise_irqs(d.dir(), until);
    } else {
        std::thread::sleep(PROVOKE_FOR);
    }
    stop.store(true, Ordering::Relaxed);
    assert!(traffic.join().unwrap() > 0, "no loopback traffic was made");
    // The interval that holds the end of the provocation, and one more.
    let seen_by = Instant::now() + 2 * SECOND;
    while Instant::now() < seen_by {
        std::thread::sleep(Duration::from_millis(100));
    }
    let records: Vec<Value> = d
        .events_since(skip)
        .into_iter()
        .filter(|e| e["type"] == "noise")
        .collect();
    let on_noisy = summed(&records, noisy);

    // The softirq, the kthread and the IRQ, each with time > 0.
    let rx = on_noisy.get(&("softirq".into(), 3));
    assert!(
        rx.is_some_and(|(n, us)| *n > 0 && *us > 0.0),
        "NET_RX on cpu{noisy}: {on_noisy:?}"
    );
    assert!(
        records.iter().any(|r| r["cpu"] == noisy
            && r["sources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["kind"] == "softirq" && s["name"] == "NET_RX")),
        "NET_RX named: {records:?}"
    );
    let k = on_noisy.get(&("kthread".into(), u64::from(khungtaskd)));
    assert!(
        k.is_some_and(|(n, us)| *n > 0 && *us > 0.0),
        "khungtaskd ({khungtaskd}) moved onto cpu{noisy}: {on_noisy:?}"
    );
    match &irq {
        Some((n, actions)) => {
            let h = on_noisy.get(&("hardirq".into(), u64::from(*n)));
            assert!(
                h.is_some_and(|(c, us)| *c > 0 && *us > 0.0),
                "IRQ {n} ({actions}) steered onto cpu{noisy}: {on_noisy:?}"
            );
            assert!(
                records.iter().any(|r| r["sources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["kind"] == "hardirq" && s["name"] == actions.as_str())),
                "IRQ {n} named {actions}"
            );
        }
        // The kthread and the softirq above are still attributed.
        None => eprintln!(
            "NOT APPLICABLE on {}: no IRQ to raise on cpu{noisy}",
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap()
                .trim()
        ),
    }

    // Every record adds up, and every watched CPU gets one per interval.
    for r in &records {
        let sum: f64 = r["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["total_us"].as_f64().unwrap())
            .sum();
        let total = r["total_us"].as_f64().unwrap();
        assert!((sum - total).abs() < 0.01, "{r}");
        assert!(r["interval_ms"].as_u64().unwrap() > 0, "{r}");
    }
    let noisy_records = records.iter().filter(|r| r["cpu"] == noisy).count();
    assert!(noisy_records >= 4, "one per second: {records:?}");

    // The quiet CPU: nothing provoked lands there, and an interval of
    // nothing is reported as zero.
    if let Some(q) = quiet {
        let on_quiet = summed(&records, q);
        assert!(
            !on_quiet.contains_key(&("softirq".into(), 3))
                && !on_quiet.contains_key(&("kthread".into(), u64::from(khungtaskd))),
            "cpu{q} is quiet: {on_quiet:?}"
        );
        let quiet_records: Vec<&Value> = records.iter().filter(|r| r["cpu"] == q).collect();
        assert_eq!(quiet_records.len(), noisy_records, "{records:?}");
        assert!(
            quiet_records
                .iter()
                .any(|r| r["total_us"] == 0.0 && r["sources"].as_array().unwrap().is_empty()),
            "an interval of nothing on cpu{q}: {quiet_records:?}"
        );
    }

    // The same time in the metrics and in `status`.
    let body = scrape(addr);
    assert!(metric(&body, noisy, "softirq") > 0.0, "{body}");
    assert!(metric(&body, noisy, "kthread") > 0.0, "{body}");
    if let Some((n, _)) = &irq {
        assert!(metric(&body, noisy, "hardirq") > 0.0, "IRQ {n}: {body}");
    }
    let out = Command::new(affinity_bin())
        .args(["status", "--format", "json", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cpus_in_status: Vec<u64> = status["noise"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["cpu"].as_u64().unwrap())
        .collect();
    let mut want = vec![u64::from(noisy)];
    want.extend(quiet.map(u64::from));
    want.sort();
    assert_eq!(cpus_in_status, want, "{status}");
    assert!(d.stop().success());
}

#[test]
fn noise_interval_zero_reports_no_noise() {
    let Some(_masks) = setup("noise_interval_zero_reports_no_noise") else {
        return;
    };
    let (mut args, _, _) = watched();
    args.extend(["--observe", "--noise-interval", "0"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut d = Daemon::start(&args);
    // Were 0 taken as the shortest interval (1 s), records would come by now.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(d.stop().success());
    let noise: Vec<Value> = d
        .events()
        .into_iter()
        .filter(|e| e["type"] == "noise")
        .collect();
    assert_eq!(noise, Vec::<Value>::new());
}
