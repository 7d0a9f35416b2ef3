//! Every policy table full in turn: an update that would not fit in one of the maps is refused
//! as a whole before any map is written, with an error naming the map and its limit, and the
//! generation in force stays — same generation, same entries, same verdicts — and the next
//! update that fits is applied. The sizes are the real maps' (compile-time constants): nothing
//! is written for a refused update, so the oversized tables cost only their construction.
//! (Flow tables are LRU maps and evict instead, counted in `status`: `fixtures.rs`; translations
//! have their own drop reason: `snat_edge`.)

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use portcullis_common::*;
use portcullis_gateway::{Error, Gateway, GatewayOptions, TestProgram, XDP_DROP, XDP_PASS};
use portcullis_policy::compile::{GatewayGroup, GatewayTables, PortRule};
use portcullis_policy::model::Direction;
use portcullis_testkit::*;

const POD: &str = "10.244.1.10";
/// Inside the pod's allowed prefix.
const DB: &str = "192.168.1.20";
/// Outside it.
const OTHER: &str = "198.51.100.7";

fn base() -> GatewayTables {
    egress_allowed(&[POD], "default/allow-db", &["192.168.1.0/24"])
}

fn v4(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(i))
}

fn every_port() -> Vec<PortRule> {
    vec![PortRule {
        protocol: None,
        first: 0,
        last: 65535,
    }]
}

/// One more than a generation's half of `capacity`.
fn over(capacity: u32) -> usize {
    capacity as usize / 2 + 1
}

/// The base tables grown past the room of map `map`.
fn oversized(map: &str) -> GatewayTables {
    let mut t = base();
    match map {
        MAP_ENDPOINTS => {
            let more = (1..over(MAX_ENDPOINTS) as u32)
                .map(|i| ((Direction::Egress, v4(0x0a00_0000 + i)), 0));
            t.endpoints.extend(more);
        }
        MAP_RULE_SETS => t.rule_sets.resize(over(MAX_RULE_SETS), every_port()),
        MAP_PREFIX_LENGTHS => {
            // Groups of no policy (retired ids) still hold prefixes: the lengths map's room.
            let groups = (0..over(MAX_PREFIX_GROUPS) as u32).map(|i| GatewayGroup {
                direction: Direction::Egress,
                policies: vec![],
                prefixes: vec![(IpNet::new(v4(i << 8), 24).unwrap(), 0)],
            });
            t.groups.extend(groups);
        }
        MAP_DROPS_BY_GROUP => {
            let groups = (0..over(MAX_GROUP_DROPS)).map(|i| GatewayGroup {
                direction: Direction::Egress,
                policies: vec![format!("default/p{i}")],
                prefixes: vec![],
            });
            t.groups.extend(groups);
        }
        MAP_PREFIXES => t.groups[0].prefixes = prefixes_with_many_markers(),
        other => panic!("no oversized tables for {other}"),
    }
    t
}

/// Fewer prefixes than a generation's room in `PREFIXES`, but more entries once the search's
/// markers are counted: 600k /32s spread over the address space, and one prefix at every
/// shorter length, so each /32's search passes (and marks) four shorter lengths.
fn prefixes_with_many_markers() -> Vec<(IpNet, u32)> {
    let spread = (0..600_000u32).map(|i| {
        (
            IpNet::new(v4(i.wrapping_mul(2_654_435_761)), 32).unwrap(),
            0,
        )
    });
    let lengths = (1..32u8).map(|len| (IpNet::new(v4(0xc0a8_0100), len).unwrap().trunc(), 0));
    let prefixes: Vec<(IpNet, u32)> = lengths.chain(spread).collect();
    assert!(
        prefixes.len() <= MAX_PREFIXES as usize / 2,
        "the prefix count alone must fit"
    );
    prefixes
}

/// (action for pod → DB, action for pod → OTHER), TCP SYN from the cluster leg.
fn verdicts(gw: &mut Gateway, leg: u32) -> (u32, u32) {
    let mut judge = |dst: &str, sport: u16| {
        let frame = Packet::tcp(POD, sport, dst, 5432, TCP_SYN).frame();
        gw.test_run(TestProgram::Gateway, leg, &frame, 1)
            .expect("test run")
            .action
    };
    (judge(DB, 40001), judge(OTHER, 40002))
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn an_update_that_does_not_fit_any_table_is_refused_whole_and_the_generation_stays() {
    require_root();
    let ns = NetNs::new("tfull");
    ns.run(|| {
        sh("ip link add tc0 type veth peer name tc1 && ip link add te0 type veth peer name te1 && \
            for i in tc0 tc1 te0 te1; do ip link set $i up; done");
        let mut gw = Gateway::load(GatewayOptions {
            cluster_iface: "tc0".into(),
            external_iface: "te0".into(),
            ..Default::default()
        })
        .expect("load");
        let leg = ifindex("tc0");
        gw.apply(&base()).expect("apply the base tables");
        let in_force = gw.status().unwrap().tables;
        assert_eq!(verdicts(&mut gw, leg), (XDP_PASS, XDP_DROP));
        let mut counts = BTreeMap::new();
        for (map, capacity) in [
            (MAP_ENDPOINTS, MAX_ENDPOINTS),
            (MAP_RULE_SETS, MAX_RULE_SETS),
            (MAP_PREFIX_LENGTHS, MAX_PREFIX_GROUPS),
            (MAP_DROPS_BY_GROUP, MAX_GROUP_DROPS),
            (MAP_PREFIXES, MAX_PREFIXES),
        ] {
            let started = std::time::Instant::now();
            let err = gw.apply(&oversized(map)).expect_err(map);
            let message = err.to_string();
            match &err {
                Error::TooManyEntries {
                    map: named,
                    max,
                    capacity: cap,
                    needed,
                    ..
                } => {
                    assert_eq!(
                        (*named, *cap, *max),
                        (map, capacity, capacity as usize / 2),
                        "{message}"
                    );
                    assert!(*needed > *max, "{message}");
                    counts.insert(map, *needed);
                }
                other => panic!("{map}: expected TooManyEntries, got {other:?}"),
            }
            assert!(
                message.contains(map) && message.contains(&capacity.to_string()),
                "{message}"
            );
            assert!(message.contains("generation in force stays"), "{message}");
            // Nothing written: the same generation with the same entries judges as before.
            let now = gw.status().unwrap().tables;
            assert_eq!(
                (
                    now.generation,
                    now.endpoints,
                    now.prefixes,
                    now.prefix_memory.entries,
                    now.rule_sets
                ),
                (
                    in_force.generation,
                    in_force.endpoints,
                    in_force.prefixes,
                    in_force.prefix_memory.entries,
                    in_force.rule_sets
                ),
                "{map}: the maps changed"
            );
            assert_eq!(
                verdicts(&mut gw, leg),
                (XDP_PASS, XDP_DROP),
                "{map}: a verdict changed"
            );
            eprintln!("{map}: refused in {:?} ({message})", started.elapsed());
        }
        eprintln!("entries each oversized update needed: {counts:?}");
        // The next update that fits is applied: the pod may now reach OTHER too.
        let mut fits = base();
        fits.groups[0]
            .prefixes
            .push(("198.51.100.0/24".parse().unwrap(), 0));
        let stats = gw.apply(&fits).expect("an update that fits");
        assert_ne!(stats.generation, in_force.generation);
        assert_eq!(verdicts(&mut gw, leg), (XDP_PASS, XDP_PASS));
    });
}
