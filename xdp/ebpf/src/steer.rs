//! Which packets the AF_XDP engine may take: routed unicast IP with a TTL left, not addressed to
//! the gateway itself. The rest stays with the XDP pipeline and the kernel (local delivery,
//! multicast and broadcast, TTL expiring with its ICMP time exceeded, VLAN-tagged frames), as in
//! `--datapath xdp`. Under SNAT, packets of a pod with an SNAT class and packets to an egress
//! address stay in XDP too: translation happens there only.

use aya_ebpf::programs::XdpContext;
use portcullis_ebpf_common::parse::{bytes, Frame, Packet};

use crate::snat::{SNAT_CLASSES, SNAT_EGRESS_IPS};
use crate::HOST_ADDRS;

/// Whether the parsed `pkt` is for the engine (`snat`: `CONFIG_FLAG_SNAT` is set).
#[inline(always)]
pub fn routable(ctx: &XdpContext, pkt: &Packet, snat: bool) -> bool {
    if pkt.vlan {
        return false;
    }
    if snat
        && (SNAT_CLASSES.get_ptr(&pkt.src).is_some() || SNAT_EGRESS_IPS.get_ptr(&pkt.dst).is_some())
    {
        return false;
    }
    let frame = Frame::new(ctx.data(), ctx.data_end());
    // The destination MAC's group bit: multicast and broadcast frames.
    match bytes::<2>(&frame, 0) {
        Ok(mac) if mac[0] & 1 == 0 => {}
        _ => return false,
    }
    let ttl = if pkt.is_v6 {
        bytes::<8>(&frame, pkt.l3_off).map(|h| h[7])
    } else {
        bytes::<12>(&frame, pkt.l3_off).map(|h| h[8])
    };
    if !matches!(ttl, Ok(t) if t > 1) {
        return false;
    }
    HOST_ADDRS.get_ptr(&pkt.dst).is_none()
}
