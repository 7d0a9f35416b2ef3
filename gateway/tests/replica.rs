//! Replication between the gateways of a highly available group, through BPF_PROG_TEST_RUN on
//! the loaded programs: a peer's flows and translations carry its connections here (checked by
//! this gateway's own policy with `--revalidate`), a translation that would make two connections
//! share a tuple is refused and counted, the import rules of flows, and how fast entries go out
//! and in. Real traffic moving between two gateways: `replica_traffic.rs`.

mod snat_common;

use std::time::Instant;

use portcullis_common::{
    ipv4_mapped, FlowKey, FlowValue, NatKey, NatValue, CHECK_EGRESS_OF_SRC, FLOW_STATE_ACTIVE,
    NAT_INBOUND, NAT_OUTBOUND, PROTO_TCP, TCP_STATE_ESTABLISHED, TIMEOUT_UDP_NS,
};
use portcullis_gateway::{
    monotonic_coarse_ns, Datapath, Gateway, GatewayOptions, ImportStats, Replica, XDP_DROP,
};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::*;
use snat_common::{run, *};

/// A server POD_A's egress policy allows on one gateway and not on the other.
const OTHER: &str = "192.0.2.60";
/// Inside the exempt 198.51.100.0/24: untranslated.
const EXEMPT: &str = "198.51.100.7";

/// POD_A's egress allowed to SERVER and the exempt prefix only (not to OTHER).
fn narrow_tables() -> GatewayTables {
    let mut t = tables();
    t.groups[0].prefixes = vec![
        ("192.0.2.50/32".parse().unwrap(), 0),
        ("198.51.100.0/24".parse().unwrap(), 0),
    ];
    t
}

/// A translated TCP connection from POD_A:`sport` to `dst`:80 through `gw`: the SYN, the SYN-ACK,
/// the ACK that confirms its flow. Returns its translated port.
fn connect(ns: &NetNs, gw: &mut Gateway, sport: u16, dst: &str) -> u16 {
    let syn = Packet::tcp(POD_A, sport, dst, 80, TCP_SYN);
    let port = leaves_as(ns, gw, syn, 0, |p| {
        Packet::tcp(EGRESS4, p, dst, 80, TCP_SYN)
    });
    let synack = |to: &str, port| Packet::tcp(dst, 80, to, port, TCP_SYN | TCP_ACK);
    arrives_as(ns, gw, synack(EGRESS4, port), synack(POD_A, sport));
    assert_eq!(
        ack_leaves(ns, gw, sport, dst),
        port,
        "the connection keeps its port"
    );
    port
}

/// POD_A's ACK to `dst`:80 from `sport` leaves translated; its port.
fn ack_leaves(ns: &NetNs, gw: &mut Gateway, sport: u16, dst: &str) -> u16 {
    let ack = Packet::tcp(POD_A, sport, dst, 80, TCP_ACK);
    leaves_as(ns, gw, ack, 0, |p| {
        Packet::tcp(EGRESS4, p, dst, 80, TCP_ACK)
    })
}

/// The flow entry of a replica whose ports include `port` (host order).
fn flow_of(replicas: &[Replica], port: u16) -> (FlowKey, FlowValue, bool) {
    (replicas.iter())
        .find_map(|r| match r {
            Replica::Flow {
                key,
                value,
                confirmed,
                ..
            } if [key.port_lo, key.port_hi].contains(&port.to_be()) => {
                Some((*key, *value, *confirmed))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no flow with port {port}"))
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn a_peer_s_flows_and_translations_carry_its_connections_under_this_gateway_s_policy() {
    require_root();
    let (na, nb) = (NetNs::new("rpa"), NetNs::new("rpb"));
    let mut a = gateway(&na, 32768..=60999);
    // Three connections through A: two translated and confirmed, one exempt and embryonic.
    let p1 = connect(&na, &mut a, 1111, SERVER);
    let p2 = connect(&na, &mut a, 2222, OTHER);
    untouched(
        &na,
        &mut a,
        Leg::Cluster,
        Packet::tcp(POD_A, 3333, EXEMPT, 80, TCP_SYN),
    );
    let replicas = a.export_replicas(None).expect("export");
    let (confirmed, embryonic, translations) = census(&replicas);
    assert_eq!(
        (confirmed, embryonic, translations),
        (2, 1, 4),
        "{replicas:#?}"
    );

    // B's policy allows POD_A to SERVER and the exempt prefix, not to OTHER.
    let revalidate = GatewayOptions {
        revalidate: true,
        ..Default::default()
    };
    let mut b = gateway_with(&nb, 32768..=60999, revalidate);
    nb.run(|| b.apply(&narrow_tables())).expect("apply");
    let ack = Packet::tcp(POD_A, 1111, SERVER, 80, TCP_ACK).frame();
    let (action, _) = run(&nb, &mut b, Leg::Cluster, &ack);
    assert_eq!(action, XDP_DROP, "mid-stream without its flow: dropped");
    let stats = b.import_replicas(&replicas).expect("import");
    let want = ImportStats {
        flows: 3,
        translations: 4,
        ..Default::default()
    };
    assert_eq!(stats, want);
    // Written at the opposite parity (re-checked on their next packet), without next hops.
    let current = b.status().expect("status").tables.generation;
    let (key, _, _) = flow_of(&replicas, 1111);
    let entry = b.core().maps.flows.get(&key, 0).expect("imported flow");
    assert_eq!(entry.flow.generation as u32, current ^ 1);
    assert_eq!(
        (entry.hop_epoch, entry.hops[0].valid, entry.hops[1].valid),
        (0, 0, 0)
    );

    // The connection to SERVER goes on through B with A's translation, both ways, and its flow
    // is now checked against B's generation.
    assert_eq!(ack_leaves(&nb, &mut b, 1111, SERVER), p1);
    let data = |to: &str, port| Packet::tcp(SERVER, 80, to, port, TCP_ACK);
    arrives_as(&nb, &mut b, data(EGRESS4, p1), data(POD_A, 1111));
    let entry = b.core().maps.flows.get(&key, 0).expect("flow");
    assert_eq!(entry.flow.generation as u32, current, "revalidated");
    // B's policy denies the one to OTHER: its flow is revoked on its first packet.
    let ack = Packet::tcp(POD_A, 2222, OTHER, 80, TCP_ACK).frame();
    assert_eq!(run(&nb, &mut b, Leg::Cluster, &ack).0, XDP_DROP);
    let counters = b.status().expect("status").tables.counters;
    assert_eq!(counters.revoked_confirmed, 1, "{counters:?}");
    // The embryonic one completes on B.
    let synack = Packet::tcp(EXEMPT, 80, POD_A, 3333, TCP_SYN | TCP_ACK);
    untouched(&nb, &mut b, Leg::External, synack);
    untouched(
        &nb,
        &mut b,
        Leg::Cluster,
        Packet::tcp(POD_A, 3333, EXEMPT, 80, TCP_ACK),
    );
    let (_, _, confirmed) = flow_of(&b.export_replicas(None).expect("export"), 3333);
    assert!(confirmed, "confirmed on B");
    let snat = b.snat_status().expect("snat status");
    assert_eq!(
        snat.counters.new_translations, 0,
        "no translation of B's own"
    );
    assert!(snat.enabled);
    assert_ne!(p1, p2);
}

/// (confirmed flows, embryonic flows, translation entries) of `replicas`.
fn census(replicas: &[Replica]) -> (usize, usize, usize) {
    let mut n = (0, 0, 0);
    for r in replicas {
        match r {
            Replica::Flow {
                confirmed: true, ..
            } => n.0 += 1,
            Replica::Flow { .. } => n.1 += 1,
            Replica::Translation { .. } => n.2 += 1,
        }
    }
    n
}

/// Translation entries.
type Entries = Vec<(NatKey, NatValue)>;

/// The translations of `replicas`: (outbound, inbound) entries.
fn halves(replicas: &[Replica]) -> (Entries, Entries) {
    let all = replicas.iter().filter_map(|r| match r {
        Replica::Translation { key, value, .. } => Some((*key, *value)),
        _ => None,
    });
    all.partition(|(k, _)| k.direction == NAT_OUTBOUND)
}

fn translation(key: NatKey, value: NatValue) -> Replica {
    Replica::Translation {
        key,
        value,
        age_ns: 0,
    }
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn a_translation_that_would_share_a_tuple_is_refused_and_counted() {
    require_root();
    let ns = NetNs::new("rpc");
    let mut gw = gateway(&ns, 32768..=60999);
    let p = connect(&ns, &mut gw, 1111, SERVER);
    let own = gw.export_replicas(None).expect("export");
    let (out, inb) = halves(&own);
    let ((ko, vo), (ki, vi)) = (out[0], inb[0]);
    let before = sorted(gw.snat_translations());

    // Its own entries again (a delta sent twice): there already, nothing to do.
    let again = [translation(ko, vo), translation(ki, vi)];
    let stats = gw.import_replicas(&again).expect("import");
    assert_eq!((stats.translations, stats.conflicts), (2, 0), "{stats:?}");

    let other_port = if p == 60999 { p - 1 } else { p + 1 };
    let other_pod = NatValue {
        addr: ipv4_mapped(v4(POD_B)),
        port: 2222u16.to_be(),
        ..vi
    };
    let mut pod_b = ko;
    (pod_b.src, pod_b.sport) = (other_pod.addr, other_pod.port);
    let refused = [
        // The same connection translated to another port elsewhere (a split brain): this
        // gateway's translation stays, and the peer's translated tuple is not reserved here.
        translation(
            ko,
            NatValue {
                port: other_port.to_be(),
                ..vo
            },
        ),
        // Another connection translated to this one's tuple.
        translation(pod_b, vo),
        // The tuple mapped back to another pod.
        translation(ki, other_pod),
    ];
    let stats = gw.import_replicas(&refused).expect("import");
    assert_eq!(
        stats,
        ImportStats {
            conflicts: 3,
            ..Default::default()
        }
    );
    assert_eq!(
        sorted(gw.snat_translations()),
        before,
        "nothing written, nothing lost"
    );
    arrives_as(
        &ns,
        &mut gw,
        Packet::tcp(SERVER, 80, EGRESS4, p, TCP_ACK),
        Packet::tcp(SERVER, 80, POD_A, 1111, TCP_ACK),
    );
    // An inbound entry alone, on a free tuple: written (it reserves the tuple).
    let lone = NatKey {
        dport: other_port.to_be(),
        ..ki
    };
    let stats = gw
        .import_replicas(&[translation(lone, other_pod)])
        .expect("import");
    assert_eq!((stats.translations, stats.conflicts), (1, 0));
    assert_eq!(gw.snat_translations().len(), before.len() + 1);
    assert_eq!(lone.direction, NAT_INBOUND);
}

fn sorted(mut t: Entries) -> Entries {
    t.sort_by_key(|(k, _)| (k.direction, k.src, k.dst, k.sport, k.dport));
    t
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn flows_are_imported_unless_this_gateway_s_entry_is_more_recent() {
    require_root();
    let ns = NetNs::new("rpf");
    let mut gw = gateway(&ns, 32768..=60999);
    // Two embryonic flows of this gateway's own, as templates.
    for sport in [1111, 2222] {
        untouched(
            &ns,
            &mut gw,
            Leg::Cluster,
            Packet::tcp(POD_A, sport, EXEMPT, 80, TCP_SYN),
        );
    }
    let own = gw.export_replicas(None).expect("export");
    let flow = |port, confirmed: bool, idle_ns: u64| {
        let (key, value, _) = flow_of(&own, port);
        Replica::Flow {
            key,
            value: FlowValue {
                state: TCP_STATE_ESTABLISHED,
                ..value
            },
            confirmed,
            idle_ns,
        }
    };
    let s = 1_000_000_000;
    let import = |gw: &mut Gateway, r: Replica| gw.import_replicas(&[r]).expect("import");
    let flows = ImportStats {
        flows: 1,
        ..Default::default()
    };
    let stale = ImportStats {
        stale: 1,
        ..Default::default()
    };
    // Flow 1111, embryonic here (seen just now): an older embryonic replica is stale, a confirmed
    // one promotes it.
    assert_eq!(import(&mut gw, flow(1111, false, 5 * s)), stale);
    assert_eq!(import(&mut gw, flow(1111, true, 5 * s)), flows);
    let (key, _, confirmed) = flow_of(&gw.export_replicas(None).unwrap(), 1111);
    assert!(confirmed, "in FLOWS");
    let maps = &gw.core().maps;
    assert!(
        maps.embryonic_flows.get(&key, 0).is_err(),
        "left EMBRYONIC_FLOWS"
    );
    let last_seen = maps.flows.get(&key, 0).unwrap().flow.last_seen_ns;
    let idle = monotonic_coarse_ns() - last_seen;
    assert!(
        (5 * s..6 * s).contains(&idle),
        "written 5 s ago by this clock: {idle}"
    );
    // Confirmed now: an embryonic replica never overwrites it, an older one leaves it alone, a
    // more recent one refreshes it.
    assert_eq!(import(&mut gw, flow(1111, false, 0)), stale);
    assert_eq!(import(&mut gw, flow(1111, true, 9 * s)), stale);
    assert_eq!(import(&mut gw, flow(1111, true, s)), flows);
    // Flow 2222: a more recent embryonic replica is taken; an expired one never.
    assert_eq!(import(&mut gw, flow(2222, false, 0)), flows);
    let mut expired = flow(2222, true, TIMEOUT_UDP_NS + s);
    if let Replica::Flow { value, .. } = &mut expired {
        value.state = FLOW_STATE_ACTIVE;
    }
    assert_eq!(import(&mut gw, expired), stale);
    let (_, value, confirmed) = flow_of(&gw.export_replicas(None).unwrap(), 2222);
    assert!(!confirmed);
    assert_eq!(
        (value.checked, value.state),
        (CHECK_EGRESS_OF_SRC, TCP_STATE_ESTABLISHED)
    );
    // Deltas: only what changed since.
    let later = monotonic_coarse_ns() + s;
    assert_eq!(gw.export_replicas(Some(later)).unwrap(), vec![]);
    let (_, value, _) = flow_of(&gw.export_replicas(Some(last_seen)).unwrap(), 1111);
    assert_eq!(value.state, TCP_STATE_ESTABLISHED);
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn the_lease_survives_a_restart_and_is_created_beside_an_older_version_s_pins() {
    require_root();
    let ns = NetNs::new("rpl");
    let pins = PinDir::of(&ns);
    let options = GatewayOptions {
        pin_dir: Some(pins.0.clone()),
        ..Default::default()
    };
    let mut gw = gateway_with(&ns, 32768..=60999, options.clone());
    let port = connect(&ns, &mut gw, 1111, SERVER);
    let until = monotonic_coarse_ns() + 3600 * 1_000_000_000;
    gw.renew_lease(until).expect("lease");
    drop(gw);
    let restart = || {
        ns.run(|| Gateway::load(legs(options.clone())))
            .expect("adopt the pins")
    };
    let mut gw = restart();
    assert_eq!(gw.lease().unwrap(), Some(until), "kept through a restart");
    // A pin directory of a version without the lease: its maps are adopted, the lease map is
    // made and pinned beside them (no lease: the answers stand as before).
    drop(gw);
    std::fs::remove_file(pins.0.join("SNAT_LEASE")).expect("remove the lease pin");
    gw = restart();
    assert_eq!(gw.lease().unwrap(), None);
    assert!(pins.0.join("SNAT_LEASE").exists(), "pinned");
    assert_eq!(
        ack_leaves(&ns, &mut gw, 1111, SERVER),
        port,
        "translations adopted"
    );
    ns.run(|| gw.unpin()).expect("unpin");
}

/// A gateway's share of a busy group: `n` translated connections (confirmed flows and both
/// translation halves) and `n / 2` embryonic flows, made up.
fn made_up(n: u32) -> Vec<Replica> {
    let mut out = Vec::new();
    for i in 0..n {
        let pod = ipv4_mapped([10, 244, (i >> 8) as u8, i as u8]);
        let server = ipv4_mapped([192, 0, 2, 50 + (i / 20_000) as u8]);
        let (sport, dport) = ((10_000 + i % 50_000) as u16, 443u16);
        let port = (32768 + i % 20_000) as u16;
        let key = FlowKey {
            addr_lo: pod,
            addr_hi: server,
            port_lo: sport.to_be(),
            port_hi: dport.to_be(),
            protocol: PROTO_TCP,
            _pad: [0; 3],
        };
        let value = FlowValue {
            state: TCP_STATE_ESTABLISHED,
            initiator_is_lo: 1,
            checked: CHECK_EGRESS_OF_SRC,
            ..Default::default()
        };
        out.push(Replica::Flow {
            key,
            value,
            confirmed: true,
            idle_ns: i as u64,
        });
        if i % 2 == 0 {
            let key = FlowKey {
                port_lo: (sport ^ 1).to_be(),
                ..key
            };
            let idle_ns = 0;
            out.push(Replica::Flow {
                key,
                value,
                confirmed: false,
                idle_ns,
            });
        }
        let outbound = NatKey {
            src: pod,
            dst: server,
            sport: sport.to_be(),
            dport: dport.to_be(),
            protocol: PROTO_TCP,
            direction: NAT_OUTBOUND,
            _pad: [0; 2],
        };
        let egress = NatValue {
            addr: ipv4_mapped(v4(EGRESS4)),
            port: port.to_be(),
            ..Default::default()
        };
        let inbound = NatKey {
            src: server,
            dst: egress.addr,
            sport: dport.to_be(),
            dport: egress.port,
            direction: NAT_INBOUND,
            ..outbound
        };
        let back = NatValue {
            addr: pod,
            port: sport.to_be(),
            ..Default::default()
        };
        out.push(translation(outbound, egress));
        out.push(translation(inbound, back));
    }
    out
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn a_full_dump_goes_out_and_in_whole_and_how_fast() {
    require_root();
    let ns = NetNs::new("rpr");
    let mut gw = gateway(&ns, 32768..=60999);
    let entries = made_up(50_000);
    let rate = |n: usize, t: Instant| n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let stats = gw.import_replicas(&entries).expect("import");
    let import_rate = rate(entries.len(), t);
    assert_eq!(
        stats,
        ImportStats {
            flows: 75_000,
            translations: 100_000,
            ..Default::default()
        }
    );
    let t = Instant::now();
    let dump = gw.export_replicas(None).expect("export");
    let export_rate = rate(dump.len(), t);
    assert_eq!(census(&dump), (50_000, 25_000, 100_000));
    let t = Instant::now();
    let again = gw.import_replicas(&dump).expect("import again");
    let again_rate = rate(dump.len(), t);
    assert_eq!(again.total(), dump.len() as u64);
    assert_eq!(
        (again.translations, again.conflicts),
        (100_000, 0),
        "{again:?}"
    );
    eprintln!(
        "{} entries: import {import_rate:.0}/s, export {export_rate:.0}/s, \
         import of entries already there {again_rate:.0}/s",
        dump.len()
    );
}
