//! Builds the harness's XDP programs (`portcullis-perf-ebpf`, in `perf/ebpf`) for
//! bpfel-unknown-none with aya-build, exactly as `gateway/build.rs` builds the gateway program:
//! Debian's rustc linked as the rustup toolchain `deb`, `RUSTC_BOOTSTRAP=1`, bpf-linker with BTF.
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest.join("ebpf");
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    // aya-build reads RUSTC_BOOTSTRAP to decide on build-std and passes our environment on to the
    // nested cargo. A build script runs single-threaded, so setting it here is sound.
    std::env::set_var("RUSTC_BOOTSTRAP", "1");
    let ebpf_dir = ebpf_dir.to_str().expect("UTF-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "portcullis-perf-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("deb"),
    )
    .expect("building the perf XDP programs (see scripts/setup for the toolchain it needs)");
}
