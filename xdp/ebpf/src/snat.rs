//! Source NAT of selected pods to an egress address (EgressGateway), after the policy decision.
//!
//! Policy is judged on the pod's own address, as without SNAT: on the cluster leg the pipeline
//! (`classify`) runs first and [`outbound`] translates only what it allowed; on the external leg
//! [`inbound`] translates a packet to an egress address back to the pod *before* the pipeline, so
//! the pod's ingress side and its flow (keyed on pod addresses) judge it as if no NAT were there.
//!
//! A new translation is made only for the packet of a connection the pod opened (its flow's
//! initiator): a pod answering a connection from outside keeps its address. The port (the echo
//! identifier for ICMP) is allocated in the pool of the egress address: probing starts at a hash
//! of the original tuple and goes on sequentially for at most `SNAT_RETRIES` ports, inserting the
//! inbound entry with `BPF_NOEXIST`, so two connections never share a translated tuple (the
//! inbound key *is* that tuple); the outbound entry follows, also `BPF_NOEXIST`, and a CPU that
//! loses that race to another one translating the same connection withdraws its inbound entry and
//! uses the winner's. No free port: the packet is dropped (`DROP_REASON_SNAT_EXHAUSTED`), never
//! sent untranslated. A TCP connection is translated from its SYN: one already open when its pod
//! became selected keeps the pod's address (changing it mid-stream would only break it).
//! Translated: TCP, UDP and ICMP/ICMPv6 echo. Other protocols leave untranslated (their
//! checksums, SCTP's CRC32c over the ports, cannot be fixed incrementally here) — an external
//! firewall allowlisting the egress address refuses them.
//!
//! Checksums are updated incrementally (RFC 1624), so they must be complete: a packet sent
//! locally on a veth with checksum offload carries only the pseudo-header sum for the device to
//! finish, which XDP cannot tell. Packets from a wire are complete; the lab's hosts checksum in
//! software (as XDP forwarding needs anyway).
//!
//! ICMP errors about a translated connection are translated both ways (`snat_icmp`): those to an
//! egress address (PMTU discovery, unreachables) back to the pod, a pod's own out to the egress
//! address.

use aya_ebpf::btf_maps::{Array, HashMap, LpmTrie, PerCpuArray};
use aya_ebpf::macros::btf_map;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::XdpContext;
use portcullis_common::*;
use portcullis_ebpf_common::flow::{find_flow, syn_only};
use portcullis_ebpf_common::maps::{Maps, NO_PREALLOC};
use portcullis_ebpf_common::parse::{flow_key, Frame, Kind, Packet, Stop};
use portcullis_ebpf_common::report::report_event;
use portcullis_ebpf_common::words::copy_addr;

use crate::csum::{at, frame, load16, store16, update, Diff};
use crate::{snat_icmp, GatewayMaps};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// See `portcullis_common::maps`.
#[btf_map]
pub static SNAT_CLASSES: HashMap<[u8; 16], SnatClass, { MAX_SNAT_CLASSES as usize }, NO_PREALLOC> =
    HashMap::new();

/// See `portcullis_common::maps`.
#[btf_map]
static SNAT_ENTRIES: LpmTrie<SnatEntryKey, SnatTarget, { MAX_SNAT_ENTRIES as usize }> =
    LpmTrie::new();

/// See `portcullis_common::maps`.
#[btf_map]
pub static SNAT_EGRESS_IPS: HashMap<[u8; 16], EgressIp, { MAX_SNAT_EGRESS_IPS as usize }> =
    HashMap::new();

/// See `portcullis_common::maps`. Not preallocated: 512k entries would reserve ~60 MiB.
#[btf_map]
pub static SNAT_TRANSLATIONS: HashMap<
    NatKey,
    NatValue,
    { MAX_SNAT_TRANSLATIONS as usize },
    NO_PREALLOC,
> = HashMap::new();

/// See `portcullis_common::maps`.
#[btf_map]
static SNAT_COUNTERS: PerCpuArray<u64, { SNAT_COUNTER_COUNT as usize }> = PerCpuArray::new();

/// See `portcullis_common::maps`.
#[btf_map]
pub static SNAT_LEASE: Array<SnatLease, 1> = Array::new();

/// The per-CPU work area of a translation (keys too large for the BPF stack).
#[repr(C)]
pub struct NatScratch {
    pub inbound: NatKey,
    pub outbound: NatKey,
    pub value: NatValue,
    entry: Key<SnatEntryKey>,
}

/// What SNAT did with a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Snat {
    /// Not for SNAT: the packet goes on untouched.
    Untouched,
    /// Rewritten; the packet goes on.
    Translated,
    /// Dropped (counted and reported).
    Dropped,
}

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(c) = SNAT_COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Where a protocol's checksum and ports are in its header, and whether its checksum covers the
/// addresses (pseudo-header): (checksum, source port, destination port, pseudo).
#[inline(always)]
pub fn l4_layout(proto: u8) -> Option<(usize, usize, usize, bool)> {
    match proto {
        PROTO_TCP => Some((16, 0, 2, true)),
        PROTO_UDP => Some((6, 0, 2, true)),
        PROTO_ICMP => Some((2, 4, 4, false)),
        PROTO_ICMPV6 => Some((2, 4, 4, true)),
        _ => None,
    }
}

#[inline(always)]
pub fn is_icmp(proto: u8) -> bool {
    proto == PROTO_ICMP || proto == PROTO_ICMPV6
}

/// `key` = (src, sport → dst, dport, proto, direction).
#[inline(always)]
fn set_key(key: &mut NatKey, src: &[u8; 16], ports: (u16, u16), proto: u8, direction: u8) {
    // SAFETY: NatKey address fields are 8-byte aligned; `src` is a Packet or NatValue address.
    unsafe { copy_addr(&mut key.src, src) };
    (key.sport, key.dport) = ports;
    key.protocol = proto;
    key.direction = direction;
    key._pad = [0; 2];
}

/// Rewrites the source (`dst_side` false) or destination address and port of the packet at
/// `l3`/`l4` (protocol `proto`, family `v6`; `old`: the address as the packet has it, IPv4
/// mapped) with every checksum covering them.
#[inline(always)]
fn rewrite(
    f: &Frame,
    (l3, l4, v6, proto): (usize, usize, bool, u8),
    dst_side: bool,
    old: &[u8; 16],
    new: &NatValue,
) -> Result<(), Stop> {
    let (csum, sport, dport, pseudo) = l4_layout(proto).ok_or(Stop::Pass)?;
    let addr = &new.addr;
    let mut a = Diff::new();
    a.addr(old, addr);
    if v6 {
        let p = at::<[u8; 16]>(f, l3 + if dst_side { 24 } else { 8 })?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { core::ptr::write_unaligned(p, *addr) };
    } else {
        let p = at::<[u8; 4]>(f, l3 + if dst_side { 16 } else { 12 })?;
        // SAFETY: bounds checked by ptr_at.
        unsafe { core::ptr::write_unaligned(p, [addr[12], addr[13], addr[14], addr[15]]) };
        update(f, l3 + 10, &a, false)?;
    }
    let mut l = if pseudo { a } else { Diff::new() };
    // An ICMP echo's identifier is both "ports": one word.
    let at = l4 + if dst_side { dport } else { sport };
    l.word(load16(f, at)?, new.port);
    store16(f, at, new.port)?;
    update(f, l4 + csum, &l, proto == PROTO_UDP)
}

/// Cluster leg, after the pipeline allowed `pkt` (pod addresses): translates it when its pod has
/// a class whose longest entry for the destination names an egress address. A BPF-to-BPF call:
/// its stack is its own, not the program body's.
#[inline(never)]
pub fn outbound(
    ctx: &XdpContext,
    pkt: &mut Packet,
    flow: &mut FlowKey,
    nat: &mut NatScratch,
    now: u64,
) -> Snat {
    if pkt.kind == Kind::IcmpError {
        // A pod's error about a reply it received through a translation leaves translated.
        return match snat_icmp::icmp_error(&frame(ctx), pkt, nat, true) {
            Ok(()) => Snat::Translated,
            Err(_) => Snat::Untouched,
        };
    }
    if pkt.kind != Kind::Flow || l4_layout(pkt.proto).is_none() {
        return Snat::Untouched;
    }
    let ports = (pkt.sport, pkt.dport);
    set_key(&mut nat.outbound, &pkt.src, ports, pkt.proto, NAT_OUTBOUND);
    // SAFETY: NatKey address field.
    unsafe { copy_addr(&mut nat.outbound.dst, &pkt.dst) };
    match SNAT_TRANSLATIONS.get_ptr(&nat.outbound) {
        // SAFETY: value pointer from a successful lookup; copied (as words) into the scratch.
        Some(v) => nat.value = unsafe { *v },
        None => match translate_new(pkt, flow, nat, now) {
            Ok(true) => {}
            Ok(false) => return Snat::Untouched,
            Err(reason) => return dropped(ctx, pkt, reason),
        },
    }
    let f = frame(ctx);
    let at = (pkt.l3_off, pkt.l4_off, pkt.is_v6, pkt.proto);
    if rewrite(&f, at, false, &pkt.src, &nat.value).is_err() {
        return Snat::Untouched;
    }
    count(SNAT_COUNTER_OUTBOUND);
    Snat::Translated
}

/// A new translation for `pkt`: `Ok(false)` when it is not to be translated, `Ok(true)` with the
/// egress address and port in `nat.value`, or the `DROP_REASON_*` it fails with.
#[inline(always)]
fn translate_new(
    pkt: &Packet,
    flow: &mut FlowKey,
    nat: &mut NatScratch,
    now: u64,
) -> Result<bool, u8> {
    // SAFETY: value pointer from a successful lookup.
    let Some(class) = SNAT_CLASSES.get_ptr(&pkt.src).map(|c| unsafe { *c }) else {
        return Ok(false);
    };
    let family: u32 = if pkt.is_v6 { 6 } else { 4 };
    nat.entry = Key::new(
        SNAT_KEY_BITS_BEFORE_ADDR + 128,
        SnatEntryKey {
            class: class.to_be_bytes(),
            family: family.to_be_bytes(),
            addr: pkt.dst,
        },
    );
    let Some(target) = SNAT_ENTRIES.get(&nat.entry) else {
        return Ok(false);
    };
    // A TCP connection is translated from its SYN or not at all: one that was open before its
    // pod was selected keeps the pod's address rather than change source mid-stream.
    let tcp_midstream = pkt.proto == PROTO_TCP && !syn_only(pkt);
    if target.flags & SNAT_TARGET_TRANSLATE == 0 || tcp_midstream || !opened_by_source(pkt, flow) {
        return Ok(false);
    }
    let egress = &target.egress;
    let Some(pool) = SNAT_EGRESS_IPS.get_ptr(egress) else {
        return Err(DROP_REASON_SNAT_EXHAUSTED);
    };
    // SAFETY: value pointer from a successful lookup.
    let (first, last) = unsafe { ((*pool).port_first as u32, (*pool).port_last as u32) };
    if last < first {
        return Err(DROP_REASON_SNAT_EXHAUSTED);
    }
    let size = last - first + 1;
    let start = tuple_hash(pkt) % size;
    // Inbound: (remote, remote port → egress, candidate) → the pod; ICMP echo: (candidate,
    // candidate), the reply's identifier.
    set_key(
        &mut nat.inbound,
        &pkt.dst,
        (pkt.dport, 0),
        pkt.proto,
        NAT_INBOUND,
    );
    // SAFETY: NatKey / NatValue address fields.
    unsafe {
        copy_addr(&mut nat.inbound.dst, egress);
        copy_addr(&mut nat.value.addr, &pkt.src);
    }
    nat.value.port = pkt.sport;
    nat.value.created_ns = now;
    nat.value._pad = [0; 6];
    let mut port = None;
    for i in 0..SNAT_RETRIES {
        if i >= size {
            break;
        }
        let candidate = ((first + (start + i) % size) as u16).to_be();
        nat.inbound.dport = candidate;
        if is_icmp(pkt.proto) {
            nat.inbound.sport = candidate;
        }
        match SNAT_TRANSLATIONS.insert(&nat.inbound, &nat.value, BPF_NOEXIST) {
            Ok(()) => {
                port = Some(candidate);
                break;
            }
            Err(e) if e == -EEXIST => {}
            Err(_) => return Err(DROP_REASON_SNAT_TABLE_FULL),
        }
    }
    let Some(port) = port else {
        return Err(DROP_REASON_SNAT_EXHAUSTED);
    };
    // SAFETY: NatValue address field; `egress` points into the trie's value.
    unsafe { copy_addr(&mut nat.value.addr, egress) };
    nat.value.port = port;
    match SNAT_TRANSLATIONS.insert(&nat.outbound, &nat.value, BPF_NOEXIST) {
        Ok(()) => {
            count(SNAT_COUNTER_NEW);
            Ok(true)
        }
        Err(e) => {
            let _ = SNAT_TRANSLATIONS.remove(&nat.inbound);
            // Another CPU translated the same connection first: its translation stands.
            let winner = SNAT_TRANSLATIONS.get_ptr(&nat.outbound);
            match (e == -EEXIST, winner) {
                (true, Some(v)) => {
                    // SAFETY: value pointer from a successful lookup.
                    nat.value = unsafe { *v };
                    Ok(true)
                }
                _ => Err(DROP_REASON_SNAT_TABLE_FULL),
            }
        }
    }
}

/// Whether `pkt`'s source opened its flow (the flow the pipeline found or just recorded).
#[inline(always)]
fn opened_by_source(pkt: &Packet, flow: &mut FlowKey) -> bool {
    let src_is_lo = flow_key(flow, &pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto);
    match find_flow::<GatewayMaps>(flow) {
        Some(hit) => (hit.flow.initiator_is_lo != 0) == src_is_lo,
        None => false,
    }
}

/// Where probing for a port starts: a hash (FNV-1a over 32-bit words, then a final mix) of the
/// original tuple, so different connections spread over the pool.
#[inline(always)]
fn tuple_hash(pkt: &Packet) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for i in 0..4 {
        let s = u32::from_ne_bytes([
            pkt.src[4 * i],
            pkt.src[4 * i + 1],
            pkt.src[4 * i + 2],
            pkt.src[4 * i + 3],
        ]);
        let d = u32::from_ne_bytes([
            pkt.dst[4 * i],
            pkt.dst[4 * i + 1],
            pkt.dst[4 * i + 2],
            pkt.dst[4 * i + 3],
        ]);
        h = (h ^ s).wrapping_mul(0x0100_0193);
        h = (h ^ d).wrapping_mul(0x0100_0193);
    }
    h = (h ^ ((pkt.sport as u32) << 16 | pkt.dport as u32)).wrapping_mul(0x0100_0193);
    h = (h ^ pkt.proto as u32).wrapping_mul(0x0100_0193);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^ (h >> 13)
}

/// Counts a SNAT drop of a pod's packet and reports it with the pod's egress group (for
/// `monitor`); not charged to the group's policy.
#[inline(always)]
fn dropped(ctx: &XdpContext, pkt: &Packet, reason: u8) -> Snat {
    count(match reason {
        DROP_REASON_SNAT_TABLE_FULL => SNAT_COUNTER_TABLE_FULL,
        _ => SNAT_COUNTER_EXHAUSTED,
    });
    let (g, _) = portcullis_ebpf_common::maps::config::<GatewayMaps>();
    let key = EndpointKey {
        addr: pkt.src,
        direction: DIRECTION_EGRESS,
        generation: g as u8,
        _pad: [0; 2],
    };
    let group = match GatewayMaps::endpoints().get_ptr(&key) {
        // SAFETY: value pointer from a successful lookup.
        Some(v) => unsafe { (*v).group },
        None => 0,
    };
    let ifindex = ctx.ingress_ifindex() as u32;
    report_event::<GatewayMaps>(ifindex, Some(pkt), reason, group, DIRECTION_EGRESS);
    Snat::Dropped
}

/// External leg, before the pipeline: a packet to an egress address is translated back to its
/// pod (`pkt` updated to the pod's address and port, so the pipeline judges the pod's side), or
/// dropped when no translation knows it. Packets to other addresses are untouched. A BPF-to-BPF
/// call, as [`outbound`].
#[inline(never)]
pub fn inbound(ctx: &XdpContext, pkt: &mut Packet, nat: &mut NatScratch) -> Snat {
    if SNAT_EGRESS_IPS.get_ptr(&pkt.dst).is_none() {
        return Snat::Untouched;
    }
    let f = frame(ctx);
    let done = match pkt.kind {
        Kind::Flow if l4_layout(pkt.proto).is_some() => reply(&f, pkt, nat),
        Kind::IcmpError => snat_icmp::icmp_error(&f, pkt, nat, false),
        _ => Err(Stop::Pass),
    };
    match done {
        Ok(()) => Snat::Translated,
        Err(_) => {
            count(SNAT_COUNTER_NO_MAPPING);
            let ifindex = ctx.ingress_ifindex() as u32;
            let reason = DROP_REASON_SNAT_NO_MAPPING;
            report_event::<GatewayMaps>(ifindex, Some(pkt), reason, 0, DIRECTION_INGRESS);
            Snat::Dropped
        }
    }
}

/// A reply (remote → egress address, translated port): destination back to the pod.
#[inline(always)]
fn reply(f: &Frame, pkt: &mut Packet, nat: &mut NatScratch) -> Result<(), Stop> {
    let ports = (pkt.sport, pkt.dport);
    set_key(&mut nat.inbound, &pkt.src, ports, pkt.proto, NAT_INBOUND);
    // SAFETY: NatKey address field.
    unsafe { copy_addr(&mut nat.inbound.dst, &pkt.dst) };
    let v = SNAT_TRANSLATIONS.get_ptr(&nat.inbound).ok_or(Stop::Pass)?;
    // SAFETY: value pointer from a successful lookup; copied (as words) into the scratch.
    nat.value = unsafe { *v };
    let at = (pkt.l3_off, pkt.l4_off, pkt.is_v6, pkt.proto);
    rewrite(f, at, true, &pkt.dst, &nat.value)?;
    // SAFETY: Packet and NatValue address fields.
    unsafe { copy_addr(&mut pkt.dst, &nat.value.addr) };
    pkt.dport = nat.value.port;
    if is_icmp(pkt.proto) {
        pkt.sport = nat.value.port;
    }
    count(SNAT_COUNTER_INBOUND);
    Ok(())
}
