//! Kernel-side core of both programs, the XDP gateway (`portcullis-xdp-ebpf`) and the node-hook tc
//! programs (`portcullis-node-ebpf`): the shared maps ([`maps`]), frame parsing ([`parse`]), the
//! one policy check ([`policy`]) with its longest-prefix search ([`prefix`]), the one flow
//! pipeline ([`flow`]) and the drop report ([`report`]). The programs keep only their hook, the sides they judge, their admission rule
//! and what an allowed packet becomes. Everything that runs per packet is `#[inline(always)]` or a
//! BPF-to-BPF call with at most five arguments: the verifier sees it inside each program.
#![no_std]
// Map keys and values are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack (several live in the per-CPU work area for that reason).
#![allow(clippy::needless_borrows_for_generic_args)]

pub mod flow;
pub mod maps;
pub mod parse;
pub mod policy;
pub mod prefix;
pub mod report;
pub mod words;

/// The items every program crate ends with: the empty host `main` (the crate is also compiled for
/// the host, so `cargo test --workspace` and clippy type-check it), the BPF panic handler and the
/// GPL license section the kernel requires for the helpers used.
#[macro_export]
macro_rules! program_epilogue {
    () => {
        #[cfg(not(target_arch = "bpf"))]
        fn main() {}

        #[cfg(target_arch = "bpf")]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}
