//! Steering on real traffic (needs root). A pod, its node, two gateways and a router (the node's
//! default route) on the node's uplink segment; the gateways and the router each hold the
//! "external" address (and a service address) themselves and answer with their own name, so the
//! answer says where the pod's packet went. Every packet stays in namespaces this test creates.
//!
//! ```text
//!  pod ──veth── node (up0: bridge) ──┬── gw1  192.168.50.2  fe80::a:2 (link-local via)
//!  10.244.1.10                        ├── gw2  192.168.50.3  fd50::3
//!  fd00:244::10                       └── rt   192.168.50.254 fd50::fe   (node default route)
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portcullis_steering::{SteerRoute, Steering, SteeringConfig};
use portcullis_testkit::{require_root, sh, NetNs};

const POD4: &str = "10.244.1.10";
const POD6: &str = "fd00:244::10";
const EXT4: &str = "203.0.113.1";
const EXT6: &str = "2001:db8::1";
const SVC4: &str = "10.96.0.10";
const PORT: u16 = 7007;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP and a UDP server (dual-stack, every address of the namespace) answering `name`.
struct Answerer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Answerer {
    fn start(ns: &NetNs, name: &'static str) -> Answerer {
        // UDP per address: a wildcard socket would answer from the interface's address.
        let (tcp, udps) = ns.run(|| {
            let tcp = TcpListener::bind(("::", PORT)).unwrap();
            let udps: Vec<UdpSocket> = [EXT4, EXT6, SVC4]
                .iter()
                .map(|a| UdpSocket::bind((ip(a), PORT)).unwrap())
                .collect();
            (tcp, udps)
        });
        tcp.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let mut threads = vec![std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(name.as_bytes());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        })];
        for udp in udps {
            udp.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(name.as_bytes(), peer);
                    }
                }
            }));
        }
        Answerer { stop, threads }
    }
}

impl Drop for Answerer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Who answers the pod at `dst` over UDP and over TCP (retried for up to 3 s while links come up).
fn who(pod: &NetNs, dst: &str) -> (String, String) {
    let dst = SocketAddr::new(ip(dst), PORT);
    let src = if dst.is_ipv4() { ip(POD4) } else { ip(POD6) };
    pod.run(|| {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if let (Some(u), Some(t)) = (udp_ask(src, dst), tcp_ask(src, dst)) {
                return (u, t);
            }
            assert!(Instant::now() < deadline, "no answer from {dst}");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

fn udp_ask(src: IpAddr, dst: SocketAddr) -> Option<String> {
    let s = UdpSocket::bind(SocketAddr::new(src, 0)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    s.send_to(b"?", dst).ok()?;
    let mut buf = [0u8; 64];
    let (n, from) = s.recv_from(&mut buf).ok()?;
    assert_eq!(from, dst);
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn tcp_ask(src: IpAddr, dst: SocketAddr) -> Option<String> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        None,
    )
    .ok()?;
    s.bind(&SocketAddr::new(src, 0).into()).ok()?;
    s.connect_timeout(&dst.into(), Duration::from_millis(300))
        .ok()?;
    let mut c: TcpStream = s.into();
    c.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Builds the namespaces of the module docs.
fn topology() -> (NetNs, NetNs, [NetNs; 3]) {
    let pod = NetNs::new("stp");
    let node = NetNs::new("stn");
    let hops = [NetNs::new("stg1"), NetNs::new("stg2"), NetNs::new("str")];
    let seg = [
        ("192.168.50.2", "fd50::2", Some("fe80::a:2")),
        ("192.168.50.3", "fd50::3", None),
        ("192.168.50.254", "fd50::fe", None),
    ];
    node.run(|| {
        sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
            net.ipv4.conf.all.rp_filter=0 net.ipv6.conf.default.accept_dad=0",
        );
        sh(&format!(
            "ip link add pod0 type veth peer name eth0 netns {}",
            pod.name
        ));
        sh("ip link add up0 type bridge && ip link set up0 up");
        sh("ip addr add 192.168.50.1/24 dev up0 && ip addr add fd50::1/64 dev up0 nodad");
        for (i, h) in hops.iter().enumerate() {
            sh(&format!(
                "ip link add p{i} type veth peer name eth0 netns {}",
                h.name
            ));
            sh(&format!(
                "ip link set p{i} master up0 && ip link set p{i} up"
            ));
        }
        sh("ip addr add 169.254.1.1/32 dev pod0 && ip addr add fe80::1/64 dev pod0 nodad");
        sh("ip link set pod0 up");
        sh(&format!(
            "ip route add {POD4}/32 dev pod0 && ip route add {POD6}/128 dev pod0"
        ));
        sh("ip route add default via 192.168.50.254 && ip -6 route add default via fd50::fe");
    });
    pod.run(|| {
        sh("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
        sh(&format!(
            "ip addr add {POD4}/32 dev eth0 && ip addr add {POD6}/128 dev eth0 nodad"
        ));
        sh("ip link set eth0 up && ip route add 169.254.1.1/32 dev eth0 scope link");
        sh("ip route add default via 169.254.1.1 dev eth0");
        sh("ip -6 route add default via fe80::1 dev eth0");
    });
    for (h, (v4, v6, ll)) in hops.iter().zip(seg) {
        h.run(|| {
            sh("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
            sh(&format!(
                "ip addr add {v4}/24 dev eth0 && ip addr add {v6}/64 dev eth0 nodad"
            ));
            if let Some(ll) = ll {
                sh(&format!("ip addr add {ll}/64 dev eth0 nodad"));
            }
            sh("ip link set eth0 up");
            sh(&format!(
                "ip addr add {EXT4}/32 dev lo && ip addr add {EXT6}/128 dev lo"
            ));
            sh(&format!("ip addr add {SVC4}/32 dev lo"));
            sh(&format!("ip route add {POD4}/32 via 192.168.50.1"));
            sh(&format!("ip route add {POD6}/128 via fd50::1"));
        });
    }
    (pod, node, hops)
}

fn routes(v4_via: &str, v6_via: &str) -> Vec<SteerRoute> {
    vec![
        SteerRoute {
            source: ip(POD4),
            destination: "0.0.0.0/0".parse().unwrap(),
            via: ip(v4_via),
        },
        SteerRoute {
            source: ip(POD6),
            destination: "::/0".parse().unwrap(),
            via: ip(v6_via),
        },
    ]
}

fn answered_by(pod: &NetNs, dst: &str) -> String {
    let (udp, tcp) = who(pod, dst);
    assert_eq!(udp, tcp, "UDP and TCP to {dst} took different paths");
    udp
}

#[test]
#[ignore = "needs root (network namespaces, policy routing): scripts/test runs it with --include-ignored"]
fn pod_egress_follows_the_steering_and_clear_restores_the_default_route() {
    require_root();
    let (pod, node, hops) = topology();
    let _answerers: Vec<Answerer> = hops
        .iter()
        .zip(["gw1", "gw2", "rt"])
        .map(|(h, name)| Answerer::start(h, name))
        .collect();

    // Unsteered: the node's default route, the router.
    assert_eq!(answered_by(&pod, EXT4), "rt");
    assert_eq!(answered_by(&pod, EXT6), "rt");

    let config = SteeringConfig::new(
        [
            "10.244.0.0/16",
            "fd00:244::/64",
            "10.96.0.0/12",
            "192.168.50.0/24",
            "fd50::/64",
        ]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect(),
        Some("up0".into()),
    );
    let mut steering = node.run(|| Steering::new(config.clone())).unwrap();
    let stats = steering
        .apply(&routes("192.168.50.2", "fe80::a:2"))
        .unwrap();
    assert_eq!((stats.rules, stats.tables, stats.rules_added), (7, 2, 7));
    assert_eq!(answered_by(&pod, EXT4), "gw1");
    assert_eq!(
        answered_by(&pod, EXT6),
        "gw1",
        "link-local via on the uplink"
    );
    // A cluster CIDR (a service address here) is never steered.
    assert_eq!(answered_by(&pod, SVC4), "rt");

    let status = steering.status().unwrap();
    assert_eq!((status.cluster_rules, status.stray_rules), (5, 0));
    let vias: Vec<(IpAddr, usize)> = status.gateways.iter().map(|g| (g.via, g.rules)).collect();
    assert_eq!(vias, vec![(ip("192.168.50.2"), 1), (ip("fe80::a:2"), 1)]);

    // Idempotent.
    let again = steering
        .apply(&routes("192.168.50.2", "fe80::a:2"))
        .unwrap();
    assert_eq!(
        again.rules_added + again.rules_removed + again.routes_written,
        0
    );

    // A changed set moves the traffic; the old tables go.
    let moved = steering.apply(&routes("192.168.50.3", "fd50::3")).unwrap();
    assert_eq!(
        (moved.rules_added, moved.rules_removed, moved.routes_removed),
        (2, 2, 4)
    );
    assert_eq!(answered_by(&pod, EXT4), "gw2");
    assert_eq!(answered_by(&pod, EXT6), "gw2");
    assert_eq!(steering.status().unwrap().gateways.len(), 2);

    // A restarted daemon adopts what is there: nothing to change.
    drop(steering);
    let mut restarted = node.run(|| Steering::new(config.clone())).unwrap();
    let adopted = restarted.apply(&routes("192.168.50.3", "fd50::3")).unwrap();
    assert_eq!(
        adopted.rules_added + adopted.rules_removed + adopted.routes_written,
        0
    );

    // The gateway route gone (as when its device is deleted): steered traffic fails closed
    // instead of taking the main table to the router; the next apply puts the route back.
    let status = restarted.status().unwrap();
    assert!(status.gateways.iter().all(|g| g.fail_closed), "{status:?}");
    let v4 = status.gateways.iter().find(|g| g.via.is_ipv4()).unwrap();
    node.run(|| sh(&format!("ip route del default table {} metric 1", v4.table)));
    let dst = SocketAddr::new(ip(EXT4), PORT);
    assert_eq!(pod.run(|| udp_ask(ip(POD4), dst)), None);
    // The gateway now has a fresh table (the rule moves to it, then the husk goes).
    let healed = restarted.apply(&routes("192.168.50.3", "fd50::3")).unwrap();
    assert_eq!(
        (
            healed.routes_written,
            healed.rules_added,
            healed.routes_removed
        ),
        (2, 1, 1)
    );
    assert_eq!(answered_by(&pod, EXT4), "gw2");

    // Something stray in the range (a rule of a crashed older version) is removed.
    node.run(|| sh("ip rule add pref 20100 from 10.1.2.3 lookup 20200"));
    let swept = restarted.apply(&routes("192.168.50.3", "fd50::3")).unwrap();
    assert_eq!(swept.rules_removed, 1);

    restarted.clear().unwrap();
    assert_eq!(answered_by(&pod, EXT4), "rt");
    assert_eq!(answered_by(&pod, EXT6), "rt");
    let left = node.run(|| sh("ip rule show; ip -6 rule show; ip route show table all"));
    assert!(!left.contains("lookup 2"), "{left}");
    assert!(!left.contains("table 2"), "{left}");
    drop(node);
}
