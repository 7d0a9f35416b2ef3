//! Packet fixtures through BPF_PROG_TEST_RUN, as tables of rows: what the row checks, the leg the
//! packet arrives on, the packet, the XDP action, and what the program must leave in the packet
//! (untouched when it passes, the next hop's rewrite when it forwards). Rows run in order: flow
//! rows depend on earlier packets.

#[path = "fixtures/fast_path.rs"]
mod fast_path;
#[path = "fixtures/flow_records.rs"]
mod flow_records;
#[path = "fixtures/forwarding.rs"]
mod forwarding;
#[path = "fixtures/policy.rs"]
mod policy;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_common::{
    DROP_REASON_POLICY, MAP_COUNTERS, MAP_DROP_EVENTS, MAP_DROP_EVENT_WINDOW,
    MAP_FLOW_RECORD_COUNTERS, MAP_FLOW_RECORD_WINDOW, MAX_EMBRYONIC_FLOWS, MAX_FLOWS,
    MAX_PORT_RANGES, MAX_PREFIXES, SNAT_PINNED_MAPS,
};
use portcullis_gateway::{
    Datapath, Error, FlowRecordCounters, ForwardMode, Gateway, GatewayOptions, PinnedGateway,
    TestProgram, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use portcullis_policy::compile::{GatewayGroup, GatewayTables, PortRule};
use portcullis_policy::model::{Direction, Protocol};
use portcullis_testkit::*;

const CLUSTER: &str = "pcl-c";
const EXTERNAL: &str = "pcl-e";
const CLUSTER_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x01];
const EXTERNAL_MAC: [u8; 6] = [0x02, 0xe1, 0, 0, 0, 0x01];

/// Seed pod: egress to 192.168.1.0/24 except 192.168.1.0/28 on TCP 5432; ingress denies all.
const SEED_POD: &str = "10.244.1.10";
/// Inside the seed pod's egress prefix.
const DB: &str = "192.168.1.20";
/// Inside the except /28.
const EXCEPTED_DB: &str = "192.168.1.10";
/// Ingress from anywhere on TCP 80, UDP 53, SCTP 9000; from 203.0.113.0/24 everything.
const WEB: &str = "10.244.1.20";
const WEB6: &str = "fd00::20";
/// Selected by nothing.
const UNSELECTED_POD: &str = "10.244.1.30";
const CLIENT: &str = "198.51.100.1";
/// Inside 203.0.113.0/24, allowed every protocol to the web pod.
const TRUSTED: &str = "203.0.113.5";
/// Inside 2001:db8::/32, allowed the web pod's ports.
const CLIENT6: &str = "2001:db8::1";
/// Outside every IPv6 prefix.
const STRANGER6: &str = "2001:db9::1";
/// Router alert + NOPs + EOL: an IPv4 header of 28 bytes (IHL 7).
const ROUTER_ALERT: [u8; 8] = [0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00];

fn rule(protocol: Option<Protocol>, first: u16, last: u16) -> PortRule {
    PortRule {
        protocol,
        first,
        last,
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The seed ipBlock example and an ingress policy (see the address constants):
/// - group 0, default/db-egress: the seed pod's egress;
/// - group 1, default/web: the web pod's ingress (IPv4 and IPv6);
/// - group 2, default/deny-ingress: the seed pod's ingress, allowing nothing (return traffic can
///   only pass through a flow).
fn tables() -> GatewayTables {
    let rule_sets = vec![
        vec![rule(Some(Protocol::Tcp), 5432, 5432)],
        vec![],
        vec![
            rule(Some(Protocol::Tcp), 80, 80),
            rule(Some(Protocol::Udp), 53, 53),
            rule(Some(Protocol::Sctp), 9000, 9000),
        ],
        vec![rule(None, 0, 65535)],
    ];
    let groups = vec![
        GatewayGroup {
            direction: Direction::Egress,
            policies: vec!["default/db-egress".into()],
            prefixes: vec![(net("192.168.1.0/24"), 0), (net("192.168.1.0/28"), 1)],
        },
        GatewayGroup {
            direction: Direction::Ingress,
            policies: vec!["default/web".into()],
            prefixes: vec![
                (net("0.0.0.0/0"), 2),
                (net("203.0.113.0/24"), 3),
                (net("2001:db8::/32"), 2),
            ],
        },
        GatewayGroup {
            direction: Direction::Ingress,
            policies: vec!["default/deny-ingress".into()],
            prefixes: vec![],
        },
    ];
    let mut endpoints = BTreeMap::new();
    endpoints.insert((Direction::Egress, ip(SEED_POD)), 0);
    endpoints.insert((Direction::Ingress, ip(WEB)), 1);
    endpoints.insert((Direction::Ingress, ip(WEB6)), 1);
    endpoints.insert((Direction::Ingress, ip(SEED_POD)), 2);
    GatewayTables {
        endpoints,
        groups,
        rule_sets,
    }
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

fn setup_links() {
    sh(&format!(
        "ip link add {CLUSTER} address {} type veth peer name {CLUSTER}p && \
         ip link add {EXTERNAL} address {} type veth peer name {EXTERNAL}p && \
         for i in {CLUSTER} {CLUSTER}p {EXTERNAL} {EXTERNAL}p; do ip link set $i up; done",
        mac(CLUSTER_MAC),
        mac(EXTERNAL_MAC)
    ));
}

fn options() -> GatewayOptions {
    GatewayOptions {
        cluster_iface: CLUSTER.into(),
        external_iface: EXTERNAL.into(),
        ..Default::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Leg {
    Cluster,
    External,
    /// An interface the program does not know (loopback).
    Unknown,
}

fn syn(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
    Packet::tcp(src, sport, dst, dport, TCP_SYN)
}

/// `XDP_PASS`, the packet untouched.
fn passes(desc: &'static str, leg: Leg, packet: impl Into<Vec<u8>>) -> Row<Leg> {
    Row {
        desc,
        via: leg,
        input: packet.into(),
        action: XDP_PASS.into(),
        output: Output::Unchanged,
    }
}

fn drops(desc: &'static str, leg: Leg, packet: impl Into<Vec<u8>>) -> Row<Leg> {
    Row {
        desc,
        via: leg,
        input: packet.into(),
        action: XDP_DROP.into(),
        output: Output::Ignored,
    }
}

/// Where the FIB sends a forwarded packet: the neighbour's MAC, and the MAC of the leg it leaves by.
#[derive(Clone, Copy)]
struct Hop {
    neighbour: [u8; 6],
    egress: [u8; 6],
}

/// `XDP_REDIRECT` with the packet as a router sends it on: the hop's MACs, TTL / hop limit one
/// less, IPv4 header checksum updated (the expected packet's is computed from scratch), the L4
/// part and its checksum untouched.
fn forwards(desc: &'static str, leg: Leg, packet: Packet, hop: Hop) -> Row<Leg> {
    Row {
        desc,
        via: leg,
        input: packet.frame(),
        action: XDP_REDIRECT.into(),
        output: Output::Exactly(packet.routed(hop.neighbour, hop.egress).frame()),
    }
}

fn run_rows(gw: &mut Gateway, rows: &[Row<Leg>]) {
    let (cluster, external) = (ifindex(CLUSTER), ifindex(EXTERNAL));
    check_rows(rows, |row| {
        let ingress = match row.via {
            Leg::Cluster => cluster,
            Leg::External => external,
            Leg::Unknown => 1,
        };
        let out = gw
            .test_run(TestProgram::Gateway, ingress, &row.input, 1)
            .unwrap_or_else(|err| panic!("{}: test run: {err}", row.desc));
        (out.action.into(), out.packet)
    });
}

/// The reply of the flow the seed pod opens first (`policy::rows`, `forwarding::rows`).
fn seed_reply(flags: u8) -> Packet {
    Packet::tcp(DB, 5432, SEED_POD, 40000, flags)
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn packet_fixtures() {
    require_root();
    let ns = NetNs::new("fix");
    ns.run(|| {
        setup_links();
        let mut gw = Gateway::load(options()).expect("load gateway");
        let stats = gw.apply(&tables()).expect("apply");
        assert_eq!(stats.generation, 1);
        assert_eq!(stats.tables.endpoints, 4);
        assert_eq!(stats.tables.prefixes, 5);
        let mut events = gw.take_drop_events().expect("drop events");
        run_rows(&mut gw, &policy::rows());

        let status = gw.status().expect("status");
        eprintln!("{status:#?}");
        assert_eq!(status.tables.generation, 1);
        assert!(status.tables.counters.drop_fragment >= 2);
        assert!(status.tables.counters.drop_malformed >= 3);
        assert!(status.tables.counters.pass_flow >= 3);
        assert!(status.tables.flows.total() >= 1);
        let seed = status
            .tables
            .drops_by_group
            .iter()
            .find(|g| g.policies == ["default/db-egress"])
            .expect("drops of the seed group");
        assert!(seed.packets >= 1);
        let mut policy_events = 0;
        while let Some(ev) = events.next_event() {
            if ev.reason == DROP_REASON_POLICY {
                policy_events += 1;
            }
        }
        assert!(policy_events >= 1, "no policy drop events");

        // Generation switch: the new policy also allows 192.168.1.0/28; the old flow survives.
        let mut next = tables();
        next.groups[0].prefixes = vec![(net("192.168.1.0/24"), 0)];
        let stats = gw.apply(&next).expect("apply 2");
        assert_eq!(stats.generation, 0);
        // Generation 0 was empty: everything is written (endpoints, prefixes, the prefix lengths
        // of the two groups with prefixes, rule sets; these prefixes need no marker).
        assert_eq!((stats.written, stats.deleted), (4 + 4 + 2 + 4, 0));
        assert_eq!(stats.tables.prefix_entries, 4);
        // Again into generation 1, which holds the first tables: the delta is the removed /28
        // and the seed group's lengths without it.
        let stats = gw.apply(&next).expect("apply 3");
        assert_eq!(stats.generation, 1);
        assert_eq!((stats.written, stats.deleted), (1, 1));
        run_rows(&mut gw, &policy::rows_after_switch());
        let status = gw.status().expect("status");
        assert_eq!(status.tables.endpoints, 4);
        assert_eq!(status.tables.prefixes, 4);
        assert_eq!(status.tables.prefix_memory.entries, 4);
        assert_eq!(status.tables.prefix_memory.bytes_per_prefix, 96.0);
        assert_eq!(status.tables.rule_sets, 4);
    });
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn xdp_forwarding_rewrites_the_packet_for_the_next_hop() {
    require_root();
    let ns = NetNs::new("fwd");
    ns.run(|| {
        let mut gw = forwarding::forwarding_gateway();
        let rows = forwarding::rows();
        run_rows(&mut gw, &rows);
        let forwarded = rows.iter().filter(|r| r.action == XDP_REDIRECT as i64);
        let counters = gw.status().expect("status").tables.counters;
        assert_eq!(
            counters.forward_xdp,
            forwarded.count() as u64,
            "{counters:?}"
        );
    });
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn revalidate_cuts_flows_the_new_policy_forbids() {
    require_root();
    let ns = NetNs::new("reval");
    ns.run(|| {
        setup_links();
        let mut gw = Gateway::load(GatewayOptions {
            revalidate: true,
            ..options()
        })
        .expect("load");
        gw.apply(&tables()).expect("apply");
        let open = syn(SEED_POD, 40000, DB, 5432);
        run_rows(
            &mut gw,
            &[passes("SYN opens a flow to .20:5432", Leg::Cluster, open)],
        );
        let mut next = tables();
        next.groups[0].prefixes = vec![(net("192.168.1.0/28"), 0)];
        gw.apply(&next).expect("apply 2");
        let reply = seed_reply(TCP_ACK);
        let cut = "reply of the flow to .20, which the new egress prefix leaves out, is dropped";
        run_rows(&mut gw, &[drops(cut, Leg::External, reply)]);
        assert_eq!(gw.flows().len(), 0, "revalidation deletes the flow");
        let flows = gw.status().expect("status").tables;
        assert_eq!(flows.counters.revoked_embryonic, 1, "{:?}", flows.counters);
        assert_eq!(
            flows.flows.embryonic_evicted, 0,
            "a revoked flow is no eviction"
        );

        // A flow the GC deletes (cleared here) is no eviction either.
        run_rows(
            &mut gw,
            &[passes(
                "SYN to .5 (inside the new /28) opens a flow",
                Leg::Cluster,
                syn(SEED_POD, 40001, "192.168.1.5", 5432),
            )],
        );
        assert_eq!(gw.clear_flows().expect("clear"), 1);
        let after = gw.status().expect("status").tables;
        assert_eq!(after.counters.gc_embryonic, 1, "{:?}", after.counters);
        assert_eq!(after.flows.embryonic_evicted, 0, "{:?}", after.flows);
    });
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn more_prefixes_than_a_generation_holds_is_rejected_and_the_generation_in_force_stays() {
    require_root();
    let ns = NetNs::new("full");
    ns.run(|| {
        setup_links();
        let mut gw = Gateway::load(options()).expect("load gateway");
        gw.apply(&tables()).expect("apply");
        let mut t = tables();
        let half = MAX_PREFIXES as usize / 2;
        t.groups[0].prefixes = (0..=half as u32)
            .map(|i| (IpNet::new(IpAddr::V4(i.into()), 32).expect("/32"), 0))
            .collect();
        match gw.apply(&t) {
            Err(Error::TooManyEntries { needed, max, .. }) => {
                assert_eq!((needed, max), (half + 4, half))
            }
            other => panic!("expected TooManyEntries, got {other:?}"),
        }
        let status = gw.status().unwrap();
        assert_eq!((status.tables.generation, status.tables.prefixes), (1, 5));
    });
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn too_many_port_ranges_is_rejected_and_nothing_applied() {
    require_root();
    let ns = NetNs::new("ranges");
    ns.run(|| {
        setup_links();
        let mut gw = Gateway::load(options()).expect("load gateway");
        let mut t = tables();
        t.rule_sets[2] = (0..=MAX_PORT_RANGES as u16)
            .map(|i| rule(Some(Protocol::Tcp), 1000 + i * 10, 1000 + i * 10))
            .collect();
        match gw.apply(&t) {
            Err(Error::TooManyPortRanges { policies, .. }) => {
                assert!(policies.contains("default/web"), "{policies}")
            }
            other => panic!("expected TooManyPortRanges, got {other:?}"),
        }
        let status = gw.status().unwrap();
        assert_eq!(
            (
                status.tables.generation,
                status.tables.endpoints,
                status.tables.prefixes
            ),
            (0, 0, 0)
        );
    });
}

/// Loads a gateway pinned under `pin_dir` (in the calling namespace, legs set up), applies the
/// tables, opens the seed pod's flow and drops the gateway, as a daemon that exits: the pinned
/// link keeps the program attached. Returns the options to load it again with.
fn pinned_gateway_left_running(pin_dir: &std::path::Path) -> GatewayOptions {
    let options = GatewayOptions {
        pin_dir: Some(pin_dir.to_path_buf()),
        ..options()
    };
    let mut gw = Gateway::load(options.clone()).expect("load");
    gw.apply(&tables()).expect("apply");
    let open = syn(SEED_POD, 40000, DB, 5432);
    run_rows(&mut gw, &[passes("SYN opens a flow", Leg::Cluster, open)]);
    drop(gw);
    // Still attached after the process lost its handles: the pinned link keeps it.
    let link = sh(&format!("ip -d link show {CLUSTER}"));
    assert!(link.contains("xdp"), "program detached after drop: {link}");
    options
}

/// Loads the gateway again over the pins [`pinned_gateway_left_running`] left: links adopted,
/// the generation and the seed pod's flow kept (its reply passes).
fn reload_adopting(options: GatewayOptions) -> Gateway {
    let mut gw = Gateway::load(options).expect("reload");
    assert!(gw.attached().iter().all(|a| a.adopted));
    let status = gw.status().unwrap();
    assert_eq!(status.tables.generation, 1, "generation kept");
    assert_eq!(status.tables.flows.total(), 1, "flow kept");
    let reply = seed_reply(TCP_ACK);
    let kept = "reply of the flow opened before the reload passes (the flow map was adopted)";
    run_rows(&mut gw, &[passes(kept, Leg::External, reply)]);
    gw
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn pinned_maps_and_links_are_adopted_on_restart() {
    require_root();
    let ns = NetNs::new("pin");
    let pins = PinDir::of(&ns);
    let pin_dir = pins.0.clone();
    ns.run(|| {
        setup_links();
        let options = pinned_gateway_left_running(&pin_dir);
        let mut gw = reload_adopting(options);
        // After adoption the content of both generations is unknown: each is found by iterating,
        // deleted and written in full once.
        let stats = gw.apply(&tables()).expect("apply after adoption");
        assert_eq!(stats.generation, 0);
        assert_eq!((stats.written, stats.deleted), (4 + 5 + 2 + 4, 0));
        let stats = gw.apply(&tables()).expect("second apply after adoption");
        assert_eq!(stats.generation, 1);
        assert_eq!(
            (stats.written, stats.deleted),
            (4 + 5 + 2 + 4, 4 + 5 + 2 + 4)
        );
        let stats = gw.apply(&tables()).expect("third apply");
        assert_eq!((stats.written, stats.deleted), (0, 0), "nothing changed");
        gw.unpin().expect("unpin");
    });
}

/// Pins another version made (here a `FLOWS` with 16-byte values, as before the next-hop cache)
/// are refused before anything loads, naming the map and what to do; nothing is attached.
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn pins_of_another_version_are_refused_by_name() {
    require_root();
    let ns = NetNs::new("oldpin");
    let pins = PinDir::of(&ns);
    let pin_dir = pins.0.clone();
    ns.run(|| {
        setup_links();
        std::fs::create_dir_all(&pin_dir).expect("pin dir");
        sh(&format!(
            "bpftool map create {}/FLOWS type lru_hash key 40 value 16 entries 1024 name FLOWS",
            pin_dir.display()
        ));
        let err = Gateway::load(GatewayOptions {
            pin_dir: Some(pin_dir.clone()),
            ..options()
        })
        .err()
        .expect("old pins refused");
        let message = err.to_string();
        assert!(
            matches!(&err, Error::IncompatiblePin { name, .. } if name == "FLOWS"),
            "{message}"
        );
        assert!(message.contains("remove"), "{message}");
        let link = sh(&format!("ip -d link show {CLUSTER}"));
        assert!(!link.contains("xdp"), "attached after the refusal: {link}");
    });
}

/// An upgrade in place over the pins of an older version, made here by removing the pins of the
/// maps added since (flow records, SNAT): the pins there are adopted (generation, flows), the
/// missing maps are created and pinned, and the pinned view of the older pins reads them as
/// empty. The maps older versions pinned keep the shape those versions gave them: a pinned map
/// never changes (new state goes into new maps), or the upgrade would be refused.
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn pins_of_an_older_version_are_adopted_and_the_new_maps_created() {
    require_root();
    let ns = NetNs::new("uppin");
    let pins = PinDir::of(&ns);
    let pin_dir = pins.0.clone();
    // (map, key size, value size, capacity) as the versions before flow records pinned them.
    const OLDER_SHAPES: [(&str, u32, u32, u32); 3] = [
        (MAP_COUNTERS, 4, 8, 21),
        (MAP_DROP_EVENT_WINDOW, 4, 16, 1),
        (MAP_DROP_EVENTS, 0, 0, 256 * 1024),
    ];
    let added = || {
        [MAP_FLOW_RECORD_COUNTERS, MAP_FLOW_RECORD_WINDOW]
            .into_iter()
            .chain(SNAT_PINNED_MAPS)
    };
    ns.run(|| {
        setup_links();
        let options = pinned_gateway_left_running(&pin_dir);
        for name in added() {
            std::fs::remove_file(pin_dir.join(name)).expect(name);
        }
        for (name, key, value, entries) in OLDER_SHAPES {
            let info = aya::maps::MapInfo::from_pin(pin_dir.join(name)).expect(name);
            let shape = (info.key_size(), info.value_size(), info.max_entries());
            assert_eq!(
                shape,
                (key, value, entries),
                "{name}: shape of the older pins"
            );
        }
        let older = PinnedGateway::open(&pin_dir).expect("pinned view of the older pins");
        let status = older.status(&Default::default()).expect("status");
        assert_eq!(status.tables.flow_records, FlowRecordCounters::default());
        assert_eq!(status.snat.translations, 0);

        let mut gw = reload_adopting(options);
        for name in added() {
            assert!(pin_dir.join(name).exists(), "{name} not created and pinned");
        }
        let new = syn(SEED_POD, 40001, DB, 5432);
        run_rows(
            &mut gw,
            &[passes("SYN after the upgrade", Leg::Cluster, new)],
        );
        let records = gw.status().unwrap().tables.flow_records;
        assert_eq!((records.written, records.lost), (1, 0), "in the new map");
        let records = (PinnedGateway::open(&pin_dir).expect("pinned view"))
            .status(&Default::default())
            .expect("status")
            .tables
            .flow_records;
        assert_eq!(records.written, 1, "the pinned view reads the new pin");
        gw.unpin().expect("unpin");
    });
}

/// A flood of new flows, each hit twice (SYN and the server's SYN-ACK, as a SYN flood on a
/// listening service produces), larger than both flow tables: it evicts only unconfirmed flows;
/// a confirmed, idle flow still passes after it. (With one LRU table the flood's flows, each
/// looked up twice, compete with the idle flow for the same room.)
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn a_new_flow_flood_evicts_only_unconfirmed_flows() {
    require_root();
    let ns = NetNs::new("flood");
    ns.run(|| {
        setup_links();
        let mut gw = Gateway::load(options()).expect("load");
        gw.apply(&tables()).expect("apply");
        run_rows(
            &mut gw,
            &[
                passes("SYN opens the flow", Leg::Cluster, syn(SEED_POD, 40000, DB, 5432)),
                passes("SYN-ACK", Leg::External, seed_reply(TCP_SYN | TCP_ACK)),
                passes(
                    "the initiator's ACK after the SYN-ACK confirms the flow",
                    Leg::Cluster,
                    Packet::tcp(SEED_POD, 40000, DB, 5432, TCP_ACK),
                ),
            ],
        );
        let before = gw.status().expect("status").tables;
        assert_eq!((before.flows.confirmed, before.counters.flow_confirmed), (1, 1));

        let (cluster, external) = (ifindex(CLUSTER), ifindex(EXTERNAL));
        let flood = MAX_FLOWS as usize + 8192;
        // 240 destinations of the allowed /24 outside the except /28, 1024 source ports each.
        let tuple = |i: usize| (format!("192.168.1.{}", 16 + i % 240), 1024 + (i / 240) as u16);
        for i in 0..flood {
            let (dst, sport) = tuple(i);
            let syn = frame(SEED_POD, &dst, IPPROTO_TCP, tcp(sport, 5432, TCP_SYN));
            let syn_ack = frame(&dst, SEED_POD, IPPROTO_TCP, tcp(5432, sport, TCP_SYN | TCP_ACK));
            for (leg, packet) in [(cluster, syn), (external, syn_ack)] {
                let out = gw.test_run(TestProgram::Gateway, leg, &packet, 1).expect("run");
                assert_eq!(out.action, XDP_PASS, "flood packet {i}");
            }
        }
        let after = gw.status().expect("status").tables;
        assert_eq!(after.flows.confirmed, 1, "the flood confirmed nothing: {after:?}");
        assert!(after.flows.embryonic <= MAX_EMBRYONIC_FLOWS as usize);
        assert!(after.counters.flow_new >= flood as u64);
        // Every flood flow entered the embryonic table once; what is not there was evicted, and
        // the confirmed table evicted nothing.
        let flows = after.flows;
        assert_eq!(flows.confirmed_evicted, 0, "{flows:?}");
        assert_eq!(
            flows.embryonic_evicted,
            flood as u64 - flows.embryonic as u64,
            "{flows:?}"
        );
        let (dst, sport) = tuple(0);
        let evicted = Packet::tcp(&dst, 5432, SEED_POD, sport, TCP_SYN | TCP_ACK);
        run_rows(
            &mut gw,
            &[
                passes(
                    "the confirmed flow's reply passes after the flood (the pod's ingress denies all)",
                    Leg::External,
                    seed_reply(TCP_ACK),
                ),
                drops(
                    "the first flood flow was evicted from the embryonic table: its SYN-ACK is dropped",
                    Leg::External,
                    evicted,
                ),
            ],
        );
    });
}
