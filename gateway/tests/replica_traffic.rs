//! Egress addresses moving between the gateways of a highly available pair, on real traffic
//! (testkit's `EdgePairNs`: one pod segment, one external segment, two gateways): TCP connections
//! opened through gateway A carry on through gateway B once B has imported A's flows and
//! translations, claimed the egress addresses and announced them (the external host's
//! neighbour entries move to B's MAC; the server sees the same egress address and port, with no
//! reset). And the program's ARP/ND answers follow the ownership and its lease.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portcullis_gateway::{monotonic_coarse_ns, ForwardMode};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::*;

mod snat_edge;
mod xdp_pass;
use snat_edge::*;
use xdp_pass::attach_pass;

/// The second gateway of the pair, on the same segments.
const GATEWAY_B: GatewayAddrs = GatewayAddrs {
    cluster4: "10.96.0.253",
    cluster6: "fd00:96::253",
    external4: "192.0.2.2",
    external6: "2001:db8:96::2",
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// An echo server on its own thread: one connection, each line back with the peer address it
/// sees in front.
fn echo_server(ext: &NetNs, addr: SocketAddr) -> JoinHandle<()> {
    let listener = ext.run(|| TcpListener::bind(addr).expect("bind"));
    std::thread::spawn(move || {
        let Ok((conn, peer)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(4 * TIMEOUT)).unwrap();
        let mut out = conn.try_clone().unwrap();
        for line in BufReader::new(conn).lines() {
            match line {
                Ok(line) if writeln!(out, "{peer} {line}").is_ok() => {}
                _ => break,
            }
        }
    })
}

/// A pod's connection to an echo server.
struct Client {
    lines: BufReader<TcpStream>,
    out: TcpStream,
}

impl Client {
    fn connect(pod: &NetNs, addr: SocketAddr) -> Client {
        let out = pod.run(|| TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect"));
        out.set_read_timeout(Some(TIMEOUT)).unwrap();
        let lines = BufReader::new(out.try_clone().unwrap());
        Client { lines, out }
    }

    /// Sends `line`; the address and port the server sees (its answer without the line).
    fn exchange(&mut self, line: &str) -> String {
        writeln!(self.out, "{line}").expect("send");
        let mut answer = String::new();
        self.lines.read_line(&mut answer).expect("answer");
        let seen = answer.trim_end().strip_suffix(line).expect("echoed");
        seen.trim_end().to_string()
    }
}

/// The MAC of interface `name` in the calling thread's namespace.
fn mac_of(name: &str) -> String {
    let line = sh(&format!("ip -br link show dev {name}"));
    line.split_whitespace().nth(2).expect("MAC").to_string()
}

/// The MAC `ext`'s neighbour entry for `addr` on `x0` has, if any.
fn neighbour(ext: &NetNs, addr: &str) -> Option<String> {
    let line = ext.run(|| sh(&format!("ip neigh show {addr} dev x0")));
    let mut words = line.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

/// Resolves `addrs` from `ext` afresh (its neighbour entries flushed, a datagram to each):
/// the MAC each resolved to within 700 ms, if any.
fn resolve(ext: &NetNs, addrs: &[&str]) -> Vec<Option<String>> {
    ext.run(|| {
        sh("ip neigh flush dev x0");
        for a in addrs {
            let to = SocketAddr::new(ip(a), 9);
            let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                .parse()
                .unwrap();
            let socket = UdpSocket::bind(any).unwrap();
            socket.send_to(b"who has it", to).expect("send");
        }
    });
    let deadline = Instant::now() + Duration::from_millis(700);
    loop {
        let macs: Vec<Option<String>> = addrs.iter().map(|a| neighbour(ext, a)).collect();
        if macs.iter().all(Option::is_some) || Instant::now() > deadline {
            return macs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Flow-clock time `secs` from now (negative: past).
fn lease(secs: i64) -> u64 {
    monotonic_coarse_ns().saturating_add_signed(secs * 1_000_000_000)
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn connections_move_to_the_other_gateway_with_their_translations() {
    require_root();
    let EdgePairNs {
        pod,
        gw: [na, nb],
        ext,
    } = EdgePairNs::new("ha");
    setup_pod(&pod, &GATEWAY);
    setup_external(&ext);
    setup_gateway(&na, &GATEWAY);
    setup_gateway(&nb, &GATEWAY_B);
    // XDP-sent frames (ARP/ND answers by XDP_TX, forwarding by redirect) reach a veth peer only
    // while its NAPI runs: an XDP program on the far end of every leg.
    let ends = [(&pod, "c0"), (&pod, "c1"), (&ext, "e0"), (&ext, "e1")];
    let _napi: Vec<_> = (ends.into_iter())
        .map(|(ns, end)| ns.run(|| attach_pass(end)))
        .collect();
    // The pod's egress policy selects it: a mid-stream packet without its flow is dropped, so
    // B carries the connections only with A's flows.
    let tables = egress_allowed(&[POD4, POD6], "prod/allow-all", &["0.0.0.0/0", "::/0"]);
    let mut a = load(&na, ForwardMode::Xdp, &tables);
    let mut b = load(&nb, ForwardMode::Xdp, &tables);
    let egress: BTreeSet<IpAddr> = [ip(EGRESS4), ip(EGRESS6)].into();
    a.set_snat(&snat_config()).expect("set_snat A");
    a.set_egress_ownership(&egress, Some(lease(60)))
        .expect("A owns");
    // B stands by: it answers for nothing, whatever its configuration lists.
    b.set_egress_ownership(&BTreeSet::new(), None)
        .expect("B owns nothing");
    b.set_snat(&snat_config()).expect("set_snat B");

    let servers = [SERVER4, SERVER6].map(|s| echo_server(&ext, SocketAddr::new(ip(s), 8080)));
    let mut clients =
        [SERVER4, SERVER6].map(|s| Client::connect(&pod, SocketAddr::new(ip(s), 8080)));
    let seen = clients.each_mut().map(|c| c.exchange("through A"));
    assert!(seen[0].starts_with(&format!("{EGRESS4}:")), "{seen:?}");
    assert!(seen[1].starts_with(&format!("[{EGRESS6}]:")), "{seen:?}");
    let a_mac = na.run(|| mac_of("ge"));
    let b_mac = nb.run(|| mac_of("ge"));
    for e in [EGRESS4, EGRESS6] {
        assert_eq!(neighbour(&ext, e), Some(a_mac.clone()), "{e} resolved to A");
    }

    // B takes A's flows and translations over.
    let replicas = a.export_replicas(None).expect("export");
    let stats = b.import_replicas(&replicas).expect("import");
    eprintln!("{} entries from A: {stats:?}", replicas.len());
    assert_eq!((stats.conflicts, stats.full), (0, 0), "{stats:?}");
    assert!(stats.flows >= 2 && stats.translations >= 4, "{stats:?}");

    // A fails: its lease ends (its daemon died) and its links go down. B claims the egress
    // addresses and announces them; the pod's routes move to B.
    a.renew_lease(1).expect("A fenced");
    b.set_egress_ownership(&egress, Some(lease(60)))
        .expect("B owns");
    nb.run(|| {
        for e in [EGRESS4, EGRESS6] {
            b.announce_egress_ip(ip(e)).expect("announce");
        }
    });
    for e in [EGRESS4, EGRESS6] {
        let deadline = Instant::now() + Duration::from_secs(2);
        while neighbour(&ext, e).as_ref() != Some(&b_mac) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(neighbour(&ext, e), Some(b_mac.clone()), "{e} moved to B");
    }
    na.run(|| sh("ip link set gc down && ip link set ge down"));
    pod.run(|| {
        sh(&format!(
            "ip route replace default via {} && ip -6 route replace default via {}",
            GATEWAY_B.cluster4, GATEWAY_B.cluster6
        ))
    });

    // The same connections go on through B, both ways: the servers see the same egress
    // address and port.
    for (client, before) in clients.iter_mut().zip(&seen) {
        assert_eq!(&client.exchange("through B"), before);
    }
    let c = b.snat_status().expect("status").counters;
    eprintln!("B: {c:?}");
    assert_eq!(c.new_translations, 0, "A's translations, none of B's own");
    assert!(
        c.translated_outbound >= 2 && c.translated_inbound >= 2,
        "{c:?}"
    );
    drop(clients);
    for s in servers {
        s.join().unwrap();
    }
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn arp_and_nd_answers_follow_the_ownership_and_its_lease() {
    require_root();
    let EdgeNs {
        pod: _pod,
        gw: gwns,
        ext,
    } = EdgeNs::new("ls");
    setup_external(&ext);
    setup_gateway(&gwns, &GATEWAY);
    let _napi = ext.run(|| attach_pass("x0"));
    let mut gw = load(&gwns, ForwardMode::Kernel, &GatewayTables::default());
    gw.set_snat(&snat_config()).expect("set_snat");
    let mac = Some(gwns.run(|| mac_of("ge")));
    let answered = |want: [bool; 2], when: &str| {
        let got = resolve(&ext, &[EGRESS4, EGRESS6]);
        let want = want.map(|on| if on { mac.clone() } else { None });
        assert_eq!(got, want, "{when}: ARP for {EGRESS4}, ND for {EGRESS6}");
    };
    let both: BTreeSet<IpAddr> = [ip(EGRESS4), ip(EGRESS6)].into();
    let v4: BTreeSet<IpAddr> = [ip(EGRESS4)].into();

    answered([true, true], "no HA: as the configuration says");
    assert_eq!(gw.lease().unwrap(), None);
    gw.set_egress_ownership(&both, Some(lease(-1))).unwrap();
    answered([false, false], "owned, the lease past");
    gw.renew_lease(lease(60)).unwrap();
    answered([true, true], "lease renewed");
    gw.set_egress_ownership(&both, None).unwrap();
    assert_eq!(gw.lease().unwrap(), None);
    answered([true, true], "owned, no lease");
    gw.set_egress_ownership(&v4, Some(lease(60))).unwrap();
    answered([true, false], "one of them owned");
    gw.set_snat(&snat_config()).expect("set_snat");
    answered([true, false], "a configuration update keeps the ownership");
    gw.set_egress_ownership(&BTreeSet::new(), None).unwrap();
    answered([false, false], "none owned");
    let c = gw.snat_status().unwrap().counters;
    assert!(c.arp_replies >= 4 && c.nd_replies >= 3, "{c:?}");
}
