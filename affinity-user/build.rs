//! Builds the eBPF object from `affinity-ebpf` and hands its path to the
//! crate as `AFFINITY_EBPF_OBJECT`, so the `affinity` binary embeds it.
//!
//! The eBPF crate needs nightly (build-std for `bpfel-unknown-none`) and
//! bpf-linker. A plain `cargo build`/`cargo test` of the host crates must not
//! need either, so when the toolchain is missing (or `AFFINITY_SKIP_EBPF=1`)
//! an empty object is embedded and `affinity run` explains how to get a real
//! one. `cargo xtask` installs the toolchain and sets `AFFINITY_REQUIRE_EBPF=1`,
//! which turns a missing toolchain into a build error. A toolchain that is
//! present but fails to build the crate is always an error.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";

fn main() {
    for var in [
        "AFFINITY_SKIP_EBPF",
        "AFFINITY_REQUIRE_EBPF",
        "AFFINITY_EBPF_TOOLCHAIN",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("affinity-user lives in the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("affinity.bpf.o");

    for dir in ["affinity-ebpf/src", "affinity-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("affinity-ebpf/Cargo.toml").display()
    );
    println!("cargo:rustc-env=AFFINITY_EBPF_OBJECT={}", object.display());

    let require = env::var("AFFINITY_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    if env::var("AFFINITY_SKIP_EBPF").is_ok_and(|v| v == "1") && !require {
        fs::write(&object, b"").expect("writing the empty eBPF object placeholder");
        return;
    }
    let toolchain = env::var("AFFINITY_EBPF_TOOLCHAIN").unwrap_or_else(|_| "nightly".into());
    if let Err(missing) = toolchain_present(&toolchain) {
        if require {
            panic!(
                "cannot build the eBPF object: {missing}; run `cargo xtask build` to install it"
            );
        }
        println!(
            "cargo:warning=eBPF object not built ({missing}); `affinity run` will refuse to start. `cargo xtask build` installs the toolchain."
        );
        fs::write(&object, b"").expect("writing the empty eBPF object placeholder");
        return;
    }

    // One fixed target dir for every host build (check, clippy, test): the
    // eBPF crate is then built once, not once per OUT_DIR.
    let target_dir = workspace.join("target").join("ebpf");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        &toolchain,
        "cargo",
        "build",
        "--package",
        "affinity-ebpf",
        "--release",
    ])
    .args(["--target", TARGET, "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(workspace.join("affinity-ebpf"));
    // The outer cargo's environment (clippy's wrapper, host RUSTFLAGS,
    // jobserver, profile) must not leak into the inner nightly build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    // No BTF in the object: the 6.1 verifier checks each function's BTF
    // signature and rejects a tp_btf program whose context argument is
    // Rust's `*mut c_void` (a pointer to an enum, not to void). Nothing here
    // needs program BTF: maps are legacy definitions and tp_btf attachment
    // uses the kernel's BTF. LLVM derives BTF from debuginfo, so none for any
    // crate of this build (core and aya-ebpf included).
    cmd.env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=0");
    let status = cmd
        .status()
        .expect("running rustup to build the eBPF crate");
    if !status.success() {
        panic!("building affinity-ebpf failed ({status}); see the compiler output above");
    }
    let built = target_dir
        .join(TARGET)
        .join("release")
        .join("affinity-ebpf");
    fs::copy(&built, &object)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), object.display()));
}

/// Says which piece of the eBPF toolchain is missing, if any.
fn toolchain_present(toolchain: &str) -> Result<(), String> {
    let sysroot = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .ok_or_else(|| format!("the `{toolchain}` toolchain is not installed"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err(format!("rust-src is not installed for `{toolchain}`"));
    }
    if !on_path("bpf-linker") {
        return Err("bpf-linker is not installed".into());
    }
    Ok(())
}

fn on_path(bin: &str) -> bool {
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|p| p.join("bin"));
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .chain(cargo_bin)
        .any(|dir| dir.join(bin).is_file())
}
