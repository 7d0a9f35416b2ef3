//! Random snapshots for the differential test: four pods (two labels, both families, a named
//! port) and up to four policies of random ipBlock (with excepts; now and then around the pods'
//! addresses) and pod peers (all pods or by label) and port rules.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use portcullis_policy::model::{
    ContainerPort, Namespace, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule, Selector,
    Snapshot,
};
use rand::rngs::SmallRng;
use rand::Rng;

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

/// A block around the pods' addresses (10.244.0.1-4, fd00::1-4), for peers on the node.
fn pod_cidr(rng: &mut SmallRng) -> IpNet {
    let (addr, len) = if rng.random_bool(0.5) {
        (
            IpAddr::V4(Ipv4Addr::new(10, 244, 0, 0)),
            rng.random_range(29..=32),
        )
    } else {
        let addr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0));
        (addr, rng.random_range(125..=128))
    };
    let (first, last) = if len == 32 || len == 128 {
        (1, 4)
    } else {
        (0, 0)
    };
    let host = rng.random_range(first..=last);
    let addr = match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) | host)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) | u128::from(host))),
    };
    IpNet::new(addr, len).unwrap().trunc()
}

fn app(value: &str) -> Selector {
    Selector {
        match_labels: BTreeMap::from([("app".to_string(), value.to_string())]),
        match_expressions: Vec::new(),
    }
}

fn random_rule(rng: &mut SmallRng) -> Rule {
    let mut peers = Vec::new();
    for _ in 0..rng.random_range(0..4) {
        if rng.random_bool(0.15) {
            let pod_selector = match rng.random_range(0..3) {
                0 => None,
                _ => Some(app(if rng.random_bool(0.5) { "a" } else { "b" })),
            };
            peers.push(Peer::Pods {
                pod_selector,
                namespace_selector: None,
            });
            continue;
        }
        let cidr = if rng.random_bool(0.05) {
            "0.0.0.0/0".parse().unwrap()
        } else if rng.random_bool(0.15) {
            pod_cidr(rng)
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

pub(super) fn random_snapshot(rng: &mut SmallRng) -> Snapshot {
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
                    1 => app("a"),
                    _ => app("b"),
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
        ..Default::default()
    }
}
