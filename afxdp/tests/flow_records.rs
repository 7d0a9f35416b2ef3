//! The engine's allow records (no kernel needed): one per new flow, none for a packet of a known
//! flow, at most `FLOW_RECORDS_PER_SECOND` per second for the engine, the rest counted as lost.

use portcullis_afxdp::flows::LocalFlows;
use portcullis_afxdp::pipeline::{new_packet, Outcome, Pipeline};
use portcullis_afxdp::tables::PolicyTables;
use portcullis_common::*;
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::Packet;

const CLUSTER_IFINDEX: u32 = 1;

#[test]
fn new_flows_get_one_rate_limited_allow_record() {
    let tables = PolicyTables::new(&GatewayTables::default(), 0);
    let mut pipeline = Pipeline::new(LocalFlows::default());
    let mut pkt = new_packet();
    let mut judge = |pipeline: &mut Pipeline<LocalFlows>, packet: Packet, now: u64| {
        let frame: Vec<u8> = packet.into();
        let sides = CHECK_EGRESS_OF_SRC;
        pipeline.classify(
            &tables,
            &frame,
            sides,
            CLUSTER_IFINDEX,
            now,
            false,
            &mut pkt,
        )
    };
    let now = 1_000_000_000;
    let Outcome::Opened(record) = judge(
        &mut pipeline,
        Packet::tcp("10.0.0.1", 40000, "192.0.2.1", 443, TCP_SYN),
        now,
    ) else {
        panic!("a new flow without its allow record");
    };
    assert_eq!(record.kind, EVENT_KIND_ALLOW_UNSELECTED);
    assert_eq!((record.src_port, record.dst_port), (40000, 443));
    assert_eq!(
        (record.ifindex, record.sides),
        (CLUSTER_IFINDEX, CHECK_EGRESS_OF_SRC)
    );
    assert_eq!(record.timestamp_ns, now);
    let next = Packet::tcp("10.0.0.1", 40000, "192.0.2.1", 443, TCP_ACK);
    assert_eq!(judge(&mut pipeline, next, now), Outcome::Allowed);

    let sent = 3 * FLOW_RECORDS_PER_SECOND;
    let opened = (0..sent)
        .filter(|i| {
            let syn = Packet::tcp("10.0.0.2", 1000 + *i as u16, "192.0.2.1", 443, TCP_SYN);
            matches!(judge(&mut pipeline, syn, now), Outcome::Opened(_))
        })
        .count() as u64;
    assert_eq!(opened, FLOW_RECORDS_PER_SECOND - 1);
    let c = &pipeline.flow_record_counters;
    assert_eq!(
        c[FLOW_RECORD_COUNTER_WRITTEN as usize],
        FLOW_RECORDS_PER_SECOND
    );
    assert_eq!(
        c[FLOW_RECORD_COUNTER_LOST as usize],
        sent + 1 - FLOW_RECORDS_PER_SECOND
    );
    // The next second's window admits records again.
    let syn = Packet::tcp("10.0.0.3", 40000, "192.0.2.1", 443, TCP_SYN);
    assert!(matches!(
        judge(&mut pipeline, syn, now + 1_000_000_000),
        Outcome::Opened(_)
    ));
}
