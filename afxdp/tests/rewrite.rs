//! The forwarding rewrite: exactly what a router makes of the frame (`testkit`'s `routed`: MACs,
//! TTL / hop limit - 1) with a checksum that still verifies, and the frames left to the kernel.

use portcullis_afxdp::pipeline::new_packet;
use portcullis_afxdp::rewrite::{forward_rewrite, Unforwardable};
use portcullis_ebpf_common::parse::{parse, Frame, Packet as Parsed, Stop};
use portcullis_testkit::{verify_checksums, Packet, TCP_ACK};
use proptest::prelude::*;

const NEXT_HOP: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const EGRESS: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];

fn parsed(frame: &[u8]) -> Parsed {
    let mut pkt = new_packet();
    let start = frame.as_ptr() as usize;
    let rc = parse(
        &Frame::new(start, start + frame.len()),
        &mut pkt,
        Stop::Malformed,
    );
    assert_eq!(rc, 0, "parses");
    pkt
}

fn rewritten(packet: &Packet, mtu: u32) -> (Vec<u8>, Result<(), Unforwardable>) {
    let mut frame = packet.frame();
    let pkt = parsed(&frame);
    let result = forward_rewrite(&mut frame, &pkt, NEXT_HOP, EGRESS, mtu);
    (frame, result)
}

proptest! {
    #[test]
    fn a_forwarded_frame_is_the_routed_one_with_valid_checksums(
        v6 in any::<bool>(),
        ttl in 2u8..=255,
        ip_id in any::<u16>(),
        sport in 1u16..,
        dport in 1u16..,
    ) {
        let (src, dst) = if v6 { ("2001:db8::1", "fd00::5") } else { ("192.0.2.1", "10.244.0.5") };
        let packet = Packet::tcp(src, sport, dst, dport, TCP_ACK).ttl(ttl).ip_id(ip_id);
        let (frame, result) = rewritten(&packet, 1500);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(&frame, &packet.routed(NEXT_HOP, EGRESS).frame());
        prop_assert_eq!(verify_checksums(&frame), Ok(()));
    }
}

#[test]
fn frames_the_kernel_must_handle_are_refused_untouched() {
    let cases = [
        (Packet::udp("192.0.2.1", 9, "10.244.0.5", 53).ttl(1), 1500),
        (Packet::udp("2001:db8::1", 9, "fd00::5", 53).ttl(1), 1500),
        (
            Packet::udp("192.0.2.1", 9, "10.244.0.5", 53).vlans(&[7]),
            1500,
        ),
        (Packet::udp("192.0.2.1", 9, "10.244.0.5", 53), 20),
        (Packet::udp("2001:db8::1", 9, "fd00::5", 53), 40),
    ];
    for (packet, mtu) in cases {
        let (frame, result) = rewritten(&packet, mtu);
        assert!(result.is_err(), "{packet:?} refused");
        assert_eq!(frame, packet.frame(), "{packet:?} untouched");
    }
}
