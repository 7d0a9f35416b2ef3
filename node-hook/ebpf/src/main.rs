//! The Portcullis node-hook programs, attached with tc (TCX links, clsact hooks) to the host-side
//! veth of every local pod.
//!
//! - `portcullis_node_deliver` (tc **egress** of the host veth: packets going INTO the pod) is where
//!   pod-to-pod policy is decided, after the node's service translation (kube-proxy DNAT runs in
//!   prerouting, before this hook), so the destination is always the real pod. It runs the shared
//!   pipeline (`portcullis_ebpf_common::flow`) on both sides: the source's egress policy (when the
//!   source is a selected pod, of this node or any other) and the destination pod's ingress
//!   policy.
//! - `portcullis_node_origin` (tc **ingress** of the host veth: packets coming FROM the pod)
//!   never drops for policy. It records an origin flow (`checked == 0`) for every connection the
//!   pod opens, so the replies — from a Service VIP (un-DNATed by the node), an external host or a
//!   pod of another node, none of which passed this node's deliver hook on the way out — match a
//!   flow at the pod's veth. An origin flow passes only packets from the responder: packets from
//!   the initiator towards a local pod are still judged by `portcullis_node_deliver`.
//! - `tc_pass` is a bare `TC_ACT_OK` program, loaded only as the baseline of the benchmarks.
//!
//! Both fail closed on a pod interface: a unicast address on the pod's side of the packet that is
//! no pod of the generation in force is dropped (`DROP_REASON_UNKNOWN_POD`).
// The program is only meaningful for the BPF target; `cargo test --workspace` and clippy still
// compile it for the host (with std and an empty `main`) so it is type-checked and linted there.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys and values are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack (several live in the per-CPU SCRATCH map for that reason).
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuArray},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use portcullis_common::actions::{TC_ACT_OK, TC_ACT_SHOT};
use portcullis_common::*;
use portcullis_ebpf_common::datapath_maps;
use portcullis_ebpf_common::flow::{
    classify, confirm_if_answered, find_flow, flow_clock, flow_live, open_flow, opens_flow,
    syn_only, touch, Admit, Existing, Outcome,
};
use portcullis_ebpf_common::maps::{config, count, selector_lookup, IdentityMap, PeerMap, Work};
use portcullis_ebpf_common::parse::{flow_key, Frame, Kind, Packet, Stop};
use portcullis_ebpf_common::report::report_drop;

datapath_maps!(NodeMaps, selectors: selector_rule_set);

/// See `portcullis_common::maps`.
#[btf_map]
static IDENTITIES: IdentityMap = IdentityMap::new();

/// See `portcullis_common::maps`.
#[btf_map]
static PEERS: PeerMap = PeerMap::new();

/// See `portcullis_common::maps`. Kubernetes lets a node always reach its pods (kubelet probes).
#[btf_map]
static HOST_ADDRS: HashMap<[u8; 16], u8, { MAX_HOST_ADDRS as usize }> = HashMap::new();

/// See `portcullis_common::maps`.
#[btf_map]
static SCRATCH: PerCpuArray<Work, 1> = PerCpuArray::new();

/// Bytes made linear (`bpf_skb_pull_data`) before parsing when the skb's head is shorter.
const PULL_LEN: u32 = 256;

#[classifier]
pub fn portcullis_node_deliver(ctx: TcContext) -> i32 {
    try_deliver(&ctx)
}

#[classifier]
pub fn portcullis_node_origin(ctx: TcContext) -> i32 {
    try_origin(&ctx)
}

#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[inline(always)]
fn selector_rule_set(group: u32, peer: &[u8; 16], g: u32) -> Option<u32> {
    selector_lookup(&IDENTITIES, &PEERS, group, peer, g)
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
fn work() -> Option<&'static mut Work> {
    // SAFETY: per-CPU slot, used by one program invocation at a time.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Makes the headers linear when they are not (a pulled skb invalidates earlier packet
/// pointers; nothing is held across this call), then fills `pkt`; returns 0 or a `PARSE_*` code.
#[inline(always)]
fn parse(ctx: &TcContext, pkt: &mut Packet) -> u32 {
    let want = if ctx.len() < PULL_LEN {
        ctx.len()
    } else {
        PULL_LEN
    };
    if ctx.data_end() - ctx.data() < want as usize {
        let _ = ctx.pull_data(want);
    }
    // A frame too short for an Ethernet header is not ours to judge.
    portcullis_ebpf_common::parse::parse(&Frame::new(ctx.data(), ctx.data_end()), pkt, Stop::Pass)
}

/// Fail closed on a pod interface: `addr`, the pod's side of the packet, is a unicast address no
/// pod of generation `g` has — its pod is not in force yet (the interface is attached before the
/// pod's identity and policy are known), or the address is spoofed.
#[inline(always)]
fn unknown_pod(addr: &[u8; 16], g: u32) -> bool {
    let key = IdentityKey {
        addr: *addr,
        generation: g as u8,
        _pad: portcullis_ebpf_common::words::zero_pad3(),
    };
    is_pod_unicast(addr) && IDENTITIES.get_ptr(&key).is_none()
}

/// The deliver hook's admission: the destination must be a known pod; the node's own addresses
/// reach it without policy.
#[inline(always)]
fn admit_delivery(pkt: &Packet, g: u32) -> Admit {
    if unknown_pod(&pkt.dst, g) {
        Admit::Drop(DROP_REASON_UNKNOWN_POD, DIRECTION_INGRESS)
    } else if HOST_ADDRS.get_ptr(&pkt.src).is_some() {
        Admit::Trusted
    } else {
        Admit::Check
    }
}

#[inline(always)]
fn try_deliver(ctx: &TcContext) -> i32 {
    let Some(w) = work() else {
        return TC_ACT_OK;
    };
    let parsed = parse(ctx, &mut w.pkt);
    let sides = CHECK_EGRESS_OF_SRC | CHECK_INGRESS_OF_DST;
    match classify::<NodeMaps>(w, parsed, sides, ifindex(ctx), admit_delivery) {
        // The node hook's admission never diverts; were it to, failing closed is the safe side.
        Outcome::Dropped | Outcome::Diverted => TC_ACT_SHOT,
        Outcome::Allowed | Outcome::Flow(..) | Outcome::NotIp => TC_ACT_OK,
    }
}

/// Packets leaving a pod: refresh the flow they belong to, or record an origin flow for a new
/// connection. Policy is decided where the packet is delivered (or at the gateway for non-pod
/// destinations); this program drops only what a pod sends from an address no pod of the
/// generation in force has (a pod not in force yet, or spoofing).
#[inline(always)]
fn try_origin(ctx: &TcContext) -> i32 {
    let Some(w) = work() else {
        return TC_ACT_OK;
    };
    let Work {
        pkt, key, entry, ..
    } = w;
    if parse(ctx, pkt) != 0 {
        return TC_ACT_OK;
    }
    let (g, _) = config::<NodeMaps>();
    if pkt.kind == Kind::Flow {
        let now = flow_clock();
        let src_is_lo = flow_key(key, &pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto);
        let mut existing = Existing::None;
        if let Some(hit) = find_flow::<NodeMaps>(key) {
            let embryonic = hit.embryonic();
            let f = hit.flow;
            let from_initiator = (f.initiator_is_lo != 0) == src_is_lo;
            if flow_live(f, now, syn_only(pkt), from_initiator) {
                touch(f, pkt, from_initiator, now);
                if embryonic {
                    confirm_if_answered::<NodeMaps>(key, f, pkt, from_initiator, entry);
                }
                return TC_ACT_OK;
            }
            existing = if embryonic {
                Existing::Embryonic
            } else {
                Existing::Confirmed
            };
        }
        if !unknown_pod(&pkt.src, g) {
            if opens_flow(pkt) {
                // Not checked by this node's policy (`checked` 0): see `FlowValue::checked`.
                let admitted = (0, 0);
                open_flow::<NodeMaps>(key, entry, existing, pkt, src_is_lo, admitted, (now, g));
                count::<NodeMaps>(COUNTER_ORIGIN);
            }
            return TC_ACT_OK;
        }
    } else if !unknown_pod(&pkt.src, g) {
        return TC_ACT_OK;
    }
    report_drop::<NodeMaps>(
        ifindex(ctx),
        Some(&*pkt),
        DROP_REASON_UNKNOWN_POD,
        0,
        DIRECTION_EGRESS,
    );
    TC_ACT_SHOT
}

portcullis_ebpf_common::program_epilogue!();
