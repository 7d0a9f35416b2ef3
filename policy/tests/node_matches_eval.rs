//! Property: the node tables (identity entries OR longest ipBlock prefix) give the evaluator's
//! verdict for every pair of pods, each direction, protocol and port — selectors across
//! namespaces, ipBlocks naming pod addresses, named ports resolved per destination pod.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use portcullis_policy::compile::node::{compile_node, IdentityAllocator};
use portcullis_policy::eval::{Flow, Side};
use portcullis_policy::model::{
    ContainerPort, Direction, Namespace, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule,
    Selector, Snapshot,
};
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

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

fn policy_strategy() -> impl Strategy<Value = Policy> {
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

fn snapshot(policies: Vec<Policy>) -> Snapshot {
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
    let namespaces = ["x", "y"]
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
        .collect();
    Snapshot {
        namespaces,
        pods,
        policies,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn node_tables_agree_with_the_evaluator(
        policies in proptest::collection::vec(policy_strategy(), 0..5),
        ports in proptest::collection::vec((prop_oneof![Just(1u8), Just(6), Just(17), Just(132)], 79u16..85), 6),
        v4 in any::<bool>(),
    ) {
        let snapshot = snapshot(policies);
        let tables = compile_node(&snapshot, &mut IdentityAllocator::default()).expect("fits");
        for src in &snapshot.pods {
            for dst in &snapshot.pods {
                let src_ip = *src.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap();
                let dst_ip = *dst.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap();
                for &(protocol, port) in &ports {
                    // From an address that is no pod (an external host, a node), through this
                    // node's hook: only the destination's ingress applies.
                    let outside: IpAddr = if v4 { "10.244.0.2".parse().unwrap() } else { "fd00::2".parse().unwrap() };
                    let from_outside = snapshot.evaluate(&Flow {
                        src: Side::External, src_ip: outside, dst: Side::Pod(dst), dst_ip, protocol, port,
                    });
                    prop_assert_eq!(
                        from_outside.ingress.allows(),
                        tables.allows(Direction::Ingress, dst_ip, outside, protocol, port),
                        "ingress {} -> {} {}/{}: {:?}", outside, dst.key(), protocol, port, from_outside.ingress
                    );
                    let verdict = snapshot.evaluate(&Flow {
                        src: Side::Pod(src), src_ip, dst: Side::Pod(dst), dst_ip, protocol, port,
                    });
                    prop_assert_eq!(
                        verdict.egress.allows(),
                        tables.allows(Direction::Egress, src_ip, dst_ip, protocol, port),
                        "egress {} -> {} {}/{}: {:?}", src.key(), dst.key(), protocol, port, verdict.egress
                    );
                    prop_assert_eq!(
                        verdict.ingress.allows(),
                        tables.allows(Direction::Ingress, dst_ip, src_ip, protocol, port),
                        "ingress {} -> {} {}/{}: {:?}", src.key(), dst.key(), protocol, port, verdict.ingress
                    );
                }
            }
        }
    }
}

#[test]
fn identities_are_stable_across_recompiles() {
    let mut allocator = IdentityAllocator::default();
    let before = compile_node(&snapshot(Vec::new()), &mut allocator).unwrap();
    let mut changed = snapshot(Vec::new());
    changed.pods[0].labels.insert("app".into(), "moved".into());
    let after = compile_node(&changed, &mut allocator).unwrap();
    let differing: Vec<_> = before
        .identities
        .iter()
        .filter(|(ip, id)| after.identities.get(ip) != Some(id))
        .collect();
    // Only the relabelled pod's two addresses change identity.
    assert_eq!(differing.len(), 2);
}
