//! The lab on real traffic (needs root). Every packet stays inside namespaces these tests create.

mod support;

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Instant;

use portcullis_lab::{Lab, LabError, LabOptions, Verdict};
use portcullis_policy::model::Protocol;
use portcullis_policy::probe::Probe;

use support::{init_tracing, nft, probe, snapshot, EXT4, EXT6};

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
