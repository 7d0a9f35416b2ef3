//! The lab's router topology (`steer_via_router`, needs root): only steering, installed here
//! in the node namespaces as a node daemon does, brings pod egress to the gateway. Every packet
//! stays inside namespaces these tests create.

mod support;

use std::net::IpAddr;
use std::process::Command;

use portcullis_lab::{GatewayLegs, Lab, LabOptions, Verdict};
use portcullis_policy::model::Protocol;
use portcullis_policy::probe::Probe;

use support::{init_tracing, nft, probe, snapshot, EXT4, EXT6};

/// Probes `probes` and checks each verdict against `allowed(probe)`; every allowed probe's server
/// saw the pod's own address (nothing translates here).
fn expect(lab: &Lab, step: &str, probes: &[Probe], allowed: impl Fn(&Probe) -> bool) {
    for (p, r) in probes.iter().zip(lab.probe_all(probes)) {
        let o = r.unwrap_or_else(|e| panic!("{step}: {p}: {e}"));
        let want = if allowed(p) {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        assert_eq!(o.verdict, want, "{step}: {p}: {}", o.detail);
        if want == Verdict::Allow {
            assert_eq!(o.source_seen, Some(o.from_addr), "{step}: {p}");
        }
    }
}

/// Steering, as a node daemon does it: in every node namespace, each local pod address to
/// everywhere via gateway `gw`'s cluster leg, on the uplink (the IPv6 next hop is link-local).
fn steer(lab: &Lab, gw: &GatewayLegs) -> Vec<portcullis_steering::Steering> {
    use portcullis_steering::{SteerRoute, Steering, SteeringConfig};
    lab.nodes()
        .iter()
        .map(|node| {
            let routes: Vec<SteerRoute> = lab
                .pods()
                .filter(|p| p.node_netns == node.netns)
                .flat_map(|p| p.ips.iter().copied())
                .map(|source| SteerRoute {
                    source,
                    destination: if source.is_ipv4() {
                        "0.0.0.0/0".parse().unwrap()
                    } else {
                        "::/0".parse().unwrap()
                    },
                    via: if source.is_ipv4() {
                        gw.cluster_ipv4.into()
                    } else {
                        gw.cluster_ipv6.into()
                    },
                })
                .collect();
            let config = SteeringConfig::new(
                lab.cluster_cidrs(),
                Some(portcullis_lab::NODE_UPLINK_IFACE.into()),
            );
            let mut s = lab
                .run_in_netns(&node.netns, || Steering::new(config))
                .unwrap()
                .unwrap();
            s.apply(&routes).unwrap();
            s
        })
        .collect()
}

#[test]
fn with_a_router_only_steering_brings_pod_egress_to_the_gateway() {
    init_tracing();
    let mut snap = snapshot();
    snap.pods[0].node = Some("node-a".into()); // x/a
    snap.pods[1].node = Some("node-b".into()); // x/b
    snap.pods[2].node = Some("node-b".into()); // y/c
    let egress = [
        probe("x/a", EXT4, Protocol::Tcp, 80),
        probe("x/a", EXT4, Protocol::Udp, 80),
        probe("y/c", EXT6, Protocol::Tcp, 80),
        probe("x/b", EXT6, Protocol::Udp, 80),
    ];
    let cross = probe("x/a", "x/b", Protocol::Tcp, 80);
    let inbound = probe(EXT4, "x/b", Protocol::Udp, 80);
    let all: Vec<Probe> = egress
        .iter()
        .cloned()
        .chain([cross.clone(), inbound])
        .collect();
    let egress_ips: Vec<IpAddr> = ["192.0.2.100", "2001:db8::100"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let options = LabOptions {
        timeout: std::time::Duration::from_millis(400),
        steer_via_router: true,
        egress_ips: egress_ips.clone(),
        ..LabOptions::default()
    };
    let lab = Lab::build(&snap, &all, options).expect("build lab");
    let rt = lab.router_netns().expect("a router").to_string();
    let gw = lab.gateway().netns.clone();
    assert!(lab.fabric_netns().is_some());
    assert_eq!(
        lab.namespaces().len(),
        2 + 4 + 3,
        "2 nodes, gw ext rt fab, 3 pods"
    );
    let manifest = lab.node_manifest();
    assert_eq!(manifest.matches("kind: Node").count(), 3, "{manifest}");
    assert!(manifest.contains("portcullis.io/egress-gateway: \"true\""));

    // Unsteered, pod egress takes the node's default route, the router, and still arrives.
    expect(&lab, "unsteered", &all, |_| true);
    let gw_refuses_cluster = "table inet pcltest {\n chain f {\n  type filter hook forward priority 0; policy accept;\n  iifname \"cluster\" drop\n }\n}\n";
    let router_drops = "table inet pcltest {\n chain f {\n  type filter hook forward priority 0; policy drop;\n }\n}\n";
    let flush = "delete table inet pcltest\n";
    // The gateway forwards nothing from the cluster: unsteered traffic never needs it (replies
    // to pods come back through it from the external side; the inbound probe's reply leaves by
    // the router).
    nft(&lab, &gw, gw_refuses_cluster);
    expect(
        &lab,
        "unsteered, gateway refuses the cluster side",
        &all,
        |_| true,
    );
    nft(&lab, &gw, flush);
    // The router forwards nothing: unsteered egress is lost (escape noticed).
    nft(&lab, &rt, router_drops);
    expect(&lab, "unsteered, router drops", &all, |p| p == &cross);

    // Steered: everything leaves through the gateway; the router is never needed.
    let mut steering = steer(&lab, lab.gateway());
    expect(&lab, "steered, router drops", &all, |_| true);
    nft(&lab, &gw, gw_refuses_cluster);
    expect(
        &lab,
        "steered, gateway refuses the cluster side",
        &all,
        |p| p == &cross,
    );
    nft(&lab, &gw, flush);

    // Cleared: back to the router, which still drops.
    for s in &mut steering {
        s.clear().unwrap();
    }
    expect(&lab, "cleared, router drops", &all, |p| p == &cross);

    // Egress IPs: routed on-link from the external namespace with no static neighbour; once the
    // gateway holds them on its external leg, its ARP/ND answers bring traffic to it.
    let ext = lab.external_netns().to_string();
    let neigh = |lab: &Lab| {
        let mut c = Command::new("ip");
        c.args(["neigh", "show", "dev", portcullis_lab::EXT_IFACE]);
        String::from_utf8(lab.output_in(&ext, c).unwrap().stdout).unwrap()
    };
    let before = neigh(&lab);
    for ip in &egress_ips {
        assert!(!before.contains(&ip.to_string()), "{before}");
    }
    let sockets: Vec<std::net::UdpSocket> = egress_ips
        .iter()
        .map(|ip| {
            let (ip, dev) = (*ip, lab.gateway().external_iface.clone());
            lab.run_in_netns(&gw, move || {
                portcullis_testkit::sh(&format!("ip addr add {ip} dev {dev} nodad"));
                std::net::UdpSocket::bind((ip, 9)).unwrap()
            })
            .unwrap()
        })
        .collect();
    for (ip, sock) in egress_ips.iter().zip(&sockets) {
        let ip = *ip;
        lab.run_in_netns(&ext, move || {
            let bind: IpAddr = if ip.is_ipv4() { EXT4 } else { EXT6 }.parse().unwrap();
            let s = std::net::UdpSocket::bind((bind, 0)).unwrap();
            s.send_to(b"x", (ip, 9)).unwrap();
        })
        .unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 8];
        let (_, from) = sock.recv_from(&mut buf).expect("datagram to the egress IP");
        assert!(from.is_ipv4() == ip.is_ipv4(), "{from}");
    }
    let after = neigh(&lab);
    for ip in &egress_ips {
        let line = after
            .lines()
            .find(|l| l.starts_with(&format!("{ip} ")))
            .unwrap_or_else(|| panic!("no neighbour {ip}: {after}"));
        assert!(!line.contains("PERMANENT"), "{line}");
    }
}

#[test]
fn a_standby_gateway_shares_both_segments() {
    init_tracing();
    let mut snap = snapshot();
    snap.pods[0].node = Some("node-a".into()); // x/a
    snap.pods[1].node = Some("node-b".into()); // x/b
    let egress = [
        probe("x/a", EXT4, Protocol::Tcp, 80),
        probe("x/b", EXT6, Protocol::Udp, 80),
    ];
    let options = LabOptions {
        timeout: std::time::Duration::from_millis(400),
        steer_via_router: true,
        standby_gateway: true,
        ..LabOptions::default()
    };
    let lab = Lab::build(&snap, &egress, options).expect("build lab");
    let standby = lab.standby_gateway().expect("a standby gateway").clone();
    let manifest = lab.node_manifest();
    assert!(manifest.contains("name: gateway-b"), "{manifest}");
    assert_eq!(
        manifest.matches("portcullis.io/egress-gateway").count(),
        2,
        "{manifest}"
    );
    let router_drops = "table inet pcltest {\n chain f {\n  type filter hook forward priority 0; policy drop;\n }\n}\n";
    nft(&lab, lab.router_netns().unwrap(), router_drops);
    // Steered to the standby: its cluster leg takes the pods' egress (the replies come back
    // through the first gateway, the external namespace's default route).
    let _steering = steer(&lab, &standby);
    expect(&lab, "steered to the standby", &egress, |_| true);
    let refuses = "table inet pcltest {\n chain f {\n  type filter hook forward priority 0; policy accept;\n  iifname \"cluster\" drop\n }\n}\n";
    nft(&lab, &standby.netns, refuses);
    expect(&lab, "standby refuses the cluster side", &egress, |_| false);

    // The external segment is shared: the external namespace reaches an address either gateway
    // holds on its external leg, through the bridge.
    let ext = lab.external_netns().to_string();
    for gw in [lab.gateway().clone(), standby] {
        let dev = gw.external_iface.clone();
        let sock = lab
            .run_in_netns(&gw.netns, move || {
                portcullis_testkit::sh(&format!("ip addr add 192.0.2.77 dev {dev}"));
                std::net::UdpSocket::bind(("192.0.2.77", 9)).unwrap()
            })
            .unwrap();
        lab.run_in_netns(&ext, || {
            portcullis_testkit::sh(
                "ip neigh flush to 192.0.2.77; ip route replace 192.0.2.77/32 dev brx scope link",
            );
            let s = std::net::UdpSocket::bind((EXT4.parse::<IpAddr>().unwrap(), 0)).unwrap();
            s.send_to(b"x", ("192.0.2.77", 9)).unwrap();
        })
        .unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 8];
        sock.recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{}: datagram to its external leg: {e}", gw.node));
        let dev = gw.external_iface.clone();
        lab.run_in_netns(&gw.netns, move || {
            portcullis_testkit::sh(&format!("ip addr del 192.0.2.77/32 dev {dev}"))
        })
        .unwrap();
    }
}
