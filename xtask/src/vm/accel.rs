//! Which accelerator QEMU can really use here: KVM only when a probe shows
//! it runs guest code and boots a kernel with vng; TCG emulation otherwise.
//! Above [`guest`] (the probe is a boot) and [`tools`] (which only names the
//! accelerators).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    guest,
    profile::STANDARD,
    tools::{Accel, Tools},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if a probe shows QEMU really runs guests with it, else TCG.
    Auto,
    Kvm,
    /// TCG emulation (what works on machines with a nested /dev/kvm).
    Tcg,
}

/// Decides the accelerator and says why.
///
/// `/dev/kvm` existing proves nothing here: it is a nested device QEMU
/// aborts on (`failed to set MSR 0x10a`). The probe first runs 8 bytes of
/// real-mode guest code under KVM (~50 ms); only if that works does a full
/// vng boot of `true` confirm it.
pub fn choose_accel(
    choice: AccelChoice,
    tools: &Tools,
    vmlinuz: &Path,
    vm_dir: &Path,
) -> Result<(Accel, String)> {
    match choice {
        AccelChoice::Kvm => return Ok((Accel::Kvm, "--accel kvm".into())),
        AccelChoice::Tcg => return Ok((Accel::Tcg, "--accel tcg".into())),
        AccelChoice::Auto => {}
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok((Accel::Tcg, "no usable /dev/kvm".into()));
    }
    if let Err(e) = probe_kvm_cpu(vm_dir) {
        return Ok((
            Accel::Tcg,
            format!("/dev/kvm is present but QEMU cannot run a guest with it: {e:#}"),
        ));
    }
    let probe = guest::write_probe(vm_dir)?;
    let vm = guest::Vm {
        tools,
        vmlinuz,
        profile: &STANDARD,
        accel: Accel::Kvm,
    };
    let boot = guest::boot(&vm, &probe, Duration::from_secs(120), None, "kvm-probe")?;
    if boot.code == Some(0) && boot.guest_started.is_some() {
        Ok((Accel::Kvm, "a KVM probe boot worked".into()))
    } else {
        Ok((
            Accel::Tcg,
            format!(
                "QEMU runs guest code with KVM, but a vng boot with it failed (exit {:?})",
                boot.code
            ),
        ))
    }
}

/// Runs `mov al, 0x2a; out 0xf4, al; hlt` as the firmware under KVM: QEMU's
/// isa-debug-exit then exits with (0x2a << 1) | 1 = 85.
fn probe_kvm_cpu(vm_dir: &Path) -> Result<()> {
    let mut bios = vec![0u8; 64 * 1024];
    // The reset vector, F000:FFF0; then cli; hlt; jmp back to the hlt.
    let code = [0xb0, 0x2a, 0xe6, 0xf4, 0xfa, 0xf4, 0xeb, 0xfd];
    bios[0xfff0..0xfff0 + code.len()].copy_from_slice(&code);
    fs::create_dir_all(vm_dir)?;
    let bios_path = vm_dir.join("kvm-probe.bin");
    fs::write(&bios_path, &bios).with_context(|| format!("writing {}", bios_path.display()))?;
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-cpu", "host", "-m", "16", "-display", "none",
        ])
        .args(["-nodefaults", "-no-reboot", "-bios"])
        .arg(&bios_path)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("QEMU with KVM did not run 8 instructions in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.code() == Some(85) {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let first = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .map_or_else(|| format!("QEMU exited with {status}"), str::to_string);
    bail!("{}", first.trim_start_matches("qemu-system-x86_64: "))
}
