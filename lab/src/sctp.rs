//! SCTP packets built by hand. This kernel has no SCTP sockets (`CONFIG_IP_SCTP` unset), so the lab
//! sends an INIT through a raw socket (IPPROTO_SCTP) and the destination's raw socket answers with
//! an INIT ACK. Both carry a correct CRC32c, a verification tag of 0 on the INIT (RFC 9260 §8.5.1)
//! and the INIT's initiate tag as the INIT ACK's verification tag, so conntrack accepts them as one
//! association.

pub const IPPROTO_SCTP: i32 = 132;
pub const CHUNK_INIT: u8 = 1;
pub const CHUNK_INIT_ACK: u8 = 2;

/// A parsed SCTP common header plus the first chunk's type and, for INIT/INIT ACK, its initiate tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src_port: u16,
    pub dst_port: u16,
    pub vtag: u32,
    pub chunk_type: u8,
    pub initiate_tag: u32,
}

fn crc32c_table() -> &'static [u32; 256] {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    })
}

/// CRC32c (Castagnoli), as SCTP uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    let t = crc32c_table();
    let mut c = !0u32;
    for &b in data {
        c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn finish(mut pkt: Vec<u8>) -> Vec<u8> {
    pkt[8..12].fill(0);
    let sum = crc32c(&pkt);
    // The CRC32c goes on the wire in little-endian byte order (RFC 9260 appendix A).
    pkt[8..12].copy_from_slice(&sum.to_le_bytes());
    pkt
}

fn init_like(
    src_port: u16,
    dst_port: u16,
    vtag: u32,
    chunk_type: u8,
    initiate_tag: u32,
    params: &[u8],
) -> Vec<u8> {
    let chunk_len = 20 + params.len();
    let mut p = Vec::with_capacity(12 + chunk_len);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]); // checksum, filled in by finish
    p.push(chunk_type);
    p.push(0); // flags
    p.extend_from_slice(&(chunk_len as u16).to_be_bytes());
    p.extend_from_slice(&initiate_tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&initiate_tag.wrapping_mul(7).to_be_bytes()); // initial TSN
    p.extend_from_slice(params);
    finish(p)
}

/// An INIT from `src_port` to `dst_port` carrying `tag` as its initiate tag.
pub fn init(src_port: u16, dst_port: u16, tag: u32) -> Vec<u8> {
    init_like(src_port, dst_port, 0, CHUNK_INIT, tag, &[])
}

/// The INIT ACK answering `req` (ports swapped, verification tag = the INIT's initiate tag), with a
/// small State Cookie parameter as a real INIT ACK must carry.
pub fn init_ack(req: &Packet, own_tag: u32) -> Vec<u8> {
    let mut cookie = Vec::with_capacity(12);
    cookie.extend_from_slice(&7u16.to_be_bytes()); // State Cookie
    cookie.extend_from_slice(&12u16.to_be_bytes());
    cookie.extend_from_slice(&req.initiate_tag.to_be_bytes());
    cookie.extend_from_slice(&own_tag.to_be_bytes());
    init_like(
        req.dst_port,
        req.src_port,
        req.initiate_tag,
        CHUNK_INIT_ACK,
        own_tag,
        &cookie,
    )
}

/// Parses an SCTP packet (no IP header). Rejects bad checksums and short packets.
pub fn parse(buf: &[u8]) -> Option<Packet> {
    if buf.len() < 16 {
        return None;
    }
    let sum = u32::from_le_bytes(buf[8..12].try_into().ok()?);
    let mut copy = buf.to_vec();
    copy[8..12].fill(0);
    if crc32c(&copy) != sum {
        return None;
    }
    let chunk_type = buf[12];
    let initiate_tag = if matches!(chunk_type, CHUNK_INIT | CHUNK_INIT_ACK) && buf.len() >= 20 {
        u32::from_be_bytes(buf[16..20].try_into().ok()?)
    } else {
        0
    };
    Some(Packet {
        src_port: u16::from_be_bytes([buf[0], buf[1]]),
        dst_port: u16::from_be_bytes([buf[2], buf[3]]),
        vtag: u32::from_be_bytes(buf[4..8].try_into().ok()?),
        chunk_type,
        initiate_tag,
    })
}

/// Strips the IPv4 header that raw IPv4 sockets deliver, returning (destination address, payload).
pub fn strip_ipv4(buf: &[u8]) -> Option<(std::net::Ipv4Addr, &[u8])> {
    if buf.len() < 20 || buf[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    let dst = std::net::Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
    buf.get(ihl..).map(|p| (dst, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn init_and_ack_round_trip() {
        let i = init(40000, 80, 0xdead_beef);
        let p = parse(&i).unwrap();
        assert_eq!(p.src_port, 40000);
        assert_eq!(p.dst_port, 80);
        assert_eq!(p.vtag, 0);
        assert_eq!(p.chunk_type, CHUNK_INIT);
        assert_eq!(p.initiate_tag, 0xdead_beef);
        let a = init_ack(&p, 0x1234_5678);
        let q = parse(&a).unwrap();
        assert_eq!(
            (q.src_port, q.dst_port, q.vtag, q.chunk_type, q.initiate_tag),
            (80, 40000, 0xdead_beef, CHUNK_INIT_ACK, 0x1234_5678)
        );
        let mut bad = a.clone();
        bad[20] ^= 1;
        assert!(parse(&bad).is_none());
    }
}
