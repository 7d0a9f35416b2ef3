//! Builds the harness's XDP programs (`portcullis-perf-ebpf`, in `perf/ebpf`) for
//! bpfel-unknown-none as `gateway/build.rs` builds the gateway program.
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    portcullis_ebpf_build::build_kernel_program(
        "portcullis-perf-ebpf",
        &manifest.join("ebpf"),
        &[
            &manifest.join("../xdp/ebpf-common"),
            &manifest.join("common"),
        ],
    );
}
