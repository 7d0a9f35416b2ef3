//! ICMP errors about translated connections (see `snat`): the quoted packet is translated with
//! the outer one, so PMTU discovery and unreachables reach the pod, and a pod's own errors leave
//! with its egress address.

use portcullis_common::*;
use portcullis_ebpf_common::parse::{flow_key, Frame, Packet, Stop};
use portcullis_ebpf_common::words::{copy_addr, set_ipv4_mapped};

use crate::csum::{at, load16, peek, store16, update, Diff};
use crate::snat::{count, is_icmp, l4_layout, NatScratch, SNAT_TRANSLATIONS};

/// An ICMP error about a translated connection, either way. To an egress address (`outbound`
/// false) it quotes a translated packet (egress, port → remote) whose source goes back to the
/// pod; from a pod (`outbound` true) it quotes a reply the pod received (remote → pod, port)
/// whose destination becomes the egress address. Rewritten: the outer address, the quoted
/// address and port, the quoted IPv4 header checksum and L4 checksum (when quoted), the outer
/// ICMP checksum and the outer IPv4 header checksum.
#[inline(always)]
pub fn icmp_error(
    f: &Frame,
    pkt: &mut Packet,
    nat: &mut NatScratch,
    outbound: bool,
) -> Result<(), Stop> {
    let (l3, l4, v6) = (pkt.l3_off, pkt.l4_off, pkt.is_v6);
    let inner_l3 = l4 + 8;
    let (inner_l4, proto) = if v6 {
        (inner_l3 + 40, peek::<8>(f, inner_l3)?[6])
    } else {
        let h = peek::<20>(f, inner_l3)?;
        (inner_l3 + ((h[0] & 0x0f) as usize) * 4, h[9])
    };
    let (_, sport_at, dport_at, _) = l4_layout(proto).ok_or(Stop::Pass)?;
    // The quoted packet's translated end T (its address offset in the IP header, its port
    // offset in the L4 header) and its other end O; the outer address offset that is T's.
    let (src_at, dst_at) = if v6 { (8, 24) } else { (12, 16) };
    let (t_at, o_at, t_port_at, o_port_at, outer_at) = match outbound {
        false => (src_at, dst_at, sport_at, dport_at, dst_at),
        true => (dst_at, src_at, dport_at, sport_at, src_at),
    };
    let t_port = load16(f, inner_l4 + t_port_at)?;
    // An echo identifier is both "ports".
    let o_port = match is_icmp(proto) {
        true => t_port,
        false => load16(f, inner_l4 + o_port_at)?,
    };
    // The key of T's translation: (O → T) inbound, (T → O) outbound; T's address is the outer
    // one (the error travels to / comes from it).
    let old: &[u8; 16] = if outbound { &pkt.src } else { &pkt.dst };
    let key = &mut nat.inbound;
    let (o_field, t_field) = match outbound {
        false => (&mut key.src, &mut key.dst),
        true => (&mut key.dst, &mut key.src),
    };
    if v6 {
        *o_field = *peek::<16>(f, inner_l3 + o_at)?;
    } else {
        let o = peek::<4>(f, inner_l3 + o_at)?;
        // SAFETY: NatKey address field.
        unsafe { set_ipv4_mapped(o_field, *o) };
    }
    // SAFETY: NatKey and Packet address fields.
    unsafe { copy_addr(t_field, old) };
    (key.sport, key.dport) = if outbound {
        (t_port, o_port)
    } else {
        (o_port, t_port)
    };
    key.protocol = proto;
    key.direction = if outbound { NAT_OUTBOUND } else { NAT_INBOUND };
    key._pad = [0; 2];
    let v = SNAT_TRANSLATIONS.get_ptr(&nat.inbound).ok_or(Stop::Pass)?;
    // SAFETY: value pointer from a successful lookup; copied (as words) into the scratch.
    nat.value = unsafe { *v };
    let (new, port) = (&nat.value.addr, nat.value.port);

    // The quoted packet: T's address and port (its IPv4 header checksum, and its L4 checksum
    // when quoted); every changed word also changes the outer ICMP checksum.
    let mut outer = Diff::new();
    if v6 {
        outer.addr(old, new);
        // SAFETY: bounds checked by `at`.
        unsafe { core::ptr::write_unaligned(at::<[u8; 16]>(f, inner_l3 + t_at)?, *new) };
    } else {
        let old_check = load16(f, inner_l3 + 10)?;
        let mut a = Diff::new();
        a.addr(old, new);
        let p = at::<[u8; 4]>(f, inner_l3 + t_at)?;
        // SAFETY: bounds checked by `at`.
        unsafe { core::ptr::write_unaligned(p, [new[12], new[13], new[14], new[15]]) };
        update(f, inner_l3 + 10, &a, false)?;
        outer = a;
        outer.word(old_check, load16(f, inner_l3 + 10)?);
    }
    let quoted = inner_l4_rewrite(f, (inner_l4, proto, t_port_at), old, new, port)?;
    outer.word(quoted.0, quoted.1);
    outer.word(quoted.2, quoted.3);
    // The outer header: T's address (IPv4 header checksum; ICMPv6's pseudo-header).
    if v6 {
        outer.addr(old, new);
        // SAFETY: bounds checked by `at`.
        unsafe { core::ptr::write_unaligned(at::<[u8; 16]>(f, l3 + outer_at)?, *new) };
    } else {
        let mut a = Diff::new();
        a.addr(old, new);
        let p = at::<[u8; 4]>(f, l3 + outer_at)?;
        // SAFETY: bounds checked by `at`.
        unsafe { core::ptr::write_unaligned(p, [new[12], new[13], new[14], new[15]]) };
        update(f, l3 + 10, &a, false)?;
    }
    update(f, l4 + 2, &outer, false)?;
    if !outbound {
        // The pipeline, which runs next, relates the error to the pod's flow.
        // SAFETY: Packet and NatValue address fields.
        unsafe { copy_addr(&mut pkt.dst, new) };
        let remote = &nat.inbound.src;
        flow_key(&mut pkt.related, new, port, remote, o_port, proto);
    }
    count(SNAT_COUNTER_ICMP_ERROR);
    Ok(())
}

/// The quoted L4 header of an ICMP error: the port (echo identifier) at `port_at` to `port`
/// and its checksum, when quoted, for the address `old` → `new`. Returns the two words changed
/// (port old/new, checksum old/new; zero when not quoted) for the outer checksum.
#[inline(always)]
fn inner_l4_rewrite(
    f: &Frame,
    (l4, proto, port_at): (usize, u8, usize),
    old: &[u8; 16],
    new: &[u8; 16],
    port: u16,
) -> Result<(u16, u16, u16, u16), Stop> {
    let (csum, _, _, pseudo) = l4_layout(proto).ok_or(Stop::Pass)?;
    let before = load16(f, l4 + port_at)?;
    store16(f, l4 + port_at, port)?;
    let Ok(old_csum) = load16(f, l4 + csum) else {
        return Ok((before, port, 0, 0));
    };
    let mut l = Diff::new();
    if pseudo {
        l.addr(old, new);
    }
    l.word(before, port);
    update(f, l4 + csum, &l, proto == PROTO_UDP)?;
    Ok((before, port, old_csum, load16(f, l4 + csum)?))
}
