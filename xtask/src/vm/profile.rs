//! The VM boot profiles: how a guest is shaped (vCPUs, memory, NUMA nodes,
//! kernel command line) and which test targets run in it. Every kernel of
//! the matrix is booted once per profile.

/// Test targets named so run on the host only.
pub const HOST_ONLY: &str = "host_";

pub struct Profile {
    /// In the results, the log and script names, and the guest's
    /// `AFFINITY_VM_PROFILE`.
    pub name: &'static str,
    pub cpus: &'static str,
    pub memory: &'static str,
    /// vng `--numa` values, one per node (their memory adds up to `memory`).
    pub numa: &'static [&'static str],
    /// Added to the kernel command line.
    pub append: &'static str,
    /// The one test target this profile runs; None: every target that no
    /// other profile claims, except the host-only ones.
    only: Option<&'static str>,
}

/// 4 vCPUs with CPUs 2-3 isolated: every kernel test and `vm_scenarios`.
pub const STANDARD: Profile = Profile {
    name: "standard",
    cpus: "4",
    memory: "2G",
    numa: &[],
    append: "isolcpus=2,3 nohz_full=2,3",
    only: None,
};

/// Two nodes of two CPUs each, node 1's CPUs present but offline at boot
/// (`maxcpus=2`), no isolation: only `vm_numa`.
pub const NUMA: Profile = Profile {
    name: "numa",
    cpus: "4",
    memory: "2G",
    numa: &["1G,cpus=0-1", "1G,cpus=2-3"],
    append: "maxcpus=2",
    only: Some("vm_numa"),
};

pub const PROFILES: [&Profile; 2] = [&STANDARD, &NUMA];

/// Targets booted on some kernels only, by label: IRQ steering is 2-4 min
/// per guest under TCG, so CI boots it on the newest kernel (the host runs
/// it on 6.18 too; `--test-exe` runs it anywhere). CI's budget (README).
const ON_KERNELS: &[(&str, &[&str])] = &[("irq", &["7"])];

impl Profile {
    /// Whether the test target `name` (or a `--test-exe` file name such as
    /// `vm_numa-0123456789abcdef`) runs in this profile's boot.
    pub fn runs(&self, name: &str) -> bool {
        let target = target_name(name);
        match self.only {
            Some(only) => target == only,
            None => {
                !target.starts_with(HOST_ONLY) && !PROFILES.iter().any(|p| p.only == Some(target))
            }
        }
    }

    /// [`runs`](Self::runs), on the kernel labelled `kernel`.
    pub fn runs_on(&self, name: &str, kernel: &str) -> bool {
        let target = target_name(name);
        self.runs(name)
            && ON_KERNELS
                .iter()
                .find(|(t, _)| *t == target)
                .is_none_or(|(_, kernels)| kernels.contains(&kernel))
    }

    /// vng's options for this shape.
    pub fn vng_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["--cpus", self.cpus, "--memory", self.memory]
            .map(String::from)
            .into();
        for node in self.numa {
            args.extend(["--numa".to_string(), node.to_string()]);
        }
        args.extend(["--append".to_string(), self.append.to_string()]);
        args
    }

    /// "4 vCPUs, isolcpus=2,3 nohz_full=2,3" for the log.
    pub fn describe(&self) -> String {
        let mut s = format!("{} vCPUs, {}", self.cpus, self.memory);
        if !self.numa.is_empty() {
            s.push_str(&format!(" in nodes {}", self.numa.join(" + ")));
        }
        s.push_str(&format!(", {}", self.append));
        s
    }
}

/// `vm_numa-0123456789abcdef` (cargo's executable name) → `vm_numa`.
fn target_name(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((target, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            target
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_target_runs_in_exactly_the_right_boots() {
        for t in ["daemon", "ebpf_chain", "vm_scenarios"] {
            assert!(STANDARD.runs(t), "{t}");
            assert!(!NUMA.runs(t), "{t}");
        }
        assert!(NUMA.runs("vm_numa"));
        assert!(!STANDARD.runs("vm_numa"));
        assert!(NUMA.runs("vm_numa-0123456789abcdef"));
        assert!(!STANDARD.runs("vm_numa-0123456789abcdef"));
        for t in ["host_new_kthreads", "host_new_kthreads-0123456789abcdef"] {
            assert!(!STANDARD.runs(t) && !NUMA.runs(t), "{t}");
        }
        // Not a cargo hash: the whole name is the target.
        assert!(STANDARD.runs("vm_numa-extra"));
    }

    #[test]
    fn irq_steering_boots_on_the_newest_kernel() {
        assert!(STANDARD.runs_on("irq-0123456789abcdef", "7"));
        for k in ["5.10", "6.1", "6.12", "7-rt"] {
            assert!(!STANDARD.runs_on("irq", k), "{k}");
            assert!(STANDARD.runs_on("noise", k), "{k}");
        }
        assert!(!NUMA.runs_on("irq", "7"));
    }

    #[test]
    fn vng_arguments() {
        assert_eq!(
            NUMA.vng_args(),
            [
                "--cpus",
                "4",
                "--memory",
                "2G",
                "--numa",
                "1G,cpus=0-1",
                "--numa",
                "1G,cpus=2-3",
                "--append",
                "maxcpus=2"
            ]
        );
        assert_eq!(
            STANDARD.vng_args(),
            [
                "--cpus",
                "4",
                "--memory",
                "2G",
                "--append",
                "isolcpus=2,3 nohz_full=2,3"
            ]
        );
    }
}
