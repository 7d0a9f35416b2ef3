//! The node hook's own tables full in turn (`IDENTITIES`, `PEERS`; the maps both programs share
//! are the gateway's `tables_full.rs`): an update that would not fit is refused as a whole before
//! any map is written, naming the map and its limit, and the generation in force stays.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use portcullis_common::*;
use portcullis_node::{Error, NodeHook, NodeOptions};
use portcullis_policy::compile::node::{NodeGroup, NodeTables};
use portcullis_policy::compile::PortRule;
use portcullis_policy::model::Direction;
use portcullis_testkit::require_root;

fn v4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(i))
}

/// Two pods; the first may receive from the second on every port.
fn base() -> NodeTables {
    let (a, b) = (v4(0x0af4_010a), v4(0x0af4_020a));
    NodeTables {
        identities: BTreeMap::from([(a, 1), (b, 2)]),
        endpoints: BTreeMap::from([((Direction::Ingress, a), 0)]),
        groups: vec![NodeGroup {
            direction: Direction::Ingress,
            policies: vec!["default/allow-b".into()],
            peers: BTreeMap::from([(2, 1)]),
            prefixes: vec![],
        }],
        rule_sets: vec![
            vec![],
            vec![PortRule {
                protocol: None,
                first: 0,
                last: 65535,
            }],
        ],
    }
}

fn oversized(map: &str) -> NodeTables {
    let mut t = base();
    match map {
        MAP_IDENTITIES => {
            let half = MAX_IDENTITIES / 2;
            t.identities
                .extend((0..half).map(|i| (v4(0x0a00_0000 + i), 3 + i)));
        }
        MAP_PEERS => {
            let half = MAX_PEERS / 2;
            t.groups[0].peers.extend((0..half).map(|i| (3 + i, 1)));
        }
        other => panic!("no oversized tables for {other}"),
    }
    t
}

#[test]
#[ignore = "needs root (BPF): scripts/test runs it with --include-ignored"]
fn an_update_that_does_not_fit_the_node_tables_is_refused_whole() {
    require_root();
    let mut hook = NodeHook::load(NodeOptions::default()).expect("load");
    hook.apply(&base()).expect("apply the base tables");
    let in_force = hook.status().unwrap();
    for (map, capacity) in [(MAP_IDENTITIES, MAX_IDENTITIES), (MAP_PEERS, MAX_PEERS)] {
        let err = hook.apply(&oversized(map)).expect_err(map);
        let message = err.to_string();
        match &err {
            Error::TooManyEntries {
                map: named,
                capacity: cap,
                max,
                ..
            } => assert_eq!(
                (*named, *cap, *max),
                (map, capacity, capacity as usize / 2),
                "{message}"
            ),
            other => panic!("{map}: expected TooManyEntries, got {other:?}"),
        }
        assert!(message.contains(map), "{message}");
        let now = hook.status().unwrap();
        assert_eq!(
            (now.tables.generation, now.own.identities, now.own.peers),
            (
                in_force.tables.generation,
                in_force.own.identities,
                in_force.own.peers
            ),
            "{map}: the maps changed"
        );
    }
    let stats = hook.apply(&base()).expect("an update that fits");
    assert_ne!(stats.generation, in_force.tables.generation);
}
