//! SNAT on real traffic: pod ns → gateway ns (cluster leg gc, external leg ge, the kernel
//! forwarding) → external ns. The egress addresses sit in the external link's subnet and no
//! interface has them, so the external host reaches them only through the program's ARP and
//! neighbour answers. TCP and UDP servers in the external namespace report the peer address they
//! see: the egress address, never the pod's. Both forwarding modes.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use portcullis_gateway::{ForwardMode, Gateway, GatewayOptions, SnatConfig};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::*;

mod xdp_pass;
use xdp_pass::attach_pass;

const POD4: &str = "10.96.0.1";
const POD6: &str = "fd00:96::1";
const SERVER4: &str = "192.0.2.50";
const SERVER6: &str = "2001:db8:96::50";
const EGRESS4: &str = "192.0.2.100";
const EGRESS6: &str = "2001:db8:96::100";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP server answering each connection with the peer address it sees, on its own thread.
fn tcp_server(ext: &NetNs, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let listener = ext.run(|| TcpListener::bind(addr).expect("bind"));
    std::thread::spawn(move || {
        if let Ok((mut conn, peer)) = listener.accept() {
            let _ = conn.write_all(peer.ip().to_string().as_bytes());
        }
    })
}

/// A UDP server answering one datagram with the peer address it sees.
fn udp_server(ext: &NetNs, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let socket = ext.run(|| UdpSocket::bind(addr).expect("bind"));
    std::thread::spawn(move || {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(peer.ip().to_string().as_bytes(), peer);
        }
    })
}

/// What the TCP server at `addr` says the pod's address is.
fn tcp_peer_seen(pod: &NetNs, addr: SocketAddr) -> String {
    pod.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut seen = String::new();
        s.read_to_string(&mut seen).expect("read");
        seen
    })
}

/// What the UDP server at `addr` says the pod's address is.
fn udp_peer_seen(pod: &NetNs, addr: SocketAddr) -> String {
    pod.run(|| {
        let any: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(b"who am I", addr).expect("send");
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).expect("answer");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn external_servers_see_the_egress_address() {
    external_servers_see_the_egress_address_with(ForwardMode::Kernel);
}

/// The same with forwarding in XDP: translated packets and replies are redirected in XDP.
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn external_servers_see_the_egress_address_with_xdp_forwarding() {
    external_servers_see_the_egress_address_with(ForwardMode::Xdp);
}

fn external_servers_see_the_egress_address_with(forward: ForwardMode) {
    require_root();
    let EdgeNs { pod, gw: gwns, ext } = EdgeNs::new("s");
    pod.run(|| {
        sh(
            "ip addr add 10.96.0.1/24 dev p0 && ip -6 addr add fd00:96::1/64 dev p0 nodad && \
            ip link set p0 up && ip route add default via 10.96.0.254 && \
            ip -6 route add default via fd00:96::254",
        )
    });
    ext.run(|| {
        sh("ip addr add 192.0.2.50/24 dev x0 && ip -6 addr add 2001:db8:96::50/64 dev x0 nodad && \
            ip link set x0 up")
    });
    // The ARP/ND answers leave by XDP_TX: a veth peer receives XDP-sent frames only while its
    // NAPI runs (an XDP program on it). A real NIC needs nothing. The hosts checksum in
    // software, as the lab's do (`lab/src/wire/offload.rs`): a locally sent packet's checksum is
    // only completed by the device, and the program can only update a complete one.
    pod.run(|| sh("ethtool -K p0 tx off >/dev/null"));
    ext.run(|| sh("ethtool -K x0 tx off >/dev/null"));
    let _napi_ext = ext.run(|| attach_pass("x0"));
    let _napi_pod = pod.run(|| attach_pass("p0"));
    gwns.run(|| {
        sh(
            "ip addr add 10.96.0.254/24 dev gc && ip -6 addr add fd00:96::254/64 dev gc nodad && \
            ip addr add 192.0.2.1/24 dev ge && ip -6 addr add 2001:db8:96::1/64 dev ge nodad && \
            ip link set gc up && ip link set ge up && \
            sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
                net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.gc.rp_filter=0",
        )
    });
    let mut gw = gwns.run(|| {
        Gateway::load(GatewayOptions {
            cluster_iface: "gc".into(),
            external_iface: "ge".into(),
            forward,
            ..Default::default()
        })
        .expect("load")
    });
    gw.apply(&GatewayTables::default()).expect("apply");
    gw.set_snat(&SnatConfig {
        classes: vec![(ip(POD4), 7), (ip(POD6), 7)],
        entries: vec![
            (7, "0.0.0.0/0".parse().unwrap(), Some(ip(EGRESS4))),
            (7, "::/0".parse().unwrap(), Some(ip(EGRESS6))),
        ],
        egress_ips: vec![ip(EGRESS4), ip(EGRESS6)],
        ..Default::default()
    })
    .expect("set_snat");

    for (server, egress) in [(SERVER4, EGRESS4), (SERVER6, EGRESS6)] {
        let tcp = SocketAddr::new(ip(server), 8080);
        let accepting = tcp_server(&ext, tcp);
        assert_eq!(tcp_peer_seen(&pod, tcp), egress, "TCP to {server}");
        accepting.join().unwrap();
        let udp = SocketAddr::new(ip(server), 5353);
        let answering = udp_server(&ext, udp);
        assert_eq!(udp_peer_seen(&pod, udp), egress, "UDP to {server}");
        answering.join().unwrap();
    }
    let status = gw.snat_status().expect("status");
    eprintln!("{status:#?}");
    let c = &status.counters;
    assert_eq!(c.new_translations, 4, "{c:?}");
    assert!(
        c.translated_outbound >= 4 && c.translated_inbound >= 4,
        "{c:?}"
    );
    assert!(c.arp_replies >= 1 && c.nd_replies >= 1, "{c:?}");
    assert_eq!(c.no_mapping + c.pool_exhausted + c.table_full, 0, "{c:?}");
    let forwarded = gw.status().expect("status").tables.counters.forward_xdp;
    eprintln!("forwarded in XDP: {forwarded}");
    if forward == ForwardMode::Xdp {
        assert!(
            forwarded >= 4,
            "translated packets forwarded in XDP: {forwarded}"
        );
    }
}
