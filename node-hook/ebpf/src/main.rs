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

use core::mem::size_of;

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

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers walked before giving up (the packet is then malformed for us).
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Largest L4 offset accepted; keeps every packet offset provably bounded for the verifier.
const MAX_L4_OFFSET: usize = 512;
/// Bytes made linear (`bpf_skb_pull_data`) before parsing when the skb's head is shorter.
const PULL_LEN: u32 = 256;

const NS_PER_SEC: u64 = 1_000_000_000;

// The bindings type these u32 for bpfel and i32 for the host (where clippy runs).
#[allow(clippy::unnecessary_cast)]
const ACT_OK: i32 = TC_ACT_OK as i32;
#[allow(clippy::unnecessary_cast)]
const ACT_SHOT: i32 = TC_ACT_SHOT as i32;

/// Why parsing stopped without a classifiable IP packet.
enum Stop {
    /// Not for us to judge (non-IP, neighbour discovery, MLD): pass.
    Pass,
    Malformed,
    Fragment,
}

/// What kind of L4 content the packet has, for the flow logic.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCP, UDP, SCTP, ICMP echo or any other protocol: tracked as a flow.
    Flow,
    /// ICMP error: related to the embedded packet's flow (`related`).
    IcmpError,
    /// Other ICMP (timestamps, ...): judged by policy every time, never tracked.
    IcmpUntracked,
}

#[repr(C)]
struct Packet {
    /// Network byte order, IPv4 mapped.
    src: [u8; 16],
    dst: [u8; 16],
    /// Network byte order (echo identifier for ICMP echo, 0 when the protocol has no ports).
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    kind: Kind,
    /// For `Kind::IcmpError`: normalised key of the embedded packet's flow.
    related: FlowKey,
}

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
fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*const T, Stop> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off > MAX_L4_OFFSET + 64 || start + off + size_of::<T>() > end {
        return Err(Stop::Malformed);
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, Stop> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked against data_end above; unaligned read.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// Reference to `N` packet bytes at `off` (bounds checked), read in place without a stack copy.
#[inline(always)]
fn bytes<const N: usize>(ctx: &TcContext, off: usize) -> Result<&[u8; N], Stop> {
    let p = ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: bounds checked against data_end; u8 arrays have alignment 1.
    Ok(unsafe { &*p })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn mapped_v4(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
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

/// (addr, port) ordering on the big-endian address, then the port.
#[inline(always)]
fn endpoint_less(a: &[u8; 16], ap: u16, b: &[u8; 16], bp: u16) -> bool {
    let (a0, a1) = split(a);
    let (b0, b1) = split(b);
    if a0 != b0 {
        return a0 < b0;
    }
    if a1 != b1 {
        return a1 < b1;
    }
    u16::from_be(ap) < u16::from_be(bp)
}

#[inline(always)]
fn split(a: &[u8; 16]) -> (u64, u64) {
    // SAFETY: 16 bytes read as two unaligned u64.
    unsafe {
        let p = a.as_ptr() as *const u64;
        (
            u64::from_be(core::ptr::read_unaligned(p)),
            u64::from_be(core::ptr::read_unaligned(p.add(1))),
        )
    }
}

/// Writes the normalised flow key to `out`; returns true when `src` is the `lo` endpoint.
#[inline(always)]
fn flow_key(
    out: &mut FlowKey,
    src: &[u8; 16],
    sport: u16,
    dst: &[u8; 16],
    dport: u16,
    proto: u8,
) -> bool {
    let src_is_lo = !endpoint_less(dst, dport, src, sport);
    if src_is_lo {
        out.addr_lo = *src;
        out.addr_hi = *dst;
        out.port_lo = sport;
        out.port_hi = dport;
    } else {
        out.addr_lo = *dst;
        out.addr_hi = *src;
        out.port_lo = dport;
        out.port_hi = sport;
    }
    out.protocol = proto;
    out._pad = [0; 3];
    src_is_lo
}

/// Parses the L4 ports of a (possibly embedded) TCP/UDP/SCTP header or the ICMP echo identifier.
/// Returns (sport, dport) in network byte order.
#[inline(always)]
fn inner_ports(ctx: &TcContext, off: usize, proto: u8) -> Result<(u16, u16), Stop> {
    match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let p: [u16; 2] = load(ctx, off)?;
            Ok((p[0], p[1]))
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let h = bytes::<8>(ctx, off)?;
            let id = u16::from_ne_bytes([h[4], h[5]]);
            Ok((id, id))
        }
        _ => Ok((0, 0)),
    }
}

/// Parses the packet embedded in an ICMP error starting at `off` and writes its flow key.
#[inline(always)]
fn related_flow(ctx: &TcContext, off: usize, v6: bool, out: &mut FlowKey) -> Result<(), Stop> {
    if v6 {
        let proto = bytes::<8>(ctx, off)?[6];
        let src = bytes::<16>(ctx, off + 8)?;
        let dst = bytes::<16>(ctx, off + 24)?;
        let (sp, dp) = inner_ports(ctx, off + 40, proto)?;
        flow_key(out, src, sp, dst, dp, proto);
    } else {
        let h = bytes::<20>(ctx, off)?;
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Err(Stop::Malformed);
        }
        let proto = h[9];
        let src = mapped_v4([h[12], h[13], h[14], h[15]]);
        let dst = mapped_v4([h[16], h[17], h[18], h[19]]);
        let (sp, dp) = inner_ports(ctx, off + ihl, proto)?;
        flow_key(out, &src, sp, &dst, dp, proto);
    }
    Ok(())
}

/// Parses L4 at `off`: fills ports, flags and kind.
#[inline(always)]
fn parse_l4(ctx: &TcContext, off: usize, pkt: &mut Packet) -> Result<(), Stop> {
    match pkt.proto {
        PROTO_TCP => {
            let h = bytes::<20>(ctx, off)?;
            pkt.sport = u16::from_ne_bytes([h[0], h[1]]);
            pkt.dport = u16::from_ne_bytes([h[2], h[3]]);
            pkt.tcp_flags = h[13];
        }
        PROTO_UDP => {
            let h: [u16; 4] = load(ctx, off)?;
            pkt.sport = h[0];
            pkt.dport = h[1];
        }
        PROTO_SCTP => {
            let h: [u16; 6] = load(ctx, off)?;
            pkt.sport = h[0];
            pkt.dport = h[1];
        }
        PROTO_ICMP => {
            let h = bytes::<8>(ctx, off)?;
            match h[0] {
                0 | 8 => {
                    let id = u16::from_ne_bytes([h[4], h[5]]);
                    pkt.sport = id;
                    pkt.dport = id;
                }
                3 | 4 | 5 | 11 | 12 => {
                    pkt.kind = Kind::IcmpError;
                    related_flow(ctx, off + 8, false, &mut pkt.related)?;
                }
                _ => pkt.kind = Kind::IcmpUntracked,
            }
        }
        PROTO_ICMPV6 => {
            let h = bytes::<8>(ctx, off)?;
            match h[0] {
                128 | 129 => {
                    let id = u16::from_ne_bytes([h[4], h[5]]);
                    pkt.sport = id;
                    pkt.dport = id;
                }
                1..=4 => {
                    pkt.kind = Kind::IcmpError;
                    related_flow(ctx, off + 8, true, &mut pkt.related)?;
                }
                // MLD, router/neighbour solicitation/advertisement, redirect, MLDv2.
                130..=137 | 143 => return Err(Stop::Pass),
                _ => pkt.kind = Kind::IcmpUntracked,
            }
        }
        _ => {}
    }
    Ok(())
}

const PARSE_PASS: u32 = 1;
const PARSE_MALFORMED: u32 = 2;
const PARSE_FRAGMENT: u32 = 3;

/// Makes the headers linear when they are not (a pulled skb invalidates earlier packet
/// pointers; nothing is held across this call), then fills `pkt`; returns 0 or a `PARSE_*` code.
#[inline(always)]
fn parse(ctx: &TcContext, pkt: &mut Packet) -> u32 {
    pkt.sport = 0;
    pkt.dport = 0;
    pkt.proto = 0;
    pkt.tcp_flags = 0;
    pkt.kind = Kind::Flow;
    let want = if ctx.len() < PULL_LEN {
        ctx.len()
    } else {
        PULL_LEN
    };
    if ctx.data_end() - ctx.data() < want as usize {
        let _ = ctx.pull_data(want);
    }
    match try_parse(ctx, pkt) {
        Ok(()) => 0,
        Err(Stop::Pass) => PARSE_PASS,
        Err(Stop::Malformed) => PARSE_MALFORMED,
        Err(Stop::Fragment) => PARSE_FRAGMENT,
    }
}

#[inline(always)]
fn try_parse(ctx: &TcContext, pkt: &mut Packet) -> Result<(), Stop> {
    let mut off = ETH_HLEN;
    let mut ethertype = be16(load(ctx, 12).map_err(|_| Stop::Pass)?);
    // Up to two tags (802.1ad outer, 802.1Q inner).
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16(load(ctx, off + 2)?);
            off += 4;
        }
    }
    match ethertype {
        ETH_P_IP => {
            let h = bytes::<20>(ctx, off)?;
            if h[0] >> 4 != 4 {
                return Err(Stop::Malformed);
            }
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(Stop::Malformed);
            }
            let frag = be16([h[6], h[7]]);
            if frag & 0x1fff != 0 {
                return Err(Stop::Fragment);
            }
            pkt.proto = h[9];
            pkt.src = mapped_v4([h[12], h[13], h[14], h[15]]);
            pkt.dst = mapped_v4([h[16], h[17], h[18], h[19]]);
            parse_l4(ctx, off + ihl, pkt)?;
        }
        ETH_P_IPV6 => {
            let h = bytes::<40>(ctx, off)?;
            if h[0] >> 4 != 6 {
                return Err(Stop::Malformed);
            }
            pkt.src.copy_from_slice(&h[8..24]);
            pkt.dst.copy_from_slice(&h[24..40]);
            let mut next = h[6];
            let mut l4 = off + 40;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                match next {
                    // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
                    0 | 43 | 60 => {
                        let e = bytes::<2>(ctx, l4)?;
                        next = e[0];
                        l4 += (e[1] as usize + 1) * 8;
                    }
                    // Authentication header: (len + 2) * 4 bytes.
                    51 => {
                        let e = bytes::<2>(ctx, l4)?;
                        next = e[0];
                        l4 += (e[1] as usize + 2) * 4;
                    }
                    // Fragment header: a non-first fragment has no L4 header.
                    44 => {
                        let e = bytes::<8>(ctx, l4)?;
                        if be16([e[2], e[3]]) & 0xfff8 != 0 {
                            return Err(Stop::Fragment);
                        }
                        next = e[0];
                        l4 += 8;
                    }
                    _ => break,
                }
                if l4 > MAX_L4_OFFSET {
                    return Err(Stop::Malformed);
                }
            }
            if matches!(next, 0 | 43 | 44 | 51 | 60) {
                return Err(Stop::Malformed);
            }
            pkt.proto = next;
            parse_l4(ctx, l4, pkt)?;
        }
        _ => return Err(Stop::Pass),
    }
    Ok(())
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
    let rs = match RULE_SETS.get_ptr(rule_set) {
        // SAFETY: value pointer from a successful lookup; read only.
        Some(rs) => unsafe { &*rs },
        None => return false,
    };
    let icmp = proto == PROTO_ICMP || proto == PROTO_ICMPV6;
    for i in 0..MAX_PORT_RANGES {
        if i as u32 >= rs.count {
            break;
        }
        let r = rs.ranges[i];
        if r.protocol == PROTO_ANY {
            return true;
        }
        if !icmp && r.protocol == proto && port >= r.first && port <= r.last {
            return true;
        }
    }
    false
}

/// A SYN from the former responder of a closing TCP flow opens a new connection the other way
/// round: the old entry vouches for nothing.
#[inline(always)]
fn reopened_reversed(f: &FlowValue, syn_only: bool, from_initiator: bool) -> bool {
    f.state == TCP_STATE_CLOSING && syn_only && !from_initiator
}

/// TCP state tracking and refresh of a live flow hit by a packet.
#[inline(always)]
fn touch(f: &mut FlowValue, pkt: &Packet, src_is_lo: bool, now: u64) {
    if pkt.proto == PROTO_TCP {
        let fl = pkt.tcp_flags;
        if fl & (TCP_RST | TCP_FIN) != 0 {
            f.state = TCP_STATE_CLOSING;
        } else if f.state == TCP_STATE_SYN_SENT && fl & TCP_ACK != 0 {
            f.state = TCP_STATE_ESTABLISHED;
        } else if f.state == TCP_STATE_CLOSING && fl & (TCP_SYN | TCP_ACK) == TCP_SYN {
            f.state = TCP_STATE_SYN_SENT;
            f.initiator_is_lo = src_is_lo as u8;
        }
    }
    f.last_seen_ns = now;
}

#[inline(never)]
fn drop_packet(
    ctx: &TcContext,
    pkt: Option<&Packet>,
    reason: u8,
    group: u32,
    direction: u8,
) -> i32 {
    count(match reason {
        DROP_REASON_POLICY => COUNTER_DROP_POLICY,
        DROP_REASON_FRAGMENT => COUNTER_DROP_FRAGMENT,
        _ => COUNTER_DROP_MALFORMED,
    });
    if group != 0 {
        match DROPS_BY_GROUP.get_ptr_mut(group) {
            // SAFETY: per-CPU slot.
            Some(c) => unsafe { *c += 1 },
            None => {
                let _ = DROPS_BY_GROUP.insert(group, 1u64, 0);
            }
        }
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(w) = DROP_EVENT_WINDOW.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        let w = unsafe { &mut *w };
        if now.wrapping_sub(w[0]) >= NS_PER_SEC {
            w[0] = now;
            w[1] = 0;
        }
        if w[1] < DROP_EVENTS_PER_SECOND {
            w[1] += 1;
            if let Some(mut e) = DROP_EVENTS.reserve(0) {
                let mut ev = DropEvent {
                    timestamp_ns: now,
                    ifindex: ifindex(ctx),
                    group,
                    src: [0; 16],
                    dst: [0; 16],
                    src_port: 0,
                    dst_port: 0,
                    protocol: 0,
                    direction,
                    reason,
                    _pad: 0,
                };
                if let Some(p) = pkt {
                    ev.src = p.src;
                    ev.dst = p.dst;
                    ev.src_port = u16::from_be(p.sport);
                    ev.dst_port = u16::from_be(p.dport);
                    ev.protocol = p.proto;
                }
                e.write(ev);
                e.submit(0);
            }
        }
    }
    ACT_SHOT
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
        let value = FlowValue {
            last_seen_ns: now,
            group,
            state: if is_tcp {
                TCP_STATE_SYN_SENT
            } else {
                FLOW_STATE_ACTIVE
            },
            initiator_is_lo: src_is_lo as u8,
            direction: FLOW_NODE_CHECKED,
            generation: g as u8,
        };
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
/// connection. Never drops (the decision is taken where the packet is delivered, or at the
/// gateway for non-pod destinations).
#[inline(always)]
fn try_origin(ctx: &TcContext) -> i32 {
    let scratch = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, used by this program invocation only.
        Some(p) => unsafe { &mut *p },
        None => return ACT_OK,
    };
    let Scratch { pkt, key, .. } = scratch;
    if parse(ctx, pkt) != 0 || pkt.kind != Kind::Flow {
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
    if is_tcp && !syn_only {
        return ACT_OK;
    }
    let (g, _) = config();
    let value = FlowValue {
        last_seen_ns: now,
        group: 0,
        state: if is_tcp {
            TCP_STATE_SYN_SENT
        } else {
            FLOW_STATE_ACTIVE
        },
        initiator_is_lo: src_is_lo as u8,
        direction: FLOW_NODE_ORIGIN,
        generation: g as u8,
    };
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
