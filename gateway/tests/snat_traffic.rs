//! SNAT on real traffic: pod ns → gateway ns (cluster leg gc, external leg ge, the kernel
//! forwarding) → external ns. The egress addresses sit in the external link's subnet and no
//! interface has them, so the external host reaches them only through the program's ARP and
//! neighbour answers. TCP and UDP servers in the external namespace report the peer address they
//! see: the egress address, never the pod's. Both forwarding modes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use portcullis_gateway::ForwardMode;
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::*;

mod snat_edge;
mod xdp_pass;
use snat_edge::*;
use xdp_pass::attach_pass;

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
    setup_pod(&pod, &GATEWAY);
    setup_external(&ext);
    // The ARP/ND answers leave by XDP_TX: a veth peer receives XDP-sent frames only while its
    // NAPI runs (an XDP program on it). A real NIC needs nothing.
    let _napi_ext = ext.run(|| attach_pass("x0"));
    let _napi_pod = pod.run(|| attach_pass("p0"));
    setup_gateway(&gwns, &GATEWAY);
    let mut gw = load(&gwns, forward, &GatewayTables::default());
    gw.set_snat(&snat_config()).expect("set_snat");

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
