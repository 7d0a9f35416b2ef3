//! Property: the connectivity graph agrees with the evaluator (what `explain` answers). For every
//! ordered pair of distinct pods, and every pod with every external block (both ways, probed at
//! the block's representative address), an edge allows protocol/port P iff the evaluator allows
//! P, and the rule `explain` names for an allowed P is among the edge's admitting rules.

use std::net::IpAddr;

use portcullis_policy::eval::DirectionVerdict;
use portcullis_policy::graph::{connectivity, pod_id, Focus, Graph, PortSet};
use portcullis_policy::model::{Peer, Protocol, Snapshot};
use portcullis_policy::probe::{Probe, ProbeEndpoint};
use portcullis_policy::testing::{policy_strategy, six_pods};
use proptest::prelude::*;

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// Ports around every range of the label, plus the ports the random rules name and the extremes.
fn sample_ports(ports: &PortSet) -> Vec<u16> {
    let mut sample = vec![0, 1, 53, 79, 80, 81, 82, 83, 84, 85, 443, 8080, u16::MAX];
    for (_, ranges) in ports.ranges() {
        for &(first, last) in ranges {
            sample.extend([first.saturating_sub(1), first, last, last.saturating_add(1)]);
        }
    }
    sample
}

fn check_pair(snapshot: &Snapshot, graph: &Graph, from: ProbeEndpoint, to: ProbeEndpoint) {
    let id = |endpoint: &ProbeEndpoint| match endpoint {
        ProbeEndpoint::Pod { namespace, name } => pod_id(namespace, name),
        ProbeEndpoint::External(ip) => graph
            .blocks
            .iter()
            .find(|b| b.representative == Some(*ip))
            .map(|b| b.id.clone())
            .expect("a block for the address"),
    };
    let (from_id, to_id) = (id(&from), id(&to));
    let edge = graph
        .edges
        .iter()
        .find(|e| e.from == from_id && e.to == to_id);
    let none = PortSet::default();
    let ports = edge.map_or(&none, |e| &e.ports);
    assert!(
        edge.is_none() || !ports.is_empty(),
        "empty edge {from_id} -> {to_id}"
    );
    for protocol in PROTOCOLS {
        for port in sample_ports(ports) {
            let probe = Probe {
                from: from.clone(),
                to: to.clone(),
                protocol,
                port,
            };
            let Ok(verdict) = snapshot.evaluate_probe(&probe) else {
                assert!(edge.is_none(), "edge for unanswerable probe {probe}");
                continue;
            };
            assert_eq!(
                ports.contains(protocol, port),
                verdict.allowed(),
                "{probe}: graph says {ports}, evaluator says {verdict:?}"
            );
            let Some(edge) = edge.filter(|_| verdict.allowed()) else {
                continue;
            };
            for side in [&verdict.egress, &verdict.ingress] {
                if let DirectionVerdict::Allowed { by, .. } = side {
                    assert!(
                        edge.admitted_by.iter().any(|a| a.policy == by.policy
                            && a.direction == by.direction
                            && a.rule == by.rule
                            && a.ports.contains(protocol, port)),
                        "{probe}: explain's rule {by} is not among {:?}",
                        edge.admitted_by
                    );
                }
            }
        }
    }
}

fn pod_endpoint(namespace: &str, name: &str) -> ProbeEndpoint {
    ProbeEndpoint::Pod {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn edges_agree_with_the_evaluator(policies in proptest::collection::vec(policy_strategy(), 0..5)) {
        let snapshot = six_pods(policies);
        let graph = connectivity(&snapshot, &[], &Focus::Everything).unwrap();
        let pods: Vec<(String, String)> =
            snapshot.pods.iter().map(|p| (p.namespace.clone(), p.name.clone())).collect();
        for (a_ns, a) in &pods {
            for (b_ns, b) in &pods {
                if (a_ns, a) != (b_ns, b) {
                    check_pair(&snapshot, &graph, pod_endpoint(a_ns, a), pod_endpoint(b_ns, b));
                }
            }
        }
        let named_blocks = snapshot
            .policies
            .iter()
            .flat_map(|p| p.ingress.iter().flatten().chain(p.egress.iter().flatten()))
            .flat_map(|r| &r.peers)
            .filter(|p| matches!(p, Peer::IpBlock { .. }))
            .count();
        prop_assert_eq!(graph.blocks.is_empty(), named_blocks == 0);
        let addresses: Vec<IpAddr> = graph.blocks.iter().filter_map(|b| b.representative).collect();
        for address in addresses {
            for (ns, name) in &pods {
                let external = ProbeEndpoint::External(address);
                check_pair(&snapshot, &graph, pod_endpoint(ns, name), external.clone());
                check_pair(&snapshot, &graph, external, pod_endpoint(ns, name));
            }
        }
    }

    /// A focused graph is the full graph's edges touching the focus.
    #[test]
    fn focus_keeps_the_edges_touching_it(policies in proptest::collection::vec(policy_strategy(), 0..4)) {
        let snapshot = six_pods(policies);
        let full = connectivity(&snapshot, &[], &Focus::Everything).unwrap();
        let focus = Focus::Pod { namespace: "x".into(), name: "a".into() };
        let focused = connectivity(&snapshot, &[], &focus).unwrap();
        let id = pod_id("x", "a");
        let expected: Vec<(&str, &str, String)> = full
            .edges
            .iter()
            .filter(|e| e.from == id || e.to == id)
            .map(|e| (e.from.as_str(), e.to.as_str(), e.ports.to_string()))
            .collect();
        let got: Vec<(&str, &str, String)> = focused
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.ports.to_string()))
            .collect();
        prop_assert_eq!(got, expected);
    }
}
