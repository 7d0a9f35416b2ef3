//! Differential test: random snapshots (the strategies of `policy/tests/node_matches_eval.rs`:
//! selectors across namespaces, ipBlocks naming pod addresses with `except`, named ports that
//! resolve differently per pod, port ranges, TCP/UDP/SCTP) are compiled with `compile_node` and
//! applied; then every (source pod, destination pod, protocol, port, family) combination is sent
//! as a new-flow packet through the real deliver program (BPF_PROG_TEST_RUN) and its verdict is
//! compared with `NodeTables::allows` in both directions (allowed = egress allows AND ingress
//! allows). Zero disagreements; more than 100k packets.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use portcullis_node::{NodeHook, NodeOptions, TestProgram, TC_ACT_OK, TC_ACT_SHOT};
use portcullis_policy::compile::node::{compile_node, IdentityAllocator};
use portcullis_policy::model::{
    ContainerPort, Direction, Namespace, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule,
    Selector, Snapshot,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

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

fn six_pods(policies: Vec<Policy>) -> Snapshot {
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

/// A new-flow packet: TCP SYN, UDP, SCTP or ICMP echo request (identifier = `sport`).
fn packet(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let l4 = match proto {
        6 => portcullis_testkit::tcp(sport, dport, portcullis_testkit::TCP_SYN),
        17 => portcullis_testkit::udp(sport, dport),
        132 => portcullis_testkit::sctp(sport, dport),
        _ => portcullis_testkit::icmp(if src.is_ipv4() { 8 } else { 128 }, sport, &[]),
    };
    let proto = if proto == 1 && src.is_ipv6() {
        58
    } else {
        proto
    };
    portcullis_testkit::frame(&src.to_string(), &dst.to_string(), proto, l4)
}

const SNAPSHOTS: u32 = 200;

#[test]
fn deliver_program_agrees_with_node_tables() {
    if portcullis_testkit::not_root() {
        return;
    }
    let hook = RefCell::new(NodeHook::load(NodeOptions::default()).expect("load"));
    let packets = RefCell::new(0u64);
    let verdicts = RefCell::new([0u64; 2]);
    let mut runner = TestRunner::new(Config {
        cases: SNAPSHOTS,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &proptest::collection::vec(policy_strategy(), 0..6),
        |policies| {
            let snapshot = six_pods(policies);
            let tables = compile_node(&snapshot, &mut IdentityAllocator::default())
                .map_err(|e| TestCaseError::reject(e.to_string()))?;
            let mut hook = hook.borrow_mut();
            hook.apply(&tables).expect("apply");
            hook.clear_flows().expect("clear flows");
            let mut sport = 10_000u16;
            for v4 in [true, false] {
                for src in &snapshot.pods {
                    for dst in &snapshot.pods {
                        let src_ip = *src.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap();
                        let dst_ip = *dst.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap();
                        for proto in [1u8, 6, 17, 132] {
                            for port in 79u16..=85 {
                                sport += 1;
                                let expected =
                                    tables.allows(Direction::Egress, src_ip, dst_ip, proto, port)
                                        && tables.allows(
                                            Direction::Ingress,
                                            dst_ip,
                                            src_ip,
                                            proto,
                                            port,
                                        );
                                let out = hook
                                    .test_run(
                                        TestProgram::Deliver,
                                        &packet(src_ip, dst_ip, proto, sport, port),
                                        1,
                                    )
                                    .expect("test run");
                                *packets.borrow_mut() += 1;
                                verdicts.borrow_mut()[expected as usize] += 1;
                                let want = if expected { TC_ACT_OK } else { TC_ACT_SHOT };
                                prop_assert_eq!(
                                    out.action,
                                    want,
                                    "{} {} -> {} {} proto {} port {}",
                                    if v4 { "v4" } else { "v6" },
                                    src.key(),
                                    dst.key(),
                                    dst_ip,
                                    proto,
                                    port
                                );
                            }
                        }
                    }
                }
            }
            Ok(())
        },
    );
    let n = *packets.borrow();
    let [denied, allowed] = *verdicts.borrow();
    eprintln!("{n} packets over {SNAPSHOTS} snapshots: {allowed} allowed, {denied} denied");
    if let Err(e) = result {
        panic!("disagreement: {e}");
    }
    assert!(n >= 100_000, "only {n} packets");
    assert!(
        allowed > 10_000 && denied > 10_000,
        "degenerate verdict mix"
    );
}
