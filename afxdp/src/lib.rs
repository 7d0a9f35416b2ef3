//! The gateway's AF_XDP datapath (`portcullis gateway --datapath afxdp|hybrid`).
//!
//! - [`tables`], [`flows`], [`pipeline`], [`rewrite`]: the engine, pure (no I/O): the kernel
//!   pipeline's semantics (`portcullis_ebpf_common::{parse, flow, policy}`) over the compiled
//!   gateway tables, a flow table of its own (ahash) and the forwarding rewrite.
//! - [`rings`], [`setup`]: per-queue AF_XDP sockets on both legs sharing one UMEM (xsk-rs), and
//!   the checks that turn a bad set-up into one error naming the interface and the fix.
//! - [`next_hop`], [`kernel_path`]: where a forwarded frame goes (route and neighbour from
//!   rtnetlink, cached per destination) and the kernel's output path for what the engine cannot
//!   send itself.
//! - [`engine`]: one thread per queue tying them together; [`mode_flows`]: its flow table in
//!   each mode, over the XDP program's pinned flow maps.

pub mod engine;
pub mod flows;
pub mod kernel_path;
pub mod mode_flows;
pub mod next_hop;
pub mod pipeline;
pub mod rewrite;
pub mod rings;
pub mod setup;
pub mod tables;
