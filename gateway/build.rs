//! Builds the XDP program (`portcullis-xdp-ebpf`, in `xdp/ebpf`) for bpfel-unknown-none and leaves
//! the object in `OUT_DIR/portcullis-xdp-ebpf`, which the library embeds (see
//! `portcullis-ebpf-build` for how, and scripts/setup for the toolchain it needs).
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root");
    portcullis_ebpf_build::build_kernel_program(
        "portcullis-xdp-ebpf",
        &root.join("xdp/ebpf"),
        &[&root.join("xdp/common"), &root.join("xdp/ebpf-common")],
    );
}
