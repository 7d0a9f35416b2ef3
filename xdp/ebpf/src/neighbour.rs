//! ARP and neighbour discovery for the egress addresses, on the external leg: no interface of the
//! gateway has them (the kernel would not answer), yet the outside must resolve them to send the
//! replies of translated connections. A request is turned into its reply in place and sent back
//! out of the leg (`XDP_TX`) with the MAC the loader stored for the address (the leg's own).
//!
//! Answered: an untagged ARP request (Ethernet/IPv4), and an untagged Neighbor Solicitation
//! without extension headers carrying the source link-layer option (the usual form: 32 bytes of
//! ICMPv6), which becomes a solicited, override Neighbor Advertisement with the target link-layer
//! option, hop limit 255. Duplicate address detection (from `::`, no option) is not answered.
//!
//! Only while the gateway's lease holds (`SNAT_LEASE`, `lease_holds`): a highly available
//! gateway whose daemon died stops answering when its lease ends, though its pinned program runs
//! on. Without a lease (0) the answers stand as `EgressIp::answer` says.

use aya_ebpf::programs::XdpContext;
use portcullis_common::*;
use portcullis_ebpf_common::flow::flow_clock;
use portcullis_ebpf_common::parse::{bytes, ptr_at, Frame, Stop};

use crate::csum::frame;
use crate::snat::{count, SNAT_EGRESS_IPS, SNAT_LEASE};

const ETH_P_ARP: [u8; 2] = [0x08, 0x06];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const ND_SOLICIT: u8 = 135;
const ND_ADVERT: u8 = 136;

/// True when the frame was an ARP request or a Neighbor Solicitation for an egress address and
/// is now its reply, to send back with `XDP_TX`; else the frame is untouched. A BPF-to-BPF call.
#[inline(never)]
pub fn answer(ctx: &XdpContext) -> bool {
    let f = frame(ctx);
    let Ok(ethertype) = bytes::<2>(&f, 12).copied() else {
        return false;
    };
    let done = if ethertype == ETH_P_ARP {
        arp(&f).map(|()| SNAT_COUNTER_ARP_REPLY)
    } else if ethertype == ETH_P_IPV6 {
        solicitation(&f).map(|()| SNAT_COUNTER_ND_REPLY)
    } else {
        Err(Stop::Pass)
    };
    match done {
        Ok(counter) => {
            count(counter);
            true
        }
        Err(_) => false,
    }
}

/// Whether the gateway answers for an egress address whose `EgressIp::answer` is `answer`: it
/// does, and the lease holds.
#[inline(always)]
fn answering(answer: u8) -> bool {
    let lease = SNAT_LEASE.get(0).copied().unwrap_or(SNAT_NO_LEASE);
    answer != 0 && lease_holds(lease, flow_clock())
}

/// Writes `v` at `off`.
#[inline(always)]
fn put<const N: usize>(f: &Frame, off: usize, v: [u8; N]) -> Result<(), Stop> {
    let p = ptr_at::<[u8; N]>(f, off)? as *mut [u8; N];
    // SAFETY: bounds checked by ptr_at.
    unsafe { core::ptr::write_unaligned(p, v) };
    Ok(())
}

/// The Ethernet header of the reply: back to the requester, from `mac`.
#[inline(always)]
fn reply_ethernet(f: &Frame, mac: [u8; 6]) -> Result<(), Stop> {
    let requester = *bytes::<6>(f, 6)?;
    put(f, 0, requester)?;
    put(f, 6, mac)
}

/// ARP: htype 1, ptype IPv4, 6/4 address lengths, operation 1 (request) → 2 (reply).
#[inline(always)]
fn arp(f: &Frame) -> Result<(), Stop> {
    let a = *bytes::<28>(f, 14)?;
    if a[..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return Err(Stop::Pass);
    }
    let target = ipv4_mapped([a[24], a[25], a[26], a[27]]);
    let egress = SNAT_EGRESS_IPS.get_ptr(&target).ok_or(Stop::Pass)?;
    // SAFETY: value pointer from a successful lookup.
    let (mac, answer) = unsafe { ((*egress).mac, (*egress).answer) };
    if !answering(answer) {
        return Err(Stop::Pass);
    }
    let (sha, spa) = (
        [a[8], a[9], a[10], a[11], a[12], a[13]],
        [a[14], a[15], a[16], a[17]],
    );
    put(f, 20, [0u8, 2])?;
    put(f, 22, mac)?;
    put(f, 28, [a[24], a[25], a[26], a[27]])?;
    put(f, 32, sha)?;
    put(f, 38, spa)?;
    reply_ethernet(f, mac)
}

/// Neighbor Solicitation → Neighbor Advertisement, in place (same length).
#[inline(always)]
fn solicitation(f: &Frame) -> Result<(), Stop> {
    let ip = *bytes::<8>(f, 14)?;
    // Payload length 32 (NS + one 8-byte option), next header ICMPv6.
    if ip[4..7] != [0, 32, PROTO_ICMPV6] {
        return Err(Stop::Pass);
    }
    let ns = *bytes::<32>(f, 54)?;
    // Solicitation, code 0, with the source link-layer address option (type 1, 8 bytes).
    if ns[0] != ND_SOLICIT || ns[1] != 0 || ns[24] != 1 || ns[25] != 1 {
        return Err(Stop::Pass);
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&ns[8..24]);
    let egress = SNAT_EGRESS_IPS.get_ptr(&target).ok_or(Stop::Pass)?;
    // SAFETY: value pointer from a successful lookup.
    let (mac, answer) = unsafe { ((*egress).mac, (*egress).answer) };
    if !answering(answer) {
        return Err(Stop::Pass);
    }
    let requester = *bytes::<16>(f, 22)?;
    // IPv6: hop limit 255, from the target to the soliciting address.
    put(f, 21, [255u8])?;
    put(f, 22, target)?;
    put(f, 38, requester)?;
    // ICMPv6: advertisement, checksum 0 for now, flags solicited + override, the target, and
    // the target link-layer address option.
    put(f, 54, [ND_ADVERT, 0, 0, 0, 0x60, 0, 0, 0])?;
    put(
        f,
        78,
        [2u8, 1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]],
    )?;
    let checksum = icmpv6_checksum(f)?;
    put(f, 56, checksum)?;
    reply_ethernet(f, mac)
}

/// The ICMPv6 checksum of the 32-byte advertisement: pseudo-header (addresses, length 32,
/// next header 58) and the message, its checksum field 0.
#[inline(always)]
fn icmpv6_checksum(f: &Frame) -> Result<[u8; 2], Stop> {
    // Source and destination addresses, then the ICMPv6 message: contiguous from offset 22.
    let b = bytes::<64>(f, 22)?;
    let mut sum: u32 = 32 + PROTO_ICMPV6 as u32;
    for i in 0..32 {
        sum += u16::from_be_bytes([b[2 * i], b[2 * i + 1]]) as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    Ok((!(sum as u16)).to_be_bytes())
}
