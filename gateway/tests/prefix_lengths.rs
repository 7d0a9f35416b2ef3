//! The longest-prefix search of one group with many distinct prefix lengths and nested excepts,
//! IPv4 and IPv6: addresses around the nested blocks go through the real XDP program
//! (BPF_PROG_TEST_RUN) on both legs, every verdict compared with the policy evaluator.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use portcullis_gateway::{Datapath, Gateway, GatewayOptions, TestProgram, XDP_DROP, XDP_PASS};
use portcullis_policy::compile::GatewayCompiler;
use portcullis_policy::eval::{Flow, Side};
use portcullis_policy::model::{
    Namespace, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule, Selector, Snapshot,
};
use portcullis_testkit::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CLUSTER: &str = "pcl-pc";
const EXTERNAL: &str = "pcl-pe";
const POD4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const BASE4: u128 = 0xffff_0a01_0203;
const BASE6: u128 = 0x2001_0db8_1234_5678_9abc_def0_1234_5678;
const PACKETS: usize = 6000;

/// `base` (128-bit, IPv4 mapped for `v4`) with a few random bits below bit `from` flipped: an
/// address near `base`, so blocks and probes nest around it.
fn near(rng: &mut SmallRng, base: u128, from: u8) -> u128 {
    let mut a = base;
    for _ in 0..rng.random_range(0..3) {
        a ^= 1u128 << (127 - rng.random_range(from..128));
    }
    a
}

fn ip(a: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

/// One ipBlock of length `len` near the base with 0-2 excepts inside it.
fn block(rng: &mut SmallRng, v4: bool, len: u8) -> Peer {
    let (base, offset) = if v4 { (BASE4, 96) } else { (BASE6, 0) };
    let max = if v4 { 32 } else { 128 };
    let cidr = IpNet::new(ip(near(rng, base, offset + len / 2), v4), len)
        .expect("length in range")
        .trunc();
    let except = (0..rng.random_range(0..3))
        .filter(|_| len < max)
        .map(|_| {
            let sub = rng.random_range(len + 1..=max);
            let inside = near(rng, u128::from_be_bytes(key(cidr.addr())), offset + len);
            IpNet::new(ip(inside, v4), sub)
                .expect("length in range")
                .trunc()
        })
        .collect();
    Peer::IpBlock { cidr, except }
}

fn key(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One policy selecting the pod both ways: a rule per block, ports 1..=4 spread over them, so
/// nested blocks allow different ports and a longest match that stops short is seen.
fn snapshot(rng: &mut SmallRng) -> Snapshot {
    let v4_lengths = [
        0u8, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20, 21, 23, 24, 25, 27, 28, 29, 30, 31, 32,
    ];
    let v6_lengths = [
        16u8, 20, 32, 33, 40, 47, 48, 56, 63, 64, 65, 72, 80, 96, 100, 111, 112, 113, 120, 127, 128,
    ];
    let mut rules = Vec::new();
    for (v4, lengths) in [(true, &v4_lengths[..]), (false, &v6_lengths[..])] {
        for (i, len) in lengths.iter().enumerate() {
            let port = 1 + (i % 4) as u16;
            rules.push(Rule {
                peers: vec![block(rng, v4, *len), block(rng, v4, *len)],
                ports: vec![PolicyPort {
                    protocol: Protocol::Udp,
                    port: PortMatch::Number {
                        first: port,
                        last: port,
                    },
                }],
            });
        }
    }
    let labels = BTreeMap::from([("app".to_string(), "a".to_string())]);
    Snapshot {
        namespaces: BTreeMap::from([(
            "n".to_string(),
            Namespace {
                name: "n".into(),
                labels: BTreeMap::new(),
            },
        )]),
        pods: vec![Pod {
            namespace: "n".into(),
            name: "a".into(),
            labels: labels.clone(),
            ips: vec![IpAddr::V4(POD4), IpAddr::V6(POD6)],
            ports: Vec::new(),
            host_network: false,
            node: None,
        }],
        policies: vec![Policy {
            namespace: "n".into(),
            name: "nested".into(),
            pod_selector: Selector {
                match_labels: labels,
                match_expressions: Vec::new(),
            },
            ingress: Some(rules.clone()),
            egress: Some(rules),
        }],
        ..Default::default()
    }
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn many_prefix_lengths_with_nested_excepts_match_the_evaluator() {
    require_root();
    let ns = NetNs::new("plen");
    ns.run(|| {
        sh(&format!(
            "ip link add {CLUSTER} type veth peer name {CLUSTER}p && ip link add {EXTERNAL} type veth peer name {EXTERNAL}p && \
             for i in {CLUSTER} {CLUSTER}p {EXTERNAL} {EXTERNAL}p; do ip link set $i up; done"
        ));
        let (cluster, external) = (ifindex(CLUSTER), ifindex(EXTERNAL));
        let mut gw = Gateway::load(GatewayOptions {
            cluster_iface: CLUSTER.into(),
            external_iface: EXTERNAL.into(),
            ..Default::default()
        })
        .expect("load gateway");
        let mut rng = SmallRng::seed_from_u64(0x1e9);
        let mut compiler = GatewayCompiler::default();
        let mut disagreements = Vec::new();
        let (mut allowed, mut checked) = (0, 0);
        // Three snapshots through one compiler: the later ones are delta writes.
        for _ in 0..3 {
            let snap = snapshot(&mut rng);
            let tables = compiler.compile(&snap).expect("compile");
            gw.apply(&tables).expect("apply");
            let pod = &snap.pods[0];
            for n in 0..PACKETS {
                let v4 = rng.random_bool(0.5);
                let (base, offset) = if v4 { (BASE4, 96) } else { (BASE6, 0) };
                let from = offset + rng.random_range(0..if v4 { 32 } else { 128 });
                let peer = ip(near(&mut rng, base, from), v4);
                let pod_ip = if v4 { IpAddr::V4(POD4) } else { IpAddr::V6(POD6) };
                let egress = rng.random_bool(0.5);
                let (src, dst) = if egress { (pod_ip, peer) } else { (peer, pod_ip) };
                // A fresh source port per packet: no packet is passed by an earlier one's flow.
                let (sport, dport) = (1024 + (n % 60000) as u16, rng.random_range(1..=5));
                let flow = Flow {
                    src: if egress { Side::Pod(pod) } else { Side::External },
                    src_ip: src,
                    dst: if egress { Side::External } else { Side::Pod(pod) },
                    dst_ip: dst,
                    protocol: 17,
                    port: dport,
                };
                let want = if snap.evaluate(&flow).allowed() { XDP_PASS } else { XDP_DROP };
                allowed += usize::from(want == XDP_PASS);
                let bytes = frame(&src.to_string(), &dst.to_string(), 17, udp(sport, dport));
                let leg = if egress { cluster } else { external };
                let got = gw.test_run(TestProgram::Gateway, leg, &bytes, 1).expect("test run").action;
                if got != want && disagreements.len() < 10 {
                    disagreements.push(format!("want {want} got {got}: {src} -> {dst} port {dport}"));
                }
                checked += 1;
            }
            gw.clear_flows().expect("clear flows");
        }
        assert!(disagreements.is_empty(), "disagreements:\n{}", disagreements.join("\n"));
        // Both verdicts are exercised, not a table that allows or denies everything.
        assert!(allowed > checked / 10 && allowed < checked * 9 / 10, "{allowed} of {checked} allowed");
    });
}
