//! ns/packet through BPF_PROG_TEST_RUN (64-byte frames): the bare `xdp_pass` baseline against the
//! gateway on an established flow and on packets that take the policy path, with 10 and 10k
//! prefixes in the pod's group. Printed, not asserted (timings depend on the machine); run with
//! `cargo test -p portcullis-gateway --test bench -- --nocapture` to see them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_gateway::{Datapath, Gateway, GatewayOptions, TestProgram, XDP_DROP, XDP_PASS};
use portcullis_policy::compile::{GatewayGroup, GatewayTables, PortRule};
use portcullis_policy::model::{Direction, Protocol};
use portcullis_testkit::*;

const REPEAT: u32 = 200_000;

fn tables(n: usize) -> GatewayTables {
    let mut prefixes: Vec<(IpNet, u32)> = vec![
        ("192.168.1.0/24".parse().unwrap(), 0),
        ("192.168.2.0/24".parse().unwrap(), 1),
    ];
    for i in 0..n.saturating_sub(2) {
        let net = format!("10.{}.{}.0/24", (i >> 8) & 255, i & 255);
        prefixes.push((net.parse().unwrap(), (i % 2) as u32));
    }
    let mut endpoints = BTreeMap::new();
    endpoints.insert(
        (Direction::Egress, "10.244.1.10".parse::<IpAddr>().unwrap()),
        0,
    );
    GatewayTables {
        endpoints,
        groups: vec![GatewayGroup {
            direction: Direction::Egress,
            policies: vec!["bench/egress".into()],
            prefixes,
        }],
        rule_sets: vec![
            vec![PortRule {
                protocol: Some(Protocol::Tcp),
                first: 5432,
                last: 5432,
            }],
            vec![PortRule {
                protocol: None,
                first: 0,
                last: 65535,
            }],
        ],
    }
}

fn pad64(mut p: Vec<u8>) -> Vec<u8> {
    p.resize(p.len().max(64), 0);
    p
}

fn measure(gw: &mut Gateway, prog: TestProgram, ifx: u32, pkt: &[u8], expect: u32) -> f64 {
    let out = gw.test_run(prog, ifx, pkt, REPEAT).expect("test run");
    assert_eq!(out.action, expect);
    out.duration.as_nanos() as f64
}

#[test]
fn ns_per_packet() {
    if not_root() {
        return;
    }
    let ns = NetNs::new("bench");
    ns.run(|| {
        sh(
            "ip link add bc type veth peer name bcp && ip link add be type veth peer name bep && \
            for i in bc bcp be bep; do ip link set $i up; done",
        );
        let mut gw = Gateway::load(GatewayOptions {
            cluster_iface: "bc".into(),
            external_iface: "be".into(),
            ..Default::default()
        })
        .expect("load");
        let c = ifindex("bc");
        let syn = pad64(frame_v4(
            &[],
            ipv4(
                "10.244.1.10",
                "192.168.1.20",
                6,
                &[],
                0,
                &tcp(40000, 5432, TCP_SYN),
            ),
        ));
        let ack = pad64(frame_v4(
            &[],
            ipv4(
                "10.244.1.10",
                "192.168.1.20",
                6,
                &[],
                0,
                &tcp(40000, 5432, TCP_ACK),
            ),
        ));
        // ICMP timestamp request: judged by policy on every packet, never creates a flow.
        let icmp_ts = pad64(frame_v4(
            &[],
            ipv4(
                "10.244.1.10",
                "192.168.2.20",
                1,
                &[],
                0,
                &icmp(13, 1, &[0; 12]),
            ),
        ));
        let denied = pad64(frame_v4(
            &[],
            ipv4(
                "10.244.1.10",
                "192.168.1.20",
                6,
                &[],
                0,
                &tcp(40001, 5433, TCP_SYN),
            ),
        ));
        println!("ns/packet, BPF_PROG_TEST_RUN, 64 B, {REPEAT} repeats");
        for n in [10usize, 10_000] {
            let stats = gw.apply(&tables(n)).expect("apply");
            gw.gc_flows().expect("gc");
            let base = measure(&mut gw, TestProgram::Pass, c, &syn, XDP_PASS);
            gw.test_run(TestProgram::Gateway, c, &syn, 1)
                .expect("open flow");
            let flow = measure(&mut gw, TestProgram::Gateway, c, &ack, XDP_PASS);
            let policy_allow = measure(&mut gw, TestProgram::Gateway, c, &icmp_ts, XDP_PASS);
            let policy_deny = measure(&mut gw, TestProgram::Gateway, c, &denied, XDP_DROP);
            println!(
                "prefixes {n:>6} (apply: {:?}, {} written, {} deleted): xdp_pass {base:.0} | \
                 established flow {flow:.0} | new, allowed by policy {policy_allow:.0} | \
                 new, denied {policy_deny:.0}",
                stats.write, stats.written, stats.deleted
            );
        }
    });
}
