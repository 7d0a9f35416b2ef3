//! Compiles one of this workspace's kernel crates for `bpfel-unknown-none` from a build script
//! and copies the object to `OUT_DIR/<package>`, where the loader embeds it.
//!
//! This does what `aya_build::build_ebpf` does (the same nested `cargo build -Z build-std=core`
//! with BTF, through the rustup toolchain `deb`: Debian's rustc, whose LLVM and `core` source
//! match), with one difference that is the reason it exists: every kernel crate is built in one
//! target directory shared by all build scripts and all outer builds (`<target>/bpfel`), where
//! aya-build gives each package of each outer build its own under `OUT_DIR`. With aya-build,
//! `core` and `aya-ebpf` were compiled for BPF three times per `cargo` command (gateway, node hook,
//! perf) and again for clippy, build and test: nine builds of about 1.5 minutes on the 2-core
//! CI machine. Here they are compiled once; the nested cargo serialises concurrent build scripts
//! on the directory's lock.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the binary crate `package` (which lives in `crate_dir`) and copies its object to
/// `OUT_DIR/<package>`. `watch` are further directories whose changes must rebuild it (the crates
/// it shares with other programs). Panics with the reason on failure: it runs in a build script.
pub fn build_kernel_program(package: &str, crate_dir: &Path, watch: &[&Path]) {
    for dir in std::iter::once(crate_dir).chain(watch.iter().copied()) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let target_dir = shared_target_dir(crate_dir);
    let arch = env("CARGO_CFG_TARGET_ARCH");
    let arch = arch.to_str().expect("CARGO_CFG_TARGET_ARCH is UTF-8");
    let mut rustflags = OsString::from(format!("--cfg=bpf_target_arch=\"{arch}\""));
    for flag in ["-Cdebuginfo=2", "-Clink-arg=--btf"] {
        rustflags.push("\x1f");
        rustflags.push(flag);
    }
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "deb", "cargo", "build", "--release", "--bins"])
        .args(["--package", package, "--target", TARGET])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(crate_dir)
        // Debian's rustc is a stable compiler; build-std needs the unstable flag.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // Set by the outer cargo (and by clippy) for host crates: not for this build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER");
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/setup installs rustup's `deb` toolchain link)")
    });
    assert!(
        status.success(),
        "{cmd:?} failed ({status}); scripts/setup installs the toolchain it needs"
    );
    let object = target_dir.join(TARGET).join("release").join(package);
    let dst = out_dir.join(package);
    std::fs::copy(&object, &dst)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", object.display(), dst.display()));
}

const TARGET: &str = "bpfel-unknown-none";

fn env(key: &str) -> OsString {
    std::env::var_os(key).unwrap_or_else(|| panic!("{key} is not set: not in a build script?"))
}

/// `<the outer build's target directory>/bpfel`: beside the outer profiles' directories, never
/// inside them (a nested cargo must not take the outer one's lock).
fn shared_target_dir(crate_dir: &Path) -> PathBuf {
    let outer = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root(crate_dir).join("target"),
    };
    outer.join("bpfel")
}

/// The nearest ancestor of `dir` whose Cargo.toml declares the workspace.
fn workspace_root(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or_else(|| panic!("no workspace above {}", dir.display()))
        .to_path_buf()
}
