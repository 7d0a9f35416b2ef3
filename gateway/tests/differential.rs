//! Differential test: random policies compiled by one long-lived `GatewayCompiler` and applied as
//! deltas to one real XDP program, random packets (including malformed ones and later fragments) through
//! BPF_PROG_TEST_RUN, and every verdict compared with the policy evaluator plus a model of the
//! flow table. 100k packets by default; `PORTCULLIS_DIFF_PACKETS=10000000` for the long run.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use portcullis_gateway::{Datapath, Gateway, GatewayOptions, TestProgram, XDP_DROP, XDP_PASS};
use portcullis_policy::compile::GatewayCompiler;
use portcullis_policy::eval::{Flow, Side};
use portcullis_policy::model::{
    ContainerPort, Direction, Namespace, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule,
    Selector, Snapshot,
};
use portcullis_testkit::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CLUSTER: &str = "pcl-dc";
const EXTERNAL: &str = "pcl-de";
const PACKETS_PER_SNAPSHOT: usize = 2000;

fn random_cidr(rng: &mut SmallRng, v4: bool) -> IpNet {
    if v4 {
        let addr = 0xc0a8_0000u32 | rng.random_range(0..=0xffffu32);
        IpNet::new(IpAddr::V4(Ipv4Addr::from(addr)), rng.random_range(16..=32))
            .unwrap()
            .trunc()
    } else {
        let addr = (0x2001_0db8u128 << 96) | rng.random_range(0..=0xffffu128);
        IpNet::new(
            IpAddr::V6(Ipv6Addr::from(addr)),
            rng.random_range(112..=128),
        )
        .unwrap()
        .trunc()
    }
}

fn random_rule(rng: &mut SmallRng) -> Rule {
    let mut peers = Vec::new();
    for _ in 0..rng.random_range(0..4) {
        if rng.random_bool(0.1) {
            peers.push(Peer::Pods {
                pod_selector: None,
                namespace_selector: None,
            });
            continue;
        }
        let cidr = if rng.random_bool(0.05) {
            "0.0.0.0/0".parse().unwrap()
        } else {
            let v4 = rng.random_bool(0.7);
            random_cidr(rng, v4)
        };
        let mut except = Vec::new();
        let max = cidr.max_prefix_len();
        for _ in 0..rng.random_range(0..3) {
            if cidr.prefix_len() >= max {
                break;
            }
            let len = rng.random_range(cidr.prefix_len() + 1..=max.min(cidr.prefix_len() + 8));
            let addr = match cidr {
                IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
                    u32::from(n.network()) | (rng.random::<u32>() & !u32::from(n.netmask())),
                )),
                IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
                    u128::from(n.network()) | (rng.random::<u128>() & !u128::from(n.netmask())),
                )),
            };
            except.push(IpNet::new(addr, len).unwrap().trunc());
        }
        peers.push(Peer::IpBlock { cidr, except });
    }
    let mut ports = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        let protocol = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][rng.random_range(0..3)];
        let port = match rng.random_range(0..4) {
            0 => PortMatch::Any,
            1 => PortMatch::Named("web".into()),
            _ => {
                let first = rng.random_range(1..10);
                PortMatch::Number {
                    first,
                    last: first + rng.random_range(0..3),
                }
            }
        };
        ports.push(PolicyPort { protocol, port });
    }
    Rule { peers, ports }
}

/// Half the time a fresh random snapshot, else `previous` with one policy redrawn under the same
/// name, so groups of the other policies are reused and only part of the tables changes.
fn next_snapshot(rng: &mut SmallRng, mut previous: Snapshot) -> Snapshot {
    let fresh = random_snapshot(rng);
    if previous.policies.is_empty() || fresh.policies.is_empty() || rng.random_bool(0.5) {
        return fresh;
    }
    let i = rng.random_range(0..previous.policies.len());
    let name = previous.policies[i].name.clone();
    previous.policies[i] = Policy {
        name,
        ..fresh.policies[0].clone()
    };
    previous
}

fn random_snapshot(rng: &mut SmallRng) -> Snapshot {
    let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
    let pods = (0..4u8)
        .map(|i| Pod {
            namespace: "n".into(),
            name: format!("pod{i}"),
            labels: labels(if i % 2 == 0 { "a" } else { "b" }),
            ips: vec![
                IpAddr::V4(Ipv4Addr::new(10, 244, 0, i + 1)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i) + 1)),
            ],
            ports: vec![ContainerPort {
                name: Some("web".into()),
                port: 4 + u16::from(i),
                protocol: Protocol::Tcp,
            }],
            host_network: false,
            node: None,
        })
        .collect();
    let policies = (0..rng.random_range(0..5))
        .map(|i| {
            let rules = |rng: &mut SmallRng| -> Option<Vec<Rule>> {
                rng.random_bool(0.6).then(|| {
                    (0..rng.random_range(0..3))
                        .map(|_| random_rule(rng))
                        .collect()
                })
            };
            Policy {
                namespace: "n".into(),
                name: format!("p{i}"),
                pod_selector: match rng.random_range(0..3) {
                    0 => Selector::default(),
                    1 => Selector {
                        match_labels: labels("a"),
                        match_expressions: Vec::new(),
                    },
                    _ => Selector {
                        match_labels: labels("b"),
                        match_expressions: Vec::new(),
                    },
                },
                ingress: rules(rng),
                egress: rules(rng),
            }
        })
        .collect();
    Snapshot {
        namespaces: BTreeMap::from([(
            "n".to_string(),
            Namespace {
                name: "n".into(),
                labels: BTreeMap::new(),
            },
        )]),
        pods,
        policies,
    }
}

/// How a generated packet should be treated before policy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Normal,
    TruncatedL4,
    LaterFragment,
}

#[derive(Debug)]
struct Packet {
    bytes: Vec<u8>,
    cluster_leg: bool,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    sport: u16,
    dport: u16,
    syn_only: bool,
    shape: Shape,
}

fn l4(protocol: u8, sport: u16, dport: u16, syn: bool, v4: bool) -> Vec<u8> {
    match protocol {
        6 => tcp(sport, dport, if syn { TCP_SYN } else { TCP_ACK }),
        17 => udp(sport, dport),
        132 => sctp(sport, dport),
        1 | 58 => icmp(if v4 { 8 } else { 128 }, sport, &[]),
        _ => vec![0; 8],
    }
}

fn random_packet(rng: &mut SmallRng, snapshot: &Snapshot) -> Packet {
    let v4 = rng.random_bool(0.7);
    let pod_ip = if rng.random_bool(0.95) {
        let pod = &snapshot.pods[rng.random_range(0..snapshot.pods.len())];
        *pod.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap()
    } else if v4 {
        IpAddr::V4(Ipv4Addr::new(10, 244, 9, 9))
    } else {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 9, 9))
    };
    let external = if v4 {
        IpAddr::V4(Ipv4Addr::from(
            0xc0a8_0000u32 | rng.random_range(0..=0xffffu32),
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8u128 << 96) | rng.random_range(0..=0xffffu128),
        ))
    };
    let protocol = match rng.random_range(0..20) {
        0..8 => 6,
        8..13 => 17,
        13..16 => 132,
        16..19 => {
            if v4 {
                1
            } else {
                58
            }
        }
        _ => 47,
    };
    let (mut sport, mut dport) = (rng.random_range(1024..=65535), rng.random_range(1..12));
    if matches!(protocol, 1 | 58) {
        dport = sport; // the echo identifier stands for both ports
    }
    if protocol == 47 {
        (sport, dport) = (0, 0);
    }
    let syn = rng.random_bool(0.75);
    let cluster_leg = rng.random_bool(0.5);
    let (src, dst) = if cluster_leg {
        (pod_ip, external)
    } else {
        (external, pod_ip)
    };
    let shape = match rng.random_range(0..20) {
        0 if matches!(protocol, 6 | 17 | 132) => Shape::TruncatedL4,
        1 => Shape::LaterFragment,
        _ => Shape::Normal,
    };
    let mut payload = l4(protocol, sport, dport, syn, v4);
    if shape == Shape::TruncatedL4 {
        payload.truncate(2);
    }
    let bytes = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let frag = if shape == Shape::LaterFragment {
                0x0010
            } else {
                0
            };
            frame_v4(
                &[],
                ipv4(
                    &s.to_string(),
                    &d.to_string(),
                    protocol,
                    &[],
                    frag,
                    &payload,
                ),
            )
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let (next, rest) = if shape == Shape::LaterFragment {
                let mut r = ext_frag(protocol, 2, false);
                r.extend(&payload);
                (44, r)
            } else {
                (protocol, payload)
            };
            frame_v6(ipv6(&s.to_string(), &d.to_string(), next, &rest))
        }
        _ => unreachable!("one family"),
    };
    Packet {
        bytes,
        cluster_leg,
        src,
        dst,
        protocol,
        sport,
        dport,
        syn_only: syn,
        shape,
    }
}

type FlowId = (IpAddr, u16, IpAddr, u16, u8);

fn flow_id(p: &Packet) -> FlowId {
    let a = (p.src, p.sport);
    let b = (p.dst, p.dport);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    (lo.0, lo.1, hi.0, hi.1, p.protocol)
}

/// The verdict the datapath must give, updating the flow model.
fn expected(
    snapshot: &Snapshot,
    p: &Packet,
    flows: &mut HashSet<FlowId>,
    selected: &dyn Fn(Direction, IpAddr) -> bool,
) -> u32 {
    if p.shape != Shape::Normal {
        return XDP_DROP;
    }
    let id = flow_id(p);
    if flows.contains(&id) {
        return XDP_PASS;
    }
    let side = |ip: IpAddr| match snapshot.pods.iter().find(|pod| pod.ips.contains(&ip)) {
        Some(pod) => Side::Pod(pod),
        None => Side::External,
    };
    let (src, dst) = if p.cluster_leg {
        (side(p.src), Side::External)
    } else {
        (Side::External, side(p.dst))
    };
    let allowed = snapshot
        .evaluate(&Flow {
            src,
            src_ip: p.src,
            dst,
            dst_ip: p.dst,
            protocol: p.protocol,
            port: p.dport,
        })
        .allowed();
    if !allowed {
        return XDP_DROP;
    }
    let tcp = p.protocol == 6;
    let (direction, pod) = if p.cluster_leg {
        (Direction::Egress, p.src)
    } else {
        (Direction::Ingress, p.dst)
    };
    if tcp && !p.syn_only && selected(direction, pod) {
        return XDP_DROP;
    }
    if !tcp || p.syn_only {
        flows.insert(id);
    }
    XDP_PASS
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn xdp_program_agrees_with_the_evaluator_on_random_policies_and_packets() {
    require_root();
    let total: usize = std::env::var("PORTCULLIS_DIFF_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("PORTCULLIS_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let ns = NetNs::new("diff");
    ns.run(|| {
        sh(&format!(
            "ip link add {CLUSTER} type veth peer name {CLUSTER}p && ip link add {EXTERNAL} type veth peer name {EXTERNAL}p && \
             for i in {CLUSTER} {CLUSTER}p {EXTERNAL} {EXTERNAL}p; do ip link set $i up; done"
        ));
        let (cluster, external) = (ifindex(CLUSTER), ifindex(EXTERNAL));
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut checked = 0;
        let mut disagreements = Vec::new();
        // One program for the whole run, fed by one long-lived compiler: every snapshot after
        // the first goes in as a delta (stable ids, reused groups) through a generation switch.
        let mut gw = Gateway::load(GatewayOptions {
            cluster_iface: CLUSTER.into(),
            external_iface: EXTERNAL.into(),
            ..Default::default()
        })
        .expect("load gateway");
        let mut compiler = GatewayCompiler::default();
        let mut snapshot = random_snapshot(&mut rng);
        while checked < total {
            if checked > 0 {
                snapshot = next_snapshot(&mut rng, snapshot);
            }
            let tables = compiler.compile(&snapshot).expect("small rule sets fit");
            gw.apply(&tables).expect("apply");
            // The model starts each snapshot with no flows.
            gw.clear_flows().expect("clear flows");
            let selected = |d: Direction, ip: IpAddr| tables.endpoints.contains_key(&(d, ip));
            let mut flows = HashSet::new();
            for _ in 0..PACKETS_PER_SNAPSHOT.min(total - checked) {
                let p = random_packet(&mut rng, &snapshot);
                let want = expected(&snapshot, &p, &mut flows, &selected);
                let leg = if p.cluster_leg { cluster } else { external };
                let got = gw.test_run(TestProgram::Gateway, leg, &p.bytes, 1).expect("test run").action;
                if got != want && disagreements.len() < 10 {
                    disagreements.push(format!("want {want} got {got}: {p:?}\npolicies: {:?}", snapshot.policies));
                }
                checked += 1;
            }
        }
        assert!(disagreements.is_empty(), "{} disagreements (seed {seed}), first:\n{}", disagreements.len(), disagreements.join("\n\n"));
        println!("{checked} packets, 0 disagreements (seed {seed})");
    });
}
