//! Proptest strategies of random snapshots (behind the `testing` feature), shared by the property
//! tests of this crate and the node hook's differential test: six pods in two namespaces, and
//! policies with selectors across namespaces, ipBlocks naming pod addresses with `except`, named
//! ports that resolve differently per pod, port ranges and TCP/UDP/SCTP.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use crate::model::{
    ContainerPort, Namespace, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule, Selector,
    Snapshot,
};

/// A label map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// No selector, the empty selector (everything) or `app` in {a, b, c}.
fn selector_strategy() -> impl Strategy<Value = Option<Selector>> {
    prop_oneof![
        Just(None),
        Just(Some(Selector::default())),
        prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(|v| Some(Selector {
            match_labels: labels(&[("app", v)]),
            match_expressions: Vec::new(),
        })),
    ]
}

/// No selector, the empty selector or `ns` in {x, y}.
fn ns_selector_strategy() -> impl Strategy<Value = Option<Selector>> {
    prop_oneof![
        Just(None),
        Just(Some(Selector::default())),
        prop_oneof![Just("x"), Just("y")].prop_map(|v| Some(Selector {
            match_labels: labels(&[("ns", v)]),
            match_expressions: Vec::new(),
        })),
    ]
}

/// Pods by pod and/or namespace selector, IPv4 blocks over the pod addresses (with an `except`
/// naming a pod), or an IPv6 block with an `except`.
fn peer_strategy() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (selector_strategy(), ns_selector_strategy())
            .prop_filter("a peer names something", |(p, n)| p.is_some()
                || n.is_some())
            .prop_map(|(pod_selector, namespace_selector)| Peer::Pods {
                pod_selector,
                namespace_selector
            }),
        (0u8..8, 26u8..=32, proptest::option::of(0u8..8)).prop_map(|(host, len, except)| {
            let cidr = IpNet::new(IpAddr::V4(Ipv4Addr::new(10, 244, 0, host * 8)), len)
                .unwrap()
                .trunc();
            let except = except
                .map(|e| IpNet::new(IpAddr::V4(Ipv4Addr::new(10, 244, 0, e * 8 + 1)), 32).unwrap())
                .filter(|e| cidr.contains(e) && cidr.prefix_len() < 32)
                .into_iter()
                .collect();
            Peer::IpBlock { cidr, except }
        }),
        Just(Peer::IpBlock {
            cidr: "fd00::/120".parse().unwrap(),
            except: vec!["fd00::9/128".parse().unwrap()]
        }),
    ]
}

/// TCP/UDP/SCTP with any port, a number or range in 80..=84, or the named port "serve".
fn port_strategy() -> impl Strategy<Value = PolicyPort> {
    (
        prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Sctp)
        ],
        prop_oneof![
            Just(PortMatch::Any),
            (80u16..84, 0u16..2).prop_map(|(first, span)| PortMatch::Number {
                first,
                last: first + span
            }),
            Just(PortMatch::Named("serve".into())),
        ],
    )
        .prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

/// Up to two rules of up to two peers and two ports each.
fn rules_strategy() -> impl Strategy<Value = Vec<Rule>> {
    proptest::collection::vec(
        (
            proptest::collection::vec(peer_strategy(), 0..3),
            proptest::collection::vec(port_strategy(), 0..3),
        )
            .prop_map(|(peers, ports)| Rule { peers, ports }),
        0..3,
    )
}

/// A policy in namespace x or y with random selector, ingress and egress rules.
pub fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![Just("x"), Just("y")],
        selector_strategy(),
        proptest::option::of(rules_strategy()),
        proptest::option::of(rules_strategy()),
        any::<u32>(),
    )
        .prop_map(|(ns, sel, ingress, egress, id)| Policy {
            namespace: ns.into(),
            name: format!("p{id}"),
            pod_selector: sel.unwrap_or_default(),
            ingress,
            egress,
        })
}

/// Namespaces x and y (labelled `ns`), each with pods a, b, c (labelled `app`) that have one IPv4
/// (10.244.0.8i+1) and one IPv6 (fd00::8i+1) address, and a named port "serve" that is a different
/// number on different pods; plus `policies`.
pub fn six_pods(policies: Vec<Policy>) -> Snapshot {
    let mut pods = Vec::new();
    for (n, ns) in ["x", "y"].iter().enumerate() {
        for (i, app) in ["a", "b", "c"].iter().enumerate() {
            let index = (n * 3 + i) as u8;
            pods.push(Pod {
                namespace: ns.to_string(),
                name: app.to_string(),
                labels: labels(&[("app", app)]),
                ips: vec![
                    IpAddr::V4(Ipv4Addr::new(10, 244, 0, index * 8 + 1)),
                    IpAddr::V6(Ipv6Addr::new(
                        0xfd00,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        u16::from(index) * 8 + 1,
                    )),
                ],
                // "serve" names a different port on different pods.
                ports: vec![ContainerPort {
                    name: Some("serve".into()),
                    port: 80 + u16::from(index % 3),
                    protocol: Protocol::Tcp,
                }],
                host_network: false,
                node: None,
            });
        }
    }
    snapshot(&["x", "y"], pods, policies)
}

/// A snapshot of `namespaces` (each labelled `ns: <name>`), `pods` and `policies`.
pub fn snapshot(namespaces: &[&str], pods: Vec<Pod>, policies: Vec<Policy>) -> Snapshot {
    Snapshot {
        namespaces: namespaces
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Namespace {
                        name: n.to_string(),
                        labels: labels(&[("ns", n)]),
                    },
                )
            })
            .collect(),
        pods,
        policies,
        ..Default::default()
    }
}
