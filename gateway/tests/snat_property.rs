//! SNAT against a model, on random connections (BPF_PROG_TEST_RUN on the loaded program): every
//! connection gets a port of the pool and keeps it, no two connections share a translated tuple,
//! and every reply reaches exactly the connection it belongs to, with checksums that verify.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use portcullis_gateway::{Gateway, GatewayOptions, SnatConfig, TestProgram, XDP_PASS};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const EGRESS: &str = "203.0.113.7";
const PORTS: std::ops::RangeInclusive<u16> = 40000..=40511;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One connection as the pod opens it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Conn {
    udp: bool,
    pod: u8,
    sport: u16,
    server: u8,
    dport: u16,
}

impl Conn {
    fn pod(&self) -> String {
        format!("10.244.9.{}", self.pod)
    }
    fn server(&self) -> String {
        format!("192.0.2.{}", self.server)
    }
    /// The pod's packet (`first`: a SYN, else an ACK) and the reply to `(egress, port)`.
    fn out(&self, first: bool) -> Packet {
        let (pod, server) = (self.pod(), self.server());
        match (self.udp, first) {
            (true, _) => Packet::udp(&pod, self.sport, &server, self.dport),
            (false, true) => Packet::tcp(&pod, self.sport, &server, self.dport, TCP_SYN),
            (false, false) => Packet::tcp(&pod, self.sport, &server, self.dport, TCP_ACK),
        }
    }
    fn translated(&self, first: bool, port: u16) -> Packet {
        let server = self.server();
        match (self.udp, first) {
            (true, _) => Packet::udp(EGRESS, port, &server, self.dport),
            (false, true) => Packet::tcp(EGRESS, port, &server, self.dport, TCP_SYN),
            (false, false) => Packet::tcp(EGRESS, port, &server, self.dport, TCP_ACK),
        }
    }
    fn reply(&self, to: &str, port: u16) -> Packet {
        let server = self.server();
        match self.udp {
            true => Packet::udp(&server, self.dport, to, port),
            false => Packet::tcp(&server, self.dport, to, port, TCP_SYN | TCP_ACK),
        }
    }
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn random_connections_get_unique_tuples_and_their_own_replies() {
    require_root();
    let ns = NetNs::new("snprop");
    ns.run(|| {
        sh(
            "ip link add spc type veth peer name spcp && ip link add spe type veth peer name spep \
            && for i in spc spcp spe spep; do ip link set $i up; done",
        );
        let mut gw = Gateway::load(GatewayOptions {
            cluster_iface: "spc".into(),
            external_iface: "spe".into(),
            ..Default::default()
        })
        .expect("load");
        gw.apply(&GatewayTables::default()).expect("apply");
        let pods: Vec<(IpAddr, u32)> = (1..=8).map(|p| (ip(&format!("10.244.9.{p}")), 1)).collect();
        gw.set_snat(&SnatConfig {
            classes: pods,
            entries: vec![(1, "192.0.2.0/24".parse().unwrap(), Some(ip(EGRESS)))],
            egress_ips: vec![ip(EGRESS)],
            ports: PORTS,
        })
        .expect("set_snat");
        let (cluster, external) = (ifindex("spc"), ifindex("spe"));
        let mut run = |via: u32, p: &Packet| {
            let out = gw
                .test_run(TestProgram::Gateway, via, &p.frame(), 1)
                .expect("run");
            assert_eq!(out.action, XDP_PASS, "{p:?}");
            assert_eq!(verify_checksums(&out.packet), Ok(()), "{p:?}");
            out.packet
        };

        let mut rng = SmallRng::seed_from_u64(0x5a7);
        let mut model: BTreeMap<Conn, u16> = BTreeMap::new();
        for _ in 0..400 {
            let c = Conn {
                udp: rng.random_bool(0.5),
                pod: rng.random_range(1..=8),
                // Few source ports and servers: many connections differ in one field only.
                sport: rng.random_range(1000..1004),
                server: rng.random_range(50..53),
                dport: [53, 443][rng.random_range(0..2)],
            };
            let first = !model.contains_key(&c);
            let out = run(cluster, &c.out(first));
            let port = u16::from_be_bytes([out[34], out[35]]);
            assert_eq!(out, c.translated(first, port).frame(), "{c:?}");
            assert!(PORTS.contains(&port), "{c:?}: port {port} outside the pool");
            let kept = *model.entry(c).or_insert(port);
            assert_eq!(kept, port, "{c:?} keeps its port");
        }
        // No two connections share a translated tuple (protocol, server, server port, port).
        let tuples: BTreeSet<_> = model
            .iter()
            .map(|(c, p)| (c.udp, c.server, c.dport, *p))
            .collect();
        assert_eq!(tuples.len(), model.len(), "translated tuples are unique");
        // Every reply reaches its own connection.
        for (c, port) in &model {
            let back = run(external, &c.reply(EGRESS, *port));
            assert_eq!(back, c.reply(&c.pod(), c.sport).frame(), "{c:?}");
        }
        let status = gw.snat_status().expect("status");
        assert_eq!(status.translations, model.len());
        assert_eq!(status.counters.new_translations, model.len() as u64);
        eprintln!("{} connections, {status:?}", model.len());
    });
}
