//! Hand-built packets for program fixtures.

// Checksums are not checked by the programs and are left zero.

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

pub fn eth(ethertype: u16, vlans: &[u16]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (i, vid) in vlans.iter().enumerate() {
        let tpid: u16 = if i == 0 && vlans.len() == 2 {
            0x88a8
        } else {
            0x8100
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

pub fn frame_v4(vlans: &[u16], ip: Vec<u8>) -> Vec<u8> {
    let mut p = eth(0x0800, vlans);
    p.extend(ip);
    p
}

pub fn frame_v6(ip: Vec<u8>) -> Vec<u8> {
    let mut p = eth(0x86dd, &[]);
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
