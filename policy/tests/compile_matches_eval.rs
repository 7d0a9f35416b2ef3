//! Property: a lookup in the compiled gateway tables (pod → group, longest prefix → rule set) gives
//! the evaluator's verdict for every pod, external address, protocol and port, IPv4 and IPv6,
//! whatever the overlaps of cidrs and excepts.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use portcullis_policy::compile::compile_gateway;
use portcullis_policy::eval::{Flow, Side};
use portcullis_policy::model::{
    ContainerPort, Direction, Namespace, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule,
    Selector, Snapshot,
};
use proptest::prelude::*;

const V4_BASE: u32 = 0xc0a8_0000; // 192.168.0.0/16: small space so prefixes overlap often
const V6_BASE: u128 = 0x2001_0db8_u128 << 96;

fn cidr_strategy() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        8 => (any::<u16>(), 16u8..=32).prop_map(|(low, len)| {
            IpNet::new(IpAddr::V4(Ipv4Addr::from(V4_BASE | u32::from(low))), len).unwrap().trunc()
        }),
        4 => (any::<u16>(), 112u8..=128).prop_map(|(low, len)| {
            IpNet::new(IpAddr::V6(Ipv6Addr::from(V6_BASE | u128::from(low))), len).unwrap().trunc()
        }),
        1 => Just("0.0.0.0/0".parse().unwrap()),
        1 => Just("::/0".parse().unwrap()),
    ]
}

/// An ipBlock whose excepts are strict sub-prefixes of its cidr.
fn ip_block_strategy() -> impl Strategy<Value = Peer> {
    cidr_strategy().prop_flat_map(|cidr| {
        let max = cidr.max_prefix_len();
        let excepts = if cidr.prefix_len() >= max {
            Just(Vec::new()).boxed()
        } else {
            proptest::collection::vec((any::<u128>(), 1u8..=8), 0..4)
                .prop_map(move |raw| {
                    raw.into_iter()
                        .map(|(bits, extra)| {
                            let len = (cidr.prefix_len() + extra).min(max);
                            let addr = match cidr {
                                IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
                                    u32::from(n.network())
                                        | (bits as u32 & !u32::from(n.netmask())),
                                )),
                                IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
                                    u128::from(n.network()) | (bits & !u128::from(n.netmask())),
                                )),
                            };
                            IpNet::new(addr, len).unwrap().trunc()
                        })
                        .collect()
                })
                .boxed()
        };
        excepts.prop_map(move |except| Peer::IpBlock { cidr, except })
    })
}

fn protocol_strategy() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

fn port_strategy() -> impl Strategy<Value = PolicyPort> {
    (
        protocol_strategy(),
        prop_oneof![
            Just(PortMatch::Any),
            (1u16..8, 0u16..3).prop_map(|(first, span)| PortMatch::Number {
                first,
                last: first + span
            }),
            Just(PortMatch::Named("web".into())),
            Just(PortMatch::Named("missing".into())),
        ],
    )
        .prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

fn rule_strategy() -> impl Strategy<Value = Rule> {
    (
        proptest::collection::vec(
            prop_oneof![
                6 => ip_block_strategy(),
                1 => Just(Peer::Pods { pod_selector: None, namespace_selector: None }),
            ],
            0..4,
        ),
        proptest::collection::vec(port_strategy(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn selector_strategy() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::default()),
        prop_oneof![Just("a"), Just("b")].prop_map(|app| Selector {
            match_labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            match_expressions: Vec::new(),
        }),
    ]
}

fn policy_strategy() -> impl Strategy<Value = Policy> {
    (
        selector_strategy(),
        proptest::option::of(proptest::collection::vec(rule_strategy(), 0..3)),
        proptest::option::of(proptest::collection::vec(rule_strategy(), 0..3)),
        any::<u32>(),
    )
        .prop_map(|(pod_selector, ingress, egress, id)| Policy {
            namespace: "n".into(),
            name: format!("p{id}"),
            pod_selector,
            ingress,
            egress,
        })
}

fn snapshot(policies: Vec<Policy>) -> Snapshot {
    let pods = (0..3u8)
        .map(|i| Pod {
            namespace: "n".into(),
            name: format!("pod{i}"),
            labels: BTreeMap::from([(
                "app".to_string(),
                if i == 0 { "a" } else { "b" }.to_string(),
            )]),
            ips: vec![
                IpAddr::V4(Ipv4Addr::new(10, 244, 0, i + 1)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i) + 1)),
            ],
            // pod1 and pod2 resolve "web" to different ports: groups must keep them apart.
            ports: vec![ContainerPort {
                name: Some("web".into()),
                port: 3 + u16::from(i),
                protocol: Protocol::Tcp,
            }],
            host_network: false,
            node: None,
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

fn external_strategy() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u16>().prop_map(|low| IpAddr::V4(Ipv4Addr::from(V4_BASE | u32::from(low)))),
        any::<u16>().prop_map(|low| IpAddr::V6(Ipv6Addr::from(V6_BASE | u128::from(low)))),
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tables_agree_with_the_evaluator(
        policies in proptest::collection::vec(policy_strategy(), 0..5),
        probes in proptest::collection::vec(
            (external_strategy(), prop_oneof![Just(1u8), Just(6), Just(17), Just(132)], 1u16..12),
            64,
        ),
    ) {
        let snapshot = snapshot(policies);
        let tables = compile_gateway(&snapshot).expect("small rule sets fit");
        for (external, protocol, port) in probes {
            for pod in &snapshot.pods {
                let pod_ip = *pod.ips.iter().find(|ip| ip.is_ipv4() == external.is_ipv4()).unwrap();
                let egress = snapshot.evaluate(&Flow {
                    src: Side::Pod(pod), src_ip: pod_ip,
                    dst: Side::External, dst_ip: external, protocol, port,
                });
                prop_assert_eq!(
                    egress.allowed(),
                    tables.allows(Direction::Egress, pod_ip, external, protocol, port),
                    "egress {} -> {} proto {} port {}: {:?}", pod_ip, external, protocol, port, egress
                );
                let ingress = snapshot.evaluate(&Flow {
                    src: Side::External, src_ip: external,
                    dst: Side::Pod(pod), dst_ip: pod_ip, protocol, port,
                });
                prop_assert_eq!(
                    ingress.allowed(),
                    tables.allows(Direction::Ingress, pod_ip, external, protocol, port),
                    "ingress {} -> {} proto {} port {}: {:?}", external, pod_ip, protocol, port, ingress
                );
            }
        }
    }
}
