//! Test frames built in user space: the generator's template, the raw-socket streams, the
//! micro-benchmark packets and the idle flows' handshakes and probes.

use std::net::Ipv4Addr;

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_HLEN: usize = 20;
/// ICMP timestamp request: judged by policy on every packet, never tracked as a flow.
const ICMP_TIMESTAMP: u8 = 13;

/// An Ethernet/IPv4/UDP frame of `len` bytes (no UDP checksum).
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    len: usize,
) -> Vec<u8> {
    let mut f = eth_ipv4(src_mac, dst_mac, src, dst, PROTO_UDP, len);
    let udp_len = (len - ETH_HLEN - IPV4_HLEN) as u16;
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(len, 0);
    f
}

/// An Ethernet/IPv4/TCP frame of `len` bytes with TCP `flags` (no options, sequence numbers 0,
/// no TCP checksum: the gateway does not verify it).
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    len: usize,
) -> Vec<u8> {
    let mut f = eth_ipv4(src_mac, dst_mac, src, dst, PROTO_TCP, len);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&[(TCP_HLEN as u8 / 4) << 4, flags]);
    f.extend_from_slice(&u16::MAX.to_be_bytes());
    f.extend_from_slice(&[0; 4]);
    f.resize(len, 0);
    f
}

/// An Ethernet/IPv4 ICMP timestamp request of `len` bytes.
pub fn icmp_timestamp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    len: usize,
) -> Vec<u8> {
    let mut f = eth_ipv4(src_mac, dst_mac, src, dst, PROTO_ICMP, len);
    let icmp_at = f.len();
    f.extend_from_slice(&[ICMP_TIMESTAMP, 0, 0, 0, 0, 1, 0, 1]);
    f.resize(len, 0);
    let sum = checksum(&f[icmp_at..]);
    f[icmp_at + 2..icmp_at + 4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The Ethernet header and the IPv4 header (with its checksum) of a `len`-byte frame.
fn eth_ipv4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    len: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - ETH_HLEN) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

/// The Internet checksum of `data` (even length).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_checksum_to_zero() {
        let (a, b) = (Ipv4Addr::new(10, 244, 0, 1), Ipv4Addr::new(198, 18, 0, 1));
        let udp = udp_frame([1; 6], [2; 6], a, b, 1024, 7, 64);
        assert_eq!(udp.len(), 64);
        assert_eq!(checksum(&udp[14..34]), 0);
        assert_eq!(u16::from_be_bytes([udp[38], udp[39]]), 30);
        let icmp = icmp_timestamp_frame([1; 6], [2; 6], a, b, 64);
        assert_eq!(
            (icmp.len(), icmp[23], icmp[34]),
            (64, PROTO_ICMP, ICMP_TIMESTAMP)
        );
        assert_eq!(checksum(&icmp[14..34]), 0);
        assert_eq!(checksum(&icmp[34..]), 0);
        let tcp = tcp_frame([1; 6], [2; 6], a, b, 1024, 443, 0x12, 64);
        assert_eq!(
            (tcp.len(), tcp[23], tcp[46], tcp[47]),
            (64, PROTO_TCP, 0x50, 0x12)
        );
        assert_eq!(u16::from_be_bytes([tcp[36], tcp[37]]), 443);
        assert_eq!(checksum(&tcp[14..34]), 0);
    }
}
