//! Real packets: two pod namespaces and a node namespace routing between them with /32 routes
//! (calico-style: each pod has a /32 and a default route via the node's link address; the node
//! has a /32 route per pod on its host-side veth). Both node programs are attached to the host
//! veths; TCP connects, UDP echoes, replies through flows, Service DNAT (nftables in the node
//! namespace) and a relabel with an established connection.
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::*;
use portcullis_common::{MAP_FLOW_RECORD_COUNTERS, MAP_FLOW_RECORD_WINDOW};
use portcullis_node::{NodeHook, NodeOptions};
use portcullis_policy::compile::node::{compile_node, NodeCompiler};
use portcullis_policy::model::{Protocol, Snapshot};

const A: &str = "10.77.1.1";
const B: &str = "10.77.2.2";
const NODE: &str = "10.77.0.254";
const VIP: &str = "10.96.0.10";
const TIMEOUT: Duration = Duration::from_millis(800);

/// t/a (app=a by default) and t/b (app=b). b accepts from app=a on TCP 8080 and UDP 5353; a
/// accepts nothing (so replies to a pass only through flows).
fn cluster(a_app: &str) -> Snapshot {
    snapshot(
        &["t"],
        vec![
            pod("t", "a", a_app, &[A], &[]),
            pod("t", "b", "b", &[B], &[]),
        ],
        vec![
            policy(
                "t",
                "b-in",
                Some("b"),
                Some(vec![rule(
                    vec![app_peer("a")],
                    vec![
                        port(Protocol::Tcp, 8080, 8080),
                        port(Protocol::Udp, 5353, 5353),
                    ],
                )]),
                None,
            ),
            policy("t", "a-in", Some("a"), Some(vec![]), None),
        ],
    )
}

struct Lab {
    a: NetNs,
    b: NetNs,
    node: NetNs,
}

fn lab() -> Lab {
    let lab = Lab {
        a: NetNs::new("a"),
        b: NetNs::new("b"),
        node: NetNs::new("node"),
    };
    for (pod, ip, host) in [(&lab.a, A, "va"), (&lab.b, B, "vb")] {
        sh(&format!(
            "ip link add eth0 netns {} type veth peer name {host} netns {}",
            pod.name, lab.node.name
        ));
        pod.run(|| {
            sh(&format!(
                "ip addr add {ip}/32 dev eth0 && ip link set eth0 up && \
                 ip route add {NODE} dev eth0 scope link && ip route add default via {NODE}"
            ))
        });
        lab.node.run(|| {
            sh(&format!(
                "ip addr add {NODE}/32 dev {host} && ip link set {host} up && \
                 ip route add {ip}/32 dev {host}"
            ))
        });
    }
    lab.node.run(|| sh("sysctl -qw net.ipv4.ip_forward=1"));
    lab
}

/// A TCP echo server in `ns` on `port`, serving until the process ends.
fn tcp_echo(ns: &NetNs, ip: &str, port: u16) {
    let listener = ns.run(|| TcpListener::bind((ip, port)).expect("bind"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn udp_echo(ns: &NetNs, ip: &str, port: u16) {
    let sock = ns.run(|| UdpSocket::bind((ip, port)).expect("bind"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
}

fn connect(ns: &NetNs, ip: &str, port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::from((ip.parse::<Ipv4Addr>().unwrap(), port));
    ns.run(|| TcpStream::connect_timeout(&addr, TIMEOUT).ok())
        .inspect(|s| {
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
        })
}

fn echo_ok(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

fn tcp_ok(ns: &NetNs, ip: &str, port: u16) -> bool {
    connect(ns, ip, port).is_some_and(|mut s| echo_ok(&mut s, b"hello"))
}

fn udp_ok(ns: &NetNs, ip: &str, port: u16) -> bool {
    let sock = ns.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind"));
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    sock.send_to(b"ping", (ip, port)).expect("send");
    let mut buf = [0u8; 16];
    matches!(sock.recv_from(&mut buf), Ok((4, _))) && &buf[..4] == b"ping"
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn pod_to_pod_traffic_with_service_dnat_and_relabel() {
    require_root();
    let lab = lab();
    for port in [8080, 8081, 9000] {
        tcp_echo(&lab.b, B, port);
    }
    tcp_echo(&lab.a, A, 9000);
    udp_echo(&lab.b, B, 5353);
    udp_echo(&lab.b, B, 5354);
    // Before enforcement everything connects.
    assert!(tcp_ok(&lab.a, B, 8081), "no connectivity before attaching");
    assert!(tcp_ok(&lab.b, A, 9000), "no connectivity before attaching");

    let mut hook = lab.node.run(|| {
        let mut hook = NodeHook::load(NodeOptions::default()).expect("load");
        hook.attach("va").expect("attach va");
        hook.attach("vb").expect("attach vb");
        hook
    });
    let mut compiler = NodeCompiler::default();
    hook.apply(&compiler.compile(&cluster("a")).unwrap())
        .expect("apply");

    // Allowed and denied as b-in says; replies to a (which accepts nothing) pass through flows.
    assert!(tcp_ok(&lab.a, B, 8080), "a -> b TCP 8080 must connect");
    assert!(!tcp_ok(&lab.a, B, 8081), "a -> b TCP 8081 must be denied");
    assert!(udp_ok(&lab.a, B, 5353), "a -> b UDP 5353 must echo");
    assert!(!udp_ok(&lab.a, B, 5354), "a -> b UDP 5354 must be denied");
    assert!(
        !tcp_ok(&lab.b, A, 9000),
        "b -> a TCP 9000 must be denied (a-in)"
    );

    // Service: VIP:80 -> b:8080, VIP:81 -> b:8081, VIP:53/udp -> b:5353 in the node's prerouting.
    lab.node.run(|| {
        sh(&format!(
            "nft add table ip pcn_nat && \
             nft 'add chain ip pcn_nat pre {{ type nat hook prerouting priority -100; }}' && \
             nft add rule ip pcn_nat pre ip daddr {VIP} tcp dport 80 dnat to {B}:8080 && \
             nft add rule ip pcn_nat pre ip daddr {VIP} tcp dport 81 dnat to {B}:8081 && \
             nft add rule ip pcn_nat pre ip daddr {VIP} udp dport 53 dnat to {B}:5353"
        ))
    });
    assert!(
        tcp_ok(&lab.a, VIP, 80),
        "a -> VIP:80 (b:8080) must connect, reply un-DNATed through the origin flow"
    );
    assert!(
        !tcp_ok(&lab.a, VIP, 81),
        "a -> VIP:81 (b:8081) must be denied"
    );
    assert!(
        udp_ok(&lab.a, VIP, 53),
        "a -> VIP:53/udp (b:5353) must echo"
    );

    // Relabel a (app=a -> app=z): an established connection keeps working, new ones follow the
    // new policy (b-in no longer admits a).
    let mut established = connect(&lab.a, B, 8080).expect("connect before relabel");
    assert!(echo_ok(&mut established, b"before"));
    let stats = hook
        .apply(&compiler.compile(&cluster("z")).unwrap())
        .expect("apply relabel");
    eprintln!("relabel apply: {stats:?}");
    assert!(
        echo_ok(&mut established, b"after relabel"),
        "established connection cut by the relabel"
    );
    assert!(
        !tcp_ok(&lab.a, B, 8080),
        "new a -> b connection must be denied after relabel"
    );
    assert!(
        echo_ok(&mut established, b"still"),
        "established connection cut later"
    );
    // a (now z) is no longer selected by a-in: b -> a opens.
    assert!(tcp_ok(&lab.b, A, 9000), "b -> a must connect after relabel");

    let status = hook.status().expect("status");
    eprintln!("{status:#?}");
    assert_eq!(status.attached.len(), 2);
    assert!(status.tables.counters.drop_policy >= 4);
    assert!(status.tables.counters.origin_recorded >= 3);
    assert!(status.tables.counters.pass_flow > 0);
    assert!(status.tables.counters.pass_non_ip > 0, "ARP not seen");

    lab.node.run(|| {
        hook.detach("va").expect("detach");
        hook.detach("vb").expect("detach");
    });
    assert!(tcp_ok(&lab.a, B, 8081), "still enforcing after detach");
}

/// Pinned maps and links survive the loader; a second loader adopts them and keeps enforcing.
/// It adopts the pins of an older version too: the maps added since (flow records), absent from
/// the pin directory here, are created and pinned.
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn pinned_links_are_adopted() {
    require_root();
    let lab = lab();
    tcp_echo(&lab.b, B, 8080);
    tcp_echo(&lab.b, B, 8081);
    let pin_dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/pcn-test-{}-{}",
        std::process::id(),
        line!()
    ));
    let options = NodeOptions {
        pin_dir: Some(pin_dir.clone()),
        revalidate: false,
    };
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(pin_dir.clone());
    lab.node.run(|| {
        let mut hook = NodeHook::load(options.clone()).expect("load");
        hook.attach("va").expect("attach");
        hook.attach("vb").expect("attach");
        hook.apply(&compile_node(&cluster("a")).unwrap())
            .expect("apply");
    });
    // The loader is gone; the pinned links keep enforcing.
    assert!(
        !tcp_ok(&lab.a, B, 8081),
        "not enforcing after the loader exited"
    );
    let added = [MAP_FLOW_RECORD_COUNTERS, MAP_FLOW_RECORD_WINDOW];
    for name in added {
        std::fs::remove_file(pin_dir.join(name)).expect(name);
    }
    let hook = lab
        .node
        .run(|| NodeHook::load(options.clone()).expect("reload"));
    let attached = hook.attached();
    assert_eq!(attached.len(), 2, "{attached:?}");
    assert!(attached.iter().all(|a| a.adopted));
    for name in added {
        assert!(pin_dir.join(name).exists(), "{name} not created and pinned");
    }
    assert!(!tcp_ok(&lab.a, B, 8081), "not enforcing after adoption");
    assert!(tcp_ok(&lab.a, B, 8080), "allowed after adoption");
    let records = hook.status().expect("status").tables.flow_records;
    assert!(
        records.written >= 1,
        "no allow record in the new map: {records:?}"
    );
    hook.unpin().expect("unpin");
    assert!(
        tcp_ok(&lab.a, B, 8081),
        "still enforcing after unpin and exit"
    );
}
