//! The forwarding rewrite of an allowed frame the engine sends itself, what the XDP program's
//! `forward.rs` does before its redirect: TTL / hop limit minus one (the IPv4 header checksum
//! updated incrementally, RFC 1624, as the kernel's `ip_decrease_ttl`) and both MACs written.
//! A frame the kernel must handle instead (ICMP time exceeded, fragmentation or "packet too
//! big", VLAN) is refused, untouched.

use portcullis_ebpf_common::parse::Packet;

/// Why the engine cannot forward a frame itself: the kernel's stack must take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unforwardable {
    #[error("the frame is VLAN tagged")]
    Vlan,
    #[error("the TTL or hop limit expires here")]
    TtlExpiring,
    #[error("the IP packet ({ip_len} bytes) exceeds the egress MTU ({mtu})")]
    TooBig { ip_len: u32, mtu: u32 },
    #[error("the frame ends inside its IP header")]
    Truncated,
}

/// Rewrites `frame` (parsed into `pkt`) for its next hop `dmac` from `smac` on an interface of
/// MTU `mtu`, or refuses it unchanged.
pub fn forward_rewrite(
    frame: &mut [u8],
    pkt: &Packet,
    dmac: [u8; 6],
    smac: [u8; 6],
    mtu: u32,
) -> Result<(), Unforwardable> {
    if pkt.vlan {
        return Err(Unforwardable::Vlan);
    }
    let off = pkt.l3_off;
    let header_len = if pkt.is_v6 { 40 } else { 20 };
    if frame.len() < off + header_len {
        return Err(Unforwardable::Truncated);
    }
    let ip = &mut frame[off..];
    let length = |at: usize| u32::from(u16::from_be_bytes([ip[at], ip[at + 1]]));
    let (ttl_at, ip_len) = if pkt.is_v6 {
        (7, length(4) + 40)
    } else {
        (8, length(2))
    };
    if ip[ttl_at] <= 1 {
        return Err(Unforwardable::TtlExpiring);
    }
    if ip_len > mtu {
        return Err(Unforwardable::TooBig { ip_len, mtu });
    }
    ip[ttl_at] -= 1;
    if !pkt.is_v6 {
        // The TTL is the high byte of its 16-bit word: the sum gains 0x0100, end-around carry.
        let mut sum = u32::from(u16::from_be_bytes([ip[10], ip[11]])) + 0x0100;
        sum = (sum + u32::from(sum >= 0xffff)) & 0xffff;
        ip[10..12].copy_from_slice(&(sum as u16).to_be_bytes());
    }
    frame[..6].copy_from_slice(&dmac);
    frame[6..12].copy_from_slice(&smac);
    Ok(())
}
