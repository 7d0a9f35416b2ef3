//! Kernel-side core of both programs, the XDP gateway (`portcullis-xdp-ebpf`) and the node-hook tc
//! programs (`portcullis-node-ebpf`): the shared maps ([`maps`]), frame parsing ([`parse`]), the
//! one policy check ([`policy`]), the one flow pipeline ([`flow`]) and the drop report
//! ([`report`]). The programs keep only their hook, the sides they judge, their admission rule
//! and what an allowed packet becomes. Everything that runs per packet is `#[inline(always)]` or a
//! BPF-to-BPF call with at most five arguments: the verifier sees it inside each program.
#![no_std]

pub mod flow;
pub mod maps;
pub mod parse;
pub mod policy;
pub mod report;
