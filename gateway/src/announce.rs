//! Moving an egress address to this gateway on its segment: a gratuitous ARP (IPv4) or an
//! unsolicited Neighbor Advertisement (IPv6) out of the external leg, so that the hosts and
//! routers that cached another gateway's MAC for the address switch to this one at once rather
//! than when their entry goes stale. No interface has the address (the XDP program answers for
//! it), so the kernel would never announce it: the frames are built here and sent through an
//! `AF_PACKET` socket. Here rather than in `portcullis-netlink` (rtnetlink messages): these are
//! the frames the program's own answers (`xdp/ebpf/src/neighbour.rs`) are made of.
//!
//! One frame per call: a lost announcement is not retried here; the HA daemon repeats it (as
//! keepalived does) for a moment after it takes an address over.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use portcullis_common::PROTO_ICMPV6;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
/// The shortest Ethernet frame without its FCS: shorter frames are padded (a NIC would).
const ETH_MIN: usize = 60;
const ND_ADVERT: u8 = 136;
/// Neighbor Advertisement flags: override (an unsolicited one carries neither router nor
/// solicited).
const ND_OVERRIDE: u8 = 0x20;

/// Sends one announcement of `ip` with `mac` out of interface `ifindex` (of the calling thread's
/// network namespace): for IPv4 an ARP request from `mac` with sender and target `ip`, to the
/// broadcast address; for IPv6 a Neighbor Advertisement to all nodes (`ff02::1`) from `ip`, with
/// the override flag and the target link-layer address option `mac`. Needs `CAP_NET_RAW`.
pub fn announce_egress_ip(ifindex: u32, mac: [u8; 6], ip: IpAddr) -> io::Result<()> {
    let ip = ip.to_canonical();
    let (ethertype, frame) = match ip {
        IpAddr::V4(a) => (ETH_P_ARP, gratuitous_arp(mac, a)),
        IpAddr::V6(a) => (ETH_P_IPV6, unsolicited_advert(mac, a)),
    };
    send(ifindex, ethertype, &frame)
}

/// The Ethernet header to `dst` from `src`.
fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_MIN + 32);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// ARP request (RFC 5227 announcement): htype 1, ptype IPv4, 6/4, op 1, sender = target = `ip`.
fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet([0xff; 6], mac, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f.resize(ETH_MIN, 0);
    f
}

/// Neighbor Advertisement from `ip` to `ff02::1`, hop limit 255, override, target `ip` with the
/// target link-layer address option.
fn unsolicited_advert(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![ND_ADVERT, 0, 0, 0, ND_OVERRIDE, 0, 0, 0];
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let sum = icmpv6_checksum(&ip, &all_nodes, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet([0x33, 0x33, 0, 0, 0, 1], mac, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[PROTO_ICMPV6, 255]);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum of `msg` (its checksum field 0) from `src` to `dst`.
fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + msg.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
    pseudo.extend_from_slice(msg);
    let mut sum: u32 = (pseudo.chunks(2))
        .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `frame` (Ethernet header included) out of `ifindex`.
fn send(ifindex: u32, ethertype: u16, frame: &[u8]) -> io::Result<()> {
    // Protocol 0: the socket receives nothing.
    // SAFETY: plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ethertype.to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: valid buffer and address of the given lengths.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    match sent {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize != frame.len() => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {n} of {} bytes", frame.len()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn the_gratuitous_arp_is_a_request_for_the_address_from_itself() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(f.len(), ETH_MIN);
        assert_eq!(
            (&f[..6], &f[6..12], &f[12..14]),
            (&[0xff; 6][..], &MAC[..], &[8, 6][..])
        );
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!((&f[22..28], &f[28..32]), (&MAC[..], &[192, 0, 2, 100][..]));
        assert_eq!(
            (&f[32..38], &f[38..42]),
            (&[0; 6][..], &[192, 0, 2, 100][..])
        );
    }

    #[test]
    fn the_advertisement_overrides_with_the_mac_and_a_valid_checksum() {
        let ip: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let f = unsolicited_advert(MAC, ip);
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!((f[20], f[21]), (PROTO_ICMPV6, 255), "ICMPv6, hop limit 255");
        assert_eq!(&f[22..38], &ip.octets());
        let icmp = &f[54..];
        assert_eq!((icmp.len(), icmp[0], icmp[4]), (32, ND_ADVERT, ND_OVERRIDE));
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[24..32], &[2, 1, 2, 0, 0, 0, 0, 0xb]);
        // A message with its checksum in place sums to zero.
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        assert_eq!(icmpv6_checksum(&ip, &all_nodes, icmp), 0);
    }
}
