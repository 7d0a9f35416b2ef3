//! Packet fixtures through BPF_PROG_TEST_RUN, as tables of rows: what the row checks, the program
//! (deliver: the pod veth's egress, packets to a pod; origin: its ingress, packets from a pod),
//! the packet, the tc action, and that a passed packet leaves untouched (the hook never rewrites).
//! Rows run in order (flow rows depend on earlier packets), against tables compiled by
//! `compile_node` from a small snapshot.
mod common;
#[path = "fixtures/rows.rs"]
mod rows;

use common::*;
use portcullis_common::{
    CHECK_INGRESS_OF_DST, DIRECTION_EGRESS, DIRECTION_INGRESS, DROP_REASON_POLICY,
    EVENT_KIND_ALLOW_POLICY, FLOW_RECORDS_PER_SECOND,
};
use portcullis_node::{Datapath, NodeHook, NodeOptions, TestProgram, TC_ACT_OK, TC_ACT_SHOT};
use portcullis_policy::compile::node::{compile_node, NodeTables};
use portcullis_policy::model::{Protocol, Snapshot};

const WEB: &str = "10.0.1.10";
const WEB6: &str = "fd00::10";
const API: &str = "10.0.1.30";
const DB: &str = "10.0.1.20";
const CLIENT: &str = "10.0.1.40";
const CLIENT6: &str = "fd00::40";
const FREE: &str = "10.0.1.60";
const TESTER: &str = "10.0.2.50";
/// The node's own address (`set_host_addrs`).
const NODE: &str = "10.0.9.1";
const EXTERNAL: &str = "192.0.2.1";

/// prod: web (named port http = 8080), api (http = 9090), db, client, free (selected by nothing);
/// dev: tester.
/// - prod/web-in: web accepts from app=client on named port http, UDP 53 and SCTP 9000.
/// - prod/api-in: api accepts from app=client on named port http.
/// - prod/db-in: db accepts from ipBlock 10.0.1.40/32 (client's pod IP) on TCP 5000-5010.
/// - prod/client-out: client may reach web, api, db on anything, and 10.0.1.60/32 (free) on UDP
///   7000 only; fd00::/64 on anything.
/// - dev/deny-in: every dev pod denies all ingress.
fn fixture_snapshot() -> Snapshot {
    let pods = vec![
        pod("prod", "web", "web", &[WEB, WEB6], &[("http", 8080)]),
        pod("prod", "api", "api", &[API], &[("http", 9090)]),
        pod("prod", "db", "db", &[DB], &[]),
        pod("prod", "client", "client", &[CLIENT, CLIENT6], &[]),
        pod("prod", "free", "free", &[FREE], &[]),
        pod("dev", "tester", "client", &[TESTER], &[]),
    ];
    let policies = vec![
        policy(
            "prod",
            "web-in",
            Some("web"),
            Some(vec![rule(
                vec![app_peer("client")],
                vec![
                    named("http"),
                    port(Protocol::Udp, 53, 53),
                    port(Protocol::Sctp, 9000, 9000),
                ],
            )]),
            None,
        ),
        policy(
            "prod",
            "api-in",
            Some("api"),
            Some(vec![rule(vec![app_peer("client")], vec![named("http")])]),
            None,
        ),
        policy(
            "prod",
            "db-in",
            Some("db"),
            Some(vec![rule(
                vec![block("10.0.1.40/32")],
                vec![port(Protocol::Tcp, 5000, 5010)],
            )]),
            None,
        ),
        policy(
            "prod",
            "client-out",
            Some("client"),
            None,
            Some(vec![
                rule(
                    vec![app_peer("web"), app_peer("api"), app_peer("db")],
                    vec![],
                ),
                rule(
                    vec![block("10.0.1.60/32")],
                    vec![port(Protocol::Udp, 7000, 7000)],
                ),
                rule(vec![block("fd00::/64")], vec![]),
            ]),
        ),
        policy("dev", "deny-in", None, Some(vec![]), None),
    ];
    snapshot(&["prod", "dev"], pods, policies)
}

fn fixture_tables() -> NodeTables {
    compile_node(&fixture_snapshot()).expect("compile")
}

fn row(
    program: TestProgram,
    action: i32,
    desc: &'static str,
    packet: impl Into<Vec<u8>>,
) -> Row<TestProgram> {
    Row {
        desc,
        via: program,
        input: packet.into(),
        action: action.into(),
        output: if action == TC_ACT_OK {
            Output::Unchanged
        } else {
            Output::Ignored
        },
    }
}

/// Delivered to the pod: `TC_ACT_OK`, untouched.
fn deliver_ok(desc: &'static str, packet: impl Into<Vec<u8>>) -> Row<TestProgram> {
    row(TestProgram::Deliver, TC_ACT_OK, desc, packet)
}

fn deliver_shot(desc: &'static str, packet: impl Into<Vec<u8>>) -> Row<TestProgram> {
    row(TestProgram::Deliver, TC_ACT_SHOT, desc, packet)
}

/// Sent on by the pod's veth: `TC_ACT_OK`, untouched.
fn origin_ok(desc: &'static str, packet: impl Into<Vec<u8>>) -> Row<TestProgram> {
    row(TestProgram::Origin, TC_ACT_OK, desc, packet)
}

fn origin_shot(desc: &'static str, packet: impl Into<Vec<u8>>) -> Row<TestProgram> {
    row(TestProgram::Origin, TC_ACT_SHOT, desc, packet)
}

fn syn(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
    Packet::tcp(src, sport, dst, dport, TCP_SYN)
}

fn run_rows(hook: &mut NodeHook, rows: &[Row<TestProgram>]) {
    check_rows(rows, |row| {
        let out = hook
            .test_run(row.via, &row.input, 1)
            .unwrap_or_else(|err| panic!("{}: test run: {err}", row.desc));
        (out.action.into(), out.packet)
    });
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn packet_fixtures() {
    require_root();
    let mut hook = NodeHook::load(NodeOptions::default()).expect("load");
    let tables = fixture_tables();
    let stats = hook.apply(&tables).expect("apply");
    eprintln!("{stats:?}");
    assert!(hook
        .set_host_addrs(&[NODE.parse().unwrap()])
        .expect("host addresses"));
    run_rows(&mut hook, &rows::rows());

    let status = hook.status().expect("status");
    eprintln!("{status:#?}");
    assert!(status.tables.counters.drop_policy >= 15);
    // Three connections opened by pods, and the DHCP discover (not a pod address: untouched).
    assert_eq!(status.tables.counters.origin_recorded, 4);
    assert_eq!(status.tables.counters.drop_unknown_pod, 4);
    assert_eq!(status.tables.counters.pass_host, 1);
    assert!(status.tables.counters.pass_non_ip >= 2);
    let web_in = status
        .tables
        .drops_by_group
        .iter()
        .find(|g| g.policies == ["prod/web-in"])
        .expect("web-in drops");
    assert!(web_in.packets >= 3);
    let mut events = hook.take_drop_events().expect("ring");
    let mut seen = Vec::new();
    while let Some(e) = events.next_event() {
        seen.push(e);
    }
    assert!(seen.len() >= 15, "{} drop events", seen.len());
    let web9090 = seen
        .iter()
        .find(|e| e.dst_port == 9090 && e.src_port == 40001)
        .expect("event for client -> web 9090");
    assert_eq!(web9090.direction, DIRECTION_INGRESS);
    assert_eq!(web9090.reason, DROP_REASON_POLICY);
    assert_eq!(web9090.protocol, IPPROTO_TCP);
    let free80 = seen
        .iter()
        .find(|e| e.src_port == 40015)
        .expect("event for client -> free 80");
    assert_eq!(free80.direction, DIRECTION_EGRESS);
}

/// Generation switch: the same packet flips verdict after an apply; an apply writes only the
/// difference to what the inactive generation holds.
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn generation_switch_and_cleanup() {
    require_root();
    let mut hook = NodeHook::load(NodeOptions::default()).expect("load");
    let allow = fixture_tables();
    let mut snap = fixture_snapshot();
    snap.policies.retain(|p| p.name != "api-in");
    // api-in gone: api unselected, client's egress still allows api.
    let open = compile_node(&snap).expect("compile");
    hook.apply(&allow).expect("apply 1");
    let in_force = "api-in in force: free → api 9090 is dropped";
    run_rows(
        &mut hook,
        &[deliver_shot(in_force, syn(FREE, 1, API, 9090))],
    );
    let s = hook.apply(&open).expect("apply 2");
    assert_eq!(s.generation, 0);
    // Generation 0 was empty: written in full, nothing to delete.
    assert!(s.written > 0);
    assert_eq!(s.deleted, 0);
    let gone = "api-in removed: free → api 9090 (api unselected) is delivered";
    run_rows(&mut hook, &[deliver_ok(gone, syn(FREE, 2, API, 9090))]);
    let s = hook.apply(&allow).expect("apply 3");
    // Generation 1 still holds these very tables: the delta is empty.
    assert_eq!((s.generation, s.written, s.deleted), (1, 0, 0));
    let back = "api-in back: free → api 9090 is dropped again";
    run_rows(&mut hook, &[deliver_shot(back, syn(FREE, 3, API, 9090))]);
    let st = hook.status().unwrap();
    assert_eq!(st.own.identities, allow.identities.len());
    assert_eq!(st.tables.endpoints, allow.endpoints.len());
    assert_eq!(
        st.own.peers,
        allow.groups.iter().map(|g| g.peers.len()).sum::<usize>()
    );
}

/// `revalidate`: an established flow the new generation forbids is cut at its next packet; one
/// it still allows keeps passing. Without it (the default, see the relabel in `tests/traffic.rs`)
/// established flows survive.
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn revalidate_cuts_flows_the_new_policy_forbids() {
    require_root();
    let mut hook = NodeHook::load(NodeOptions {
        pin_dir: None,
        revalidate: true,
    })
    .expect("load");
    let before = fixture_tables();
    let mut snap = fixture_snapshot();
    // client-out now allows web only: client -> db flows lose their egress permission.
    for p in &mut snap.policies {
        if p.name == "client-out" {
            p.egress = Some(vec![rule(vec![app_peer("web")], vec![])]);
        }
    }
    let after = compile_node(&snap).expect("compile");
    hook.apply(&before).expect("apply");
    run_rows(&mut hook, &rows::flows_to_revalidate());
    hook.apply(&after).expect("apply 2");
    run_rows(&mut hook, &rows::flows_after_revalidation());
}

/// Flow records: the first packet of an allowed new flow writes one allow record (its policy's
/// group, the sides judged, the 5-tuple); the flow's next packet none; a denied first packet only
/// its drop event. Past `FLOW_RECORDS_PER_SECOND` on one CPU, new flows are counted as lost.
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn new_flows_write_rate_limited_allow_records() {
    require_root();
    let mut hook = NodeHook::load(NodeOptions::default()).expect("load");
    hook.apply(&fixture_tables()).expect("apply");
    let mut events = hook.take_drop_events().expect("ring");
    run_rows(
        &mut hook,
        &[
            deliver_ok("client → web http: new", syn(CLIENT, 42000, WEB, 8080)),
            deliver_ok(
                "client → web http: its next packet",
                Packet::tcp(CLIENT, 42000, WEB, 8080, TCP_ACK),
            ),
            deliver_shot("free → web http: denied", syn(FREE, 42001, WEB, 8080)),
        ],
    );
    let mut records = Vec::new();
    while let Some(r) = events.next_record() {
        records.push(r);
    }
    let allows: Vec<_> = records.iter().filter(|r| !r.is_drop()).collect();
    assert_eq!(allows.len(), 1, "{records:?}");
    let a = allows[0];
    assert_eq!(a.kind, EVENT_KIND_ALLOW_POLICY);
    assert_eq!(
        (a.src_port, a.dst_port, a.protocol),
        (42000, 8080, IPPROTO_TCP)
    );
    assert_eq!(a.direction, DIRECTION_INGRESS);
    assert_ne!(a.group, 0);
    assert_ne!(a.sides & CHECK_INGRESS_OF_DST, 0);
    assert!(records.iter().any(|r| r.is_drop() && r.src_port == 42001));
    let r = hook.status().expect("status").tables.flow_records;
    assert_eq!((r.written, r.lost), (1, 0));

    // 5000 new flows on one CPU: at least 3000 lost when they take less than a second.
    check_flow_record_limit(
        &mut hook,
        5 * FLOW_RECORDS_PER_SECOND,
        |hook, i| {
            let frame: Vec<u8> = syn(CLIENT, 1000 + i as u16, WEB, 8080).into();
            (hook.test_run(TestProgram::Deliver, &frame, 1)).expect("test run");
        },
        |hook| {
            let r = hook.status().expect("status").tables.flow_records;
            (r.written, r.lost)
        },
    );
}
