//! Hand-built packets for program fixtures, and the tables that run them. The plain builders
//! (`frame`, `ipv4`, `tcp`, ...) leave checksums zero: the programs do not check them. [`Packet`]
//! fills in the IPv4 header and TCP/UDP/ICMP/ICMPv6 checksums, so a packet a program rewrites can
//! be compared byte for byte with what it should become; [`verify_checksums`] recomputes them.

use std::net::IpAddr;

pub use portcullis_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_SCTP: u8 = 132;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;

/// The MACs every builder puts in a frame unless told otherwise.
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Ethernet header; two VLAN tags are an 802.1ad outer and an 802.1Q inner tag.
pub fn eth(ethertype: u16, vlans: &[u16]) -> Vec<u8> {
    let mut p = [DEFAULT_DST_MAC, DEFAULT_SRC_MAC].concat();
    for (i, vid) in vlans.iter().enumerate() {
        let tpid = if i == 0 && vlans.len() == 2 {
            ETHERTYPE_QINQ
        } else {
            ETHERTYPE_VLAN
        };
        p.extend_from_slice(&tpid.to_be_bytes());
        p.extend_from_slice(&vid.to_be_bytes());
    }
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

pub fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// IPv4 header + payload. `frag` is the flags/fragment-offset field.
pub fn ipv4(src: &str, dst: &str, proto: u8, options: &[u8], frag: u16, payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&v4(src));
    h.extend_from_slice(&v4(dst));
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

/// IPv6 header; `next` is the first next-header value, `rest` the extension headers + L4.
pub fn ipv6(src: &str, dst: &str, next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&v6(src));
    h.extend_from_slice(&v6(dst));
    h.extend_from_slice(rest);
    h
}

/// An 8-byte options extension header (hop-by-hop or destination options) with padding.
pub fn ext_opts(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// IPv6 fragment header.
pub fn ext_frag(next: u8, offset_units: u16, more: bool) -> Vec<u8> {
    let v = (offset_units << 3) | more as u16;
    let mut h = vec![next, 0];
    h.extend_from_slice(&v.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 7]);
    h
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 8, 0, 0]);
    h
}

pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0; 8]);
    h
}

/// ICMP/ICMPv6 header with the identifier field (echo) and `rest` after it.
pub fn icmp(kind: u8, id: u16, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![kind, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(rest);
    h
}

/// ICMP error (destination unreachable, time exceeded, ...) quoting `original`, an IP packet.
pub fn icmp_error(kind: u8, code: u8, original: &[u8]) -> Vec<u8> {
    [&[kind, code, 0, 0, 0, 0, 0, 0], original].concat()
}

pub fn frame_v4(vlans: &[u16], ip: Vec<u8>) -> Vec<u8> {
    let mut p = eth(ETHERTYPE_IPV4, vlans);
    p.extend(ip);
    p
}

pub fn frame_v6(ip: Vec<u8>) -> Vec<u8> {
    let mut p = eth(ETHERTYPE_IPV6, &[]);
    p.extend(ip);
    p
}

/// A frame from `src` to `dst` (IPv4 or IPv6 by the addresses) carrying `l4` as protocol `proto`.
pub fn frame(src: &str, dst: &str, proto: u8, l4: Vec<u8>) -> Vec<u8> {
    if src.contains(':') {
        frame_v6(ipv6(src, dst, proto, &l4))
    } else {
        frame_v4(&[], ipv4(src, dst, proto, &[], 0, &l4))
    }
}

/// A frame with correct checksums: Ethernet (VLAN tags optional), IPv4 (options optional) or
/// IPv6 (extension headers optional) by the addresses, and an L4 header. SCTP's CRC32c is left
/// zero, and a non-first fragment carries no L4 header to check.
#[derive(Clone, Debug)]
pub struct Packet {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlans: Vec<u16>,
    src: String,
    dst: String,
    /// TTL or hop limit.
    ttl: u8,
    ip_id: u16,
    ipv4_options: Vec<u8>,
    /// IPv6 options headers (hop-by-hop, destination options) in order, before any fragment
    /// header.
    ipv6_options: Vec<u8>,
    /// Offset in 8-byte units and the more-fragments flag.
    fragment: Option<(u16, bool)>,
    proto: u8,
    l4: Vec<u8>,
}

impl Packet {
    pub fn new(src: &str, dst: &str, proto: u8, l4: Vec<u8>) -> Packet {
        Packet {
            dst_mac: DEFAULT_DST_MAC,
            src_mac: DEFAULT_SRC_MAC,
            vlans: Vec::new(),
            src: src.into(),
            dst: dst.into(),
            ttl: 64,
            ip_id: 1,
            ipv4_options: Vec::new(),
            ipv6_options: Vec::new(),
            fragment: None,
            proto,
            l4,
        }
    }

    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Packet {
        Packet::new(src, dst, IPPROTO_TCP, tcp(sport, dport, flags))
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
        Packet::new(src, dst, IPPROTO_UDP, udp(sport, dport))
    }

    pub fn sctp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
        Packet::new(src, dst, IPPROTO_SCTP, sctp(sport, dport))
    }

    /// ICMP or ICMPv6 by the addresses; `l4` from [`icmp`] or [`icmp_error`].
    pub fn icmp(src: &str, dst: &str, l4: Vec<u8>) -> Packet {
        let proto = if src.contains(':') {
            IPPROTO_ICMPV6
        } else {
            IPPROTO_ICMP
        };
        Packet::new(src, dst, proto, l4)
    }

    pub fn vlans(mut self, vlans: &[u16]) -> Packet {
        self.vlans = vlans.to_vec();
        self
    }

    /// TTL (IPv4) or hop limit (IPv6).
    pub fn ttl(mut self, ttl: u8) -> Packet {
        self.ttl = ttl;
        self
    }

    pub fn ip_id(mut self, id: u16) -> Packet {
        self.ip_id = id;
        self
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Packet {
        self.ipv4_options = options.to_vec();
        self
    }

    /// IPv6 options headers, each [`IPPROTO_HOPOPTS`] or [`IPPROTO_DSTOPTS`], 8 bytes of padding.
    pub fn ipv6_options(mut self, headers: &[u8]) -> Packet {
        self.ipv6_options = headers.to_vec();
        self
    }

    /// A fragment at `offset_units` × 8 bytes: the IPv4 flags/offset field, or an IPv6 fragment
    /// header after the options headers.
    pub fn fragment(mut self, offset_units: u16, more: bool) -> Packet {
        self.fragment = Some((offset_units, more));
        self
    }

    /// Cuts the L4 part to `len` bytes (a checksum field no longer inside is not filled in).
    pub fn truncate_l4(mut self, len: usize) -> Packet {
        self.l4.truncate(len);
        self
    }

    /// The packet as a router sends it on: to `next_hop` from `egress`, one hop less to live.
    pub fn routed(mut self, next_hop: [u8; 6], egress: [u8; 6]) -> Packet {
        (self.dst_mac, self.src_mac, self.ttl) = (next_hop, egress, self.ttl - 1);
        self
    }

    fn is_v6(&self) -> bool {
        self.src.contains(':')
    }

    /// The IP packet (for quoting in an ICMP error).
    pub fn ip(&self) -> Vec<u8> {
        let (src, dst) = (self.src.as_str(), self.dst.as_str());
        let mut l4 = self.l4.clone();
        if !matches!(self.fragment, Some((offset, _)) if offset > 0) {
            fill_l4_checksum(&octets(src), &octets(dst), self.proto, &mut l4);
        }
        if self.is_v6() {
            // Each header names the one after it: options headers, fragment, L4.
            let mut chain = self.ipv6_options.clone();
            chain.extend(self.fragment.map(|_| IPPROTO_FRAGMENT));
            chain.push(self.proto);
            let mut rest = Vec::new();
            for (i, kind) in chain[..chain.len() - 1].iter().enumerate() {
                rest.extend(match (*kind, self.fragment) {
                    (IPPROTO_FRAGMENT, Some((offset, more))) => {
                        ext_frag(chain[i + 1], offset, more)
                    }
                    _ => ext_opts(chain[i + 1]),
                });
            }
            rest.extend(l4);
            let mut ip = ipv6(src, dst, chain[0], &rest);
            ip[7] = self.ttl;
            ip
        } else {
            let frag = self
                .fragment
                .map_or(0, |(offset, more)| ((more as u16) << 13) | offset);
            let mut ip = ipv4(src, dst, self.proto, &self.ipv4_options, frag, &l4);
            ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
            ip[8] = self.ttl;
            let checksum = checksum_with_zero_field(&ip[..20 + self.ipv4_options.len()], 10, 0);
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            ip
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let ethertype = if self.is_v6() {
            ETHERTYPE_IPV6
        } else {
            ETHERTYPE_IPV4
        };
        let mut p = eth(ethertype, &self.vlans);
        p[..6].copy_from_slice(&self.dst_mac);
        p[6..12].copy_from_slice(&self.src_mac);
        p.extend(self.ip());
        p
    }
}

impl From<Packet> for Vec<u8> {
    fn from(p: Packet) -> Vec<u8> {
        p.frame()
    }
}

/// Sum of `bytes` as big-endian 16-bit words (an odd last byte padded with zero), unfolded.
fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

/// The Internet checksum (RFC 1071) of `bytes` plus `extra` (a pseudo-header's sum), with the
/// 16-bit field at `at` counted as zero: the value that field should hold.
fn checksum_with_zero_field(bytes: &[u8], at: usize, extra: u32) -> u16 {
    let stored = u16::from_be_bytes([bytes[at], bytes[at + 1]]) as u32;
    let mut sum = sum16(bytes) - stored + extra;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Where the L4 checksum of `proto` sits and whether it covers the pseudo-header.
fn l4_checksum_field(proto: u8) -> Option<(usize, bool)> {
    match proto {
        IPPROTO_TCP => Some((16, true)),
        IPPROTO_UDP => Some((6, true)),
        IPPROTO_ICMP => Some((2, false)),
        IPPROTO_ICMPV6 => Some((2, true)),
        _ => None,
    }
}

/// The offset and the value of the checksum `l4` should carry between `src` and `dst`; `None`
/// for a protocol without one here or a header too short to hold it.
fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> Option<(usize, u16)> {
    let (at, pseudo) = l4_checksum_field(proto)?;
    if l4.len() < at + 2 {
        return None;
    }
    let pseudo_sum = if pseudo {
        sum16(src) + sum16(dst) + proto as u32 + sum16(&(l4.len() as u32).to_be_bytes())
    } else {
        0
    };
    let checksum = checksum_with_zero_field(l4, at, pseudo_sum);
    // A computed 0 goes out as 0xffff in UDP, where 0 means "no checksum".
    let checksum = if proto == IPPROTO_UDP && checksum == 0 {
        0xffff
    } else {
        checksum
    };
    Some((at, checksum))
}

fn fill_l4_checksum(src: &[u8], dst: &[u8], proto: u8, l4: &mut [u8]) {
    if let Some((at, checksum)) = l4_checksum(src, dst, proto, l4) {
        l4[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
    }
}

fn octets(addr: &str) -> Vec<u8> {
    match addr.parse().unwrap() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn be16(bytes: &[u8], at: usize) -> Result<u16, String> {
    match bytes.get(at..at + 2) {
        Some(w) => Ok(u16::from_be_bytes([w[0], w[1]])),
        None => Err(format!("truncated: no bytes {at}..{}", at + 2)),
    }
}

/// Recomputes the IPv4 header checksum and the TCP/UDP/ICMP/ICMPv6 checksum of an Ethernet
/// frame and says which stored one is wrong. Not checked: L4 checksums of fragments (they span
/// the whole datagram), SCTP's CRC32c, and anything that is not IP.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let mut l3 = 14;
    let mut ethertype = be16(frame, 12)?;
    while ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        ethertype = be16(frame, l3 + 2)?;
        l3 += 4;
    }
    match ethertype {
        ETHERTYPE_IPV4 => verify_ipv4(&frame[l3..]),
        ETHERTYPE_IPV6 => verify_ipv6(&frame[l3..]),
        _ => Ok(()),
    }
}

fn verify_ipv4(ip: &[u8]) -> Result<(), String> {
    let header_len = (ip[0] & 0x0f) as usize * 4;
    let header = ip.get(..header_len).ok_or("truncated IPv4 header")?;
    compare_checksum(
        "IPv4 header",
        be16(header, 10)?,
        checksum_with_zero_field(header, 10, 0),
    )?;
    if be16(ip, 6)? & 0x3fff != 0 {
        return Ok(());
    }
    let total = (be16(ip, 2)? as usize).min(ip.len());
    verify_l4(&ip[12..16], &ip[16..20], ip[9], &ip[header_len..total])
}

fn verify_ipv6(ip: &[u8]) -> Result<(), String> {
    let end = (40 + be16(ip, 4)? as usize).min(ip.len());
    let (mut next, mut at) = (ip[6], 40);
    while matches!(next, IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING) && at + 2 <= end {
        next = ip[at];
        at += (ip[at + 1] as usize + 1) * 8;
    }
    if next == IPPROTO_FRAGMENT || at > end {
        return Ok(());
    }
    verify_l4(&ip[8..24], &ip[24..40], next, &ip[at..end])
}

fn verify_l4(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> Result<(), String> {
    let Some((at, want)) = l4_checksum(src, dst, proto, l4) else {
        return Ok(());
    };
    let stored = be16(l4, at)?;
    // IPv4 UDP may go without a checksum.
    if proto == IPPROTO_UDP && src.len() == 4 && stored == 0 {
        return Ok(());
    }
    compare_checksum(&format!("protocol {proto}"), stored, want)
}

fn compare_checksum(what: &str, stored: u16, want: u16) -> Result<(), String> {
    if stored == want {
        Ok(())
    } else {
        Err(format!(
            "{what} checksum {stored:#06x}, should be {want:#06x}"
        ))
    }
}

/// What a fixture expects of the packet a program leaves behind (`data_out` of the test run).
#[derive(Clone, Debug)]
pub enum Output {
    /// Not looked at: the program dropped it.
    Ignored,
    /// Byte for byte the input.
    Unchanged,
    /// Byte for byte this frame, whose checksums are right.
    Exactly(Vec<u8>),
}

/// One fixture: a description saying what it checks, the packet, the program it goes through
/// (`via`: a leg, a hook), the action the program must return and what must become of the packet.
#[derive(Clone, Debug)]
pub struct Row<Via> {
    pub desc: &'static str,
    pub via: Via,
    pub input: Vec<u8>,
    pub action: i64,
    pub output: Output,
}

impl<Via> Row<Via> {
    /// Compares one run of the row's program (its action and output packet) with the row.
    pub fn check(&self, action: i64, output: &[u8]) -> Result<(), String> {
        if action != self.action {
            return Err(format!("action {action}, expected {}", self.action));
        }
        match &self.output {
            Output::Ignored => Ok(()),
            Output::Unchanged => same_bytes(output, &self.input),
            Output::Exactly(want) => {
                same_bytes(output, want)?;
                verify_checksums(output)
            }
        }
    }
}

fn same_bytes(got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    let shown = |p: &[u8]| p[at..p.len().min(at + 8)].to_vec();
    Err(format!(
        "output packet differs from byte {at}: {:02x?}, expected {:02x?} ({} bytes, expected {})",
        shown(got),
        shown(want),
        got.len(),
        want.len()
    ))
}

/// Runs every row in order through `run` (which returns the program's action and output
/// packet), prints a line per row and fails naming every row that failed.
pub fn check_rows<Via>(rows: &[Row<Via>], mut run: impl FnMut(&Row<Via>) -> (i64, Vec<u8>)) {
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let (action, output) = run(row);
            let failure = row.check(action, &output).err();
            eprintln!(
                "{} {}",
                if failure.is_some() { "FAIL" } else { "ok  " },
                row.desc
            );
            failure.map(|e| format!("{}: {e}", row.desc))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "failed fixtures:\n{}",
        failures.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example header of the IPv4 header checksum article (checksum 0xb861).
    #[test]
    fn ipv4_header_checksum_matches_a_known_header() {
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum_with_zero_field(&header, 10, 0), 0xb861);
    }

    #[test]
    fn built_packets_carry_checksums_that_verify() {
        let packets = [
            Packet::tcp("10.0.0.1", 1000, "10.0.0.2", 80, TCP_SYN).ipv4_options(&[1, 1, 1, 0]),
            Packet::udp("10.0.0.1", 1000, "10.0.0.2", 53).vlans(&[7]),
            Packet::icmp("10.0.0.1", "10.0.0.2", icmp(8, 9, &[1, 2, 3])),
            Packet::tcp("fd00::1", 1000, "fd00::2", 80, TCP_ACK)
                .ipv6_options(&[IPPROTO_HOPOPTS, IPPROTO_DSTOPTS]),
            Packet::icmp("fd00::1", "fd00::2", icmp(128, 9, &[])),
            Packet::udp("fd00::1", 1000, "fd00::2", 53),
        ];
        for p in packets {
            let frame = p.frame();
            assert_eq!(verify_checksums(&frame), Ok(()), "{p:?}");
            for at in [24, frame.len() - 1] {
                let mut broken = frame.clone();
                broken[at] ^= 0x40;
                assert!(
                    verify_checksums(&broken).is_err(),
                    "{p:?}: byte {at} flipped"
                );
            }
        }
    }

    #[test]
    fn routed_rewrites_macs_and_ttl_and_the_header_checksum() {
        let p = Packet::tcp("10.0.0.1", 1000, "10.0.0.2", 80, TCP_SYN);
        let (before, after) = (p.frame(), p.routed([9; 6], [8; 6]).frame());
        assert_eq!(after[..12], [[9; 6], [8; 6]].concat());
        assert_eq!((before[22], after[22]), (64, 63));
        assert_eq!(before[34..], after[34..], "L4 unchanged");
        assert_eq!(verify_checksums(&after), Ok(()));
    }
}
