//! Real packets: two namespaces joined by a veth pair; the gateway's cluster leg is attached
//! (native XDP) to the veth end inside the gateway namespace, and ping from the "pod" namespace
//! passes or is dropped as the tables say.

use portcullis_gateway::{Gateway, GatewayOptions};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::*;

mod xdp_pass;
use xdp_pass::attach_pass;

fn tables(allowed: &str) -> GatewayTables {
    egress_allowed(&["10.99.0.1"], "test/pod-egress", &[allowed])
}

fn ping(pod: &NetNs, dst: &str) -> bool {
    pod.run(|| {
        std::process::Command::new("ping")
            .args(["-c", "1", "-W", "1", dst])
            .output()
            .expect("ping")
            .status
            .success()
    })
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn ping_through_xdp_attached_veth_passes_and_drops_as_tables_say() {
    require_root();
    let pod = NetNs::new("pod");
    let gwns = NetNs::new("gw");
    // pod: p0 10.99.0.1/24  <—veth—>  gw: gc 10.99.0.2/24 (cluster leg); ge/gep: external leg.
    sh(&format!(
        "ip link add p0 netns {} type veth peer name gc netns {}",
        pod.name, gwns.name
    ));
    pod.run(|| sh("ip addr add 10.99.0.1/24 dev p0 && ip link set p0 up"));
    gwns.run(|| {
        sh("ip addr add 10.99.0.2/24 dev gc && ip link set gc up && \
            ip addr add 10.99.0.3/24 dev gc && \
            ip link add ge type veth peer name gep && ip link set ge up && ip link set gep up")
    });
    // Before the gateway: reachable.
    assert!(ping(&pod, "10.99.0.2"), "no connectivity before attaching");

    let mut gw = gwns.run(|| {
        Gateway::load(GatewayOptions {
            cluster_iface: "gc".into(),
            external_iface: "ge".into(),
            revalidate: true,
            ..Default::default()
        })
        .expect("load")
    });
    let link = gwns.run(|| sh("ip -d link show gc"));
    assert!(link.contains("xdp"), "not attached: {link}");

    // The pod is selected for egress and may reach only 10.99.0.2/32.
    gw.apply(&tables("10.99.0.2/32")).expect("apply");
    assert!(ping(&pod, "10.99.0.2"), "allowed destination unreachable");
    assert!(!ping(&pod, "10.99.0.3"), "denied destination reachable");

    // Switch: now only 10.99.0.3 is allowed (revalidation cuts the old echo flow too).
    gw.apply(&tables("10.99.0.3/32")).expect("apply 2");
    assert!(
        ping(&pod, "10.99.0.3"),
        "newly allowed destination unreachable"
    );
    assert!(
        !ping(&pod, "10.99.0.2"),
        "newly denied destination reachable"
    );

    let status = gw.status().expect("status");
    eprintln!("{status:#?}");
    assert!(status.tables.counters.drop_policy >= 2);
    assert!(
        status.tables.counters.pass_non_ip >= 1,
        "ARP was not passed"
    );
    assert!(status
        .tables
        .drops_by_group
        .iter()
        .any(|g| g.policies == ["test/pod-egress"] && g.packets >= 1));
    drop(gw);
}

/// Forwarding in XDP: pod ns → gateway ns (cluster leg gc, external leg ge) → external ns. The
/// gateway routes with bpf_fib_lookup + bpf_redirect once the neighbours are resolved (the first
/// packets go through the kernel, which resolves them). The receiving veth ends get the object's
/// bare `xdp_pass` program: a veth only receives redirected frames when its NAPI runs (an XDP
/// program on it, or GRO, and there is no ethtool here to turn GRO on).
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn xdp_forwarding_between_legs() {
    require_root();
    let EdgeNs { pod, gw: gwns, ext } = EdgeNs::new("f");
    pod.run(|| {
        sh("ip addr add 10.98.0.1/24 dev p0 && ip link set p0 up && \
            ip route add default via 10.98.0.254")
    });
    ext.run(|| {
        sh("ip addr add 10.97.0.1/24 dev x0 && ip link set x0 up && \
            ip route add default via 10.97.0.254")
    });
    let _napi_pod = pod.run(|| attach_pass("p0"));
    let _napi_ext = ext.run(|| attach_pass("x0"));
    gwns.run(|| {
        sh("ip addr add 10.98.0.254/24 dev gc && ip link set gc up && \
            ip addr add 10.97.0.254/24 dev ge && ip link set ge up && \
            sysctl -qw net.ipv4.ip_forward=1")
    });
    let mut gw = gwns.run(|| {
        Gateway::load(GatewayOptions {
            cluster_iface: "gc".into(),
            external_iface: "ge".into(),
            forward: portcullis_gateway::ForwardMode::Xdp,
            ..Default::default()
        })
        .expect("load")
    });
    let t = egress_allowed(&["10.98.0.1"], "test/pod-egress", &["10.97.0.0/24"]);
    gw.apply(&t).expect("apply");
    let ok = pod.run(|| {
        std::process::Command::new("ping")
            .args(["-c", "5", "-i", "0.2", "-W", "1", "10.97.0.1"])
            .output()
            .expect("ping")
            .status
            .success()
    });
    let status = gw.status().expect("status");
    eprintln!("{status:#?}");
    assert!(ok, "ping through the XDP-forwarding gateway failed");
    assert!(
        status.tables.counters.forward_xdp >= 4,
        "expected most packets forwarded in XDP: {:?}",
        status.tables.counters
    );
}
