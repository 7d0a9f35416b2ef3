//! Parsing a frame from its (data, data_end) bounds: Ethernet with up to two VLAN tags, IPv4/IPv6
//! with a bounded extension-header walk, TCP/UDP/SCTP ports, ICMP echo identifiers and the packet
//! embedded in ICMP errors; and the normalised flow key.

use core::mem::size_of;

use portcullis_common::*;

use crate::words::{copy_addr, set_ipv4_mapped};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers walked before giving up (the packet is then malformed for us).
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Largest L4 offset accepted; keeps every packet offset provably bounded for the verifier.
const MAX_L4_OFFSET: usize = 512;

/// Why parsing stopped without a classifiable IP packet.
#[derive(Clone, Copy)]
pub enum Stop {
    /// Not for us to judge (non-IP, neighbour discovery, MLD): hand to the stack / pass.
    Pass,
    Malformed,
    Fragment,
}

/// What kind of L4 content the packet has, for the flow logic.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP, UDP, SCTP, ICMP echo or any other protocol: tracked as a flow.
    Flow,
    /// ICMP error: related to the embedded packet's flow (`related`).
    IcmpError,
    /// Other ICMP (timestamps, ...): judged by policy every time, never tracked.
    IcmpUntracked,
}

/// A parsed packet (kept in a per-CPU scratch map by the programs: too large for the stack).
#[repr(C)]
pub struct Packet {
    /// Network byte order, IPv4 mapped.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order (echo identifier for ICMP echo, 0 when the protocol has no ports).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub kind: Kind,
    /// Offset of the IP header.
    pub l3_off: usize,
    /// Offset of the L4 header (after IPv4 options / IPv6 extension headers); SNAT rewrites
    /// ports and checksums there.
    pub l4_off: usize,
    pub is_v6: bool,
    pub vlan: bool,
    /// For `Kind::IcmpError`: normalised key of the embedded packet's flow.
    pub related: FlowKey,
}

/// The packet data of a program's context: `data` and `data_end` as the context gives them
/// (`XdpContext` and `TcContext` both have them). Every read is bounds checked against `end`.
#[derive(Clone, Copy)]
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(data: usize, data_end: usize) -> Frame {
        Frame {
            start: data,
            end: data_end,
        }
    }
}

#[inline(always)]
pub fn ptr_at<T>(ctx: &Frame, off: usize) -> Result<*const T, Stop> {
    let start = ctx.start;
    let end = ctx.end;
    if off > MAX_L4_OFFSET + 64 || start + off + size_of::<T>() > end {
        return Err(Stop::Malformed);
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
fn load<T: Copy>(ctx: &Frame, off: usize) -> Result<T, Stop> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked against data_end above; unaligned read.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

/// Reference to `N` packet bytes at `off` (bounds checked), read in place without a stack copy.
#[inline(always)]
pub fn bytes<const N: usize>(ctx: &Frame, off: usize) -> Result<&[u8; N], Stop> {
    let p = ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: bounds checked against data_end; u8 arrays have alignment 1.
    Ok(unsafe { &*p })
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
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
pub fn flow_key(
    out: &mut FlowKey,
    src: &[u8; 16],
    sport: u16,
    dst: &[u8; 16],
    dport: u16,
    proto: u8,
) -> bool {
    let src_is_lo = !endpoint_less(dst, dport, src, sport);
    let (lo, lo_port, hi, hi_port) = if src_is_lo {
        (src, sport, dst, dport)
    } else {
        (dst, dport, src, sport)
    };
    // SAFETY: `out` is a FlowKey; the sources are Packet fields (see `words`).
    unsafe {
        copy_addr(&mut out.addr_lo, lo);
        copy_addr(&mut out.addr_hi, hi);
        // protocol and the three padding bytes as one 4-byte-aligned word (little endian).
        (&mut out.protocol as *mut u8 as *mut u32).write(proto as u32);
    }
    out.port_lo = lo_port;
    out.port_hi = hi_port;
    src_is_lo
}

/// Parses the L4 ports of a (possibly embedded) TCP/UDP/SCTP header or the ICMP echo identifier.
/// Returns (sport, dport) in network byte order.
#[inline(always)]
fn inner_ports(ctx: &Frame, off: usize, proto: u8) -> Result<(u16, u16), Stop> {
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
fn related_flow(ctx: &Frame, off: usize, v6: bool, out: &mut FlowKey) -> Result<(), Stop> {
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
        let src = ipv4_mapped([h[12], h[13], h[14], h[15]]);
        let dst = ipv4_mapped([h[16], h[17], h[18], h[19]]);
        let (sp, dp) = inner_ports(ctx, off + ihl, proto)?;
        flow_key(out, &src, sp, &dst, dp, proto);
    }
    Ok(())
}

/// Parses L4 at `off`: fills ports, flags and kind.
#[inline(always)]
fn parse_l4(ctx: &Frame, off: usize, pkt: &mut Packet) -> Result<(), Stop> {
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

/// Return codes of [`parse`].
pub const PARSE_PASS: u32 = 1;
pub const PARSE_MALFORMED: u32 = 2;
pub const PARSE_FRAGMENT: u32 = 3;

/// Fills `pkt`; returns 0 or a `PARSE_*` code. `short` is what a frame too short for an
/// Ethernet header is.
#[inline(always)]
pub fn parse(ctx: &Frame, pkt: &mut Packet, short: Stop) -> u32 {
    // Fields `try_parse` does not always set (addresses and `related` always are when used):
    // sport, dport, proto, tcp_flags and kind cleared as one word (see `words`), then the kind.
    // SAFETY: `sport` starts an 8-byte-aligned run of those 7 bytes and a padding byte.
    unsafe { (&mut pkt.sport as *mut u16 as *mut u64).write(0) };
    pkt.kind = Kind::Flow;
    pkt.is_v6 = false;
    pkt.vlan = false;
    match try_parse(ctx, pkt, short) {
        Ok(()) => 0,
        Err(Stop::Pass) => PARSE_PASS,
        Err(Stop::Malformed) => PARSE_MALFORMED,
        Err(Stop::Fragment) => PARSE_FRAGMENT,
    }
}

#[inline(always)]
fn try_parse(ctx: &Frame, pkt: &mut Packet, short: Stop) -> Result<(), Stop> {
    let mut off = ETH_HLEN;
    let mut ethertype = be16(load(ctx, 12).map_err(|_| short)?);
    let mut vlan = false;
    // Up to two tags (802.1ad outer, 802.1Q inner).
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16(load(ctx, off + 2)?);
            off += 4;
            vlan = true;
        }
    }
    pkt.l3_off = off;
    pkt.vlan = vlan;
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
            // SAFETY: Packet address fields (see `words`).
            unsafe {
                set_ipv4_mapped(&mut pkt.src, [h[12], h[13], h[14], h[15]]);
                set_ipv4_mapped(&mut pkt.dst, [h[16], h[17], h[18], h[19]]);
            }
            pkt.l4_off = off + ihl;
            parse_l4(ctx, off + ihl, pkt)?;
        }
        ETH_P_IPV6 => {
            let h = bytes::<40>(ctx, off)?;
            if h[0] >> 4 != 6 {
                return Err(Stop::Malformed);
            }
            pkt.is_v6 = true;
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
            pkt.l4_off = l4;
            parse_l4(ctx, l4, pkt)?;
        }
        _ => return Err(Stop::Pass),
    }
    Ok(())
}
