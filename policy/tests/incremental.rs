//! Property: compiling a sequence of snapshots with one long-lived compiler (groups reused, ids
//! kept, identities appearing and going) gives at every step the same tables, up to numbering, as
//! compiling that snapshot from scratch. Policies keep their names across versions and pods are
//! relabelled, so every reuse path of the caches is exercised.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_policy::compile::node::{compile_node, NodeCompiler, NodeTables};
use portcullis_policy::compile::{compile_gateway, GatewayCompiler, GatewayTables, PortRule};
use portcullis_policy::model::{Direction, Policy, Snapshot};
use portcullis_policy::synth::{ipblock_snapshot, IpBlockScale};
use portcullis_policy::testing::{labels, policy_strategy, six_pods};
use proptest::prelude::*;

type Resolved = BTreeMap<(Direction, IpAddr), (Vec<String>, Vec<(IpNet, Vec<PortRule>)>)>;
/// Per endpoint: peer address → rule set of its identity entry.
type ResolvedPeers = BTreeMap<(Direction, IpAddr), BTreeMap<IpAddr, Vec<PortRule>>>;

/// The gateway tables with every id replaced by what it stands for.
fn resolve_gateway(t: &GatewayTables) -> Resolved {
    (t.endpoints.iter())
        .map(|(endpoint, g)| {
            let group = &t.groups[*g as usize];
            let prefixes = (group.prefixes.iter())
                .map(|(net, rs)| (*net, t.rule_sets[*rs as usize].clone()))
                .collect();
            (*endpoint, (group.policies.clone(), prefixes))
        })
        .collect()
}

/// The node tables with ids resolved; peer entries by peer address.
fn resolve_node(t: &NodeTables) -> (Resolved, ResolvedPeers) {
    let gateway_like = GatewayTables {
        endpoints: t.endpoints.clone(),
        groups: (t.groups.iter())
            .map(|g| portcullis_policy::compile::GatewayGroup {
                direction: g.direction,
                policies: g.policies.clone(),
                prefixes: g.prefixes.clone(),
            })
            .collect(),
        rule_sets: t.rule_sets.clone(),
    };
    let peers = (t.endpoints.iter())
        .map(|(endpoint, g)| {
            let group = &t.groups[*g as usize];
            let by_address = (t.identities.iter())
                .filter_map(|(ip, id)| {
                    let rs = group.peers.get(id)?;
                    Some((*ip, t.rule_sets[*rs as usize].clone()))
                })
                .collect();
            (*endpoint, by_address)
        })
        .collect();
    (resolve_gateway(&gateway_like), peers)
}

/// One step: which pool entries are present (the first of each name wins), an optional relabel of
/// one pod, and whether namespace x gains a label.
type Step = (u8, Option<(usize, &'static str)>, bool);

fn step_snapshot(pool: &[(usize, Policy)], (mask, relabel, ns_label): Step) -> Snapshot {
    let mut policies: Vec<Policy> = Vec::new();
    for (i, (slot, policy)) in pool.iter().enumerate() {
        let mut policy = policy.clone();
        policy.name = format!("slot-{slot}");
        if mask & (1 << i) != 0 && !policies.iter().any(|p| p.key() == policy.key()) {
            policies.push(policy);
        }
    }
    let mut snapshot = six_pods(policies);
    if let Some((pod, app)) = relabel {
        snapshot.pods[pod].labels = labels(&[("app", app)]);
    }
    if ns_label {
        let x = snapshot
            .namespaces
            .get_mut("x")
            .expect("six_pods has namespace x");
        x.labels.insert("tier".into(), "front".into());
    }
    snapshot
}

fn step_strategy() -> impl Strategy<Value = Step> {
    (
        any::<u8>(),
        proptest::option::of((0usize..6, prop_oneof![Just("a"), Just("b"), Just("d")])),
        proptest::bool::weighted(0.2),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn incremental_compiles_equal_fresh_ones(
        pool in proptest::collection::vec((0usize..4, policy_strategy()), 8),
        steps in proptest::collection::vec(step_strategy(), 1..8),
    ) {
        let mut gateway = GatewayCompiler::default();
        let mut node = NodeCompiler::default();
        for step in steps {
            let snapshot = step_snapshot(&pool, step);
            let (Ok(fresh), Ok(kept)) = (compile_gateway(&snapshot), gateway.compile(&snapshot)) else {
                continue;
            };
            prop_assert_eq!(resolve_gateway(&fresh), resolve_gateway(&kept));
            let (Ok(fresh), Ok(kept)) = (compile_node(&snapshot), node.compile(&snapshot)) else {
                continue;
            };
            prop_assert_eq!(resolve_node(&fresh), resolve_node(&kept));
        }
    }
}

#[test]
fn only_groups_of_a_changed_policy_are_recompiled() {
    // 100 policies over 10 apps: each app's group holds 10 policies.
    let mut snapshot = ipblock_snapshot(IpBlockScale {
        policies: 100,
        ip_blocks: 2000,
        pods: 200,
        apps: 10,
        seed: 3,
    });
    let mut gateway = GatewayCompiler::default();
    let mut node = NodeCompiler::default();
    let first = gateway.compile(&snapshot).expect("fits");
    let first_node = node.compile(&snapshot).expect("fits");
    assert_eq!(gateway.recompiled(), 10);

    let unchanged = gateway.compile(&snapshot).expect("fits");
    assert_eq!(gateway.recompiled(), 0);
    assert_eq!(first, unchanged);
    assert_eq!(first_node, node.compile(&snapshot).expect("fits"));
    assert_eq!(node.recompiled(), 0);

    // One policy loses an ipBlock: its group alone is recompiled, every other group and id stays.
    let rules = snapshot.policies[7].egress.as_mut().expect("egress policy");
    rules[0].peers.pop();
    let changed = gateway.compile(&snapshot).expect("fits");
    assert_eq!(gateway.recompiled(), 1);
    let differing: Vec<usize> = (0..first.groups.len())
        .filter(|&g| first.groups[g] != changed.groups[g])
        .collect();
    assert_eq!(differing.len(), 1, "groups changed: {differing:?}");
    assert_eq!(first.endpoints, changed.endpoints);
    assert_eq!(
        resolve_gateway(&changed),
        resolve_gateway(&compile_gateway(&snapshot).unwrap())
    );
    node.compile(&snapshot).expect("fits");
    assert_eq!(node.recompiled(), 1);

    // A pod moving to another app's existing group recompiles nothing: only its endpoints move.
    let app = snapshot.pods[0].labels["app"].clone();
    let other = snapshot
        .pods
        .iter()
        .find(|p| p.labels["app"] != app)
        .unwrap()
        .labels
        .clone();
    snapshot.pods[0].labels = other;
    let relabelled = gateway.compile(&snapshot).expect("fits");
    assert_eq!(gateway.recompiled(), 0);
    assert_eq!(relabelled.groups, changed.groups);
    node.compile(&snapshot).expect("fits");
    assert_eq!(node.recompiled(), 0);
}
