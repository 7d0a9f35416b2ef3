use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use super::*;
use crate::model::{EgressSelector, Selector};
use crate::testing::{labels, six_pods};

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn app(value: &str) -> Selector {
    Selector {
        match_labels: labels(&[("app", value)]),
        ..Selector::default()
    }
}

fn gateway(name: &str, pods: Selector, destinations: &[&str], excluded: &[&str]) -> EgressGateway {
    EgressGateway {
        name: name.into(),
        selectors: vec![EgressSelector {
            namespace_selector: None,
            pod_selector: Some(pods),
        }],
        destination_cidrs: destinations.iter().map(|d| net(d)).collect(),
        excluded_cidrs: excluded.iter().map(|d| net(d)).collect(),
        node_selector: Selector {
            match_labels: labels(&[("gw", name)]),
            ..Selector::default()
        },
        egress_ips: vec![ip(&format!("192.0.2.{}", name.len() * 10))],
    }
}

fn node(name: &str, pairs: &[(&str, &str)], addresses: &[&str]) -> Node {
    Node {
        name: name.into(),
        labels: labels(pairs),
        addresses: addresses.iter().map(|a| ip(a)).collect(),
    }
}

/// x/a (10.244.0.1) selected by "wide" (0/0), "db" (203.0.113.0/24) and "nested" (/16, minus /28).
fn cluster() -> Snapshot {
    let mut snapshot = six_pods(Vec::new());
    let mut wide = gateway("wide", app("a"), &["0.0.0.0/0"], &["203.0.113.128/25"]);
    wide.egress_ips.push(ip("2001:db8::100"));
    snapshot.egress_gateways = vec![
        wide,
        gateway("db", app("a"), &["203.0.113.0/24"], &[]),
        gateway("dc", app("a"), &["203.0.113.0/24"], &[]),
        gateway("nested", app("a"), &["203.0.0.0/16"], &["203.0.113.0/28"]),
    ];
    snapshot.nodes = vec![
        node("gw-b", &[("gw", "db")], &["172.18.0.3"]),
        node(
            "gw-a",
            &[(EGRESS_GATEWAY_LABEL, "true")],
            &["172.18.0.2", "fd18::2"],
        ),
        node("gw-w", &[("gw", "wide")], &["172.18.0.4"]),
    ];
    snapshot
}

#[test]
fn longest_destination_decides_and_ties_go_to_the_smallest_name() {
    let snapshot = cluster();
    let pod = snapshot.pod("x", "a").unwrap();
    let decide = |dst: &str| egress_for(&snapshot, pod, ip(dst));
    // db and dc tie on /24: db wins.
    let choice = decide("203.0.113.20").unwrap();
    assert_eq!(choice.gateway, "db");
    assert_eq!(choice.destination, net("203.0.113.0/24"));
    assert_eq!(choice.egress_ip, Some(ip("192.0.2.20")));
    // Outside the /16: only wide contains it.
    assert_eq!(decide("8.8.8.8").unwrap().gateway, "wide");
    assert_eq!(decide("203.0.1.1").unwrap().gateway, "nested");
    // wide excludes it, but db still decides there.
    assert_eq!(decide("203.0.113.200").unwrap().gateway, "db");
    // IPv6: wide has an egress IP of that family but no destination: nothing decides.
    assert_eq!(decide("2001:db8::1"), None);
    // A pod no EgressGateway selects.
    assert_eq!(
        egress_for(&snapshot, snapshot.pod("x", "b").unwrap(), ip("8.8.8.8")),
        None
    );
}

#[test]
fn a_decider_without_an_ip_of_the_family_leaves_untranslated() {
    let mut snapshot = cluster();
    snapshot.egress_gateways[0]
        .destination_cidrs
        .push(net("::/0"));
    snapshot.egress_gateways[0].egress_ips.truncate(1);
    let pod = snapshot.pod("x", "a").unwrap();
    let choice = egress_for(&snapshot, pod, ip("2001:db8::1")).unwrap();
    assert_eq!((choice.gateway.as_str(), choice.egress_ip), ("wide", None));
}

#[test]
fn snat_plan_counts_only_the_gateways_of_its_node() {
    let snapshot = cluster();
    let plan = snat_plan(&snapshot, Some("gw-b"));
    assert_eq!(plan.egress_ips, BTreeSet::from([ip("192.0.2.20")]));
    // x/a and y/a: app=a without namespaceSelector selects in every namespace.
    let addresses = ["10.244.0.1", "10.244.0.25", "fd00::1", "fd00::19"];
    assert_eq!(plan.classes, addresses.map(|a| (ip(a), 1)).into());
    assert_eq!(
        plan.entries,
        vec![SnatEntry {
            class: 1,
            destination: net("203.0.113.0/24"),
            egress_ip: Some(ip("192.0.2.20")),
        }]
    );
    assert_eq!(
        snat_plan(&snapshot, Some("no-such-node")),
        SnatPlan::default()
    );
    // A second node for db has its entries (ready for traffic) but, since steering sends db's
    // traffic to gw-b (first by name), does not answer for db's egress IP.
    let mut standby = snapshot.clone();
    standby
        .nodes
        .push(node("gw-c", &[("gw", "db")], &["172.18.0.5"]));
    let standby_plan = snat_plan(&standby, Some("gw-c"));
    assert_eq!(standby_plan.entries, plan.entries);
    assert!(standby_plan.egress_ips.is_empty());
    let everything = snat_plan(&snapshot, None);
    // db and dc share 192.0.2.20.
    assert_eq!(everything.egress_ips.len(), 4);
    // The /28 excluded by "nested" inside db's /24 changes nothing: db decides there anyway.
    assert!(!everything
        .entries
        .iter()
        .any(|e| e.destination == net("203.0.113.0/28")));
}

#[test]
fn the_active_member_takes_the_traffic_and_answers_for_the_egress_ips() {
    let mut snapshot = cluster();
    snapshot
        .nodes
        .push(node("gw-c", &[("gw", "db")], &["172.18.0.5"]));
    let pod = snapshot.pod("x", "a").unwrap();
    let via_db = |actives: &Actives| {
        let routes = steering_routes(&snapshot, &[pod], actives);
        (routes.iter())
            .find(|r| r.destination == net("203.0.113.0/24"))
            .map(|r| r.via)
    };
    // Without an election's outcome: the first member by name.
    assert_eq!(via_db(&Actives::new()), Some(ip("172.18.0.3")));
    let standby_active = Actives::from([("db".to_string(), "gw-c".to_string())]);
    assert_eq!(via_db(&standby_active), Some(ip("172.18.0.5")));
    // An active that is no member of db's group is ignored.
    let stranger = Actives::from([("db".to_string(), "gw-a".to_string())]);
    assert_eq!(via_db(&stranger), Some(ip("172.18.0.3")));
    let claims = BTreeSet::from(["db".to_string()]);
    assert_eq!(
        owned_egress_ips(&snapshot, "gw-c", &claims),
        BTreeSet::from([ip("192.0.2.20")])
    );
    // A claim of an EgressGateway the node does not serve owns nothing.
    assert!(owned_egress_ips(&snapshot, "gw-a", &claims).is_empty());
    assert!(owned_egress_ips(&snapshot, "gw-c", &BTreeSet::new()).is_empty());
}

#[test]
fn steering_sends_each_destination_to_its_deciders_node_then_the_default() {
    let snapshot = cluster();
    let pod = snapshot.pod("x", "a").unwrap();
    let routes = steering_routes(&snapshot, &[pod], &Actives::new());
    let shown: Vec<String> = routes
        .iter()
        .map(|r| format!("{} {} {}", r.source, r.destination, r.via))
        .collect();
    // "nested" and "dc" have no node: the default gateway (gw-a) takes their traffic; "wide"
    // decides everything else of IPv4; IPv6 goes to the default gateway. wide's exclusion of
    // 203.0.113.128/25 needs no route of its own: db decides it, as the rest of its /24.
    assert_eq!(
        shown,
        vec![
            "10.244.0.1 203.0.113.0/24 172.18.0.3",
            "10.244.0.1 203.0.0.0/16 172.18.0.2",
            "10.244.0.1 0.0.0.0/0 172.18.0.4",
            "fd00::1 ::/0 fd18::2",
        ]
    );
    let unselected = snapshot.pod("x", "b").unwrap();
    assert_eq!(
        steering_routes(&snapshot, &[unselected], &Actives::new()).len(),
        2
    );
    assert_eq!(
        default_gateways(&snapshot)
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        vec!["gw-a"]
    );
}

// Random snapshots: the six pods, up to four EgressGateways with nested, overlapping and
// excluded CIDRs of both families, and three nodes.

fn v4_cidr() -> impl Strategy<Value = IpNet> {
    (
        0u8..4,
        any::<u8>(),
        prop::sample::select(vec![0u8, 8, 16, 22, 23, 24, 26, 30, 32]),
    )
        .prop_map(|(c, d, len)| {
            IpNet::new(IpAddr::V4(Ipv4Addr::new(198, 51, c, d)), len)
                .unwrap()
                .trunc()
        })
}

fn v6_cidr() -> impl Strategy<Value = IpNet> {
    (
        0u16..4,
        any::<u8>(),
        prop::sample::select(vec![0u8, 32, 48, 62, 64, 120, 126, 128]),
    )
        .prop_map(|(c, d, len)| {
            let addr = Ipv6Addr::new(0x2001, 0xdb8, 0, c, 0, 0, 0, u16::from(d));
            IpNet::new(IpAddr::V6(addr), len).unwrap().trunc()
        })
}

fn cidr() -> impl Strategy<Value = IpNet> {
    prop_oneof![v4_cidr(), v6_cidr()]
}

fn maybe_selector(
    key: &'static str,
    values: &'static [&'static str],
) -> BoxedStrategy<Option<Selector>> {
    prop_oneof![
        Just(None),
        Just(Some(Selector::default())),
        prop::sample::select(values).prop_map(move |v| Some(Selector {
            match_labels: labels(&[(key, v)]),
            ..Selector::default()
        })),
    ]
    .boxed()
}

fn egress_gateway(index: usize) -> impl Strategy<Value = EgressGateway> {
    let item = (
        maybe_selector("ns", &["x", "y"]),
        maybe_selector("app", &["a", "b", "c"]),
    )
        .prop_filter("an item names something", |(n, p)| {
            n.is_some() || p.is_some()
        })
        .prop_map(|(namespace_selector, pod_selector)| EgressSelector {
            namespace_selector,
            pod_selector,
        });
    (
        prop::collection::vec(item, 1..3),
        prop::collection::vec(cidr(), 1..4),
        prop::collection::vec(cidr(), 0..3),
        prop::sample::select(vec!["r0", "r1"]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            move |(selectors, destination_cidrs, excluded_cidrs, role, v4, v6)| {
                let mut egress_ips = Vec::new();
                if v4 || !v6 {
                    egress_ips.push(IpAddr::V4(Ipv4Addr::new(192, 0, 2, index as u8)));
                }
                if v6 {
                    egress_ips.push(IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0xe,
                        0,
                        0,
                        0,
                        0,
                        index as u16,
                    )));
                }
                EgressGateway {
                    name: format!("g{index}"),
                    selectors,
                    destination_cidrs,
                    excluded_cidrs,
                    node_selector: Selector {
                        match_labels: labels(&[("role", role)]),
                        ..Selector::default()
                    },
                    egress_ips,
                }
            },
        )
}

fn random_node(index: usize) -> impl Strategy<Value = Node> {
    (
        prop::sample::select(vec!["r0", "r1"]),
        any::<bool>(),
        0u8..4,
    )
        .prop_map(move |(role, default, families)| {
            let mut pairs = vec![("role", role)];
            if default {
                pairs.push((EGRESS_GATEWAY_LABEL, "true"));
            }
            let mut addresses = Vec::new();
            if families & 1 != 0 {
                addresses.push(IpAddr::V4(Ipv4Addr::new(172, 18, 0, index as u8)));
            }
            if families & 2 != 0 {
                addresses.push(IpAddr::V6(Ipv6Addr::new(
                    0xfd18,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    index as u16,
                )));
            }
            Node {
                name: format!("n{index}"),
                labels: labels(&pairs),
                addresses,
            }
        })
}

fn random_snapshot() -> impl Strategy<Value = Snapshot> {
    (
        (0usize..5).prop_flat_map(|n| (0..n).map(egress_gateway).collect::<Vec<_>>()),
        (0usize..3).map(random_node).collect::<Vec<_>>(),
    )
        .prop_map(|(gateways, nodes)| {
            let mut snapshot = six_pods(Vec::new());
            snapshot.egress_gateways = gateways;
            snapshot.nodes = nodes;
            snapshot
        })
}

/// Destinations: random ones near the CIDRs, and the first and last address of every CIDR.
fn destinations(snapshot: &Snapshot, random: &[IpNet]) -> Vec<IpAddr> {
    let cidrs = (snapshot.egress_gateways.iter())
        .flat_map(|g| g.destination_cidrs.iter().chain(&g.excluded_cidrs));
    let edges = cidrs.flat_map(|c| [c.network(), c.broadcast()]);
    random.iter().map(|n| n.addr()).chain(edges).collect()
}

fn lpm<V: Copy>(entries: impl Iterator<Item = (IpNet, V)>, dst: IpAddr) -> Option<V> {
    entries
        .filter(|(net, _)| net.contains(&dst))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, v)| v)
}

fn random_destinations() -> impl Strategy<Value = Vec<IpNet>> {
    prop::collection::vec(cidr().prop_map(|c| IpNet::from(c.addr())), 0..16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn snat_plan_matches_egress_for(snapshot in random_snapshot(), random in random_destinations()) {
        let dsts = destinations(&snapshot, &random);
        for node in [None, Some("n0"), Some("n1"), Some("n2"), Some("elsewhere")] {
            let plan = snat_plan(&snapshot, node);
            let node_labels = node.map(|n| snapshot.nodes.iter().find(|x| x.name == n).map(|x| x.labels.clone()));
            let mut restricted = snapshot.clone();
            restricted.egress_gateways.retain(|g| match &node_labels {
                None => true,
                Some(None) => false,
                Some(Some(labels)) => g.node_selector.matches(labels),
            });
            for pod in &snapshot.pods {
                for &src in &pod.ips {
                    for &dst in dsts.iter().filter(|d| d.is_ipv4() == src.is_ipv4()) {
                        let expected = egress_for(&restricted, pod, dst).and_then(|c| c.egress_ip);
                        let actual = plan.classes.get(&src).and_then(|class| {
                            let entries = plan.entries.iter().filter(|e| e.class == *class);
                            lpm(entries.map(|e| (e.destination, e.egress_ip)), dst).flatten()
                        });
                        prop_assert_eq!(actual, expected, "node {:?} pod {} {} -> {}", node, pod.key(), src, dst);
                    }
                }
            }
        }
    }

    #[test]
    fn one_node_answers_for_each_egress_ip_the_one_steering_sends_to(snapshot in random_snapshot()) {
        for gateway in &snapshot.egress_gateways {
            for &ip in &gateway.egress_ips {
                let answering: Vec<&str> = (snapshot.nodes.iter())
                    .filter(|n| snat_plan(&snapshot, Some(&n.name)).egress_ips.contains(&ip))
                    .map(|n| n.name.as_str())
                    .collect();
                let carrier = gateway_node_address(&snapshot, gateway, ip, &Actives::new())
                    .and_then(|a| snapshot.nodes.iter().find(|n| n.addresses.contains(&a)));
                prop_assert_eq!(answering, carrier.map(|n| n.name.as_str()).into_iter().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn steering_routes_match_egress_for(snapshot in random_snapshot(), random in random_destinations()) {
        let dsts = destinations(&snapshot, &random);
        let pods: Vec<&Pod> = snapshot.pods.iter().collect();
        let routes = steering_routes(&snapshot, &pods, &Actives::new());
        for pod in &pods {
            for &src in &pod.ips {
                let mine: Vec<&SteerRoute> = routes.iter().filter(|r| r.source == src).collect();
                prop_assert!(mine.windows(2).all(|w| w[0].destination.prefix_len() >= w[1].destination.prefix_len()));
                let default_via = default_gateways(&snapshot).iter().find_map(|n| n.address_like(src));
                if let Some(via) = default_via {
                    let last = mine.last().expect("a catch-all route");
                    prop_assert_eq!(last.destination.prefix_len(), 0);
                    prop_assert!(egress_for(&snapshot, pod, last.destination.addr()).is_some() || last.via == via);
                }
                for &dst in dsts.iter().filter(|d| d.is_ipv4() == src.is_ipv4()) {
                    let expected = egress_for(&snapshot, pod, dst)
                        .and_then(|c| {
                            let g = snapshot.egress_gateways.iter().find(|g| g.name == c.gateway)?;
                            gateway_node_address(&snapshot, g, dst, &Actives::new())
                        })
                        .or(default_via);
                    let first = mine.iter().find(|r| r.destination.contains(&dst)).map(|r| r.via);
                    match expected {
                        Some(via) => prop_assert_eq!(first, Some(via), "pod {} {} -> {}", pod.key(), src, dst),
                        // Documented: only when no default gateway has this family.
                        None => prop_assert!(default_via.is_none()),
                    }
                }
            }
        }
    }
}
