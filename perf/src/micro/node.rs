//! Node-hook micro figures: `BPF_PROG_TEST_RUN` ns/packet of the node hook's deliver program
//! (`portcullis_node_deliver`, the pod veth's egress: packets going into a pod) against the
//! object's bare `TC_ACT_OK` program, per path a packet can take. The cluster is the node
//! traffic test's: pods t/a (10.77.1.1) and t/b (10.77.2.2), b admitting app=a on TCP 8080 and
//! UDP 5353, a admitting nothing. It has no ipBlocks, so the figures are measured once per run
//! and reported at ipBlocks 0; 64-byte TCP frames from a to b, median of `ROUNDS` runs each.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use portcullis_node::{NodeHook, NodeOptions, TestProgram, TC_ACT_OK, TC_ACT_SHOT};
use portcullis_policy::compile::node::compile_node;
use portcullis_policy::model::{
    Namespace, Peer, Pod, Policy, PolicyPort, PortMatch, Protocol, Rule, Selector, Snapshot,
};

use super::{CALLS, REPEAT, ROUNDS};
use crate::lab::in_ns;
use crate::plan::FRAME_LEN;
use crate::report::{self, Report, Subject};

/// Set by the first `micro` call of a run (the figures do not depend on the ipBlock count).
static MEASURED: AtomicBool = AtomicBool::new(false);

const NAMESPACE: &str = "t";
const A: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
const ALLOWED_PORT: u16 = 8080;
const DENIED_PORT: u16 = 8081;
/// Source ports of the established connection and of the denied SYN.
const ESTABLISHED_SPORT: u16 = 2;
const DENIED_SPORT: u16 = 3;
/// First source port of the new connections (one per repeat-1 call).
const NEW_SPORT: u16 = 10_000;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The figures, in the order they are reported (`test_run_<name>`).
const FIGURES: [&str; 7] = [
    "node_bare_tc_pass",
    "node_established_flow",
    "node_new_flow_denied",
    "node_new_flow_allowed",
    "node_bare_tc_pass_repeat1",
    "node_established_flow_repeat1",
    "node_new_flow_denied_repeat1",
];

/// The node figures, the first time of the run (in `ns`); a failure, a packet given the wrong
/// action included, is printed and noted, and the gateway's figures go on.
pub fn once(ns: &str, report: &mut Report) {
    if MEASURED.swap(true, Ordering::Relaxed) {
        return;
    }
    match in_ns(ns, measure) {
        Ok((runs, prefixes)) => {
            let s = Subject::new("portcullis-node", 0, prefixes);
            let bare = Subject::new("bare", 0, 0);
            let mut line = "   node micro ns/packet:".to_string();
            for name in FIGURES {
                let v = report::median(&runs[name]);
                line.push_str(&format!(" {name} {v:.1} |"));
                let whose = if name.starts_with("node_bare") {
                    &bare
                } else {
                    &s
                };
                let figure = whose.figure(format!("test_run_{name}"), v, "ns/packet");
                report.push(figure.frame(FRAME_LEN));
            }
            println!("{line}");
        }
        Err(e) => {
            println!("   node micro: FAILED: {e:#}");
            report.note(format!("node micro figures failed: {e:#}"));
        }
    }
}

/// ns/packet per figure per round, and the prefixes of the node's tables.
fn measure() -> Result<(HashMap<&'static str, Vec<f64>>, usize)> {
    let mut hook = NodeHook::load(NodeOptions::default()).context("load the node hook")?;
    let tables = compile_node(&cluster()).map_err(|e| anyhow!("compile: {e}"))?;
    let stats = hook.apply(&tables).context("apply")?;
    let syn = |sport, dport| tcp_frame(sport, dport, TCP_SYN);
    let established = tcp_frame(ESTABLISHED_SPORT, ALLOWED_PORT, TCP_ACK);
    let denied = syn(DENIED_SPORT, DENIED_PORT);
    let mut run = |program, packet: &[u8], repeat, want: i32, what: &str| -> Result<f64> {
        let out = hook.test_run(program, packet, repeat)?;
        if out.action != want {
            bail!(
                "{what}: {program:?} gave tc action {}, expected {want} ({TC_ACT_OK} pass, \
                 {TC_ACT_SHOT} drop)",
                out.action
            );
        }
        Ok(out.duration.as_nanos() as f64)
    };
    // Without its flow the ACK is dropped, so the established figures measure the flow hit;
    // then the handshake creates that flow and confirms it (SYN-ACK, ACK: an established flow
    // lives in the confirmed table, the first one looked up).
    run(
        TestProgram::Deliver,
        &established,
        1,
        TC_ACT_SHOT,
        "an ACK before its connection's SYN",
    )?;
    run(
        TestProgram::Deliver,
        &syn(ESTABLISHED_SPORT, ALLOWED_PORT),
        1,
        TC_ACT_OK,
        "the established connection's SYN",
    )?;
    run(
        TestProgram::Deliver,
        &tcp_frame_between(B, A, ALLOWED_PORT, ESTABLISHED_SPORT, TCP_SYN | TCP_ACK),
        1,
        TC_ACT_OK,
        "the established connection's SYN-ACK",
    )?;
    run(
        TestProgram::Deliver,
        &established,
        1,
        TC_ACT_OK,
        "the established connection's ACK after the SYN-ACK",
    )?;
    let mut runs: HashMap<&str, Vec<f64>> = HashMap::new();
    for round in 0..ROUNDS {
        let mut record = |name, value| runs.entry(name).or_default().push(value);
        record(
            "node_bare_tc_pass",
            run(TestProgram::Pass, &established, REPEAT, TC_ACT_OK, "bare")?,
        );
        record(
            "node_established_flow",
            run(
                TestProgram::Deliver,
                &established,
                REPEAT,
                TC_ACT_OK,
                "established",
            )?,
        );
        record(
            "node_new_flow_denied",
            run(TestProgram::Deliver, &denied, REPEAT, TC_ACT_SHOT, "denied")?,
        );
        // A new connection per run: repeat 1 with a fresh source port each time (the kernel's
        // per-call timer overhead included: `node_bare_tc_pass_repeat1` shows it), with the
        // established and denied packets measured the same way in between, as the gateway's.
        let mut sums = [
            ("node_new_flow_allowed", 0.0),
            ("node_bare_tc_pass_repeat1", 0.0),
            ("node_established_flow_repeat1", 0.0),
            ("node_new_flow_denied_repeat1", 0.0),
        ];
        for i in 0..CALLS {
            let p = syn(NEW_SPORT + round * CALLS + i, ALLOWED_PORT);
            let calls = [
                (TestProgram::Deliver, &p, TC_ACT_OK, "new allowed SYN"),
                (TestProgram::Pass, &p, TC_ACT_OK, "bare"),
                (TestProgram::Deliver, &established, TC_ACT_OK, "established"),
                (TestProgram::Deliver, &denied, TC_ACT_SHOT, "denied"),
            ];
            for ((_, sum), (program, packet, want, what)) in sums.iter_mut().zip(calls) {
                *sum += run(program, packet, 1, want, what)?;
            }
        }
        for (name, sum) in sums {
            record(name, sum / CALLS as f64);
        }
    }
    Ok((runs, stats.tables.prefixes))
}

/// t/a (app=a) and t/b (app=b); b-in admits app=a on TCP 8080 and UDP 5353, a-in admits nothing.
fn cluster() -> Snapshot {
    let app = |v: &str| Selector {
        match_labels: BTreeMap::from([("app".to_string(), v.to_string())]),
        match_expressions: Vec::new(),
    };
    let pod = |name: &str, ip: Ipv4Addr| Pod {
        namespace: NAMESPACE.into(),
        name: name.into(),
        labels: app(name).match_labels,
        ips: vec![IpAddr::V4(ip)],
        ports: Vec::new(),
        host_network: false,
        node: None,
    };
    let port = |protocol, p| PolicyPort {
        protocol,
        port: PortMatch::Number { first: p, last: p },
    };
    let policy = |name: &str, selected: &str, ingress| Policy {
        namespace: NAMESPACE.into(),
        name: name.into(),
        pod_selector: app(selected),
        ingress: Some(ingress),
        egress: None,
    };
    Snapshot {
        namespaces: BTreeMap::from([(
            NAMESPACE.to_string(),
            Namespace {
                name: NAMESPACE.into(),
                labels: BTreeMap::from([("ns".to_string(), NAMESPACE.to_string())]),
            },
        )]),
        pods: vec![pod("a", A), pod("b", B)],
        policies: vec![
            policy(
                "b-in",
                "b",
                vec![Rule {
                    peers: vec![Peer::Pods {
                        pod_selector: Some(app("a")),
                        namespace_selector: None,
                    }],
                    ports: vec![port(Protocol::Tcp, ALLOWED_PORT), port(Protocol::Udp, 5353)],
                }],
            ),
            policy("a-in", "a", Vec::new()),
        ],
        ..Default::default()
    }
}

/// A `FRAME_LEN`-byte Ethernet/IPv4/TCP frame from a to b (checksums correct, zero payload).
fn tcp_frame(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    tcp_frame_between(A, B, sport, dport, flags)
}

/// A `FRAME_LEN`-byte Ethernet/IPv4/TCP frame from `src` to `dst`.
fn tcp_frame_between(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    const L4_AT: usize = 14 + 20;
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]);
    let ip_len = (FRAME_LEN - 14) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, Protocol::Tcp.number(), 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let sum = checksum(&f[14..L4_AT], 0);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.resize(FRAME_LEN, 0);
    let l4_len = (FRAME_LEN - L4_AT) as u32;
    let pseudo: u32 = [src.octets(), dst.octets()]
        .iter()
        .flat_map(|a| {
            [
                u16::from_be_bytes([a[0], a[1]]),
                u16::from_be_bytes([a[2], a[3]]),
            ]
        })
        .map(u32::from)
        .sum::<u32>()
        + u32::from(Protocol::Tcp.number())
        + l4_len;
    let sum = checksum(&f[L4_AT..], pseudo);
    f[L4_AT + 16..L4_AT + 18].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The Internet checksum of `data` (even length) with `initial` (a pseudo-header's sum) added.
fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>()
        + initial;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_frame_checksums_to_zero() {
        let f = tcp_frame(40_000, ALLOWED_PORT, TCP_SYN);
        assert_eq!(f.len(), FRAME_LEN);
        assert_eq!(checksum(&f[14..34], 0), 0);
        let pseudo = 0x0a4d + 0x0101 + 0x0a4d + 0x0202 + 6 + (FRAME_LEN - 34) as u32;
        assert_eq!(checksum(&f[34..], pseudo), 0);
        assert_eq!((f[23], f[47]), (6, TCP_SYN));
    }

    #[test]
    fn cluster_compiles_for_the_node() {
        let t = compile_node(&cluster()).unwrap();
        assert_eq!(t.identities.len(), 2);
    }
}
