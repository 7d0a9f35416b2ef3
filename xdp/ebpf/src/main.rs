//! The Portcullis XDP gateway program.
//!
//! `portcullis_gateway` classifies every frame entering the gateway's two legs: parse (Ethernet,
//! up to two VLAN tags, IPv4/IPv6 with extension headers, TCP/UDP/SCTP/ICMP), flow-table lookup,
//! and on a miss one endpoint lookup plus one LPM lookup against the active policy generation.
//! `xdp_pass` is a bare `XDP_PASS` program, loaded only as the baseline of the benchmarks.
//!
//! TCP: only a SYN without ACK may create a flow. A TCP segment of a connection the flow table does
//! not know (for example one opened before the gateway started, without pinned maps) is dropped
//! when the endpoint is selected in that direction, even if the policy would allow a new
//! connection: the peers must reconnect. When the endpoint is not selected it passes untracked.
// The program is only meaningful for the BPF target; `cargo test --workspace` and clippy still
// compile it for the host (with std and an empty `main`) so it is type-checked and linted there.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys and values are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack (several live in the per-CPU SCRATCH map for that reason).
#![allow(clippy::needless_borrows_for_generic_args)]

use core::mem::size_of;

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    btf_maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf,
    },
    helpers::{bpf_ktime_get_ns, generated::bpf_fib_lookup, generated::bpf_redirect},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use portcullis_common::*;
use portcullis_ebpf_common::*;

/// Interface index → `ROLE_*` of that leg. Written by the loader at attach time.
#[btf_map]
static IFACE_ROLES: HashMap<u32, u32, 64> = HashMap::new();

/// Index 0: the active generation parity and `CONFIG_FLAG_*` bits. Written by the loader; the
/// generation switch is its single write.
#[btf_map]
static CONFIG: Array<Config, 1> = Array::new();

/// (pod address, direction, generation) → policy group. Written by the loader per generation.
#[btf_map]
static ENDPOINTS: HashMap<EndpointKey, EndpointValue, 262144> = HashMap::new();

/// (group, peer prefix) → rule set. Written by the loader per generation; group ids carry the
/// generation bit, so both generations live side by side (4M entries: two generations of 1M
/// ipBlocks, ~1.6M prefixes each; an LPM trie allocates per entry, so the size costs nothing unused).
#[btf_map]
static PREFIXES: LpmTrie<PrefixData, PrefixValue, 4194304> = LpmTrie::new();

/// Rule-set id → allowed (protocol, port range) list. Written by the loader per generation.
#[btf_map]
static RULE_SETS: HashMap<u32, RuleSet, 65536> = HashMap::new();

/// Normalised connection → state. Written by this program (create, refresh, revalidation
/// delete) and by the loader's flow GC (delete expired).
#[btf_map]
static FLOWS: LruHashMap<FlowKey, FlowValue, 262144> = LruHashMap::new();

/// `COUNTER_*` index → packets, per CPU. Written by this program, summed by the loader.
#[btf_map]
static COUNTERS: PerCpuArray<u64, { COUNTER_COUNT as usize }> = PerCpuArray::new();

/// Group id → packets dropped by that group's policy, per CPU. Written by this program.
#[btf_map]
static DROPS_BY_GROUP: PerCpuHashMap<u32, u64, 65536> = PerCpuHashMap::new();

/// Drop reports for `monitor`, at most `DROP_EVENTS_PER_SECOND` per CPU. Written by this program,
/// read by the loader.
#[btf_map]
static DROP_EVENTS: RingBuf<DropEvent, { 256 * 1024 }> = RingBuf::new();

/// Per CPU: `[window start ns, events sent in that window]` for the drop-event rate limit.
/// Written by this program only.
#[btf_map]
static DROP_EVENT_WINDOW: PerCpuArray<[u64; 2], 1> = PerCpuArray::new();

/// Per CPU: the parsed packet and the FIB lookup parameters of the packet being processed (too
/// large for the 512-byte BPF stack). Written and read by this program only.
#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

#[repr(C)]
struct Scratch {
    pkt: Packet,
    fib: FibParams,
    key: FlowKey,
    query: Query,
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[xdp]
pub fn portcullis_gateway(ctx: XdpContext) -> u32 {
    try_portcullis_gateway(&ctx)
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Result of a policy check.
enum Verdict {
    /// The pod is not selected by any policy of that direction.
    Unselected,
    Allow(u32),
    Deny(u32),
}

/// Input of a policy check (passed by reference: a BPF call takes at most five arguments).
#[repr(C)]
struct Query {
    pod: [u8; 16],
    peer: [u8; 16],
    g: u32,
    /// Destination port, host byte order.
    port: u16,
    direction: u8,
    proto: u8,
}

const VERDICT_UNSELECTED: u64 = 0;
const VERDICT_ALLOW: u64 = 1 << 32;
const VERDICT_DENY: u64 = 2 << 32;

#[inline(always)]
fn policy(q: &Query) -> Verdict {
    let v = policy_encoded(q);
    let group = v as u32;
    match v & !0xffff_ffff {
        VERDICT_ALLOW => Verdict::Allow(group),
        VERDICT_DENY => Verdict::Deny(group),
        _ => Verdict::Unselected,
    }
}

/// One endpoint lookup, one LPM lookup, one bounded scan of the rule set. Returns
/// `VERDICT_* | group` (a single register: BPF functions return one scalar).
#[inline(never)]
fn policy_encoded(q: &Query) -> u64 {
    let (g, direction, pod, peer, proto, port) =
        (q.g, q.direction, &q.pod, &q.peer, q.proto, q.port);
    let ek = EndpointKey {
        addr: *pod,
        direction,
        generation: g as u8,
        _pad: [0; 2],
    };
    let group = match ENDPOINTS.get_ptr(&ek) {
        // SAFETY: value pointer from a successful lookup.
        Some(v) => unsafe { (*v).group },
        None => return VERDICT_UNSELECTED,
    };
    let key = Key::new(
        PREFIX_GROUP_BITS + 128,
        PrefixData {
            group_be: group.to_be(),
            addr: *peer,
        },
    );
    let rule_set = match PREFIXES.get(&key) {
        Some(v) => v.rule_set,
        None => return VERDICT_DENY | group as u64,
    };
    let rs = match RULE_SETS.get_ptr(rule_set) {
        Some(rs) => rs,
        None => return VERDICT_DENY | group as u64,
    };
    // SAFETY: value pointer from a successful lookup; read only.
    if rule_set_allows(unsafe { &*rs }, proto, port) {
        return VERDICT_ALLOW | group as u64;
    }
    VERDICT_DENY | group as u64
}

#[inline(never)]
fn drop_packet(
    ctx: &XdpContext,
    pkt: Option<&Packet>,
    reason: u8,
    group: u32,
    direction: u8,
) -> u32 {
    count(drop_counter(reason));
    report_drop(
        &DROPS_BY_GROUP,
        &DROP_EVENT_WINDOW,
        &DROP_EVENTS,
        ctx.ingress_ifindex() as u32,
        pkt,
        reason,
        group,
        direction,
    );
    xdp_action::XDP_DROP
}

/// An allowed packet: to the stack, or forwarded in XDP when configured and the FIB knows how.
#[inline(always)]
fn allow(ctx: &XdpContext, pkt: &Packet, fib: &mut FibParams, flags: u32) -> u32 {
    if flags & CONFIG_FLAG_XDP_FORWARD != 0 && !pkt.vlan {
        let action = forward(ctx, pkt, fib);
        if action != xdp_action::XDP_PASS {
            count(COUNTER_FORWARD_XDP);
            return action;
        }
    }
    count(COUNTER_PASS_STACK);
    xdp_action::XDP_PASS
}

/// `bpf_fib_lookup` and redirect with MACs rewritten and TTL / hop limit decremented. `XDP_PASS`
/// means "let the kernel handle it" (no route, no neighbour, local delivery, TTL expiring, ...).
#[inline(always)]
fn forward(ctx: &XdpContext, pkt: &Packet, fib: &mut FibParams) -> u32 {
    try_forward(ctx, pkt, fib).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_forward(ctx: &XdpContext, pkt: &Packet, fib: &mut FibParams) -> Result<u32, Stop> {
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    *fib = unsafe { core::mem::zeroed() };
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.l4_protocol = pkt.proto;
    fib.sport = pkt.sport;
    fib.dport = pkt.dport;
    let frame = Frame::new(ctx.data(), ctx.data_end());
    let off = pkt.l3_off;
    if pkt.is_v6 {
        let h = bytes::<40>(&frame, off)?;
        if h[7] <= 1 {
            return Err(Stop::Pass);
        }
        fib.family = AF_INET6;
        fib.__bindgen_anon_1.tot_len = be16([h[4], h[5]]);
        fib.__bindgen_anon_2.flowinfo =
            u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) & 0x0fff_ffffu32.to_be();
        // SAFETY: writing plain integers into unions.
        unsafe {
            let src = &mut fib.__bindgen_anon_3.ipv6_src;
            let dst = &mut fib.__bindgen_anon_4.ipv6_dst;
            for i in 0..4 {
                src[i] = u32::from_ne_bytes([
                    pkt.src[4 * i],
                    pkt.src[4 * i + 1],
                    pkt.src[4 * i + 2],
                    pkt.src[4 * i + 3],
                ]);
                dst[i] = u32::from_ne_bytes([
                    pkt.dst[4 * i],
                    pkt.dst[4 * i + 1],
                    pkt.dst[4 * i + 2],
                    pkt.dst[4 * i + 3],
                ]);
            }
        }
    } else {
        let h = bytes::<20>(&frame, off)?;
        if h[8] <= 1 {
            return Err(Stop::Pass);
        }
        fib.family = AF_INET;
        fib.__bindgen_anon_1.tot_len = be16([h[2], h[3]]);
        fib.__bindgen_anon_2.tos = h[1];
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    }
    // SAFETY: ctx is the program's context; fib is a valid, sized parameter block.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib as *mut FibParams,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Stop::Pass);
    }
    if pkt.is_v6 {
        let hop = ptr_at::<u8>(&frame, off + 7)? as *mut u8;
        // SAFETY: bounds checked by ptr_at.
        unsafe { *hop -= 1 };
    } else {
        let ttl = ptr_at::<u8>(&frame, off + 8)? as *mut u8;
        let csum = ptr_at::<u16>(&frame, off + 10)? as *mut u16;
        // SAFETY: bounds checked by ptr_at. Incremental checksum update (RFC 1624) for TTL - 1,
        // as the kernel's ip_decrease_ttl.
        unsafe {
            *ttl -= 1;
            let mut c = core::ptr::read_unaligned(csum) as u32;
            c += 0x0100u16.to_be() as u32;
            c = (c + (c >= 0xffff) as u32) & 0xffff;
            core::ptr::write_unaligned(csum, c as u16);
        }
    }
    let eth = ptr_at::<[u8; 12]>(&frame, 0)? as *mut [u8; 12];
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&fib.dmac);
        macs[6..].copy_from_slice(&fib.smac);
        core::ptr::write_unaligned(eth, macs);
    }
    // SAFETY: helper without memory arguments.
    let action = unsafe { bpf_redirect(fib.ifindex, 0) };
    Ok(action as u32)
}

#[inline(always)]
fn try_portcullis_gateway(ctx: &XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let role = match IFACE_ROLES.get_ptr(ifindex) {
        // SAFETY: value pointer from a successful lookup.
        Some(r) => unsafe { *r },
        None => return xdp_action::XDP_PASS,
    };
    let scratch = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, used by this program invocation only.
        Some(p) => unsafe { &mut *p },
        None => return xdp_action::XDP_PASS,
    };
    let Scratch {
        pkt,
        fib,
        key,
        query,
    } = scratch;
    match parse(
        &Frame::new(ctx.data(), ctx.data_end()),
        pkt,
        Stop::Malformed,
    ) {
        0 => {}
        PARSE_PASS => {
            count(COUNTER_PASS_NON_IP);
            return xdp_action::XDP_PASS;
        }
        PARSE_FRAGMENT => return drop_packet(ctx, None, DROP_REASON_FRAGMENT, 0, 0),
        _ => return drop_packet(ctx, None, DROP_REASON_MALFORMED, 0, 0),
    }
    let (g, flags) = match CONFIG.get(0) {
        Some(c) => (c.generation & 1, c.flags),
        None => (0, 0),
    };
    // Cluster leg: the source is a pod leaving the cluster (its egress policy); external leg:
    // the destination is a pod being reached (its ingress policy).
    let direction = if role == ROLE_CLUSTER {
        query.pod = pkt.src;
        query.peer = pkt.dst;
        DIRECTION_EGRESS
    } else {
        query.pod = pkt.dst;
        query.peer = pkt.src;
        DIRECTION_INGRESS
    };
    query.g = g;
    query.port = u16::from_be(pkt.dport);
    query.direction = direction;
    query.proto = pkt.proto;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    if pkt.kind == Kind::IcmpError {
        if let Some(f) = FLOWS.get_ptr(&pkt.related) {
            // SAFETY: value pointer from a successful lookup; read only.
            let f = unsafe { &*f };
            if now.wrapping_sub(f.last_seen_ns) <= flow_timeout_ns(f.state) {
                count(COUNTER_PASS_FLOW);
                return allow(ctx, pkt, fib, flags);
            }
        }
        query.port = 0;
        return match policy(query) {
            Verdict::Unselected => {
                count(COUNTER_PASS_UNSELECTED);
                allow(ctx, pkt, fib, flags)
            }
            Verdict::Allow(_) => {
                count(COUNTER_PASS_POLICY);
                allow(ctx, pkt, fib, flags)
            }
            Verdict::Deny(group) => {
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
            if now.wrapping_sub(f.last_seen_ns) <= flow_timeout_ns(f.state) {
                if flags & CONFIG_FLAG_REVALIDATE != 0 && f.generation as u32 != g {
                    if let Some(group) = revalidate(query, key, f) {
                        let _ = FLOWS.remove(&*key);
                        return drop_packet(ctx, Some(&*pkt), DROP_REASON_POLICY, group, direction);
                    }
                }
                touch(f, pkt, src_is_lo, now);
                count(COUNTER_PASS_FLOW);
                return allow(ctx, pkt, fib, flags);
            }
        }
    }

    let verdict = policy(query);
    let group = match verdict {
        Verdict::Deny(group) => {
            return drop_packet(ctx, Some(&*pkt), DROP_REASON_POLICY, group, direction)
        }
        Verdict::Allow(group) => {
            if is_tcp && !syn_only {
                return drop_packet(ctx, Some(&*pkt), DROP_REASON_POLICY, group, direction);
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
        let value = new_flow(now, group, is_tcp, src_is_lo, direction, g);
        let _ = FLOWS.insert(&*key, &value, 0);
    }
    allow(ctx, pkt, fib, flags)
}

/// Re-checks a flow against generation `g` in the direction that admitted it, from the
/// initiator's point of view. Returns the denying group, or `None` (and marks the flow
/// current) when it is still allowed.
#[inline(always)]
fn revalidate(query: &mut Query, key: &FlowKey, f: &mut FlowValue) -> Option<u32> {
    let g = query.g;
    let (init, resp, resp_port) = if f.initiator_is_lo != 0 {
        (&key.addr_lo, &key.addr_hi, key.port_hi)
    } else {
        (&key.addr_hi, &key.addr_lo, key.port_lo)
    };
    let (pod, peer) = if f.direction == DIRECTION_EGRESS {
        (init, resp)
    } else {
        (resp, init)
    };
    query.pod = *pod;
    query.peer = *peer;
    query.port = u16::from_be(resp_port);
    query.direction = f.direction;
    query.proto = key.protocol;
    match policy(query) {
        Verdict::Deny(group) => Some(group),
        Verdict::Allow(group) => {
            f.group = group;
            f.generation = g as u8;
            None
        }
        Verdict::Unselected => {
            f.group = 0;
            f.generation = g as u8;
            None
        }
    }
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
