use std::{cell::RefCell, fs};

use super::*;
use crate::policy::PF_KTHREAD;

/// A fake /proc with kthreadd (2) and its children, each allowed CPUs 0-1.
fn fake_proc(children: &[(u32, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path();
    let mut list = String::new();
    for &(pid, comm) in [(2, "kthreadd")].iter().chain(children) {
        fs::create_dir_all(proc.join(pid.to_string())).unwrap();
        fs::write(
            proc.join(format!("{pid}/stat")),
            format!(
                "{pid} ({comm}) S 0 0 0 0 -1 {PF_KTHREAD} 0 0 0 0 0 0 0 0 20 0 1 0 {} 0",
                pid * 10
            ),
        )
        .unwrap();
        fs::write(
            proc.join(format!("{pid}/status")),
            "Name:\tx\nCpus_allowed_list:\t0-1\n",
        )
        .unwrap();
        if pid != 2 {
            list.push_str(&format!("{pid} "));
        }
    }
    fs::create_dir_all(proc.join("2/task/2")).unwrap();
    fs::write(proc.join("2/task/2/children"), list).unwrap();
    dir
}

fn cpus(list: &str) -> CpuSet {
    CpuSet::parse(list, 4).unwrap()
}

fn believed_of(scan: &Scan, online: &str) -> Believed {
    Believed {
        kthreads: scan.kthreads.iter().map(|k| (k.pid, k.clone())).collect(),
        online: Some(cpus(online)),
    }
}

/// Every known kthread whose sched_getaffinity() answer is as believed is
/// taken as believed, without a /proc read; the others, and the unknown,
/// are read; the gone are left out.
#[test]
fn only_what_changed_or_is_new_is_read_from_proc() {
    let dir = fake_proc(&[(10, "kswapd0"), (11, "khugepaged"), (12, "gone")]);
    let proc = dir.path();
    let full = sysfs::scan_kthreads(proc, 4).unwrap();
    let mut believed = believed_of(&full, "0-1");
    believed.kthreads.remove(&11);
    // What the daemon believes of 10 is stale: a full read says 0-1.
    believed.kthreads.get_mut(&10).unwrap().cpus_allowed = cpus("0");
    // Files that would fail to parse: a read of 2 or 12 would show.
    fs::write(proc.join("2/status"), "garbage").unwrap();
    fs::write(proc.join("12/status"), "garbage").unwrap();
    let asked = RefCell::new(Vec::new());
    let scan = quick_scan_by(proc, 4, &believed, |pid| {
        asked.borrow_mut().push(pid);
        match pid {
            12 => Err(io::Error::from_raw_os_error(libc::ESRCH)),
            _ => Ok(cpus("0-1")),
        }
    })
    .unwrap();
    // 11 is not known: not asked, read.
    assert_eq!(*asked.borrow(), vec![2, 10, 12]);
    let got: Vec<(u32, String)> = scan
        .kthreads
        .iter()
        .map(|k| (k.pid, k.cpus_allowed.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![(2, "0-1".into()), (10, "0-1".into()), (11, "0-1".into())]
    );
    assert!(scan.unreadable.is_empty());
}

/// The kernel answers the mask ∩ the active CPUs: a mask that still names
/// an offline CPU is what it was, not a change.
#[test]
fn a_believed_mask_naming_an_offline_cpu_is_compared_on_the_online_ones() {
    let dir = fake_proc(&[(10, "kswapd0")]);
    let proc = dir.path();
    let full = sysfs::scan_kthreads(proc, 4).unwrap();
    let believed = believed_of(&full, "0");
    fs::write(proc.join("10/status"), "garbage").unwrap();
    let scan = quick_scan_by(proc, 4, &believed, |_| Ok(cpus("0"))).unwrap();
    assert_eq!(scan.kthreads, full.kthreads);
    // An answer that differs on an online CPU is read in full (here: fails).
    let scan = quick_scan_by(proc, 4, &believed, |pid| {
        Ok(cpus(if pid == 10 { "1" } else { "0" }))
    })
    .unwrap();
    assert_eq!(scan.unreadable, vec![10]);
}

/// Without the online CPUs there is nothing to compare with: a full scan.
#[test]
fn without_believed_online_cpus_every_kthread_is_read() {
    let dir = fake_proc(&[(10, "kswapd0")]);
    let full = sysfs::scan_kthreads(dir.path(), 4).unwrap();
    let mut believed = believed_of(&full, "0-1");
    believed.online = None;
    let scan = quick_scan_by(dir.path(), 4, &believed, |_| panic!("not asked")).unwrap();
    assert_eq!(scan, full);
}

/// On the running kernel: sched_getaffinity() answers this thread's mask,
/// and a gone pid is ESRCH.
#[test]
fn get_affinity_answers_for_this_thread_and_esrch_for_a_gone_pid() {
    let width = sysfs::Machine::read(Path::new("/sys"), Path::new("/proc"))
        .map_or(64, |m| m.topology.width);
    let status = fs::read_to_string("/proc/thread-self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let expected = CpuSet::parse(list, width)
        .unwrap()
        .and(&CpuSet::parse(&online, width).unwrap());
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    assert_eq!(get_affinity(tid, width).unwrap(), expected);
    let err = get_affinity(0x3fff_fff0, width).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
}
