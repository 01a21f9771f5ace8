//! The doctor's verdicts: pure, from [`Facts`] gathered elsewhere, so every
//! rule is unit-tested without the kernel it describes.

use serde::Serialize;

use crate::{kernel::caps::Cap, policy::kernel_version};

/// What was found on this machine; see `gather` in the parent module.
#[derive(Debug, Clone)]
pub struct Facts {
    /// `uname -r`.
    pub release: String,
    /// Err: why the kernel's BTF cannot be used.
    pub btf: Result<(), String>,
    /// Every capability `affinity run` needs that CapEff lacks.
    pub caps_missing: Vec<Cap>,
    pub programs: Programs,
    /// The bracketed mode of /sys/kernel/security/lockdown, if the file exists.
    pub lockdown: Option<String>,
    /// Err: why the daemon would not see kthreads' pids (not the initial
    /// pid namespace).
    pub pidns: Result<(), String>,
    /// CPUs that can be taken offline and back (have an `online` file).
    pub hotpluggable: Vec<u32>,
    pub cpuset: Cpuset,
    /// The kernel's isolation, as cpulists (empty: none).
    pub isolated: String,
    pub nohz_full: String,
    pub cpuset_isolated: String,
    /// Housekeeping as the default policy would use it.
    pub housekeeping: String,
    pub online: String,
    pub irqs: Irqs,
    /// None: no unbound-workqueue cpumask file; Some(writable).
    pub workqueue: Option<bool>,
}

/// The trial load of the eBPF programs.
#[derive(Debug, Clone, Default)]
pub enum Programs {
    /// Loaded and attached, then detached again; `fexit` says whether
    /// callers can be named without the syscall tracepoints.
    Loaded {
        attached: usize,
        fexit: Result<(), String>,
    },
    Failed(String),
    /// Not tried, and why (e.g. capabilities missing).
    #[default]
    NotTried,
}

#[derive(Debug, Clone, Default)]
pub enum Cpuset {
    /// No cgroup v2 hierarchy at /sys/fs/cgroup.
    #[default]
    NoCgroup2,
    /// cgroup v2 without the cpuset controller.
    NoController,
    /// cgroup v2 cpuset: runtime isolated partitions are seen.
    Present,
}

#[derive(Debug, Clone, Default)]
pub struct Irqs {
    /// IRQs with an smp_affinity file.
    pub total: usize,
    /// Of those, how many this process may write (managed IRQs refuse at
    /// the first write; only `--irqs` finds out which).
    pub writable: usize,
    /// `/proc/irq/default_smp_affinity`: None absent, Some(writable).
    pub default_writable: Option<bool>,
    /// The pid of a running irqbalance, to which `--irqs` leaves IRQs.
    pub irqbalance: Option<u32>,
}

/// One line of the doctor's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: CheckName,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    Kernel,
    Btf,
    Capabilities,
    Programs,
    Attribution,
    Lockdown,
    PidNamespace,
    Hotplug,
    Isolation,
    CgroupCpuset,
    Irqs,
    Workqueue,
}

impl CheckName {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Kernel => "kernel",
            CheckName::Btf => "btf",
            CheckName::Capabilities => "capabilities",
            CheckName::Programs => "programs",
            CheckName::Attribution => "attribution",
            CheckName::Lockdown => "lockdown",
            CheckName::PidNamespace => "pid_namespace",
            CheckName::Hotplug => "hotplug",
            CheckName::Isolation => "isolation",
            CheckName::CgroupCpuset => "cgroup_cpuset",
            CheckName::Irqs => "irqs",
            CheckName::Workqueue => "workqueue",
        }
    }
}

/// `Missing` is what makes the doctor exit 1: the default policy cannot
/// run. `Limited` is an optional feature that is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Info,
    Limited,
    Missing,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Limited => "limited",
            Status::Missing => "missing",
        }
    }
}

fn check(check: CheckName, status: Status, detail: impl Into<String>) -> Check {
    Check {
        check,
        status,
        detail: detail.into(),
    }
}

/// Which of the kernel's own affinity rules apply to `release`.
pub fn semantics(release: &str) -> String {
    match kernel_version(release) {
        None => format!("{release}: version not recognised; pre-6.2 rules assumed"),
        Some(v) if v >= (7, 0) => format!(
            "{release}: 7.0+ rules: the kernel re-affines every unbound kthread on hotplug and \
             partition changes (affinity sets only where its policy differs); masks it sets \
             stay in user_cpus_ptr (6.2+)"
        ),
        Some(v) if v >= (6, 14) => format!(
            "{release}: 6.14+ rules: kswapd, kcompactd and RCU boost threads are kernel-managed \
             (kthread_affine_preferred); masks set stay in user_cpus_ptr (6.2+)"
        ),
        Some(v) if v >= (6, 2) => format!(
            "{release}: 6.2+ rules: every mask set also lands in user_cpus_ptr and clips the \
             kernel's later re-affining; affinity manages every movable kthread"
        ),
        Some(v) if v >= (5, 8) => {
            format!("{release}: pre-6.2 rules: affinity manages every movable kthread")
        }
        Some(_) => format!("{release}: older than 5.8, which has no BPF ring buffer"),
    }
}

/// Every check, in the order a reader needs them.
pub fn judge(f: &Facts) -> Vec<Check> {
    use CheckName as N;
    use Status as S;
    let mut out = Vec::new();
    let too_old = kernel_version(&f.release).is_some_and(|v| v < (5, 8));
    out.push(check(
        N::Kernel,
        if too_old { S::Missing } else { S::Info },
        semantics(&f.release),
    ));
    out.push(match &f.btf {
        Ok(()) => check(N::Btf, S::Ok, "/sys/kernel/btf/vmlinux readable"),
        Err(why) => check(
            N::Btf,
            S::Missing,
            format!("{why} (needs CONFIG_DEBUG_INFO_BTF)"),
        ),
    });
    out.push(if f.caps_missing.is_empty() {
        check(
            N::Capabilities,
            S::Ok,
            "every capability `affinity run` needs is effective",
        )
    } else {
        let names: Vec<String> = f.caps_missing.iter().map(ToString::to_string).collect();
        check(
            N::Capabilities,
            S::Missing,
            format!("missing from CapEff: {}", names.join(", ")),
        )
    });
    let (programs, attribution) = match &f.programs {
        Programs::Loaded { attached, fexit } => (
            check(
                N::Programs,
                S::Ok,
                format!("{attached} programs loaded and attached, then detached"),
            ),
            match fexit {
                Ok(()) => check(
                    N::Attribution,
                    S::Ok,
                    "fexit on sched_setaffinity() attaches: callers are named at no cost",
                ),
                Err(why) => check(
                    N::Attribution,
                    S::Limited,
                    format!(
                        "fexit refused ({why}): callers are not named; `--attribute syscalls` \
                         names them at a cost to every syscall"
                    ),
                ),
            },
        ),
        Programs::Failed(why) => (
            check(N::Programs, S::Missing, why.clone()),
            check(
                N::Attribution,
                S::Limited,
                "not tried: the programs do not load",
            ),
        ),
        Programs::NotTried => (
            check(
                N::Programs,
                S::Missing,
                "not tried: the capabilities above are missing",
            ),
            check(
                N::Attribution,
                S::Limited,
                "not tried: the programs were not loaded",
            ),
        ),
    };
    out.push(programs);
    out.push(attribution);
    out.push(match f.lockdown.as_deref() {
        None => check(N::Lockdown, S::Ok, "no lockdown LSM"),
        Some("confidentiality") => check(
            N::Lockdown,
            S::Missing,
            "lockdown=confidentiality forbids BPF reading kernel memory",
        ),
        Some(mode) => check(N::Lockdown, S::Ok, format!("lockdown={mode}")),
    });
    out.push(match &f.pidns {
        Ok(()) => check(N::PidNamespace, S::Ok, "the initial pid namespace"),
        Err(why) => check(N::PidNamespace, S::Missing, why.clone()),
    });
    out.push(if f.hotpluggable.is_empty() {
        check(
            N::Hotplug,
            S::Info,
            "no CPU can be taken offline here: nothing to follow, masks are set once",
        )
    } else {
        let cpus: Vec<String> = f.hotpluggable.iter().map(ToString::to_string).collect();
        let which = match cpus.as_slice() {
            [one] => format!("CPU {one}"),
            many => format!("CPUs {}", many.join(",")),
        };
        check(
            N::Hotplug,
            S::Ok,
            format!("{which} can go offline; the daemon follows them"),
        )
    });
    let none = |s: &str| if s.is_empty() { "none" } else { "" };
    let list = |s: &str| format!("{s}{}", none(s));
    let detail = format!(
        "isolcpus {}, nohz_full {}, cpuset partitions {}; housekeeping {} of online {}",
        list(&f.isolated),
        list(&f.nohz_full),
        list(&f.cpuset_isolated),
        f.housekeeping,
        f.online
    );
    out.push(if f.housekeeping == f.online {
        check(
            N::Isolation,
            S::Limited,
            format!(
                "{detail}: no CPU is isolated, so the default policy moves nothing (see --isolate)"
            ),
        )
    } else {
        check(N::Isolation, S::Ok, detail)
    });
    out.push(match f.cpuset {
        Cpuset::Present => check(
            N::CgroupCpuset,
            S::Ok,
            "cgroup v2 cpuset: isolated partitions made at run time are followed",
        ),
        Cpuset::NoController => check(
            N::CgroupCpuset,
            S::Limited,
            "cgroup v2 without the cpuset controller: only boot-time isolation is seen",
        ),
        Cpuset::NoCgroup2 => check(
            N::CgroupCpuset,
            S::Limited,
            "no cgroup v2 at /sys/fs/cgroup: only boot-time isolation is seen",
        ),
    });
    let irq = &f.irqs;
    out.push(match irq.default_writable {
        None => check(N::Irqs, S::Limited, "no /proc/irq: IRQs cannot be steered"),
        Some(false) => check(
            N::Irqs,
            S::Limited,
            "/proc/irq/default_smp_affinity is not writable here: --irqs would change nothing",
        ),
        Some(true) => match irq.irqbalance {
            None => check(
                N::Irqs,
                S::Ok,
                format!(
                    "{} of {} IRQs writable (managed ones refuse at the first write); steered with --irqs",
                    irq.writable, irq.total
                ),
            ),
            Some(pid) => check(
                N::Irqs,
                S::Info,
                format!(
                    "{} of {} IRQs writable, but irqbalance runs (pid {pid}): --irqs leaves IRQ affinity to it and says which CPUs to ban (--irqs-over-irqbalance: steer anyway)",
                    irq.writable, irq.total
                ),
            ),
        },
    });
    out.push(match f.workqueue {
        None => check(
            N::Workqueue,
            S::Limited,
            "no /sys/devices/virtual/workqueue/cpumask: unbound kworkers cannot be steered",
        ),
        Some(false) => check(
            N::Workqueue,
            S::Limited,
            "the unbound workqueue cpumask is not writable here",
        ),
        Some(true) => check(
            N::Workqueue,
            S::Ok,
            "the unbound workqueue cpumask is writable; steered with --irqs",
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            release: "6.12.1".into(),
            btf: Ok(()),
            caps_missing: vec![],
            programs: Programs::Loaded {
                attached: 9,
                fexit: Ok(()),
            },
            lockdown: Some("none".into()),
            pidns: Ok(()),
            hotpluggable: vec![1, 2, 3],
            cpuset: Cpuset::Present,
            isolated: "2-3".into(),
            nohz_full: "2-3".into(),
            cpuset_isolated: String::new(),
            housekeeping: "0-1".into(),
            online: "0-3".into(),
            irqs: Irqs {
                total: 10,
                writable: 10,
                default_writable: Some(true),
                irqbalance: None,
            },
            workqueue: Some(true),
        }
    }

    fn status_of(checks: &[Check], name: CheckName) -> Status {
        checks.iter().find(|c| c.check == name).unwrap().status
    }

    fn missing(f: &Facts) -> Vec<CheckName> {
        judge(f)
            .into_iter()
            .filter(|c| c.status == Status::Missing)
            .map(|c| c.check)
            .collect()
    }

    #[test]
    fn a_healthy_host_misses_nothing_and_reports_every_check_once() {
        let checks = judge(&healthy());
        assert_eq!(checks.len(), 12);
        assert!(missing(&healthy()).is_empty());
        assert_eq!(status_of(&checks, CheckName::Attribution), Status::Ok);
        assert_eq!(
            checks[CheckName::Isolation as usize].detail,
            "isolcpus 2-3, nohz_full 2-3, cpuset partitions none; housekeeping 0-1 of online 0-3"
        );
    }

    #[test]
    fn each_requirement_of_the_default_policy_is_missing_on_its_own() {
        let mut f = healthy();
        f.btf = Err("no /sys/kernel/btf/vmlinux".into());
        assert_eq!(missing(&f), [CheckName::Btf]);
        let mut f = healthy();
        f.caps_missing = vec![Cap::Bpf];
        f.programs = Programs::NotTried;
        assert_eq!(missing(&f), [CheckName::Capabilities, CheckName::Programs]);
        assert!(
            judge(&f)[2]
                .detail
                .ends_with("missing from CapEff: CAP_BPF")
        );
        let mut f = healthy();
        f.lockdown = Some("confidentiality".into());
        assert_eq!(missing(&f), [CheckName::Lockdown]);
        let mut f = healthy();
        f.pidns = Err("a container's pid namespace".into());
        assert_eq!(missing(&f), [CheckName::PidNamespace]);
        let mut f = healthy();
        f.release = "5.4.0".into();
        assert_eq!(missing(&f), [CheckName::Kernel]);
    }

    #[test]
    fn optional_features_off_are_limited_not_missing() {
        let mut f = healthy();
        f.programs = Programs::Loaded {
            attached: 9,
            fexit: Err("EPERM".into()),
        };
        f.cpuset = Cpuset::NoController;
        f.workqueue = None;
        f.irqs.default_writable = Some(false);
        f.housekeeping = f.online.clone();
        let checks = judge(&f);
        assert!(missing(&f).is_empty());
        for name in [
            CheckName::Attribution,
            CheckName::CgroupCpuset,
            CheckName::Workqueue,
            CheckName::Irqs,
            CheckName::Isolation,
        ] {
            assert_eq!(status_of(&checks, name), Status::Limited, "{name:?}");
        }
        assert!(
            checks[CheckName::Attribution as usize]
                .detail
                .contains("--attribute syscalls")
        );
    }

    #[test]
    fn a_running_irqbalance_is_said_with_what_irqs_does_about_it() {
        let mut f = healthy();
        f.irqs.irqbalance = Some(812);
        let checks = judge(&f);
        let irqs = &checks[CheckName::Irqs as usize];
        assert_eq!(
            (irqs.status, irqs.detail.as_str()),
            (
                Status::Info,
                "10 of 10 IRQs writable, but irqbalance runs (pid 812): --irqs leaves IRQ affinity to it and says which CPUs to ban (--irqs-over-irqbalance: steer anyway)"
            )
        );
        assert!(missing(&f).is_empty());
    }

    #[test]
    fn semantics_follow_the_kernel_version() {
        assert!(semantics("5.10.0-32-cloud-amd64").contains("pre-6.2 rules"));
        assert!(!semantics("6.1.0").contains("6.2+ rules"));
        assert!(semantics("6.2.0").contains("6.2+ rules"));
        assert!(semantics("6.14.3").contains("6.14+ rules"));
        assert!(semantics("7.3.4+deb13-cloud-amd64").contains("7.0+ rules"));
    }
}
