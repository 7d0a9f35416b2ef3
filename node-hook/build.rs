//! Builds the node-hook tc programs (`portcullis-node-ebpf`, in the workspace) for
//! bpfel-unknown-none with aya-build and leaves the object in `OUT_DIR/portcullis-node-ebpf`,
//! which the library embeds.
//!
//! The kernel crate is compiled by Debian's rustc (linked as the rustup toolchain `deb`: its LLVM
//! and `core` source match) with `RUSTC_BOOTSTRAP=1` so `-Z build-std=core` is accepted, and
//! linked by `bpf-linker` with BTF. `scripts/setup` installs all of it.
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root");
    let ebpf_dir = manifest.join("ebpf");
    let common_dir = root.join("xdp/common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("xdp/ebpf-common").display()
    );
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    // aya-build reads RUSTC_BOOTSTRAP to decide on build-std and passes our environment on to the
    // nested cargo. A build script runs single-threaded, so setting it here is sound.
    std::env::set_var("RUSTC_BOOTSTRAP", "1");
    let ebpf_dir = ebpf_dir.to_str().expect("UTF-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "portcullis-node-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("deb"),
    )
    .expect("building the node-hook programs (see scripts/setup for the toolchain it needs)");
}
