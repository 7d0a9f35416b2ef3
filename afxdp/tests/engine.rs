//! The gateway with its AF_XDP engine on real traffic: pod ns → gateway ns (cluster leg gc,
//! external leg ge, two queues each) → external ns, TCP connections spread over both queues.
//! `afxdp`: the engine judges and forwards every packet; `hybrid`: it judges the first packets and
//! writes their flows into the XDP program's pinned flow maps, which serve the rest.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use portcullis_afxdp::engine::{Engine, EngineError, EngineOptions, EngineStatus};
use portcullis_afxdp::rings::RingConfig;
use portcullis_afxdp::tables::PolicyTables;
use portcullis_gateway::{DatapathMode, Gateway, GatewayOptions};
use portcullis_policy::compile::{GatewayGroup, GatewayTables, PortRule};
use portcullis_policy::model::{Direction, Protocol};
use portcullis_testkit::*;

mod with_gateway;

const POD: &str = "10.96.0.1";
const SERVER: &str = "10.95.0.1";
const ALLOWED_PORT: u16 = 80;
const DENIED_PORT: u16 = 81;
const CONNECTIONS: usize = 16;

/// The pod may reach the server on TCP port 80 only, and nothing outside may reach the pod: the
/// replies pass only through the flows the requests opened, whichever queue they arrive on.
fn tables() -> GatewayTables {
    let pod = POD.parse::<IpAddr>().unwrap();
    let mut endpoints = BTreeMap::new();
    endpoints.insert((Direction::Egress, pod), 0);
    endpoints.insert((Direction::Ingress, pod), 1);
    GatewayTables {
        endpoints,
        groups: vec![
            GatewayGroup {
                direction: Direction::Egress,
                policies: vec!["test/pod-egress".into()],
                prefixes: vec![(format!("{SERVER}/32").parse().unwrap(), 1)],
            },
            GatewayGroup {
                direction: Direction::Ingress,
                policies: vec!["test/pod-ingress".into()],
                prefixes: vec![],
            },
        ],
        rule_sets: vec![
            vec![],
            vec![PortRule {
                protocol: Some(Protocol::Tcp),
                first: ALLOWED_PORT,
                last: ALLOWED_PORT,
            }],
        ],
    }
}

/// The three namespaces, veths with `queues` queues on each side of the gateway. The hosts
/// checksum in software (`tx off`), as packets from a real wire always are: a frame that crosses
/// user space loses a veth's "checksum to be completed" mark. GRO on the hosts' ends runs their
/// NAPI, without which a veth does not receive frames the XDP program redirects (hybrid).
fn topology(tag: &str, cluster_queues: u32, external_queues: u32) -> EdgeNs {
    let t = EdgeNs::with_queues(tag, cluster_queues, external_queues);
    t.pod.run(|| {
        sh(&format!(
            "ip addr add {POD}/24 dev p0 && ip link set p0 up && ip route add default via 10.96.0.254 && \
             ethtool -K p0 tx off gro on >/dev/null"
        ))
    });
    t.ext.run(|| {
        sh(&format!(
            "ip addr add {SERVER}/24 dev x0 && ip link set x0 up && ip route add default via 10.95.0.254 && \
             ethtool -K x0 tx off gro on >/dev/null"
        ))
    });
    t.gw.run(|| {
        sh("ip addr add 10.96.0.254/24 dev gc && ip link set gc up && \
            ip addr add 10.95.0.254/24 dev ge && ip link set ge up && \
            sysctl -qw net.ipv4.ip_forward=1")
    });
    t
}

/// Loads the gateway in `datapath` mode and starts its engine on every queue.
fn gateway(
    t: &EdgeNs,
    datapath: DatapathMode,
    pins: &PinDir,
    revalidate: bool,
) -> (Gateway, Engine) {
    t.gw.run(|| {
        let tables = tables();
        let (mut gw, generation) = with_gateway::load(datapath, pins, &tables);
        let engine =
            with_gateway::start_engine(&mut gw, datapath, pins, revalidate, &tables, generation);
        (gw, engine)
    })
}

/// Echo servers on both ports in the external namespace.
fn serve(t: &EdgeNs) {
    for port in [ALLOWED_PORT, DENIED_PORT] {
        let listener = t
            .ext
            .run(|| TcpListener::bind((SERVER, port)).expect("bind"));
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
}

/// Connects from the pod and exchanges a few lines; false when it cannot connect.
fn round_trips(t: &EdgeNs, port: u16) -> bool {
    let addr = SocketAddr::new(SERVER.parse().unwrap(), port);
    let Ok(mut conn) = t
        .pod
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(1500)))
    else {
        return false;
    };
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    (0..3).all(|i| {
        let line = format!("line {i}\n");
        let mut back = [0u8; 7];
        conn.write_all(line.as_bytes()).is_ok()
            && conn.read_exact(&mut back).is_ok()
            && back == line.as_bytes()
    })
}

/// Waits for the threads' next status publication.
fn settled(engine: &Engine) -> EngineStatus {
    std::thread::sleep(Duration::from_millis(700));
    engine.status()
}

fn check_traffic(t: &EdgeNs) {
    serve(t);
    for i in 0..CONNECTIONS {
        assert!(
            round_trips(t, ALLOWED_PORT),
            "allowed connection {i} failed"
        );
    }
    for i in 0..4 {
        assert!(
            !round_trips(t, DENIED_PORT),
            "denied connection {i} got through"
        );
    }
}

#[test]
#[ignore = "needs root (BPF, AF_XDP, network namespaces): scripts/test runs it with --include-ignored"]
fn afxdp_engine_judges_and_forwards_over_two_queues() {
    require_root();
    let t = topology("ea", 2, 2);
    let pins = PinDir::of(&t.gw);
    let (gw, engine) = gateway(&t, DatapathMode::Afxdp, &pins, false);
    check_traffic(&t);
    let status = settled(&engine);
    eprintln!("{}", serde_json::to_string_pretty(&status).unwrap());
    assert_eq!(status.queues.len(), 2);
    for q in &status.queues {
        assert!(
            q.rings.cluster.received > 0 && q.rings.external.received > 0,
            "queue {} saw no traffic: the connections were not spread",
            q.queue
        );
    }
    let c = portcullis_gateway::Counters::from_sums(&status.counters());
    assert!(c.pass_policy >= CONNECTIONS as u64, "{c:?}");
    assert!(c.drop_policy >= 4, "{c:?}");
    // One flow per connection although its directions may arrive on different queues.
    assert!(
        status.confirmed_flows >= CONNECTIONS && status.embryonic_flows == 0,
        "flows: {} confirmed, {} embryonic",
        status.confirmed_flows,
        status.embryonic_flows
    );
    // Every judged packet went through the engine, none through the program's pipeline.
    let kernel = gw.status().unwrap().tables.counters;
    assert!(
        kernel.to_engine > 0 && kernel.pass_policy == 0 && kernel.drop_policy == 0,
        "{kernel:?}"
    );
    drop(engine);
}

#[test]
#[ignore = "needs root (BPF, AF_XDP, network namespaces): scripts/test runs it with --include-ignored"]
fn hybrid_engine_writes_flows_that_xdp_then_serves() {
    require_root();
    let t = topology("eh", 2, 2);
    let pins = PinDir::of(&t.gw);
    let (gw, engine) = gateway(&t, DatapathMode::Hybrid, &pins, false);
    check_traffic(&t);
    let status = settled(&engine);
    let c = portcullis_gateway::Counters::from_sums(&status.counters());
    assert!(c.pass_policy >= CONNECTIONS as u64, "engine: {c:?}");
    assert!(c.drop_policy >= 4, "engine: {c:?}");
    let kernel = gw.status().unwrap().tables;
    eprintln!("{:?}", kernel.counters);
    assert!(
        kernel.flows.confirmed >= CONNECTIONS,
        "flows the engine wrote were not confirmed in FLOWS: {:?}",
        kernel.flows
    );
    // The established packets stayed in XDP: far more than the engine saw.
    assert!(kernel.counters.pass_flow > kernel.counters.to_engine);
    assert_eq!(
        kernel.counters.pass_policy, 0,
        "XDP judged a new flow itself"
    );
    drop(engine);
}

#[test]
#[ignore = "needs root (BPF, AF_XDP, network namespaces): scripts/test runs it with --include-ignored"]
fn revalidate_cuts_an_established_connection_the_new_generation_forbids() {
    require_root();
    let t = topology("er", 1, 1);
    let pins = PinDir::of(&t.gw);
    let (_gw, engine) = gateway(&t, DatapathMode::Afxdp, &pins, true);
    serve(&t);
    let addr = SocketAddr::new(SERVER.parse().unwrap(), ALLOWED_PORT);
    let mut conn = t
        .pod
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("allowed connection");
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut trip = |n: u8| {
        let mut back = [0u8; 1];
        conn.write_all(&[n]).is_ok() && conn.read_exact(&mut back).is_ok() && back == [n]
    };
    assert!(trip(1));
    // The next generation (other parity) allows port 81 only.
    let mut forbidding = tables();
    forbidding.rule_sets[1][0].first = DENIED_PORT;
    forbidding.rule_sets[1][0].last = DENIED_PORT;
    let next = engine.status().generation + 1;
    engine.set_tables(PolicyTables::new(&forbidding, next));
    assert!(
        !trip(2),
        "the established connection outlived the generation forbidding it"
    );
    let c = portcullis_gateway::Counters::from_sums(&engine.status().counters());
    assert!(c.revoked_confirmed >= 1, "{c:?}");
}

#[test]
#[ignore = "needs root (BPF, AF_XDP, network namespaces): scripts/test runs it with --include-ignored"]
fn legs_with_different_queue_counts_are_refused_by_name() {
    require_root();
    let t = topology("em", 2, 1);
    let err = t.gw.run(|| {
        Engine::start(
            EngineOptions {
                cluster_iface: "gc".into(),
                external_iface: "ge".into(),
                legs: (ifindex("gc"), ifindex("ge")),
                queues: None,
                rings: RingConfig::default(),
                hybrid_pins: None,
                mirror_pins: None,
                revalidate: false,
                pin_threads: false,
            },
            xsks_of_a_gateway(),
            Default::default(),
            PolicyTables::new(&tables(), 0),
        )
        .err()
        .expect("must fail")
    });
    assert!(matches!(err, EngineError::QueueMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("gc: 2") && text.contains("ge: 1") && text.contains("--queues"),
        "{text}"
    );
}

/// An XSKS map of a gateway loaded without pins in the calling thread's namespace.
fn xsks_of_a_gateway() -> aya::maps::XskMap<aya::maps::MapData> {
    let mut gw = Gateway::load(GatewayOptions {
        cluster_iface: "gc".into(),
        external_iface: "ge".into(),
        datapath: DatapathMode::Afxdp,
        ..Default::default()
    })
    .expect("load");
    gw.engine_handles().expect("handles").xsks
}
