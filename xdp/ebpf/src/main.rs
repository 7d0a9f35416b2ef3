//! The Portcullis XDP gateway program.
//!
//! `portcullis_gateway` judges every frame entering the gateway's two legs with the shared
//! pipeline (`portcullis_ebpf_common::flow`): a packet entering on the cluster leg is judged on its
//! source pod's egress policy, one entering on the external leg on its destination pod's ingress
//! policy. Allowed packets are forwarded in XDP when configured (`forward`), else passed to the
//! kernel. With the AF_XDP engine (`steer`), routable packets go to the engine's socket of their
//! queue instead: all of them (`--datapath afxdp`), or those no flow vouches for (`hybrid`).
//! Source NAT (`snat`, under `CONFIG_FLAG_SNAT`) translates what the pipeline allowed of selected
//! pods to their egress address on the cluster leg, and replies back before the pipeline on the
//! external leg, which also answers ARP/ND for the egress addresses (`neighbour`); translated
//! traffic never goes to the engine (`steer`).
//! `xdp_pass` is a bare `XDP_PASS` program, loaded only as the baseline of the benchmarks.
// The program is only meaningful for the BPF target; `cargo test --workspace` and clippy still
// compile it for the host (with std and an empty `main`) so it is type-checked and linted there.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys and values are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack (several live in the per-CPU SCRATCH map for that reason).
#![allow(clippy::needless_borrows_for_generic_args)]

mod csum;
mod forward;
mod neighbour;
mod snat;
mod snat_icmp;
mod steer;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    btf_maps::{Array, HashMap, PerCpuArray, XskMap},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use portcullis_common::actions::{XDP_DROP, XDP_PASS};
use portcullis_common::*;
use portcullis_ebpf_common::datapath_maps;
use portcullis_ebpf_common::flow::{classify, Admit, Outcome};
use portcullis_ebpf_common::maps::{config, count, Work};
use portcullis_ebpf_common::parse::{parse, Frame, Stop, PARSE_PASS};

use forward::{Forwarded, HopCache};
use snat::{NatScratch, Snat};

datapath_maps!(GatewayMaps, selectors: none);

/// See `portcullis_common::maps`.
#[btf_map]
static LEGS: Array<Legs, 1> = Array::new();

/// See `portcullis_common::maps`.
#[btf_map]
static NEXT_HOP_EPOCH: Array<u32, 1> = Array::new();

/// See `portcullis_common::maps`.
#[btf_map]
static XSKS: XskMap<{ 2 * MAX_XSK_QUEUES as usize }> = XskMap::new();

/// See `portcullis_common::maps`.
#[btf_map]
static HOST_ADDRS: HashMap<[u8; 16], u8, { MAX_HOST_ADDRS as usize }> = HashMap::new();

/// See `portcullis_common::maps`.
#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

#[repr(C)]
struct Scratch {
    work: Work,
    fib: FibParams,
    nat: NatScratch,
}

#[xdp]
pub fn portcullis_gateway(ctx: XdpContext) -> u32 {
    try_portcullis_gateway(&ctx)
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[inline(always)]
fn try_portcullis_gateway(ctx: &XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let role = match LEGS.get(0) {
        Some(legs) => legs.role(ifindex),
        None => 0,
    };
    if role == 0 {
        return XDP_PASS;
    }
    let scratch = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, used by this program invocation only.
        Some(p) => unsafe { &mut *p },
        None => return XDP_PASS,
    };
    let Scratch { work, fib, nat } = scratch;
    let parsed = parse(
        &Frame::new(ctx.data(), ctx.data_end()),
        &mut work.pkt,
        Stop::Malformed,
    );
    let (_, flags) = config::<GatewayMaps>();
    let snat = flags & CONFIG_FLAG_SNAT != 0;
    if snat && role == ROLE_EXTERNAL && parsed == PARSE_PASS && neighbour::answer(ctx) {
        return xdp_action::XDP_TX;
    }
    // Cluster leg: a pod leaving the cluster (its egress policy); external leg: a pod being
    // reached (its ingress policy).
    let sides = if role == ROLE_CLUSTER {
        CHECK_EGRESS_OF_SRC
    } else {
        CHECK_INGRESS_OF_DST
    };
    let engine = flags & (CONFIG_FLAG_AFXDP | CONFIG_FLAG_HYBRID);
    let slot = xsk_slot(role, ctx.rx_queue_index());
    if engine == CONFIG_FLAG_AFXDP && parsed == 0 && steer::routable(ctx, &work.pkt, snat) {
        // Without a socket on this queue (the engine is not running) the pipeline below judges
        // the packet, as `--datapath xdp` would.
        if let Ok(action) = XSKS.redirect(slot, 0) {
            count::<GatewayMaps>(COUNTER_TO_ENGINE);
            return action;
        }
    }
    // A reply to an egress address becomes the pod's before the pipeline judges it.
    let mut translated = false;
    if snat && role == ROLE_EXTERNAL && parsed == 0 {
        match snat::inbound(ctx, &mut work.pkt, nat) {
            Snat::Dropped => return XDP_DROP,
            Snat::Translated => translated = true,
            Snat::Untouched => {}
        }
    }
    let admit = |pkt: &_, _| {
        if engine == CONFIG_FLAG_HYBRID
            && !translated
            && XSKS.get(slot).is_some()
            && steer::routable(ctx, pkt, snat)
        {
            Admit::Divert
        } else {
            Admit::Check
        }
    };
    let cache = match classify::<GatewayMaps>(work, parsed, sides, ifindex, admit) {
        // The socket was there a moment ago; if it closed since, the packet is dropped rather
        // than let through unjudged.
        Outcome::Diverted => {
            count::<GatewayMaps>(COUNTER_TO_ENGINE);
            return XSKS.redirect(slot, 0).unwrap_or(XDP_DROP);
        }
        Outcome::Dropped => return XDP_DROP,
        Outcome::NotIp => return XDP_PASS,
        Outcome::Allowed => None,
        Outcome::Flow(flow, from_lo) => Some(HopCache {
            flow,
            from_lo,
            epoch: NEXT_HOP_EPOCH.get(0).copied().unwrap_or(0),
            now: work.now,
        }),
    };
    // What the pipeline allowed of a selected pod leaves with its egress address.
    if snat
        && role == ROLE_CLUSTER
        && snat::outbound(ctx, &mut work.pkt, &mut work.key, nat, work.now) == Snat::Dropped
    {
        return XDP_DROP;
    }
    if work.flags & CONFIG_FLAG_XDP_FORWARD != 0 && !work.pkt.vlan {
        match forward::forward(ctx, &work.pkt, fib, cache) {
            Forwarded::Cached(action) => {
                count::<GatewayMaps>(COUNTER_FORWARD_XDP);
                count::<GatewayMaps>(COUNTER_FORWARD_CACHED);
                return action;
            }
            Forwarded::Looked(action) => {
                count::<GatewayMaps>(COUNTER_FORWARD_XDP);
                return action;
            }
            Forwarded::Pass => {}
        }
    }
    count::<GatewayMaps>(COUNTER_PASS_STACK);
    XDP_PASS
}

portcullis_ebpf_common::program_epilogue!();
