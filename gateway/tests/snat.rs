//! Source NAT in the XDP program, through BPF_PROG_TEST_RUN on the loaded program: what leaves
//! the cluster leg with an egress address, what comes back to it, ICMP, the port pool and ARP/ND
//! (the configuration over time: `snat_config.rs`), and the translation table full. Every
//! translated packet is compared byte for byte with the same packet built from scratch with the
//! translated addresses (so every checksum is recomputed in the test, not updated the program's
//! way).

mod snat_common;

use std::time::Instant;

use portcullis_common::{
    DROP_REASON_SNAT_EXHAUSTED, DROP_REASON_SNAT_TABLE_FULL, MAX_SNAT_TRANSLATIONS, NAT_OUTBOUND,
};
use portcullis_gateway::{Datapath, TestProgram, XDP_DROP, XDP_PASS};
use portcullis_testkit::*;
use snat_common::{run, *};

const XDP_TX: u32 = 3;
/// No class: never translated.
const UNSELECTED: &str = "10.244.1.30";
const SERVER6: &str = "2001:db8:5::50";
/// Inside the exempt 198.51.100.0/24.
const EXEMPT: &str = "198.51.100.7";
const ROUTER: &str = "192.0.2.1";
const ROUTER6: &str = "2001:db8:5::1";

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn tcp_and_udp_are_translated_both_ways_in_both_families() {
    require_root();
    let ns = NetNs::new("snat");
    let mut gw = gateway(&ns, 32768..=60999);
    let g = &mut gw;
    for (pod, server, egress) in [(POD_A, SERVER, EGRESS4), (POD6, SERVER6, EGRESS6)] {
        // TCP: the SYN picks a port, later packets keep it, the replies go back to the pod.
        let syn = Packet::tcp(pod, 40000, server, 443, TCP_SYN);
        let x = leaves_as(&ns, g, syn, 0, |p| {
            Packet::tcp(egress, p, server, 443, TCP_SYN)
        });
        assert!((32768..=60999).contains(&x), "{x} in the pool");
        let synack = Packet::tcp(server, 443, egress, x, TCP_SYN | TCP_ACK);
        let to_pod = Packet::tcp(server, 443, pod, 40000, TCP_SYN | TCP_ACK);
        arrives_as(&ns, g, synack, to_pod);
        let ack = Packet::tcp(pod, 40000, server, 443, TCP_ACK);
        let again = leaves_as(&ns, g, ack, 0, |p| {
            Packet::tcp(egress, p, server, 443, TCP_ACK)
        });
        assert_eq!(again, x, "the connection keeps its port");
        let data = Packet::tcp(server, 443, egress, x, TCP_ACK);
        arrives_as(&ns, g, data, Packet::tcp(server, 443, pod, 40000, TCP_ACK));

        // UDP, same.
        let query = Packet::udp(pod, 5353, server, 53);
        let u = leaves_as(&ns, g, query.clone(), 0, |p| {
            Packet::udp(egress, p, server, 53)
        });
        let answer = Packet::udp(server, 53, egress, u);
        arrives_as(&ns, g, answer, Packet::udp(server, 53, pod, 5353));
        let u2 = leaves_as(&ns, g, query, 0, |p| Packet::udp(egress, p, server, 53));
        assert_eq!(u, u2);
    }
    // Another pod with the same source port to the same server gets another port.
    let a = Packet::tcp(POD_A, 41000, SERVER, 443, TCP_SYN);
    let b = Packet::tcp(POD_B, 41000, SERVER, 443, TCP_SYN);
    let pa = leaves_as(&ns, g, a, 0, |p| {
        Packet::tcp(EGRESS4, p, SERVER, 443, TCP_SYN)
    });
    let pb = leaves_as(&ns, g, b, 0, |p| {
        Packet::tcp(EGRESS4, p, SERVER, 443, TCP_SYN)
    });
    assert_ne!(pa, pb, "two connections never share a translated tuple");
    let back_b = Packet::tcp(SERVER, 443, POD_B, 41000, TCP_SYN | TCP_ACK);
    arrives_as(
        &ns,
        g,
        Packet::tcp(SERVER, 443, EGRESS4, pb, TCP_SYN | TCP_ACK),
        back_b,
    );

    // A pod without a class, an exempt destination: untranslated.
    untouched(
        &ns,
        g,
        Leg::Cluster,
        Packet::tcp(UNSELECTED, 40000, SERVER, 443, TCP_SYN),
    );
    untouched(
        &ns,
        g,
        Leg::Cluster,
        Packet::tcp(POD_A, 40001, EXEMPT, 443, TCP_SYN),
    );
    // A TCP connection open before its pod was selected (no SYN seen) keeps the pod's address.
    let midstream = Packet::tcp(POD_B, 45000, SERVER, 443, TCP_ACK);
    untouched(&ns, g, Leg::Cluster, midstream);

    // A UDP/IPv4 datagram without checksum keeps none.
    let mut bare = Packet::udp(POD_A, 6000, SERVER, 53).frame();
    bare[40..42].copy_from_slice(&[0, 0]);
    let (action, out) = run(&ns, g, Leg::Cluster, &bare);
    assert_eq!(action, XDP_PASS);
    assert_eq!(
        (out[40..42].to_vec(), &out[26..30]),
        (vec![0, 0], &[203, 0, 113, 100][..])
    );
    assert_eq!(verify_checksums(&out), Ok(()));

    // To an egress address, no translation: dropped (and counted).
    let (action, _) = run(
        &ns,
        g,
        Leg::External,
        &Packet::tcp(SERVER, 443, EGRESS4, 1, TCP_ACK).frame(),
    );
    assert_eq!(action, XDP_DROP);

    let status = ns.run(|| g.snat_status()).expect("status");
    eprintln!("{status:#?}");
    assert!(status.enabled);
    assert_eq!(status.pods, 3);
    assert_eq!(
        status.translations, 7,
        "TCP+UDP per family, two pods, the bare datagram"
    );
    assert_eq!(status.counters.new_translations, 7);
    assert_eq!(status.counters.no_mapping, 1);
    let v4 = status
        .egress_ips
        .iter()
        .find(|e| e.ip == ip(EGRESS4))
        .unwrap();
    assert_eq!((v4.translations, v4.pool_size), (5, 60999 - 32768 + 1));
    let outbound = g
        .snat_translations()
        .iter()
        .filter(|(k, _)| k.direction == NAT_OUTBOUND)
        .count();
    assert_eq!(outbound, 7);
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn icmp_echo_and_errors_are_translated() {
    require_root();
    let ns = NetNs::new("snicmp");
    let mut gw = gateway(&ns, 32768..=60999);
    let g = &mut gw;
    for (pod, server, egress, request, reply) in [
        (POD_A, SERVER, EGRESS4, 8, 0),
        (POD6, SERVER6, EGRESS6, 128, 129),
    ] {
        let ping = Packet::icmp(pod, server, icmp(request, 0x1234, b"payload"));
        let id = leaves_as(&ns, g, ping, 4, |p| {
            Packet::icmp(egress, server, icmp(request, p, b"payload"))
        });
        let pong = Packet::icmp(server, egress, icmp(reply, id, b"payload"));
        arrives_as(
            &ns,
            g,
            pong,
            Packet::icmp(server, pod, icmp(reply, 0x1234, b"payload")),
        );
    }
    // PMTU: "fragmentation needed" / "packet too big" from a router about a translated packet.
    for (pod, server, egress, router, kind, code) in [
        (POD_A, SERVER, EGRESS4, ROUTER, 3, 4),
        (POD6, SERVER6, EGRESS6, ROUTER6, 2, 0),
    ] {
        let syn = Packet::tcp(pod, 42000, server, 443, TCP_SYN);
        let x = leaves_as(&ns, g, syn, 0, |p| {
            Packet::tcp(egress, p, server, 443, TCP_SYN)
        });
        let sent = Packet::tcp(egress, x, server, 443, TCP_SYN).ip();
        let original = Packet::tcp(pod, 42000, server, 443, TCP_SYN).ip();
        let error = Packet::icmp(router, egress, icmp_error(kind, code, &sent));
        arrives_as(
            &ns,
            g,
            error,
            Packet::icmp(router, pod, icmp_error(kind, code, &original)),
        );
        // The same error quoting only the first 8 bytes of TCP (no checksum quoted).
        let short = &sent[..sent.len() - 12];
        let short_original = &original[..original.len() - 12];
        let error = Packet::icmp(router, egress, icmp_error(kind, code, short));
        arrives_as(
            &ns,
            g,
            error,
            Packet::icmp(router, pod, icmp_error(kind, code, short_original)),
        );
    }
    // A pod's "port unreachable" about a reply it received leaves with the egress address,
    // quoting the reply as the remote end sent it.
    for (pod, server, egress, kind, code) in [
        (POD_A, SERVER, EGRESS4, 3, 3),
        (POD6, SERVER6, EGRESS6, 1, 4),
    ] {
        let query = Packet::udp(pod, 7000, server, 53);
        let u = leaves_as(&ns, g, query, 0, |p| Packet::udp(egress, p, server, 53));
        let received = Packet::udp(server, 53, pod, 7000).ip();
        let sent = Packet::udp(server, 53, egress, u).ip();
        let error = Packet::icmp(pod, server, icmp_error(kind, code, &received));
        let translated = Packet::icmp(egress, server, icmp_error(kind, code, &sent));
        let (action, out) = run(&ns, g, Leg::Cluster, &error.frame());
        assert_eq!((action, out), (XDP_PASS, translated.frame()), "{error:?}");
    }
    let counters = ns.run(|| g.snat_status()).unwrap().counters;
    assert_eq!(counters.icmp_errors, 6, "{counters:?}");
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn an_exhausted_pool_drops_with_its_reason() {
    require_root();
    let ns = NetNs::new("snpool");
    let mut gw = gateway(&ns, 50000..=50001);
    let mut events = gw.take_drop_events().expect("drop events");
    let g = &mut gw;
    let mut ports = Vec::new();
    for sport in [1001, 1002] {
        let syn = Packet::tcp(POD_A, sport, SERVER, 443, TCP_SYN);
        ports.push(leaves_as(&ns, g, syn, 0, |p| {
            Packet::tcp(EGRESS4, p, SERVER, 443, TCP_SYN)
        }));
    }
    ports.sort();
    assert_eq!(ports, [50000, 50001]);
    let third = Packet::tcp(POD_A, 1003, SERVER, 443, TCP_SYN).frame();
    assert_eq!(
        run(&ns, g, Leg::Cluster, &third).0,
        XDP_DROP,
        "third flow: no port left"
    );
    // Another destination has its own tuples: the same ports serve it.
    let other = Packet::tcp(POD_A, 1003, SERVER, 80, TCP_SYN);
    leaves_as(&ns, g, other, 0, |p| {
        Packet::tcp(EGRESS4, p, SERVER, 80, TCP_SYN)
    });
    let status = ns.run(|| g.snat_status()).unwrap();
    assert_eq!(status.counters.pool_exhausted, 1);
    let v4 = status
        .egress_ips
        .iter()
        .find(|e| e.ip == ip(EGRESS4))
        .unwrap();
    assert_eq!((v4.translations, v4.ports_in_use, v4.pool_size), (3, 2, 2));
    let mut reasons = Vec::new();
    while let Some(ev) = events.next_event() {
        reasons.push((ev.reason, ev.group, ev.src_port));
    }
    let group = reasons
        .iter()
        .find(|r| r.0 == DROP_REASON_SNAT_EXHAUSTED)
        .expect("event");
    assert_ne!(group.1, 0, "attributed to the pod's egress group");
    assert_eq!(group.2, 1003);
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn arp_and_neighbour_solicitations_for_egress_addresses_are_answered() {
    require_root();
    let ns = NetNs::new("snnd");
    let mut gw = gateway(&ns, 32768..=60999);
    let peer = [0x02, 0, 0, 0, 0, 0x02];
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&peer);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&peer);
    arp.extend_from_slice(&v4("203.0.113.1"));
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&v4(EGRESS4));
    let (action, out) = run(&ns, &mut gw, Leg::External, &arp);
    assert_eq!(action, XDP_TX, "ARP request answered");
    let mut reply = peer.to_vec();
    reply.extend_from_slice(&EXTERNAL_MAC);
    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&EXTERNAL_MAC);
    reply.extend_from_slice(&v4(EGRESS4));
    reply.extend_from_slice(&peer);
    reply.extend_from_slice(&v4("203.0.113.1"));
    assert_eq!(out, reply);
    // For another address: left to the kernel.
    let mut other = arp.clone();
    other[41] = 99;
    assert_eq!(
        run(&ns, &mut gw, Leg::External, &other),
        (XDP_PASS, other.clone())
    );

    let mut ns_body = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns_body.extend_from_slice(&v6(EGRESS6));
    ns_body.extend_from_slice(&[1, 1]);
    ns_body.extend_from_slice(&peer);
    let solicitation = Packet::icmp(ROUTER6, "ff02::1:ff00:100", ns_body).ttl(255);
    let (action, out) = run(&ns, &mut gw, Leg::External, &solicitation.frame());
    assert_eq!(action, XDP_TX, "NS answered");
    let mut na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    na.extend_from_slice(&v6(EGRESS6));
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&EXTERNAL_MAC);
    let advert = Packet::icmp(EGRESS6, ROUTER6, na)
        .routed(peer, EXTERNAL_MAC)
        .ttl(255);
    assert_eq!(out, advert.frame());
    assert_eq!(verify_checksums(&out), Ok(()));
    let counters = ns.run(|| gw.snat_status()).unwrap().counters;
    assert_eq!((counters.arp_replies, counters.nd_replies), (1, 1));
    // An egress address this gateway does not answer for (its traffic goes to another one):
    // the solicitation is left to the kernel.
    let mut elsewhere = config(32768..=60999);
    elsewhere.egress_ips.retain(|e| *e != ip(EGRESS6));
    ns.run(|| gw.set_snat(&elsewhere)).expect("set_snat");
    let frame = solicitation.frame();
    assert_eq!(run(&ns, &mut gw, Leg::External, &frame), (XDP_PASS, frame));
}

/// Source ports per remote port: a quarter of the pool, so that a connection's 32 probes
/// (linear, from the tuple's hash) practically never all find a taken port.
const SPORTS: usize = 16_000;

/// The `i`th connection of POD_A: UDP to SERVER (a pool of its own per remote port).
fn connection(i: usize) -> Packet {
    let (sport, rport) = (1024 + (i % SPORTS) as u16, 2000 + (i / SPORTS) as u16);
    Packet::udp(POD_A, sport, SERVER, rport)
}

/// The translation table full (`SNAT_TRANSLATIONS`, the real map: 262,144 connections, filled
/// through BPF_PROG_TEST_RUN in a few seconds): a new connection that cannot get a translation
/// is dropped with its own reason (`snat-table-full`, counted in `status`), never sent with the
/// pod's own address nor given another connection's translated tuple; the connections already
/// translated keep theirs (a plain hash: nothing is evicted).
#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn a_full_translation_table_refuses_new_connections_with_their_reason_and_keeps_the_old() {
    require_root();
    let ns = NetNs::new("snfull");
    let mut gw = gateway(&ns, 1024..=65535);
    let mut events = gw.take_drop_events().expect("drop events");
    let capacity = MAX_SNAT_TRANSLATIONS as usize / 2;
    let beyond = 1000;
    let started = Instant::now();
    let actions: Vec<u32> = ns.run(|| {
        let leg = ifindex(CLUSTER);
        (0..capacity + beyond)
            .map(|i| {
                let frame = connection(i).frame();
                let out = gw
                    .test_run(TestProgram::Gateway, leg, &frame, 1)
                    .expect("run");
                out.action
            })
            .collect()
    });
    eprintln!("{} connections in {:?}", actions.len(), started.elapsed());
    let status = ns.run(|| gw.snat_status()).unwrap();
    let c = &status.counters;
    eprintln!("{c:?}");
    assert_eq!(
        (status.translations, c.new_translations),
        (capacity, capacity as u64),
        "the table holds exactly its capacity: {c:?}"
    );
    let passed = actions.iter().filter(|a| **a == XDP_PASS).count();
    let dropped = actions.iter().filter(|a| **a == XDP_DROP).count();
    assert_eq!((passed, passed + dropped), (capacity, actions.len()));
    assert!(
        actions[capacity..].iter().all(|a| *a == XDP_DROP),
        "once the table is full, no new connection passes"
    );
    // Each refused connection is counted with its reason: its first free port needs a slot the
    // full table does not have (table full), unless every port it probes is taken already by an
    // earlier connection (pool exhausted: the earlier source ports were sequential).
    assert_eq!(c.table_full + c.pool_exhausted, dropped as u64, "{c:?}");
    assert!(c.table_full >= beyond as u64 / 2, "{c:?}");
    let mut reasons = Vec::new();
    while let Some(ev) = events.next_event() {
        reasons.push(ev.reason);
    }
    assert!(
        reasons.contains(&DROP_REASON_SNAT_TABLE_FULL),
        "drop events: {reasons:?}"
    );

    // The first connections keep their translation (their flows were evicted from the flow
    // table long ago: the translation is found again).
    for i in [0, 1, capacity / 2, capacity - 1] {
        let pkt = connection(i);
        let (action, out) = run(&ns, &mut gw, Leg::Cluster, &pkt.frame());
        assert_eq!(action, XDP_PASS, "connection {i}");
        // Untagged IPv4: the source address at 26..30, the UDP destination port after the source.
        assert_eq!(
            out[26..30],
            v4(EGRESS4),
            "connection {i} leaves with the egress IP"
        );
        assert_eq!(be16(&out, l4(&out) + 2), 2000 + (i / SPORTS) as u16);
    }
    let after = ns.run(|| gw.snat_status()).unwrap();
    assert_eq!(
        after.translations, capacity,
        "nothing evicted, nothing added"
    );
}
