//! Differential test: random snapshots (`portcullis_policy::testing`, as in
//! `policy/tests/node_matches_eval.rs`:
//! selectors across namespaces, ipBlocks naming pod addresses with `except`, named ports that
//! resolve differently per pod, port ranges, TCP/UDP/SCTP) are compiled with `compile_node` and
//! applied; then every (source pod, destination pod, protocol, port, family) combination is sent
//! as a new-flow packet through the real deliver program (BPF_PROG_TEST_RUN) and its verdict is
//! compared with `NodeTables::allows` in both directions (allowed = egress allows AND ingress
//! allows). Zero disagreements; more than 100k packets.

use std::cell::RefCell;
use std::net::IpAddr;

use portcullis_node::{Datapath, NodeHook, NodeOptions, TestProgram, TC_ACT_OK, TC_ACT_SHOT};
use portcullis_policy::compile::node::NodeCompiler;
use portcullis_policy::model::Direction;
use portcullis_policy::testing::{policy_strategy, six_pods};
use proptest::prop_assert_eq;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// A new-flow packet: TCP SYN, UDP, SCTP or ICMP echo request (identifier = `sport`).
fn packet(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let l4 = match proto {
        6 => portcullis_testkit::tcp(sport, dport, portcullis_testkit::TCP_SYN),
        17 => portcullis_testkit::udp(sport, dport),
        132 => portcullis_testkit::sctp(sport, dport),
        _ => portcullis_testkit::icmp(if src.is_ipv4() { 8 } else { 128 }, sport, &[]),
    };
    let proto = if proto == 1 && src.is_ipv6() {
        58
    } else {
        proto
    };
    portcullis_testkit::frame(&src.to_string(), &dst.to_string(), proto, l4)
}

const SNAPSHOTS: u32 = 200;

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn deliver_program_agrees_with_node_tables() {
    portcullis_testkit::require_root();
    let hook = RefCell::new(NodeHook::load(NodeOptions::default()).expect("load"));
    // One long-lived compiler: every snapshot after the first is applied as a delta.
    let compiler = RefCell::new(NodeCompiler::default());
    let packets = RefCell::new(0u64);
    let verdicts = RefCell::new([0u64; 2]);
    let mut runner = TestRunner::new(Config {
        cases: SNAPSHOTS,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &proptest::collection::vec(policy_strategy(), 0..6),
        |policies| {
            let snapshot = six_pods(policies);
            let tables = (compiler.borrow_mut().compile(&snapshot))
                .map_err(|e| TestCaseError::reject(e.to_string()))?;
            let mut hook = hook.borrow_mut();
            hook.apply(&tables).expect("apply");
            hook.clear_flows().expect("clear flows");
            let mut sport = 10_000u16;
            for v4 in [true, false] {
                for src in &snapshot.pods {
                    for dst in &snapshot.pods {
                        let src_ip = *src.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap();
                        let dst_ip = *dst.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap();
                        for proto in [1u8, 6, 17, 132] {
                            for port in 79u16..=85 {
                                sport += 1;
                                let expected =
                                    tables.allows(Direction::Egress, src_ip, dst_ip, proto, port)
                                        && tables.allows(
                                            Direction::Ingress,
                                            dst_ip,
                                            src_ip,
                                            proto,
                                            port,
                                        );
                                let out = hook
                                    .test_run(
                                        TestProgram::Deliver,
                                        &packet(src_ip, dst_ip, proto, sport, port),
                                        1,
                                    )
                                    .expect("test run");
                                *packets.borrow_mut() += 1;
                                verdicts.borrow_mut()[expected as usize] += 1;
                                let want = if expected { TC_ACT_OK } else { TC_ACT_SHOT };
                                prop_assert_eq!(
                                    out.action,
                                    want,
                                    "{} {} -> {} {} proto {} port {}",
                                    if v4 { "v4" } else { "v6" },
                                    src.key(),
                                    dst.key(),
                                    dst_ip,
                                    proto,
                                    port
                                );
                            }
                        }
                    }
                }
            }
            Ok(())
        },
    );
    let n = *packets.borrow();
    let [denied, allowed] = *verdicts.borrow();
    eprintln!("{n} packets over {SNAPSHOTS} snapshots: {allowed} allowed, {denied} denied");
    if let Err(e) = result {
        panic!("disagreement: {e}");
    }
    assert!(n >= 100_000, "only {n} packets");
    assert!(
        allowed > 10_000 && denied > 10_000,
        "degenerate verdict mix"
    );
}
