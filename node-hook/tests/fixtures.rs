//! Packet fixtures through BPF_PROG_TEST_RUN: {description, program, packet, expected tc action},
//! run in order (flow cases depend on earlier packets), against tables compiled by `compile_node`
//! from a small snapshot.
mod common;

use common::*;
use portcullis_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, DROP_REASON_POLICY};
use portcullis_node::{Datapath, NodeHook, NodeOptions, TestProgram, TC_ACT_OK, TC_ACT_SHOT};
use portcullis_policy::compile::node::{compile_node, NodeTables};
use portcullis_policy::model::{Protocol, Snapshot};

const OK: i32 = TC_ACT_OK;
const SHOT: i32 = TC_ACT_SHOT;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMP6: u8 = 58;
const SYNACK: u8 = TCP_SYN | TCP_ACK;

/// prod: web (named port http = 8080), api (http = 9090), db, client, free (selected by nothing);
/// dev: tester.
/// - prod/web-in: web accepts from app=client on named port http, UDP 53 and SCTP 9000.
/// - prod/api-in: api accepts from app=client on named port http.
/// - prod/db-in: db accepts from ipBlock 10.0.1.40/32 (client's pod IP) on TCP 5000-5010.
/// - prod/client-out: client may reach web, api, db on anything, and 10.0.1.60/32 (free) on UDP
///   7000 only; fd00::/64 on anything.
/// - dev/deny-in: every dev pod denies all ingress.
pub fn fixture_snapshot() -> Snapshot {
    let pods = vec![
        pod(
            "prod",
            "web",
            "web",
            &["10.0.1.10", "fd00::10"],
            &[("http", 8080)],
        ),
        pod("prod", "api", "api", &["10.0.1.30"], &[("http", 9090)]),
        pod("prod", "db", "db", &["10.0.1.20"], &[]),
        pod("prod", "client", "client", &["10.0.1.40", "fd00::40"], &[]),
        pod("prod", "free", "free", &["10.0.1.60"], &[]),
        pod("dev", "tester", "client", &["10.0.2.50"], &[]),
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

pub fn fixture_tables() -> NodeTables {
    compile_node(&fixture_snapshot()).expect("compile")
}

struct Case {
    desc: &'static str,
    program: TestProgram,
    packet: Vec<u8>,
    expect: i32,
}

fn deliver(desc: &'static str, packet: Vec<u8>, expect: i32) -> Case {
    Case {
        desc,
        program: TestProgram::Deliver,
        packet,
        expect,
    }
}

fn origin(desc: &'static str, packet: Vec<u8>) -> Case {
    origin_expect(desc, packet, OK)
}

fn origin_expect(desc: &'static str, packet: Vec<u8>, expect: i32) -> Case {
    Case {
        desc,
        program: TestProgram::Origin,
        packet,
        expect,
    }
}

fn tcp_f(src: &str, sp: u16, dst: &str, dp: u16, flags: u8) -> Vec<u8> {
    frame(src, dst, TCP, tcp(sp, dp, flags))
}

fn udp_f(src: &str, sp: u16, dst: &str, dp: u16) -> Vec<u8> {
    frame(src, dst, UDP, udp(sp, dp))
}

fn run_cases(hook: &mut NodeHook, cases: &[Case]) {
    let mut failures = Vec::new();
    for k in cases {
        let out = hook
            .test_run(k.program, &k.packet, 1)
            .unwrap_or_else(|err| panic!("{}: test run: {err}", k.desc));
        let ok = out.action == k.expect;
        eprintln!(
            "{} {:<78} expected {} got {}",
            if ok { "ok  " } else { "FAIL" },
            k.desc,
            k.expect,
            out.action
        );
        if !ok {
            failures.push(k.desc);
        }
    }
    assert!(failures.is_empty(), "failed fixtures: {failures:#?}");
}

#[test]
fn packet_fixtures() {
    if not_root() {
        return;
    }
    let mut hook = NodeHook::load(NodeOptions::default()).expect("load");
    let tables = fixture_tables();
    let stats = hook.apply(&tables).expect("apply");
    eprintln!("{stats:?}");
    let node_addr = "10.0.9.1";
    assert!(hook
        .set_host_addrs(&[node_addr.parse().unwrap()])
        .expect("host addresses"));
    let (web, api, db, client, free, tester) = (
        "10.0.1.10",
        "10.0.1.30",
        "10.0.1.20",
        "10.0.1.40",
        "10.0.1.60",
        "10.0.2.50",
    );
    let (web6, client6) = ("fd00::10", "fd00::40");
    let ext = "192.0.2.1";
    let arp = {
        let mut p = eth(0x0806, &[]);
        p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        p.extend_from_slice(&[0; 20]);
        p
    };
    let cases = vec![
        deliver(
            "selector: client -> web TCP http (named 8080)",
            tcp_f(client, 40000, web, 8080, TCP_SYN),
            OK,
        ),
        deliver(
            "selector: client -> web TCP 9090 (not web's http)",
            tcp_f(client, 40001, web, 9090, TCP_SYN),
            SHOT,
        ),
        deliver(
            "named port per destination: client -> api TCP 9090 (api's http)",
            tcp_f(client, 40002, api, 9090, TCP_SYN),
            OK,
        ),
        deliver(
            "named port per destination: client -> api TCP 8080",
            tcp_f(client, 40003, api, 8080, TCP_SYN),
            SHOT,
        ),
        deliver(
            "selector: client -> web UDP 53",
            udp_f(client, 40004, web, 53),
            OK,
        ),
        deliver(
            "SCTP apart from TCP: client -> web SCTP 9000",
            frame(client, web, SCTP, sctp(40005, 9000)),
            OK,
        ),
        deliver(
            "SCTP apart from TCP: client -> web TCP 9000",
            tcp_f(client, 40006, web, 9000, TCP_SYN),
            SHOT,
        ),
        deliver(
            "SCTP apart from TCP: client -> web SCTP 53",
            frame(client, web, SCTP, sctp(40007, 53)),
            SHOT,
        ),
        deliver(
            "selector namespace: dev/tester (app=client) -> web 8080",
            tcp_f(tester, 40008, web, 8080, TCP_SYN),
            SHOT,
        ),
        deliver(
            "ipBlock naming a pod IP + endPort: client -> db TCP 5000",
            tcp_f(client, 40009, db, 5000, TCP_SYN),
            OK,
        ),
        deliver(
            "endPort: client -> db TCP 5010",
            tcp_f(client, 40010, db, 5010, TCP_SYN),
            OK,
        ),
        deliver(
            "endPort: client -> db TCP 5011",
            tcp_f(client, 40011, db, 5011, TCP_SYN),
            SHOT,
        ),
        deliver(
            "endPort: client -> db TCP 4999",
            tcp_f(client, 40012, db, 4999, TCP_SYN),
            SHOT,
        ),
        deliver(
            "endPort: client -> db UDP 5005",
            udp_f(client, 40013, db, 5005),
            SHOT,
        ),
        deliver(
            "ipBlock names only client: tester -> db TCP 5005",
            tcp_f(tester, 40014, db, 5005, TCP_SYN),
            SHOT,
        ),
        deliver(
            "egress of the source: client -> free TCP 80 (free unselected)",
            tcp_f(client, 40015, free, 80, TCP_SYN),
            SHOT,
        ),
        deliver(
            "egress ipBlock naming a pod IP: client -> free UDP 7000",
            udp_f(client, 40016, free, 7000),
            OK,
        ),
        deliver(
            "egress ipBlock naming a pod IP: client -> free UDP 7001",
            udp_f(client, 40017, free, 7001),
            SHOT,
        ),
        deliver(
            "selected destination, unselected source: free -> api 9090",
            tcp_f(free, 40018, api, 9090, TCP_SYN),
            SHOT,
        ),
        deliver(
            "unselected pods pass: tester -> free TCP 80",
            tcp_f(tester, 40019, free, 80, TCP_SYN),
            OK,
        ),
        deliver(
            "unselected pods pass: free -> client TCP 22",
            tcp_f(free, 40020, client, 22, TCP_SYN),
            OK,
        ),
        deliver(
            "return traffic via flow: free -> tester SYN|ACK of the allowed flow",
            tcp_f(free, 80, tester, 40019, SYNACK),
            OK,
        ),
        deliver(
            "return traffic via flow: tester -> free ACK",
            tcp_f(tester, 40019, free, 80, TCP_ACK),
            OK,
        ),
        deliver(
            "no flow: free -> tester SYN|ACK of an unknown flow (tester denies ingress)",
            tcp_f(free, 81, tester, 40019, SYNACK),
            SHOT,
        ),
        deliver(
            "no flow: free -> tester SYN (dev/deny-in)",
            tcp_f(free, 40021, tester, 22, TCP_SYN),
            SHOT,
        ),
        deliver(
            "TCP mid-stream without flow, selected: client -> web ACK 8080",
            tcp_f(client, 40022, web, 8080, TCP_ACK),
            SHOT,
        ),
        deliver(
            "return via flow, UDP: free -> client from 7000",
            udp_f(free, 7000, client, 40016),
            OK,
        ),
        deliver(
            "from the node itself: 10.0.9.1 -> web TCP 9090 (web-in allows only http)",
            tcp_f(node_addr, 40033, web, 9090, TCP_SYN),
            OK,
        ),
        deliver(
            "fail closed: free -> 10.0.1.99 (no pod has it) TCP SYN",
            tcp_f(free, 40030, "10.0.1.99", 80, TCP_SYN),
            SHOT,
        ),
        deliver(
            "not a pod address: free -> 255.255.255.255 UDP 67 (broadcast)",
            udp_f(free, 68, "255.255.255.255", 67),
            OK,
        ),
        deliver(
            "not a pod address: fe80::1 -> ff02::1 ICMPv6 router advertisement",
            frame("fe80::1", "ff02::1", 58, icmp(134, 0, &[])),
            OK,
        ),
        origin_expect(
            "fail closed: 10.0.1.99 (no pod has it) -> web SYN 8080",
            tcp_f("10.0.1.99", 40031, web, 8080, TCP_SYN),
            SHOT,
        ),
        origin_expect(
            "fail closed: 10.0.1.99 -> web UDP 53",
            udp_f("10.0.1.99", 40032, web, 53),
            SHOT,
        ),
        origin_expect(
            "fail closed: spoofed fd00::99 -> web6 ICMPv6 echo",
            frame("fd00::99", web6, 58, icmp(128, 7, &[])),
            SHOT,
        ),
        origin(
            "not a pod address: fe80::40 -> ff02::2 ICMPv6 router solicitation",
            frame("fe80::40", "ff02::2", 58, icmp(133, 0, &[])),
        ),
        origin(
            "not a pod address: 0.0.0.0 -> 255.255.255.255 UDP 67 (DHCP discover)",
            udp_f("0.0.0.0", 68, "255.255.255.255", 67),
        ),
        origin(
            "origin: tester -> external UDP 53 recorded",
            udp_f(tester, 40023, ext, 53),
        ),
        deliver(
            "reply via origin flow: external:53 -> tester",
            udp_f(ext, 53, tester, 40023),
            OK,
        ),
        deliver(
            "no origin flow: external:54 -> tester",
            udp_f(ext, 54, tester, 40023),
            SHOT,
        ),
        origin(
            "origin: tester -> web SYN 8080 recorded",
            tcp_f(tester, 40024, web, 8080, TCP_SYN),
        ),
        deliver(
            "origin flow does not authorise the initiator: tester -> web SYN",
            tcp_f(tester, 40024, web, 8080, TCP_SYN),
            SHOT,
        ),
        origin(
            "origin: client -> web SYN 8080 recorded",
            tcp_f(client, 40025, web, 8080, TCP_SYN),
        ),
        deliver(
            "origin flow, checked on delivery: client -> web SYN",
            tcp_f(client, 40025, web, 8080, TCP_SYN),
            OK,
        ),
        deliver(
            "then the flow passes: client -> web ACK",
            tcp_f(client, 40025, web, 8080, TCP_ACK),
            OK,
        ),
        deliver(
            "IPv6 selector: client6 -> web6 TCP 8080",
            tcp_f(client6, 40026, web6, 8080, TCP_SYN),
            OK,
        ),
        deliver(
            "IPv6 selector: client6 -> web6 TCP 9090",
            tcp_f(client6, 40027, web6, 9090, TCP_SYN),
            SHOT,
        ),
        deliver(
            "IPv6 return via flow: web6 -> client6 SYN|ACK",
            tcp_f(web6, 8080, client6, 40026, SYNACK),
            OK,
        ),
        deliver(
            "ICMP: client -> web echo (web allows ports only)",
            frame(client, web, ICMP, icmp(8, 7, &[])),
            SHOT,
        ),
        deliver(
            "ICMP: tester -> free echo (unselected)",
            frame(tester, free, ICMP, icmp(8, 8, &[])),
            OK,
        ),
        deliver(
            "ICMP: free -> tester echo reply via flow",
            frame(free, tester, ICMP, icmp(0, 8, &[])),
            OK,
        ),
        deliver(
            "ICMPv6 echo client6 -> web6 denied",
            frame(client6, web6, ICMP6, icmp(128, 9, &[])),
            SHOT,
        ),
        deliver(
            "ICMPv6 neighbour solicitation passes",
            frame(client6, web6, ICMP6, icmp(135, 0, &[0; 16])),
            OK,
        ),
        deliver("non-IP (ARP) passes", arp, OK),
        deliver(
            "IPv4 non-first fragment dropped",
            frame_v4(&[], ipv4(client, web, UDP, &[], 0x0010, &[0; 8])),
            SHOT,
        ),
    ];
    run_cases(&mut hook, &cases);

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
    assert_eq!(web9090.protocol, TCP);
    let free80 = seen
        .iter()
        .find(|e| e.src_port == 40015)
        .expect("event for client -> free 80");
    assert_eq!(free80.direction, DIRECTION_EGRESS);
}

/// Generation switch: the same packet flips verdict after an apply; an apply writes only the
/// difference to what the inactive generation holds.
#[test]
fn generation_switch_and_cleanup() {
    if not_root() {
        return;
    }
    let mut hook = NodeHook::load(NodeOptions::default()).expect("load");
    let allow = fixture_tables();
    let mut snap = fixture_snapshot();
    snap.policies.retain(|p| p.name != "api-in");
    // api-in gone: api unselected, client's egress still allows api.
    let open = compile_node(&snap).expect("compile");
    let pkt = |sp| tcp_f("10.0.1.60", sp, "10.0.1.30", 9090, TCP_SYN);
    hook.apply(&allow).expect("apply 1");
    assert_eq!(
        hook.test_run(TestProgram::Deliver, &pkt(1), 1)
            .unwrap()
            .action,
        SHOT
    );
    let s = hook.apply(&open).expect("apply 2");
    assert_eq!(s.generation, 0);
    // Generation 0 was empty: written in full, nothing to delete.
    assert!(s.written > 0);
    assert_eq!(s.deleted, 0);
    assert_eq!(
        hook.test_run(TestProgram::Deliver, &pkt(2), 1)
            .unwrap()
            .action,
        OK
    );
    let s = hook.apply(&allow).expect("apply 3");
    // Generation 1 still holds these very tables: the delta is empty.
    assert_eq!((s.generation, s.written, s.deleted), (1, 0, 0));
    assert_eq!(
        hook.test_run(TestProgram::Deliver, &pkt(3), 1)
            .unwrap()
            .action,
        SHOT
    );
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
fn revalidate_cuts_flows_the_new_policy_forbids() {
    if not_root() {
        return;
    }
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
    let run = |hook: &mut NodeHook, p: Vec<u8>| {
        hook.test_run(TestProgram::Deliver, &p, 1).unwrap().action
    };
    let (client, web, db) = ("10.0.1.40", "10.0.1.10", "10.0.1.20");
    assert_eq!(run(&mut hook, tcp_f(client, 41000, db, 5000, TCP_SYN)), OK);
    assert_eq!(run(&mut hook, tcp_f(client, 41001, web, 8080, TCP_SYN)), OK);
    hook.apply(&after).expect("apply 2");
    assert_eq!(
        run(&mut hook, tcp_f(db, 5000, client, 41000, SYNACK)),
        SHOT,
        "reply of a flow the new egress policy forbids"
    );
    assert_eq!(
        run(&mut hook, tcp_f(client, 41000, db, 5000, TCP_ACK)),
        SHOT,
        "the flow is gone"
    );
    assert_eq!(run(&mut hook, tcp_f(web, 8080, client, 41001, SYNACK)), OK);
    assert_eq!(run(&mut hook, tcp_f(client, 41001, web, 8080, TCP_ACK)), OK);
}
