//! SNAT with the AF_XDP engine running (`--datapath afxdp|hybrid`): the engine knows nothing of
//! SNAT, so the XDP program keeps a classed pod's packets and the replies to egress addresses to
//! itself (`steer`) and translates them, while an unclassed pod's traffic still goes through the
//! engine. pod ns (two pods) → gateway ns → external ns; the server reports the peer it sees.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use portcullis_gateway::{DatapathMode, SnatConfig};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::*;

mod with_gateway;

const CLASSED: &str = "10.94.0.1";
const UNCLASSED: &str = "10.94.0.2";
const SERVER: &str = "192.0.2.50";
const EGRESS: &str = "192.0.2.100";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The hosts checksum in software and run GRO (their NAPI receives redirected frames), as in
/// the engine's own tests (`afxdp/tests/engine.rs`).
fn topology(tag: &str) -> EdgeNs {
    let t = EdgeNs::new(tag);
    t.pod.run(|| {
        sh(&format!(
            "ip addr add {CLASSED}/24 dev p0 && ip addr add {UNCLASSED}/24 dev p0 && \
             ip link set p0 up && ip route add default via 10.94.0.254 && \
             ethtool -K p0 tx off gro on >/dev/null"
        ))
    });
    t.ext.run(|| {
        sh(&format!(
            "ip addr add {SERVER}/24 dev x0 && ip link set x0 up && \
             ip route add 10.94.0.0/24 via 192.0.2.1 && ethtool -K x0 tx off gro on >/dev/null"
        ))
    });
    t.gw.run(|| {
        sh("ip addr add 10.94.0.254/24 dev gc && ip link set gc up && \
            ip addr add 192.0.2.1/24 dev ge && ip link set ge up && \
            sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0")
    });
    t
}

/// What the server says the peer of a connection from `source` is.
fn peer_seen(t: &EdgeNs, source: &str) -> String {
    let server = SocketAddr::new(ip(SERVER), 8080);
    let listener = t.ext.run(|| TcpListener::bind(server).expect("bind"));
    let accepting = std::thread::spawn(move || {
        if let Ok((mut conn, peer)) = listener.accept() {
            let _ = conn.write_all(peer.ip().to_string().as_bytes());
        }
    });
    let seen = t.pod.run(|| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(ip(source), 0).into())
            .expect("bind source");
        (socket.connect_timeout(&server.into(), Duration::from_secs(5))).expect("connect");
        let mut conn: TcpStream = socket.into();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut seen = String::new();
        conn.read_to_string(&mut seen).expect("read");
        seen
    });
    accepting.join().unwrap();
    seen
}

/// A connection from the classed pod to an echo server that first sends the peer it sees.
fn echo_connection(t: &EdgeNs) -> (TcpStream, String) {
    let server = SocketAddr::new(ip(SERVER), 8081);
    let listener = t.ext.run(|| TcpListener::bind(server).expect("bind"));
    std::thread::spawn(move || {
        if let Ok((mut conn, peer)) = listener.accept() {
            let _ = conn.write_all(format!("{:<16}", peer.ip()).as_bytes());
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let mut conn = t.pod.run(|| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::new(ip(CLASSED), 0).into())
            .expect("bind source");
        (socket.connect_timeout(&server.into(), Duration::from_secs(5))).expect("connect");
        TcpStream::from(socket)
    });
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut seen = [0u8; 16];
    conn.read_exact(&mut seen).expect("peer");
    (conn, String::from_utf8_lossy(&seen).trim().to_string())
}

fn echoes(conn: &mut TcpStream, line: &[u8]) -> bool {
    let mut back = vec![0u8; line.len()];
    conn.write_all(line).is_ok() && conn.read_exact(&mut back).is_ok() && back == line
}

fn engine_keeps_out_of_translated_traffic(datapath: DatapathMode, tag: &str) {
    require_root();
    let t = topology(tag);
    let pins = PinDir::of(&t.gw);
    let (mut gw, engine) = t.gw.run(|| {
        let open = GatewayTables::default();
        let (mut gw, generation) = with_gateway::load(datapath, &pins, &open);
        gw.set_snat(&SnatConfig {
            classes: vec![(ip(CLASSED), 1)],
            entries: vec![(1, "0.0.0.0/0".parse().unwrap(), Some(ip(EGRESS)))],
            egress_ips: vec![ip(EGRESS)],
            ..Default::default()
        })
        .expect("set_snat");
        let engine = with_gateway::start_engine(&mut gw, datapath, &pins, false, &open, generation);
        (gw, engine)
    });
    assert_eq!(
        peer_seen(&t, UNCLASSED),
        UNCLASSED,
        "no class: untranslated"
    );
    // The connection's last segments (FIN, ACK) reach the engine after the test has its answer.
    std::thread::sleep(Duration::from_secs(1));
    let to_engine = gw.status().unwrap().tables.counters.to_engine;
    assert!(
        to_engine > 0,
        "the unclassed pod's traffic went to the engine"
    );
    for _ in 0..3 {
        assert_eq!(
            peer_seen(&t, CLASSED),
            EGRESS,
            "classed pod: the egress address"
        );
    }
    let status = gw.snat_status().unwrap();
    eprintln!("{status:#?}");
    let c = &status.counters;
    assert_eq!(c.new_translations, 3, "{c:?}");
    assert!(
        c.translated_outbound >= 9 && c.translated_inbound >= 9,
        "{c:?}"
    );
    assert!(c.arp_replies >= 1, "{c:?}");
    let after = gw.status().unwrap().tables.counters.to_engine;
    assert_eq!(after, to_engine, "no translated packet went to the engine");

    // The pod's selection ends while a translated connection streams: the connection keeps its
    // translation (and stays in XDP: the engine would send it untranslated).
    let (mut conn, seen) = echo_connection(&t);
    assert_eq!(seen, EGRESS);
    assert!(echoes(&mut conn, b"before"));
    gw.set_snat(&SnatConfig::default()).expect("no selection");
    assert_eq!(gw.snat_status().unwrap().retired_pods, 1);
    for i in 0..3 {
        assert!(
            echoes(&mut conn, format!("after {i}").as_bytes()),
            "after {i}"
        );
    }
    drop(conn);
    drop(engine);
    t.gw.run(|| gw.unpin()).expect("unpin");
}

#[test]
#[ignore = "needs root (BPF, AF_XDP, network namespaces): scripts/test runs it with --include-ignored"]
fn afxdp_keeps_translated_traffic_in_xdp() {
    engine_keeps_out_of_translated_traffic(DatapathMode::Afxdp, "sea");
}

#[test]
#[ignore = "needs root (BPF, AF_XDP, network namespaces): scripts/test runs it with --include-ignored"]
fn hybrid_keeps_translated_traffic_in_xdp() {
    engine_keeps_out_of_translated_traffic(DatapathMode::Hybrid, "seh");
}
