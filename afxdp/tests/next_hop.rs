//! Next hops and the kernel path against a real kernel in throw-away namespaces: a route via a
//! router with a known neighbour gives its MAC, a neighbour change is followed after an epoch
//! bump (and within ~2 s without one), an unresolved neighbour or a local destination gives
//! None; a packet sent through the kernel path reaches the peer namespace, its neighbour
//! resolved meanwhile, with its source address unchanged.

use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_afxdp::kernel_path::KernelPath;
use portcullis_afxdp::next_hop::{mapped, Hop, NextHops};
use portcullis_testkit::{ifindex, ipv4, require_root, sh, NetNs};

const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x61, 0x02];
const NEW_ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x61, 0x03];
const OUT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x61, 0x01];

fn v4(s: &str) -> [u8; 16] {
    mapped(s.parse::<Ipv4Addr>().unwrap())
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

#[test]
#[ignore = "needs root"]
fn next_hops_follow_the_kernel_tables() {
    require_root();
    let ns = NetNs::new("pcx-nh");
    ns.run(|| {
        sh("ip link add r0 type veth peer name r1 && ip link add s0 type veth peer name s1");
        sh("ip link set s0 address 02:00:00:00:61:01 && ip link set s0 mtu 1480");
        for l in ["r0", "r1", "s0", "s1"] {
            sh(&format!("ip link set {l} up"));
        }
        sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
        sh("ip addr add 10.60.0.1/24 dev r0 && ip addr add 10.61.0.1/24 dev s0");
        sh("ip -6 addr add fd00:60::1/64 dev r0 nodad && ip -6 addr add fd00:61::1/64 dev s0 nodad");
        sh("ip neigh add 10.61.0.2 lladdr 02:00:00:00:61:02 dev s0 nud permanent");
        sh("ip -6 neigh add fd00:61::2 lladdr 02:00:00:00:61:02 dev s0 nud permanent");
        sh("ip route add 10.62.0.0/16 via 10.61.0.2");
        sh("ip route add 10.63.0.0/16 via 10.61.0.2 mtu 1400");
        sh("ip route add 10.64.0.0/16 via 10.61.0.3");
        sh("ip -6 route add fd00:62::/48 via fd00:61::2");

        let epoch = Arc::new(AtomicU32::new(0));
        let mut hops = NextHops::new(epoch.clone()).unwrap();
        let iif = ifindex("r0");
        let src = v4("10.60.0.9");
        let via_router = Hop {
            ifindex: ifindex("s0"),
            dmac: ROUTER_MAC,
            smac: OUT_MAC,
            mtu: 1480,
        };
        assert_eq!(hops.resolve(&src, &v4("10.62.1.1"), iif, 0), Some(via_router));
        let mtu_1400 = Hop { mtu: 1400, ..via_router };
        assert_eq!(hops.resolve(&src, &v4("10.63.1.1"), iif, 0), Some(mtu_1400), "route MTU");
        let src6 = v6("fd00:60::9");
        assert_eq!(hops.resolve(&src6, &v6("fd00:62::1"), iif, 0), Some(via_router));
        assert_eq!(hops.resolve(&src, &v4("10.61.0.2"), iif, 0), Some(via_router), "on-link");

        assert_eq!(hops.resolve(&src, &v4("10.64.1.1"), iif, 0), None, "neighbour unresolved");
        assert_eq!(hops.resolve(&src, &v4("10.61.0.1"), iif, 0), None, "local");
        assert_eq!(hops.resolve(&src, &v4("10.99.0.1"), iif, 0), None, "no route");

        sh("ip neigh replace 10.61.0.2 lladdr 02:00:00:00:61:03 dev s0 nud permanent");
        let dst = v4("10.62.1.1");
        assert_eq!(hops.resolve(&src, &dst, iif, 1_000_000).unwrap().dmac, ROUTER_MAC, "cached");
        let later = 3_000_000_000;
        assert_eq!(hops.resolve(&src, &dst, iif, later).unwrap().dmac, NEW_ROUTER_MAC, "~2 s at most");
        sh("ip neigh replace 10.61.0.2 lladdr 02:00:00:00:61:02 dev s0 nud permanent");
        epoch.fetch_add(1, Ordering::Release);
        assert_eq!(hops.resolve(&src, &dst, iif, later + 1).unwrap().dmac, ROUTER_MAC, "epoch bump");
    });
}

#[test]
#[ignore = "needs root"]
fn the_kernel_path_resolves_the_neighbour_and_keeps_the_source() {
    require_root();
    let (gw, peer) = (NetNs::new("pcx-kp"), NetNs::new("pcx-kpeer"));
    gw.run(|| {
        sh(&format!(
            "ip link add k0 type veth peer name k1 netns {}",
            peer.name
        ));
        sh("ip link set k0 up && ip addr add 10.70.0.1/24 dev k0");
    });
    let sink = peer.run(|| {
        sh("ip link set k1 up && ip addr add 10.70.0.2/24 dev k1");
        let sock = UdpSocket::bind("10.70.0.2:7000").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        sock
    });
    gw.run(|| {
        assert!(
            !sh("ip neigh show 10.70.0.2").contains("lladdr"),
            "not resolved yet"
        );
        let payload = b"pcx-kernel-path";
        let mut udp = 5555u16.to_be_bytes().to_vec();
        udp.extend_from_slice(&7000u16.to_be_bytes());
        udp.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let packet = ipv4("10.55.0.9", "10.70.0.2", 17, &[], 0, &udp);
        KernelPath::new().unwrap().send(&packet).unwrap();
    });
    let mut buf = [0u8; 64];
    let (n, from) = sink.recv_from(&mut buf).expect("the packet arrives");
    assert_eq!(&buf[..n], b"pcx-kernel-path");
    assert_eq!(from, "10.55.0.9:5555".parse().unwrap(), "source unchanged");
}
