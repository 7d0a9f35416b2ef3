//! The Portcullis node-hook programs, attached with tc (TCX links, clsact hooks) to the host-side
//! veth of every local pod.
//!
//! - `portcullis_node_deliver` (tc **egress** of the host veth: packets going INTO the pod) is where
//!   pod-to-pod policy is decided, after the node's service translation (kube-proxy DNAT runs in
//!   prerouting, before this hook), so the destination is always the real pod. Flow table first;
//!   on a miss both the source's egress policy (when the source is a selected pod, of this node or
//!   any other) and the destination pod's ingress policy are checked; allowed packets create a
//!   flow (TCP only from a SYN), denied ones are dropped, counted and reported.
//! - `portcullis_node_origin` (tc **ingress** of the host veth: packets coming FROM the pod)
//!   never drops. It records a flow marked `FLOW_NODE_ORIGIN` for every connection the pod opens,
//!   so the replies — from a Service VIP (un-DNATed by the node), an external host or a pod of
//!   another node, none of which passed this node's deliver hook on the way out — match a flow at
//!   the pod's veth. An origin flow passes only packets from the responder: packets from the
//!   initiator towards a local pod are still checked by `portcullis_node_deliver`.
//! - `tc_pass` is a bare `TC_ACT_OK` program, loaded only as the baseline of the benchmarks.
//!
//! TCP: only a SYN without ACK may create a flow. A TCP segment of a connection the flow table does
//! not know is dropped when either end is selected in the direction it is checked in, even if
//! the policy would allow a new connection; when neither end is selected it passes untracked.
// The program is only meaningful for the BPF target; `cargo test --workspace` and clippy still
// compile it for the host (with std and an empty `main`) so it is type-checked and linted there.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys and values are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack (several live in the per-CPU SCRATCH map for that reason).
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf,
    },
    helpers::bpf_ktime_get_ns,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use portcullis_common::*;
use portcullis_ebpf_common::*;

/// `BPF_F_NO_PREALLOC`: the policy maps are written only by the loader, so their memory grows with
/// the cluster instead of being reserved for `max_entries` up front.
const NO_PREALLOC: usize = 1;

/// Index 0: the active generation parity and `CONFIG_FLAG_*` bits (`CONFIG_FLAG_REVALIDATE` only).
/// Written by the loader; the generation switch is its single write.
#[btf_map]
static CONFIG: Array<Config, 1> = Array::new();

/// (pod address, generation) → identity, for every pod address of the cluster. Written by the
/// loader per generation.
#[btf_map]
static IDENTITIES: HashMap<IdentityKey, IdentityValue, 262144, NO_PREALLOC> = HashMap::new();

/// (pod address, direction, generation) → policy group, for every selected pod of the cluster.
/// Written by the loader per generation.
#[btf_map]
static ENDPOINTS: HashMap<EndpointKey, EndpointValue, 262144, NO_PREALLOC> = HashMap::new();

/// (group, peer identity) → rule set allowed by the group's selector rules. Written by the loader
/// per generation; group ids carry the generation bit.
#[btf_map]
static PEERS: HashMap<PeerKey, PrefixValue, 1048576, NO_PREALLOC> = HashMap::new();

/// (group, peer prefix) → rule set allowed by the group's ipBlock rules (longest match). Written
/// by the loader per generation; group ids carry the generation bit.
#[btf_map]
static PREFIXES: LpmTrie<PrefixData, PrefixValue, 262144> = LpmTrie::new();

/// Rule-set id → allowed (protocol, port range) list. Written by the loader per generation.
#[btf_map]
static RULE_SETS: HashMap<u32, RuleSet, 65536, NO_PREALLOC> = HashMap::new();

/// Addresses of this node's own interfaces (value unused). Kubernetes lets a node always reach its
/// pods (kubelet probes): a packet from one of them to a local pod passes without policy. Written
/// by the daemon from the node's interfaces.
#[btf_map]
static HOST_ADDRS: HashMap<[u8; 16], u8, { NODE_MAX_HOST_ADDRS as usize }> = HashMap::new();

/// Normalised connection → state. Written by both programs (create, refresh, revalidation
/// delete) and by the loader's flow GC (delete expired).
#[btf_map]
static FLOWS: LruHashMap<FlowKey, FlowValue, 262144> = LruHashMap::new();

/// `COUNTER_*` / `NODE_COUNTER_*` index → packets, per CPU. Written by the programs, summed by
/// the loader.
#[btf_map]
static COUNTERS: PerCpuArray<u64, { NODE_COUNTER_COUNT as usize }> = PerCpuArray::new();

/// Group id → packets dropped by that group's policy, per CPU. Written by the deliver program.
#[btf_map]
static DROPS_BY_GROUP: PerCpuHashMap<u32, u64, 65536> = PerCpuHashMap::new();

/// Drop reports for `monitor`, at most `DROP_EVENTS_PER_SECOND` per CPU. Written by the deliver
/// program, read by the loader.
#[btf_map]
static DROP_EVENTS: RingBuf<DropEvent, { 256 * 1024 }> = RingBuf::new();

/// Per CPU: `[window start ns, events sent in that window]` for the drop-event rate limit.
/// Written by the deliver program only.
#[btf_map]
static DROP_EVENT_WINDOW: PerCpuArray<[u64; 2], 1> = PerCpuArray::new();

/// Per CPU: the parsed packet, flow key and policy query of the packet being processed (too
/// large for the 512-byte BPF stack). Written and read by the programs only.
#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

#[repr(C)]
struct Scratch {
    pkt: Packet,
    key: FlowKey,
    query: Query,
}

/// Bytes made linear (`bpf_skb_pull_data`) before parsing when the skb's head is shorter.
const PULL_LEN: u32 = 256;

// The bindings type these u32 for bpfel and i32 for the host (where clippy runs).
#[allow(clippy::unnecessary_cast)]
const ACT_OK: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast)]
const ACT_SHOT: i32 = TC_ACT_SHOT as i32;

/// Input of a policy check (passed by reference: a BPF call takes at most five arguments).
#[repr(C)]
struct Query {
    /// Source and destination of the packet (or of the flow's initiator and responder).
    src: [u8; 16],
    dst: [u8; 16],
    g: u32,
    /// Destination port, host byte order.
    port: u16,
    proto: u8,
    _pad: u8,
}

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
    ACT_OK
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
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
    portcullis_ebpf_common::parse(&Frame::new(ctx.data(), ctx.data_end()), pkt, Stop::Pass)
}

const VERDICT_UNSELECTED: u64 = 0;
const VERDICT_ALLOW: u64 = 1 << 32;
const VERDICT_DENY: u64 = 2 << 32;
const VERDICT_MASK: u64 = 3 << 32;
/// Set with `VERDICT_DENY` when the source's egress policy denied (else the destination's
/// ingress policy did).
const VERDICT_BY_EGRESS: u64 = 1 << 34;

/// Result of the combined check of one packet (or flow).
enum Verdict {
    /// Neither the source (egress) nor the destination (ingress) is selected.
    Unselected,
    /// Allowed; the group is the destination's ingress group, else the source's egress group.
    Allow(u32),
    /// Denied by `group` in `direction`.
    Deny(u32, u8),
}

#[inline(always)]
fn policy(q: &Query) -> Verdict {
    let v = policy_encoded(q);
    let group = v as u32;
    match v & VERDICT_MASK {
        VERDICT_ALLOW => Verdict::Allow(group),
        VERDICT_DENY => Verdict::Deny(
            group,
            if v & VERDICT_BY_EGRESS != 0 {
                DIRECTION_EGRESS
            } else {
                DIRECTION_INGRESS
            },
        ),
        _ => Verdict::Unselected,
    }
}

/// Egress check of `q.src` towards `q.dst`, then ingress check of `q.dst` from `q.src`: the packet
/// is allowed iff both allow (an unselected side allows). Returns `VERDICT_* | group`.
#[inline(never)]
fn policy_encoded(q: &Query) -> u64 {
    let egress = side(q, DIRECTION_EGRESS as u32);
    if egress & VERDICT_MASK == VERDICT_DENY {
        return egress | VERDICT_BY_EGRESS;
    }
    let ingress = side(q, DIRECTION_INGRESS as u32);
    if ingress & VERDICT_MASK != VERDICT_UNSELECTED {
        return ingress;
    }
    egress
}

/// One direction: endpoint lookup of the subject pod, then the peer's identity entry of the
/// subject's group, then the longest ipBlock prefix of the group containing the peer. Returns
/// `VERDICT_* | group`.
#[inline(never)]
fn side(q: &Query, direction: u32) -> u64 {
    let (pod, peer) = if direction == DIRECTION_EGRESS as u32 {
        (&q.src, &q.dst)
    } else {
        (&q.dst, &q.src)
    };
    let ek = EndpointKey {
        addr: *pod,
        direction: direction as u8,
        generation: q.g as u8,
        _pad: [0; 2],
    };
    let group = match ENDPOINTS.get_ptr(&ek) {
        // SAFETY: value pointer from a successful lookup.
        Some(v) => unsafe { (*v).group },
        None => return VERDICT_UNSELECTED,
    };
    let ik = IdentityKey {
        addr: *peer,
        generation: q.g as u8,
        _pad: [0; 3],
    };
    if let Some(id) = IDENTITIES.get_ptr(&ik) {
        let pk = PeerKey {
            group,
            // SAFETY: value pointer from a successful lookup.
            identity: unsafe { (*id).identity },
        };
        if let Some(v) = PEERS.get_ptr(&pk) {
            // SAFETY: value pointer from a successful lookup.
            if set_allows(unsafe { (*v).rule_set }, q.proto, q.port) {
                return VERDICT_ALLOW | group as u64;
            }
        }
    }
    let key = Key::new(
        PREFIX_GROUP_BITS + 128,
        PrefixData {
            group_be: group.to_be(),
            addr: *peer,
        },
    );
    if let Some(v) = PREFIXES.get(&key) {
        if set_allows(v.rule_set, q.proto, q.port) {
            return VERDICT_ALLOW | group as u64;
        }
    }
    VERDICT_DENY | group as u64
}

/// Bounded scan of one rule set: any protocol, or the protocol with the port in range (ICMP has
/// no ports: only "any protocol" rules allow it).
#[inline(always)]
fn set_allows(rule_set: u32, proto: u8, port: u16) -> bool {
    match RULE_SETS.get_ptr(rule_set) {
        // SAFETY: value pointer from a successful lookup; read only.
        Some(rs) => rule_set_allows(unsafe { &*rs }, proto, port),
        None => false,
    }
}

/// A SYN from the former responder of a closing TCP flow opens a new connection the other way
/// round: the old entry vouches for nothing.
#[inline(always)]
fn reopened_reversed(f: &FlowValue, syn_only: bool, from_initiator: bool) -> bool {
    f.state == TCP_STATE_CLOSING && syn_only && !from_initiator
}

#[inline(never)]
fn drop_packet(
    ctx: &TcContext,
    pkt: Option<&Packet>,
    reason: u8,
    group: u32,
    direction: u8,
) -> i32 {
    count(if reason == DROP_REASON_UNKNOWN_POD {
        NODE_COUNTER_DROP_UNKNOWN_POD
    } else {
        drop_counter(reason)
    });
    report_drop(
        &DROPS_BY_GROUP,
        &DROP_EVENT_WINDOW,
        &DROP_EVENTS,
        ifindex(ctx),
        pkt,
        reason,
        group,
        direction,
    );
    ACT_SHOT
}

/// Fail closed on a pod interface: `addr`, the pod's side of the packet, is a unicast address no
/// pod of generation `g` has — its pod is not in force yet (the interface is attached before the
/// pod's identity and policy are known), or the address is spoofed.
#[inline(always)]
fn unknown_pod(addr: &[u8; 16], g: u32) -> bool {
    let key = IdentityKey {
        addr: *addr,
        generation: g as u8,
        _pad: [0; 3],
    };
    is_pod_unicast(addr) && IDENTITIES.get_ptr(&key).is_none()
}

#[inline(always)]
fn drop_unknown_pod(ctx: &TcContext, pkt: &Packet, direction: u8) -> i32 {
    drop_packet(ctx, Some(pkt), DROP_REASON_UNKNOWN_POD, 0, direction)
}

#[inline(always)]
fn config() -> (u32, u32) {
    match CONFIG.get(0) {
        Some(c) => (c.generation & 1, c.flags),
        None => (0, 0),
    }
}

#[inline(always)]
fn try_deliver(ctx: &TcContext) -> i32 {
    let scratch = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, used by this program invocation only.
        Some(p) => unsafe { &mut *p },
        None => return ACT_OK,
    };
    let Scratch { pkt, key, query } = scratch;
    match parse(ctx, pkt) {
        0 => {}
        PARSE_PASS => {
            count(COUNTER_PASS_NON_IP);
            return ACT_OK;
        }
        PARSE_FRAGMENT => return drop_packet(ctx, None, DROP_REASON_FRAGMENT, 0, 0),
        _ => return drop_packet(ctx, None, DROP_REASON_MALFORMED, 0, 0),
    }
    let (g, flags) = config();
    query.src = pkt.src;
    query.dst = pkt.dst;
    query.g = g;
    query.port = u16::from_be(pkt.dport);
    query.proto = pkt.proto;
    query._pad = 0;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    if pkt.kind == Kind::IcmpError {
        if let Some(f) = FLOWS.get_ptr(&pkt.related) {
            // SAFETY: value pointer from a successful lookup; read only.
            let f = unsafe { &*f };
            if now.wrapping_sub(f.last_seen_ns) <= flow_timeout_ns(f.state) {
                count(COUNTER_PASS_FLOW);
                return ACT_OK;
            }
        }
        if unknown_pod(&pkt.dst, g) {
            return drop_unknown_pod(ctx, pkt, DIRECTION_INGRESS);
        }
        query.port = 0;
        return match policy(query) {
            Verdict::Unselected => {
                count(COUNTER_PASS_UNSELECTED);
                ACT_OK
            }
            Verdict::Allow(_) => {
                count(COUNTER_PASS_POLICY);
                ACT_OK
            }
            Verdict::Deny(group, direction) => {
                drop_packet(ctx, Some(&*pkt), DROP_REASON_POLICY, group, direction)
            }
        };
    }

    let is_tcp = pkt.proto == PROTO_TCP;
    let syn_only = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let src_is_lo = flow_key(key, &pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto);

    if pkt.kind == Kind::Flow {
        if let Some(f) = FLOWS.get_ptr_mut(&*key) {
            // SAFETY: value pointer from a successful lookup; concurrent updates of the same
            // flow from two CPUs may interleave, which only affects last_seen/state freshness.
            let f = unsafe { &mut *f };
            let from_initiator = (f.initiator_is_lo != 0) == src_is_lo;
            let live = now.wrapping_sub(f.last_seen_ns) <= flow_timeout_ns(f.state)
                && !reopened_reversed(f, syn_only, from_initiator);
            // An origin flow vouches only for the responder's packets; the initiator's still
            // need this node's verdict (below), which then replaces the entry.
            if live && !(f.direction == FLOW_NODE_ORIGIN && from_initiator) {
                if flags & CONFIG_FLAG_REVALIDATE != 0
                    && f.direction == FLOW_NODE_CHECKED
                    && f.generation as u32 != g
                {
                    if let Some((group, direction)) = revalidate(query, key, f) {
                        let _ = FLOWS.remove(&*key);
                        return drop_packet(ctx, Some(&*pkt), DROP_REASON_POLICY, group, direction);
                    }
                }
                touch(f, pkt, src_is_lo, now);
                count(COUNTER_PASS_FLOW);
                return ACT_OK;
            }
        }
    }

    if unknown_pod(&pkt.dst, g) {
        return drop_unknown_pod(ctx, pkt, DIRECTION_INGRESS);
    }
    if HOST_ADDRS.get_ptr(&pkt.src).is_some() {
        count(NODE_COUNTER_PASS_HOST);
        if pkt.kind == Kind::Flow && (!is_tcp || syn_only) {
            let value = new_flow(now, 0, is_tcp, src_is_lo, FLOW_NODE_CHECKED, g);
            let _ = FLOWS.insert(&*key, &value, 0);
        }
        return ACT_OK;
    }
    let group = match policy(query) {
        Verdict::Deny(group, direction) => {
            return drop_packet(ctx, Some(&*pkt), DROP_REASON_POLICY, group, direction)
        }
        Verdict::Allow(group) => {
            if is_tcp && !syn_only {
                return drop_packet(
                    ctx,
                    Some(&*pkt),
                    DROP_REASON_POLICY,
                    group,
                    DIRECTION_INGRESS,
                );
            }
            count(COUNTER_PASS_POLICY);
            group
        }
        Verdict::Unselected => {
            count(COUNTER_PASS_UNSELECTED);
            0
        }
    };
    if pkt.kind == Kind::Flow && (!is_tcp || syn_only) {
        let value = new_flow(now, group, is_tcp, src_is_lo, FLOW_NODE_CHECKED, g);
        let _ = FLOWS.insert(&*key, &value, 0);
    }
    ACT_OK
}

/// Re-checks a flow against generation `query.g` from the initiator's point of view (its egress,
/// the responder's ingress). Returns the denying (group, direction), or `None` (and marks the flow
/// current) when it is still allowed.
#[inline(always)]
fn revalidate(query: &mut Query, key: &FlowKey, f: &mut FlowValue) -> Option<(u32, u8)> {
    let (init, resp, resp_port) = if f.initiator_is_lo != 0 {
        (&key.addr_lo, &key.addr_hi, key.port_hi)
    } else {
        (&key.addr_hi, &key.addr_lo, key.port_lo)
    };
    query.src = *init;
    query.dst = *resp;
    query.port = u16::from_be(resp_port);
    query.proto = key.protocol;
    match policy(query) {
        Verdict::Deny(group, direction) => Some((group, direction)),
        Verdict::Allow(group) => {
            f.group = group;
            f.generation = query.g as u8;
            None
        }
        Verdict::Unselected => {
            f.group = 0;
            f.generation = query.g as u8;
            None
        }
    }
}

/// Packets leaving a pod: refresh the flow they belong to, or record an origin flow for a new
/// connection. Policy is decided where the packet is delivered (or at the gateway for non-pod
/// destinations); this program drops only what a pod sends from an address no pod of the
/// generation in force has (a pod not in force yet, or spoofing).
#[inline(always)]
fn try_origin(ctx: &TcContext) -> i32 {
    let scratch = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, used by this program invocation only.
        Some(p) => unsafe { &mut *p },
        None => return ACT_OK,
    };
    let Scratch { pkt, key, .. } = scratch;
    if parse(ctx, pkt) != 0 {
        return ACT_OK;
    }
    let (g, _) = config();
    if pkt.kind != Kind::Flow {
        if unknown_pod(&pkt.src, g) {
            return drop_unknown_pod(ctx, pkt, DIRECTION_EGRESS);
        }
        return ACT_OK;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let is_tcp = pkt.proto == PROTO_TCP;
    let syn_only = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let src_is_lo = flow_key(key, &pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto);
    if let Some(f) = FLOWS.get_ptr_mut(&*key) {
        // SAFETY: value pointer from a successful lookup.
        let f = unsafe { &mut *f };
        let from_initiator = (f.initiator_is_lo != 0) == src_is_lo;
        if now.wrapping_sub(f.last_seen_ns) <= flow_timeout_ns(f.state)
            && !reopened_reversed(f, syn_only, from_initiator)
        {
            touch(f, pkt, src_is_lo, now);
            return ACT_OK;
        }
    }
    if unknown_pod(&pkt.src, g) {
        return drop_unknown_pod(ctx, pkt, DIRECTION_EGRESS);
    }
    if is_tcp && !syn_only {
        return ACT_OK;
    }
    let value = new_flow(now, 0, is_tcp, src_is_lo, FLOW_NODE_ORIGIN, g);
    let _ = FLOWS.insert(&*key, &value, 0);
    count(NODE_COUNTER_ORIGIN);
    ACT_OK
}

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
