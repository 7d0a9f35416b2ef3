//! Packet fixtures through BPF_PROG_TEST_RUN: {description, leg, packet, expected verdict}, run in
//! order (flow cases depend on earlier packets), against hand-built tables.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_common::{DROP_REASON_POLICY, MAX_PORT_RANGES};
use portcullis_gateway::{
    Datapath, Error, Gateway, GatewayOptions, TestProgram, XDP_DROP, XDP_PASS,
};
use portcullis_policy::compile::{GatewayGroup, GatewayTables, PortRule};
use portcullis_policy::model::{Direction, Protocol};
use portcullis_testkit::*;

const CLUSTER: &str = "pcl-c";
const EXTERNAL: &str = "pcl-e";

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

/// The seed ipBlock example and an ingress policy:
/// - pod 10.244.1.10 egress: 192.168.1.0/24 except 192.168.1.0/28 on TCP 5432; its ingress is
///   selected by a policy allowing nothing (so return traffic can only pass through a flow).
/// - pod 10.244.1.20 / fd00::20 ingress: from anywhere on TCP 80, UDP 53, SCTP 9000; from
///   203.0.113.0/24 everything; from 2001:db8::/32 the same ports.
/// - pod 10.244.1.30 is selected by nothing.
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
    endpoints.insert((Direction::Egress, ip("10.244.1.10")), 0);
    endpoints.insert((Direction::Ingress, ip("10.244.1.20")), 1);
    endpoints.insert((Direction::Ingress, ip("fd00::20")), 1);
    endpoints.insert((Direction::Ingress, ip("10.244.1.10")), 2);
    GatewayTables {
        endpoints,
        groups,
        rule_sets,
    }
}

fn setup_links() {
    sh(&format!(
        "ip link add {CLUSTER} type veth peer name {CLUSTER}p && \
         ip link add {EXTERNAL} type veth peer name {EXTERNAL}p && \
         for i in {CLUSTER} {CLUSTER}p {EXTERNAL} {EXTERNAL}p; do ip link set $i up; done"
    ));
}

fn load() -> Gateway {
    Gateway::load(GatewayOptions {
        cluster_iface: CLUSTER.into(),
        external_iface: EXTERNAL.into(),
        ..Default::default()
    })
    .expect("load gateway")
}

#[derive(Clone, Copy)]
enum Leg {
    Cluster,
    External,
    /// An interface the program does not know (loopback).
    Unknown,
}

struct Case {
    desc: &'static str,
    leg: Leg,
    packet: Vec<u8>,
    expect: u32,
}

fn case(desc: &'static str, leg: Leg, packet: Vec<u8>, expect: u32) -> Case {
    Case {
        desc,
        leg,
        packet,
        expect,
    }
}

fn run_cases(gw: &mut Gateway, cases: &[Case]) {
    let (c, e) = (ifindex(CLUSTER), ifindex(EXTERNAL));
    let mut failures = Vec::new();
    for k in cases {
        let ifx = match k.leg {
            Leg::Cluster => c,
            Leg::External => e,
            Leg::Unknown => 1,
        };
        let out = gw
            .test_run(TestProgram::Gateway, ifx, &k.packet, 1)
            .unwrap_or_else(|err| panic!("{}: test run: {err}", k.desc));
        let ok = out.action == k.expect;
        eprintln!(
            "{} {:<70} expected {} got {}",
            if ok { "ok  " } else { "FAIL" },
            k.desc,
            k.expect,
            out.action
        );
        if !ok {
            failures.push(k.desc);
        }
    }
    assert!(failures.is_empty(), "failed fixtures: {failures:?}");
}

fn syn4(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    frame_v4(&[], ipv4(src, dst, 6, &[], 0, &tcp(sport, dport, TCP_SYN)))
}

#[test]
fn packet_fixtures() {
    if not_root() {
        return;
    }
    let ns = NetNs::new("fix");
    ns.run(|| {
        setup_links();
        let mut gw = load();
        let stats = gw.apply(&tables()).expect("apply");
        assert_eq!(stats.generation, 1);
        assert_eq!(stats.tables.endpoints, 4);
        assert_eq!(stats.tables.prefixes, 5);
        let mut events = gw.take_drop_events().expect("drop events");

        let arp = {
            let mut p = eth(0x0806, &[]);
            p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            p.extend_from_slice(&[0; 20]);
            p
        };
        let lldp = {
            let mut p = eth(0x88cc, &[]);
            p.extend_from_slice(&[0; 46]);
            p
        };
        // Original packet embedded in ICMP errors: pod 10.244.1.10:40000 → 192.168.1.20:5432.
        let embedded = ipv4(
            "10.244.1.10",
            "192.168.1.20",
            6,
            &[],
            0,
            &tcp(40000, 5432, TCP_SYN),
        );
        let embedded_unknown = ipv4(
            "10.244.1.10",
            "192.168.1.20",
            6,
            &[],
            0,
            &tcp(41000, 5432, TCP_SYN),
        );
        let ipopts = [0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00]; // router alert + NOPs + EOL
        let ns_icmpv6 = icmp(135, 0, &v6("fd00::20"));

        let cases = vec![
            case("non-IP (LLDP) passes", Leg::Cluster, lldp, XDP_PASS),
            case("ARP passes", Leg::External, arp, XDP_PASS),
            case(
                "unselected pod 10.244.1.30 egress passes",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4("10.244.1.30", "8.8.8.8", 17, &[], 0, &udp(5000, 53)),
                ),
                XDP_PASS,
            ),
            case(
                "seed: egress 10.244.1.10 → 192.168.1.20:5432 SYN allowed",
                Leg::Cluster,
                syn4("10.244.1.10", "192.168.1.20", 40000, 5432),
                XDP_PASS,
            ),
            case(
                "seed: egress 10.244.1.10 → 192.168.1.10:5432 denied by except",
                Leg::Cluster,
                syn4("10.244.1.10", "192.168.1.10", 40000, 5432),
                XDP_DROP,
            ),
            case(
                "egress to allowed CIDR, wrong port 5433 denied",
                Leg::Cluster,
                syn4("10.244.1.10", "192.168.1.20", 40002, 5433),
                XDP_DROP,
            ),
            case(
                "egress to a CIDR outside every prefix denied",
                Leg::Cluster,
                syn4("10.244.1.10", "10.0.0.1", 40003, 5432),
                XDP_DROP,
            ),
            case(
                "return SYN-ACK passes via flow (pod's ingress denies all)",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4(
                        "192.168.1.20",
                        "10.244.1.10",
                        6,
                        &[],
                        0,
                        &tcp(5432, 40000, TCP_SYN | TCP_ACK),
                    ),
                ),
                XDP_PASS,
            ),
            case(
                "established ACK from the pod passes via flow",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4(
                        "10.244.1.10",
                        "192.168.1.20",
                        6,
                        &[],
                        0,
                        &tcp(40000, 5432, TCP_ACK),
                    ),
                ),
                XDP_PASS,
            ),
            case(
                "TCP ACK without flow denied although the policy allows the port",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4(
                        "10.244.1.10",
                        "192.168.1.20",
                        6,
                        &[],
                        0,
                        &tcp(40004, 5432, TCP_ACK),
                    ),
                ),
                XDP_DROP,
            ),
            case(
                "inbound SYN to the pod whose ingress denies all dropped",
                Leg::External,
                syn4("192.168.1.20", "10.244.1.10", 5555, 22),
                XDP_DROP,
            ),
            case(
                "802.1Q-tagged seed .20 allowed",
                Leg::Cluster,
                frame_v4(
                    &[100],
                    ipv4(
                        "10.244.1.10",
                        "192.168.1.20",
                        6,
                        &[],
                        0,
                        &tcp(40010, 5432, TCP_SYN),
                    ),
                ),
                XDP_PASS,
            ),
            case(
                "802.1ad+802.1Q-tagged seed .10 denied",
                Leg::Cluster,
                frame_v4(
                    &[200, 100],
                    ipv4(
                        "10.244.1.10",
                        "192.168.1.10",
                        6,
                        &[],
                        0,
                        &tcp(40011, 5432, TCP_SYN),
                    ),
                ),
                XDP_DROP,
            ),
            case(
                "IPv4 with options (IHL 7), allowed port",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4(
                        "10.244.1.10",
                        "192.168.1.20",
                        6,
                        &ipopts,
                        0,
                        &tcp(40012, 5432, TCP_SYN),
                    ),
                ),
                XDP_PASS,
            ),
            case(
                "IPv4 with options (IHL 7), denied port",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4(
                        "10.244.1.10",
                        "192.168.1.20",
                        6,
                        &ipopts,
                        0,
                        &tcp(40013, 22, TCP_SYN),
                    ),
                ),
                XDP_DROP,
            ),
            case(
                "IPv4 first fragment (MF, offset 0) allowed by policy",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4(
                        "10.244.1.10",
                        "192.168.1.20",
                        6,
                        &[],
                        0x2000,
                        &tcp(40014, 5432, TCP_SYN),
                    ),
                ),
                XDP_PASS,
            ),
            case(
                "IPv4 first fragment denied by policy",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4(
                        "10.244.1.10",
                        "192.168.1.10",
                        6,
                        &[],
                        0x2000,
                        &tcp(40015, 5432, TCP_SYN),
                    ),
                ),
                XDP_DROP,
            ),
            case(
                "IPv4 later fragment (offset 185) dropped",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4("10.244.1.10", "192.168.1.20", 6, &[], 185, &[0; 40]),
                ),
                XDP_DROP,
            ),
            case(
                "truncated 802.1Q tag dropped (the kernel's test run needs 14 bytes)",
                Leg::Cluster,
                eth(0x0800, &[100])[..16].to_vec(),
                XDP_DROP,
            ),
            case(
                "truncated IPv4 header dropped",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4("10.244.1.10", "192.168.1.20", 6, &[], 0, &[])[..16].to_vec(),
                ),
                XDP_DROP,
            ),
            case(
                "truncated TCP header dropped",
                Leg::Cluster,
                frame_v4(
                    &[],
                    ipv4(
                        "10.244.1.10",
                        "192.168.1.20",
                        6,
                        &[],
                        0,
                        &tcp(1, 5432, TCP_SYN)[..10],
                    ),
                ),
                XDP_DROP,
            ),
            case(
                "ingress TCP 80 to 10.244.1.20 allowed",
                Leg::External,
                syn4("198.51.100.1", "10.244.1.20", 50000, 80),
                XDP_PASS,
            ),
            case(
                "ingress TCP 81 to 10.244.1.20 denied",
                Leg::External,
                syn4("198.51.100.1", "10.244.1.20", 50001, 81),
                XDP_DROP,
            ),
            case(
                "ingress UDP 53 allowed",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4("198.51.100.1", "10.244.1.20", 17, &[], 0, &udp(5353, 53)),
                ),
                XDP_PASS,
            ),
            case(
                "ingress UDP 54 denied",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4("198.51.100.1", "10.244.1.20", 17, &[], 0, &udp(5353, 54)),
                ),
                XDP_DROP,
            ),
            case(
                "ingress SCTP 9000 allowed",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4(
                        "198.51.100.1",
                        "10.244.1.20",
                        132,
                        &[],
                        0,
                        &sctp(7000, 9000),
                    ),
                ),
                XDP_PASS,
            ),
            case(
                "ingress SCTP 9001 denied",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4(
                        "198.51.100.1",
                        "10.244.1.20",
                        132,
                        &[],
                        0,
                        &sctp(7000, 9001),
                    ),
                ),
                XDP_DROP,
            ),
            case(
                "ingress ICMP echo denied where only ports are allowed",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4("198.51.100.1", "10.244.1.20", 1, &[], 0, &icmp(8, 77, &[])),
                ),
                XDP_DROP,
            ),
            case(
                "ingress ICMP echo allowed from 203.0.113.0/24 (all protocols)",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4("203.0.113.5", "10.244.1.20", 1, &[], 0, &icmp(8, 78, &[])),
                ),
                XDP_PASS,
            ),
            case(
                "IPv6 hop-by-hop + dest-opts, TCP 80 allowed",
                Leg::External,
                frame_v6(ipv6(
                    "2001:db8::1",
                    "fd00::20",
                    0,
                    &[ext_opts(60), ext_opts(6), tcp(50000, 80, TCP_SYN)].concat(),
                )),
                XDP_PASS,
            ),
            case(
                "IPv6 hop-by-hop + dest-opts, TCP 81 denied",
                Leg::External,
                frame_v6(ipv6(
                    "2001:db8::1",
                    "fd00::20",
                    0,
                    &[ext_opts(60), ext_opts(6), tcp(50001, 81, TCP_SYN)].concat(),
                )),
                XDP_DROP,
            ),
            case(
                "IPv6 from outside 2001:db8::/32 denied (the group has no IPv6 default prefix)",
                Leg::External,
                frame_v6(ipv6("2001:db9::1", "fd00::20", 6, &tcp(50002, 80, TCP_SYN))),
                XDP_DROP,
            ),
            case(
                "IPv6 first fragment UDP 53 allowed",
                Leg::External,
                frame_v6(ipv6(
                    "2001:db8::1",
                    "fd00::20",
                    44,
                    &[ext_frag(17, 0, true), udp(5353, 53)].concat(),
                )),
                XDP_PASS,
            ),
            case(
                "IPv6 later fragment dropped",
                Leg::External,
                frame_v6(ipv6(
                    "2001:db8::1",
                    "fd00::20",
                    44,
                    &[ext_frag(17, 100, false), vec![0; 16]].concat(),
                )),
                XDP_DROP,
            ),
            case(
                "ICMPv6 neighbour solicitation passes from a denied source",
                Leg::External,
                frame_v6(ipv6("2001:db9::1", "fd00::20", 58, &ns_icmpv6)),
                XDP_PASS,
            ),
            case(
                "ICMP port unreachable related to a known flow passes",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4(
                        "192.168.1.20",
                        "10.244.1.10",
                        1,
                        &[],
                        0,
                        &[vec![3, 3, 0, 0, 0, 0, 0, 0], embedded].concat(),
                    ),
                ),
                XDP_PASS,
            ),
            case(
                "ICMP port unreachable for an unknown flow denied",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4(
                        "192.168.1.20",
                        "10.244.1.10",
                        1,
                        &[],
                        0,
                        &[vec![3, 3, 0, 0, 0, 0, 0, 0], embedded_unknown].concat(),
                    ),
                ),
                XDP_DROP,
            ),
            case(
                "denied packet on an interface not in IFACE_ROLES passes",
                Leg::Unknown,
                syn4("10.244.1.10", "192.168.1.10", 40000, 5432),
                XDP_PASS,
            ),
        ];
        run_cases(&mut gw, &cases);

        let status = gw.status().expect("status");
        eprintln!("{status:#?}");
        assert_eq!(status.tables.generation, 1);
        assert!(status.tables.counters.drop_fragment >= 2);
        assert!(status.tables.counters.drop_malformed >= 3);
        assert!(status.tables.counters.pass_flow >= 3);
        assert!(status.tables.flows >= 1);
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
        // Generation 0 was empty: everything is written.
        assert_eq!((stats.written, stats.deleted), (4 + 4 + 4, 0));
        // Again into generation 1, which holds the first tables: the delta is the removed /28.
        let stats = gw.apply(&next).expect("apply 3");
        assert_eq!(stats.generation, 1);
        assert_eq!((stats.written, stats.deleted), (0, 1));
        let after = vec![
            case(
                "after switch: seed .10 now allowed",
                Leg::Cluster,
                syn4("10.244.1.10", "192.168.1.10", 40100, 5432),
                XDP_PASS,
            ),
            case(
                "after switch: flow from generation 1 still passes",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4(
                        "192.168.1.20",
                        "10.244.1.10",
                        6,
                        &[],
                        0,
                        &tcp(5432, 40000, TCP_ACK),
                    ),
                ),
                XDP_PASS,
            ),
            case(
                "after switch: port 5433 still denied",
                Leg::Cluster,
                syn4("10.244.1.10", "192.168.1.20", 40101, 5433),
                XDP_DROP,
            ),
        ];
        run_cases(&mut gw, &after);
        let status = gw.status().expect("status");
        assert_eq!(status.tables.endpoints, 4);
        assert_eq!(status.tables.prefixes, 4);
        assert_eq!(status.tables.rule_sets, 4);
    });
}

#[test]
fn revalidate_cuts_flows_the_new_policy_forbids() {
    if not_root() {
        return;
    }
    let ns = NetNs::new("reval");
    ns.run(|| {
        setup_links();
        let mut gw = Gateway::load(GatewayOptions {
            cluster_iface: CLUSTER.into(),
            external_iface: EXTERNAL.into(),
            revalidate: true,
            ..Default::default()
        })
        .expect("load");
        gw.apply(&tables()).expect("apply");
        run_cases(
            &mut gw,
            &[case(
                "open flow .20:5432",
                Leg::Cluster,
                syn4("10.244.1.10", "192.168.1.20", 40000, 5432),
                XDP_PASS,
            )],
        );
        let mut next = tables();
        next.groups[0].prefixes = vec![(net("192.168.1.0/28"), 0)];
        gw.apply(&next).expect("apply 2");
        run_cases(
            &mut gw,
            &[case(
                "revalidated flow to .20 cut",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4(
                        "192.168.1.20",
                        "10.244.1.10",
                        6,
                        &[],
                        0,
                        &tcp(5432, 40000, TCP_ACK),
                    ),
                ),
                XDP_DROP,
            )],
        );
        assert_eq!(gw.flows().len(), 0, "revalidation deletes the flow");
    });
}

#[test]
fn too_many_port_ranges_is_rejected_and_nothing_applied() {
    if not_root() {
        return;
    }
    let ns = NetNs::new("ranges");
    ns.run(|| {
        setup_links();
        let mut gw = load();
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

#[test]
fn pinned_maps_and_links_are_adopted_on_restart() {
    if not_root() {
        return;
    }
    let ns = NetNs::new("pin");
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/{}", ns.name));
    struct RmDir(std::path::PathBuf);
    impl Drop for RmDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RmDir(pin_dir.clone());
    ns.run(|| {
        setup_links();
        let options = GatewayOptions {
            cluster_iface: CLUSTER.into(),
            external_iface: EXTERNAL.into(),
            pin_dir: Some(pin_dir.clone()),
            ..Default::default()
        };
        let mut gw = Gateway::load(options.clone()).expect("load");
        gw.apply(&tables()).expect("apply");
        run_cases(
            &mut gw,
            &[case(
                "flow before restart",
                Leg::Cluster,
                syn4("10.244.1.10", "192.168.1.20", 40000, 5432),
                XDP_PASS,
            )],
        );
        drop(gw);
        // Still attached after the process lost its handles: the pinned link keeps it.
        let link = sh(&format!("ip -d link show {CLUSTER}"));
        assert!(link.contains("xdp"), "program detached after drop: {link}");

        let mut gw = Gateway::load(options).expect("reload");
        assert!(gw.attached().iter().all(|a| a.adopted));
        let status = gw.status().unwrap();
        assert_eq!(status.tables.generation, 1, "generation kept");
        assert_eq!(status.tables.flows, 1, "flow kept");
        run_cases(
            &mut gw,
            &[case(
                "return traffic of the pre-restart flow passes",
                Leg::External,
                frame_v4(
                    &[],
                    ipv4(
                        "192.168.1.20",
                        "10.244.1.10",
                        6,
                        &[],
                        0,
                        &tcp(5432, 40000, TCP_ACK),
                    ),
                ),
                XDP_PASS,
            )],
        );
        // After adoption the content of both generations is unknown: each is found by iterating,
        // deleted and written in full once.
        let stats = gw.apply(&tables()).expect("apply after adoption");
        assert_eq!(stats.generation, 0);
        assert_eq!((stats.written, stats.deleted), (4 + 5 + 4, 0));
        let stats = gw.apply(&tables()).expect("second apply after adoption");
        assert_eq!(stats.generation, 1);
        assert_eq!((stats.written, stats.deleted), (4 + 5 + 4, 4 + 5 + 4));
        let stats = gw.apply(&tables()).expect("third apply");
        assert_eq!((stats.written, stats.deleted), (0, 0), "nothing changed");
        gw.unpin().expect("unpin");
    });
}
