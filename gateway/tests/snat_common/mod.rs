//! What the SNAT tests share: the gateway in a namespace with both legs, its policy and SNAT
//! configuration, and running packets through it with BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use portcullis_gateway::{Gateway, GatewayOptions, SnatConfig, TestProgram, XDP_PASS};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::*;

pub const CLUSTER: &str = "snat-c";
pub const EXTERNAL: &str = "snat-e";
pub const EXTERNAL_MAC: [u8; 6] = [0x02, 0xe1, 0, 0, 0, 0x07];

/// Class 1, selected by an egress policy allowing everything (its drops carry its group).
pub const POD_A: &str = "10.244.1.10";
/// Class 1, selected by no policy.
pub const POD_B: &str = "10.244.1.11";
pub const POD6: &str = "fd00::10";
pub const SERVER: &str = "192.0.2.50";
pub const EGRESS4: &str = "203.0.113.100";
pub const EGRESS6: &str = "2001:db8:ff::100";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// POD_A's egress group: everything allowed.
pub fn tables() -> GatewayTables {
    egress_allowed(&[POD_A], "prod/allow-all", &["0.0.0.0/0"])
}

pub fn config(ports: std::ops::RangeInclusive<u16>) -> SnatConfig {
    SnatConfig {
        classes: vec![(ip(POD_A), 1), (ip(POD_B), 1), (ip(POD6), 1)],
        entries: vec![
            (1, "0.0.0.0/0".parse().unwrap(), Some(ip(EGRESS4))),
            (1, "198.51.100.0/24".parse().unwrap(), None),
            (1, "::/0".parse().unwrap(), Some(ip(EGRESS6))),
        ],
        egress_ips: vec![ip(EGRESS4), ip(EGRESS6)],
        ports,
    }
}

/// The two legs (veth pairs) in `ns`.
pub fn setup_links(ns: &NetNs) {
    ns.run(|| {
        sh(&format!(
            "ip link add {CLUSTER} type veth peer name {CLUSTER}p && \
             ip link add {EXTERNAL} address {} type veth peer name {EXTERNAL}p && \
             for i in {CLUSTER} {CLUSTER}p {EXTERNAL} {EXTERNAL}p; do ip link set $i up; done",
            EXTERNAL_MAC.map(|b| format!("{b:02x}")).join(":")
        ))
    });
}

pub fn gateway(ns: &NetNs, ports: std::ops::RangeInclusive<u16>) -> Gateway {
    gateway_with(ns, ports, GatewayOptions::default())
}

/// [`gateway`] with `options` (its legs set here).
pub fn gateway_with(
    ns: &NetNs,
    ports: std::ops::RangeInclusive<u16>,
    options: GatewayOptions,
) -> Gateway {
    setup_links(ns);
    ns.run(|| {
        let mut gw = Gateway::load(legs(options)).expect("load");
        gw.apply(&tables()).expect("apply");
        gw.set_snat(&config(ports)).expect("set_snat");
        gw
    })
}

/// `options` with this namespace's legs.
pub fn legs(options: GatewayOptions) -> GatewayOptions {
    GatewayOptions {
        cluster_iface: CLUSTER.into(),
        external_iface: EXTERNAL.into(),
        ..options
    }
}

#[derive(Clone, Copy)]
pub enum Leg {
    Cluster,
    External,
}

/// One test run on `leg` in `ns`: the action and the packet.
pub fn run(ns: &NetNs, gw: &mut Gateway, leg: Leg, frame: &[u8]) -> (u32, Vec<u8>) {
    let name = match leg {
        Leg::Cluster => CLUSTER,
        Leg::External => EXTERNAL,
    };
    ns.run(|| {
        let out = (gw.test_run(TestProgram::Gateway, ifindex(name), frame, 1)).expect("test run");
        (out.action, out.packet)
    })
}

/// The L4 offset of an untagged frame without IP options / extension headers.
pub fn l4(frame: &[u8]) -> usize {
    if frame[12..14] == [0x86, 0xdd] {
        54
    } else {
        34
    }
}

pub fn be16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Sends `pkt` out of the cluster leg and expects it translated: `expected(port)` built from
/// scratch with the translated port the program chose (found at `port_at` in the L4 header).
/// Returns that port.
pub fn leaves_as(
    ns: &NetNs,
    gw: &mut Gateway,
    pkt: Packet,
    port_at: usize,
    expected: impl Fn(u16) -> Packet,
) -> u16 {
    let input = pkt.frame();
    let (action, out) = run(ns, gw, Leg::Cluster, &input);
    assert_eq!(action, XDP_PASS, "{pkt:?}");
    let port = be16(&out, l4(&out) + port_at);
    assert_eq!(out, expected(port).frame(), "{pkt:?} translated");
    assert_eq!(verify_checksums(&out), Ok(()));
    port
}

/// Sends `pkt` into the external leg and expects exactly `expected` passed on.
pub fn arrives_as(ns: &NetNs, gw: &mut Gateway, pkt: Packet, expected: Packet) {
    let (action, out) = run(ns, gw, Leg::External, &pkt.frame());
    assert_eq!(action, XDP_PASS, "{pkt:?}");
    assert_eq!(out, expected.frame(), "{pkt:?} translated back");
    assert_eq!(verify_checksums(&out), Ok(()));
}

pub fn untouched(ns: &NetNs, gw: &mut Gateway, leg: Leg, pkt: Packet) {
    let input = pkt.frame();
    let (action, out) = run(ns, gw, leg, &input);
    assert_eq!((action, out), (XDP_PASS, input), "{pkt:?} untouched");
}
