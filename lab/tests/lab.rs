//! The lab on real traffic (needs root). Every packet stays inside namespaces these tests create.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Instant;

use portcullis_lab::{Lab, LabError, LabOptions, Verdict};
use portcullis_policy::model::{ContainerPort, Namespace, Pod, Protocol, Snapshot};
use portcullis_policy::probe::{Probe, ProbeEndpoint};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "portcullis_lab=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn pod(ns: &str, name: &str, ips: &[&str]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        ports: vec![ContainerPort {
            name: Some("serve-80-tcp".into()),
            port: 80,
            protocol: Protocol::Tcp,
        }],
        host_network: false,
        node: None,
    }
}

/// Namespaces x and y; x/a IPv4, x/b dual-stack, y/c IPv6 only.
fn snapshot() -> Snapshot {
    let namespaces: BTreeMap<String, Namespace> = ["x", "y"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                Namespace {
                    name: n.to_string(),
                    labels: [("kubernetes.io/metadata.name".to_string(), n.to_string())].into(),
                },
            )
        })
        .collect();
    Snapshot {
        namespaces,
        pods: vec![
            pod("x", "a", &["10.244.1.10"]),
            pod("x", "b", &["10.244.1.20", "fd00:10:244:1::20"]),
            pod("y", "c", &["fd00:10:244:2::30"]),
        ],
        policies: Vec::new(),
    }
}

const EXT4: &str = "203.0.113.1";
const EXT6: &str = "2001:db8::1";

fn ep(s: &str) -> ProbeEndpoint {
    ProbeEndpoint::parse(s).unwrap()
}

fn probe(from: &str, to: &str, protocol: Protocol, port: u16) -> Probe {
    Probe {
        from: ep(from),
        to: ep(to),
        protocol,
        port,
    }
}

/// Pod→pod (v4 and v6), self, pod→external and external→pod (v4 and v6), over TCP, UDP and SCTP.
fn probes() -> Vec<Probe> {
    let pairs = [
        ("x/a", "x/b"), // v4 pod → pod
        ("x/b", "y/c"), // v6 pod → pod (y/c is IPv6 only)
        ("y/c", "x/b"), // v6, other direction
        ("x/a", "x/a"), // to itself
        ("x/a", EXT4),  // pod → external v4
        ("y/c", EXT6),  // pod → external v6
        (EXT4, "x/b"),  // external → pod v4
        (EXT6, "x/b"),  // external → dual-stack pod over v6
        (EXT6, "y/c"),  // external → pod v6
    ];
    let mut out = Vec::new();
    for (from, to) in pairs {
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            out.push(probe(from, to, proto, 80));
        }
    }
    out.push(probe("x/a", EXT4, Protocol::Tcp, 81));
    out
}

/// Every network namespace's name, one a line.
fn netns_names() -> String {
    portcullis_lab::netns::list().join("\n")
}

fn nft(lab: &Lab, netns: &str, script: &str) {
    let path = std::env::temp_dir().join(format!("{}-nft", lab.id()));
    std::fs::write(&path, script).unwrap();
    let mut cmd2 = Command::new("nft");
    cmd2.arg("-f").arg(&path);
    let out = lab.output_in(netns, cmd2).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_probe_is_allowed_without_enforcement_and_teardown_is_clean() {
    init_tracing();
    let snap = snapshot();
    let probes = probes();
    let t = Instant::now();
    let mut lab = Lab::build(&snap, &probes, LabOptions::default()).expect("build lab");
    let built = t.elapsed();
    let id = lab.id().to_string();
    assert!(netns_names().contains(&id));
    assert_eq!(lab.namespaces().len(), 6, "node, gateway, ext and 3 pods");

    let gw = lab.gateway().clone();
    assert_eq!(gw.cluster_iface, "cluster");
    assert_eq!(gw.external_iface, "external");
    let b = lab.pod("x", "b").expect("x/b attached");
    assert_eq!(b.node_netns, lab.nodes()[0].netns);
    assert!(b.host_iface.len() <= 15);

    let t = Instant::now();
    let results = lab.probe_all(&probes);
    let probed = t.elapsed();
    let mut failures = Vec::new();
    for (p, r) in probes.iter().zip(&results) {
        let o = r.as_ref().unwrap_or_else(|e| panic!("{p}: {e}"));
        eprintln!(
            "{p}: {} ({}) {} -> {}",
            o.verdict, o.detail, o.from_addr, o.to
        );
        if o.verdict != Verdict::Allow {
            failures.push(format!("{p}: {} ({})", o.verdict, o.detail));
        }
        // Nothing translates here: the server saw the probe's own source.
        assert_eq!(o.source_seen, Some(o.from_addr), "{p}");
    }
    assert!(
        failures.is_empty(),
        "denied without enforcement: {failures:#?}"
    );
    // Addresses: IPv4 preferred; v6 where the pair has no common v4.
    let by = |i: usize| results[i].as_ref().unwrap();
    assert!(by(0).to.is_ipv4());
    assert!(by(3).to.is_ipv6() && by(3).from_addr.is_ipv6());
    assert_eq!(by(12).to.ip(), EXT4.parse::<IpAddr>().unwrap());
    assert_eq!(by(21).from_addr, EXT6.parse::<IpAddr>().unwrap());
    assert!(by(21).to.is_ipv6());
    eprintln!("lab build {built:?}, {} probes in {probed:?}", probes.len());

    // A single probe on its own thread gives the same answer.
    let o = lab.probe(&probes[1]).unwrap();
    assert_eq!(
        (o.verdict, o.detail.as_str()),
        (Verdict::Allow, "reply received")
    );

    // A probe the lab was not built for is an error, not a verdict.
    let extra = probe("x/a", "x/b", Protocol::Tcp, 9999);
    assert!(matches!(lab.probe(&extra), Err(LabError::NotPrepared(_))));
    let no_family = probe("x/a", "y/c", Protocol::Tcp, 80);
    assert!(matches!(
        lab.probe(&no_family),
        Err(LabError::NoCommonFamily { .. })
    ));

    lab.teardown().expect("teardown");
    drop(lab);
    assert!(
        !netns_names().contains(&id),
        "namespaces left behind: {}",
        netns_names()
    );
}

#[test]
fn gateway_drop_rules_show_up_as_deny() {
    init_tracing();
    let snap = snapshot();
    let mut probes = probes();
    // Ports that only these probes use; the gateway will drop them.
    let dropped_tcp = probe("x/a", EXT4, Protocol::Tcp, 8081);
    let dropped_udp = probe(EXT6, "y/c", Protocol::Udp, 8082);
    let dropped_sctp = probe("x/b", EXT6, Protocol::Sctp, 8083);
    let reply_dropped_sctp = probe("x/a", EXT4, Protocol::Sctp, 8084);
    let reply_dropped_tcp = probe(EXT4, "x/a", Protocol::Tcp, 8085);
    probes.extend([
        dropped_tcp.clone(),
        dropped_udp.clone(),
        dropped_sctp.clone(),
        reply_dropped_sctp.clone(),
        reply_dropped_tcp.clone(),
    ]);
    let lab = Lab::build(&snap, &probes, LabOptions::default()).expect("build lab");
    let gw = lab.gateway().netns.clone();
    nft(
        &lab,
        &gw,
        "table inet pcltest {
            chain filt {
                type filter hook forward priority 0; policy accept;
                tcp dport 8081 drop
                udp dport 8082 drop
                sctp dport 8083 drop
                sctp sport 8084 drop
                tcp sport 8085 drop
            }
        }",
    );
    let t = Instant::now();
    let results = lab.probe_all(&probes);
    eprintln!("{} probes with drops in {:?}", probes.len(), t.elapsed());
    for (p, r) in probes.iter().zip(&results) {
        let o = r.as_ref().unwrap_or_else(|e| panic!("{p}: {e}"));
        eprintln!("{p}: {} ({})", o.verdict, o.detail);
        let expect_deny = [
            &dropped_tcp,
            &dropped_udp,
            &dropped_sctp,
            &reply_dropped_sctp,
            &reply_dropped_tcp,
        ]
        .contains(&p);
        let want = if expect_deny {
            Verdict::Deny
        } else {
            Verdict::Allow
        };
        assert_eq!(o.verdict, want, "{p}: {}", o.detail);
        if expect_deny {
            assert_eq!(o.attempts, 2, "{p}: a timeout is retried once");
        }
    }
    let detail = |p: &Probe| {
        let i = probes.iter().position(|q| q == p).unwrap();
        results[i].as_ref().unwrap().detail.clone()
    };
    assert_eq!(detail(&dropped_sctp), "timeout");
    // The INIT got through but its answer did not: the lab says so.
    assert_eq!(
        detail(&reply_dropped_sctp),
        "init arrived, no init ack came back"
    );
    assert_eq!(detail(&reply_dropped_tcp), "timeout");
    let seen = |p: &Probe| {
        let i = probes.iter().position(|q| q == p).unwrap();
        results[i].as_ref().unwrap().source_seen
    };
    // What was dropped on the way there arrived nowhere; an INIT whose answer was dropped did.
    assert_eq!(seen(&dropped_udp), None);
    assert_eq!(seen(&dropped_sctp), None);
    assert_eq!(
        seen(&reply_dropped_sctp),
        Some("10.244.1.10".parse().unwrap())
    );
}

#[test]
fn spawn_in_enters_the_namespace_and_teardown_kills_children() {
    init_tracing();
    let snap = snapshot();
    let probes = vec![probe("x/a", EXT4, Protocol::Tcp, 80)];
    let mut lab = Lab::build(&snap, &probes, LabOptions::default()).expect("build lab");
    let gw = lab.gateway().netns.clone();
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let child = lab.spawn_in(&gw, cmd).unwrap();
    let pid = child.id();
    let want = std::fs::metadata(format!("/run/netns/{gw}")).unwrap().ino();
    let got = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    assert_eq!(got, want, "child runs in the gateway namespace");
    // bpffs (if mounted on the host) stays visible: the mount namespace is untouched.
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_eq!(ours, theirs);

    // The interfaces the gateway will be started on exist there.
    let out = lab
        .output_in(&gw, {
            let mut c = Command::new("ip");
            c.args(["-o", "link", "show"]);
            c
        })
        .unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    assert!(
        links.contains("cluster@") && links.contains("external@"),
        "{links}"
    );
    // Host-side pod interfaces live in the node namespace.
    let a = lab.pod("x", "a").unwrap().clone();
    // Code run in the node namespace sees its sysctls (forwarding on, DAD off).
    let (fwd, dad) = lab
        .run_in_netns(&a.node_netns, || {
            let r = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
            (
                r("/proc/sys/net/ipv4/ip_forward"),
                r("/proc/sys/net/ipv6/conf/all/accept_dad"),
            )
        })
        .unwrap();
    assert_eq!((fwd.as_str(), dad.as_str()), ("1", "0"));
    let out = lab
        .output_in(&a.node_netns, {
            let mut c = Command::new("ip");
            c.args(["-o", "link", "show", "dev", &a.host_iface]);
            c
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    lab.teardown().unwrap();
    assert!(child.try_wait().unwrap().is_some(), "child was killed");
    assert!(!netns_names().contains(lab.id()));
}

#[test]
fn cleanup_stale_removes_namespaces_of_dead_processes_only() {
    init_tracing();
    // pid 4194303 (the largest pid_max) is assumed not to be running.
    let dead = "pclstale-4194303-0-gw";
    let alive = format!("pclstale-{}-0-gw", std::process::id());
    for n in [dead, alive.as_str()] {
        let st = Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let gone = portcullis_lab::cleanup_stale("pclstale").unwrap();
    let names = netns_names();
    let _ = Command::new("ip").args(["netns", "del", &alive]).status();
    assert_eq!(gone, vec![dead.to_string()]);
    assert!(!names.contains(dead));
    assert!(names.contains(&alive));
}

#[test]
fn two_nodes_share_a_fabric_and_pod_traffic_between_them_skips_the_gateway() {
    init_tracing();
    let mut snap = snapshot();
    snap.pods[0].node = Some("node-a".into()); // x/a
    snap.pods[1].node = Some("node-b".into()); // x/b
    snap.pods[2].node = Some("node-b".into()); // y/c
    let cross = [
        probe("x/a", "x/b", Protocol::Tcp, 80),
        probe("x/b", "x/a", Protocol::Udp, 80),
        probe("x/a", "x/b", Protocol::Sctp, 80),
    ];
    let edge = [
        probe("x/a", EXT4, Protocol::Tcp, 80),
        probe(EXT6, "y/c", Protocol::Udp, 80),
        probe("x/b", EXT6, Protocol::Sctp, 80),
    ];
    let all: Vec<Probe> = cross.iter().chain(&edge).cloned().collect();
    let lab = Lab::build(&snap, &all, LabOptions::default()).expect("build lab");
    assert_eq!(lab.nodes().len(), 2);
    assert!(lab.fabric_netns().is_some());
    let (a, b) = (lab.pod("x", "a").unwrap(), lab.pod("x", "b").unwrap());
    assert_ne!(a.node_netns, b.node_netns);
    assert_eq!((a.node.as_str(), b.node.as_str()), ("node-a", "node-b"));
    for (p, r) in all.iter().zip(lab.probe_all(&all)) {
        let o = r.unwrap();
        assert_eq!(o.verdict, Verdict::Allow, "{p}: {}", o.detail);
    }
    // Drop everything the gateway forwards: the edge probes now fail, pod to pod across nodes
    // still works (it never crosses the gateway).
    let gw = lab.gateway().netns.clone();
    nft(
        &lab,
        &gw,
        "table inet pcltest {\n chain f {\n  type filter hook forward priority 0; policy drop;\n }\n}\n",
    );
    for (p, r) in all.iter().zip(lab.probe_all(&all)) {
        let o = r.unwrap();
        let want = if cross.contains(p) {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        assert_eq!(o.verdict, want, "{p}: {}", o.detail);
    }
}

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
/// everywhere via the gateway's cluster leg, on the uplink (the IPv6 next hop is link-local).
fn steer(lab: &Lab) -> Vec<portcullis_steering::Steering> {
    use portcullis_steering::{SteerRoute, Steering, SteeringConfig};
    let gw = lab.gateway().clone();
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
    let mut steering = steer(&lab);
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
