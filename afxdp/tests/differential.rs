//! The engine against the same differential test as the XDP program
//! (`portcullis_testkit::differential`: random policies as successive generations, random frames,
//! the evaluator plus a flow-table model), no kernel needed; and `PolicyTables::check` against
//! the compiler's reference `GatewayTables::allows` on random tables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portcullis_afxdp::flows::LocalFlows;
use portcullis_afxdp::pipeline::{new_packet, Outcome, Pipeline};
use portcullis_afxdp::tables::PolicyTables;
use portcullis_bpf::generation_id;
use portcullis_common::*;
use portcullis_ebpf_common::parse::Packet;
use portcullis_ebpf_common::policy::Query;
use portcullis_policy::compile::{GatewayCompiler, GatewayTables};
use portcullis_policy::model::Direction;
use portcullis_testkit::differential::{self, Decision, DiffDatapath, DiffPacket, Shape, Traffic};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CLUSTER_IFINDEX: u32 = 1;
const EXTERNAL_IFINDEX: u32 = 2;

struct Engine {
    tables: PolicyTables,
    pipeline: Pipeline<LocalFlows>,
    now_ns: u64,
    pkt: Packet,
}

impl DiffDatapath for Engine {
    fn apply(&mut self, tables: &GatewayTables) {
        self.tables = PolicyTables::new(tables, self.tables.generation() + 1);
        self.pipeline.flows.clear();
    }

    fn judge(&mut self, p: &DiffPacket) -> Decision {
        self.now_ns += 1_000;
        let (sides, ifindex) = if p.cluster_leg {
            (CHECK_EGRESS_OF_SRC, CLUSTER_IFINDEX)
        } else {
            (CHECK_INGRESS_OF_DST, EXTERNAL_IFINDEX)
        };
        let outcome = self.pipeline.classify(
            &self.tables,
            &p.bytes,
            sides,
            ifindex,
            self.now_ns,
            true,
            &mut self.pkt,
        );
        match outcome {
            Outcome::Allowed => Decision::Pass,
            Outcome::Opened(record) => {
                assert!(!record.is_drop(), "allow record of {p:?}");
                assert_eq!(
                    (record.ifindex, record.sides, record.timestamp_ns),
                    (ifindex, sides, self.now_ns),
                    "allow record of {p:?}"
                );
                assert_eq!(record.src, self.pkt.src, "allow record of {p:?}");
                assert_eq!(record.dst, self.pkt.dst, "allow record of {p:?}");
                Decision::Pass
            }
            Outcome::NotIp => Decision::NotIp,
            Outcome::Dropped(event) => {
                let reason = match p.shape {
                    Shape::Malformed => DROP_REASON_MALFORMED,
                    Shape::LaterFragment => DROP_REASON_FRAGMENT,
                    _ => DROP_REASON_POLICY,
                };
                assert_eq!(
                    (event.reason, event.ifindex, event.timestamp_ns),
                    (reason, ifindex, self.now_ns),
                    "drop event of {p:?}"
                );
                Decision::Drop
            }
        }
    }
}

#[test]
fn engine_agrees_with_the_evaluator_on_random_policies_and_packets() {
    let mut engine = Engine {
        tables: PolicyTables::new(&GatewayTables::default(), 0),
        pipeline: Pipeline::new(LocalFlows::default()),
        now_ns: 1_000_000_000,
        pkt: new_packet(),
    };
    let checked = differential::run(&mut engine);
    let counted: u64 = (engine.pipeline.counters.iter())
        .enumerate()
        .filter(|(i, _)| {
            [
                COUNTER_PASS_FLOW,
                COUNTER_PASS_POLICY,
                COUNTER_PASS_UNSELECTED,
                COUNTER_PASS_NON_IP,
                COUNTER_DROP_POLICY,
                COUNTER_DROP_MALFORMED,
                COUNTER_DROP_FRAGMENT,
            ]
            .contains(&(*i as u32))
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(counted, checked as u64, "every packet counted once");
}

fn random_address(rng: &mut SmallRng, tables: &GatewayTables) -> IpAddr {
    let known: Vec<IpAddr> = tables.endpoints.keys().map(|(_, ip)| *ip).collect();
    if !known.is_empty() && rng.random_bool(0.7) {
        return known[rng.random_range(0..known.len())];
    }
    if rng.random_bool(0.6) {
        IpAddr::V4(Ipv4Addr::from(
            0xc0a8_0000u32 | rng.random_range(0..=0xffffu32),
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8u128 << 96) | rng.random_range(0..=0xffffu128),
        ))
    }
}

fn key_addr(ip: IpAddr) -> [u8; 16] {
    portcullis_bpf::key_addr(ip)
}

#[test]
fn policy_tables_check_agrees_with_the_reference_lookup() {
    let mut traffic = Traffic::new(7);
    let mut rng = SmallRng::seed_from_u64(7);
    let mut compiler = GatewayCompiler::default();
    let mut snapshot = traffic.snapshot(None);
    for generation in 0..200u64 {
        snapshot = traffic.snapshot(Some(snapshot));
        let reference = compiler.compile(&snapshot).expect("small rule sets fit");
        let tables = PolicyTables::new(&reference, generation);
        for _ in 0..500 {
            let pod = random_address(&mut rng, &reference);
            let peer = random_address(&mut rng, &reference);
            let protocol = [1, 6, 17, 47, 58, 132][rng.random_range(0..6)];
            let port = rng.random_range(0..12);
            let direction = if rng.random_bool(0.5) {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let (src, dst, sides) = match direction {
                Direction::Egress => (pod, peer, CHECK_EGRESS_OF_SRC),
                Direction::Ingress => (peer, pod, CHECK_INGRESS_OF_DST),
            };
            let v = tables.check(&Query {
                src: key_addr(src),
                dst: key_addr(dst),
                g: (generation & 1) as u32,
                port,
                proto: protocol,
                sides,
            });
            let allows = reference.allows(direction, pod, peer, protocol, port);
            assert_eq!(
                !v.is_deny(),
                allows,
                "{direction:?} {pod} {peer} {protocol} {port}"
            );
            match reference.endpoints.get(&(direction, pod)) {
                Some(group) => {
                    let id = generation_id(*group as usize, (generation & 1) as u32);
                    assert_eq!(v.group(), id);
                    let kernel_direction = match direction {
                        Direction::Egress => DIRECTION_EGRESS,
                        Direction::Ingress => DIRECTION_INGRESS,
                    };
                    assert_eq!(v.direction(), kernel_direction);
                }
                None => assert!(v.is_unselected()),
            }
        }
    }
}
