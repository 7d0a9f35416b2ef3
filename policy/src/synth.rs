//! Synthetic clusters for benchmarks and scale tests: many overlapping ipBlocks with excepts,
//! generated deterministically from a seed, so every contender and every run sees the same rules.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::model::{
    Namespace, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule, Selector, Snapshot,
};

/// Shape of a synthetic egress rule set.
#[derive(Clone, Copy, Debug)]
pub struct IpBlockScale {
    pub policies: usize,
    /// ipBlocks over all policies (each with up to two excepts).
    pub ip_blocks: usize,
    /// Pods, labelled `app: app-<i % apps>`; policy i selects `app-<i % apps>`.
    pub pods: usize,
    pub apps: usize,
    pub seed: u64,
}

/// First octets of the synthetic external prefixes (11.0.0.0 to 110.255.255.255: public-looking,
/// clear of the pod range 10.0.0.0/8 and of loopback).
pub const EXTERNAL_FIRST_OCTETS: std::ops::RangeInclusive<u32> = 11..=110;

/// A prefix length skewed to long prefixes as real allow-lists are (hosts and /24s, few wide blocks).
fn prefix_len(rng: &mut SmallRng) -> u8 {
    match rng.random_range(0..100) {
        0..5 => rng.random_range(12..=16),
        5..30 => rng.random_range(17..=23),
        _ => rng.random_range(24..=32),
    }
}

/// Ports the synthetic rules allow (databases and APIs an egress gateway typically guards).
const SERVICE_PORTS: [u16; 8] = [443, 5432, 3306, 6379, 9092, 27017, 8443, 11211];

/// One namespace `bench`, `pods` pods in 10.244.0.0/16, and `policies` egress policies whose
/// ipBlocks (lengths /12 to /32, overlapping) lie in [`EXTERNAL_FIRST_OCTETS`], with excepts inside them
/// and one TCP service port each.
pub fn ipblock_snapshot(scale: IpBlockScale) -> Snapshot {
    let mut rng = SmallRng::seed_from_u64(scale.seed);
    let apps = scale.apps.max(1);
    let random_block = |rng: &mut SmallRng| {
        let len = prefix_len(rng);
        let first_octet = rng.random_range(EXTERNAL_FIRST_OCTETS);
        let addr = (first_octet << 24) | (rng.random::<u32>() >> 8);
        let cidr = IpNet::new(IpAddr::V4(Ipv4Addr::from(addr)), len)
            .expect("length within 0..=32")
            .trunc();
        let except = (0..rng.random_range(0..=2))
            .filter(|_| len < 32)
            .map(|_| {
                let sub = rng.random_range(len + 1..=32);
                let host = rng.random::<u32>() & !cidr_mask(len);
                IpNet::new(
                    IpAddr::V4(Ipv4Addr::from(addr & cidr_mask(len) | host)),
                    sub,
                )
                .expect("length within 0..=32")
                .trunc()
            })
            .collect();
        Peer::IpBlock { cidr, except }
    };
    let per_policy = scale.ip_blocks.div_ceil(scale.policies.max(1));
    let mut remaining = scale.ip_blocks;
    let policies = (0..scale.policies)
        .map(|i| {
            let count = per_policy.min(remaining);
            remaining -= count;
            let peers = (0..count).map(|_| random_block(&mut rng)).collect();
            let port = SERVICE_PORTS[rng.random_range(0..SERVICE_PORTS.len())];
            Policy {
                namespace: "bench".into(),
                name: format!("egress-{i}"),
                pod_selector: Selector {
                    match_labels: BTreeMap::from([(
                        "app".to_string(),
                        format!("app-{}", i % apps),
                    )]),
                    match_expressions: Vec::new(),
                },
                ingress: None,
                egress: Some(vec![Rule {
                    peers,
                    ports: vec![PolicyPort {
                        protocol: Protocol::Tcp,
                        port: PortMatch::Number {
                            first: port,
                            last: port,
                        },
                    }],
                }]),
            }
        })
        .collect();
    let pods = (0..scale.pods)
        .map(|i| Pod {
            namespace: "bench".into(),
            name: format!("pod-{i}"),
            labels: BTreeMap::from([("app".to_string(), format!("app-{}", i % apps))]),
            ips: vec![IpAddr::V4(Ipv4Addr::from(0x0af4_0000u32 + i as u32 + 1))],
            ports: Vec::new(),
            host_network: false,
            node: None,
        })
        .collect();
    Snapshot {
        namespaces: BTreeMap::from([(
            "bench".to_string(),
            Namespace {
                name: "bench".into(),
                labels: BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    "bench".to_string(),
                )]),
            },
        )]),
        pods,
        policies,
        ..Default::default()
    }
}

fn cidr_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}
