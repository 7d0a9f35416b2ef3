//! Property: the node tables (identity entries OR longest ipBlock prefix) give the evaluator's
//! verdict for every pair of pods, each direction, protocol and port — selectors across
//! namespaces, ipBlocks naming pod addresses, named ports resolved per destination pod.

use std::net::IpAddr;

use portcullis_policy::compile::node::{compile_node, NodeCompiler};
use portcullis_policy::eval::{Flow, Side};
use portcullis_policy::model::Direction;
use portcullis_policy::testing::{policy_strategy, six_pods};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn node_tables_agree_with_the_evaluator(
        policies in proptest::collection::vec(policy_strategy(), 0..5),
        ports in proptest::collection::vec((prop_oneof![Just(1u8), Just(6), Just(17), Just(132)], 79u16..85), 6),
        v4 in any::<bool>(),
    ) {
        let snapshot = six_pods(policies);
        let tables = compile_node(&snapshot).expect("fits");
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
    let mut compiler = NodeCompiler::default();
    let before = compiler.compile(&six_pods(Vec::new())).unwrap();
    let mut changed = six_pods(Vec::new());
    changed.pods[0].labels.insert("app".into(), "moved".into());
    let after = compiler.compile(&changed).unwrap();
    let differing: Vec<_> = before
        .identities
        .iter()
        .filter(|(ip, id)| after.identities.get(ip) != Some(id))
        .collect();
    // Only the relabelled pod's two addresses change identity.
    assert_eq!(differing.len(), 2);
}
