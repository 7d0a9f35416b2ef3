//! SNAT configuration over time (BPF_PROG_TEST_RUN on the loaded program): refusals, updates,
//! GC of translations whose flow is gone, and pins across a restart.

mod snat_common;

use portcullis_gateway::{Datapath, Error, Gateway, GatewayOptions, SnatConfig};
use portcullis_testkit::*;
use snat_common::*;

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn bad_configurations_are_refused_with_nothing_changed() {
    require_root();
    let ns = NetNs::new("snbad");
    let mut gw = gateway(&ns, 32768..=60999);
    let again = ns
        .run(|| gw.set_snat(&config(32768..=60999)))
        .expect("same config");
    assert_eq!(again, (0, 0), "the same configuration writes nothing");
    let before = ns.run(|| gw.snat_status()).unwrap();
    let mut wrong_family = config(1..=2);
    wrong_family
        .entries
        .push((1, "10.0.0.0/8".parse().unwrap(), Some(ip(EGRESS6))));
    let mut unknown_class = config(1..=2);
    unknown_class
        .entries
        .push((9, "10.0.0.0/8".parse().unwrap(), None));
    #[allow(clippy::reversed_empty_ranges)]
    let empty = config(60000..=50000);
    for (what, cfg) in [
        ("egress address of the wrong family", wrong_family),
        ("unknown class", unknown_class),
        ("empty port range", empty),
    ] {
        let err = ns.run(|| gw.set_snat(&cfg)).expect_err(what);
        assert!(matches!(err, Error::InvalidSnat(_)), "{what}: {err}");
        eprintln!("{what}: {err}");
        assert_eq!(
            ns.run(|| gw.snat_status()).unwrap(),
            before,
            "{what}: nothing changed"
        );
    }
    // An egress address the entries name but `egress_ips` lacks (another gateway answers for
    // it) is valid: it gets a pool.
    let mut not_listed = config(32768..=60999);
    let other = ip("203.0.113.9");
    not_listed
        .entries
        .push((1, "10.0.0.0/8".parse().unwrap(), Some(other)));
    ns.run(|| gw.set_snat(&not_listed))
        .expect("egress address not listed");
    let status = ns.run(|| gw.snat_status()).unwrap();
    assert!(status.egress_ips.iter().any(|e| e.ip == other));
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn translations_of_flows_gone_are_collected_and_an_empty_config_turns_snat_off() {
    require_root();
    let ns = NetNs::new("sngc");
    let mut gw = gateway(&ns, 32768..=60999);
    let g = &mut gw;
    let syn = Packet::tcp(POD_A, 43000, SERVER, 443, TCP_SYN);
    let x = leaves_as(&ns, g, syn, 0, |p| {
        Packet::tcp(EGRESS4, p, SERVER, 443, TCP_SYN)
    });
    // An update without the pod keeps its translation; its egress address stays answered.
    ns.run(|| g.set_snat(&SnatConfig::default()))
        .expect("empty config");
    let status = ns.run(|| g.snat_status()).unwrap();
    assert!(status.enabled, "translations remain");
    assert_eq!(
        (status.pods, status.retired_pods, status.translations),
        (0, 1, 1),
        "the pod stays known while its translation remains"
    );
    assert_eq!(status.egress_ips.len(), 1);
    let reply = Packet::tcp(SERVER, 443, EGRESS4, x, TCP_SYN | TCP_ACK);
    arrives_as(
        &ns,
        g,
        reply,
        Packet::tcp(SERVER, 443, POD_A, 43000, TCP_SYN | TCP_ACK),
    );
    // The flow lives: the GC keeps the translation; once the flow is gone (and the grace
    // passed), both halves go, the retired egress address with them, and SNAT is off.
    std::thread::sleep(std::time::Duration::from_nanos(
        portcullis_gateway::SNAT_GC_GRACE_NS,
    ));
    assert_eq!(ns.run(|| g.gc_snat()).unwrap(), 0);
    ns.run(|| g.clear_flows()).unwrap();
    assert_eq!(ns.run(|| g.gc_flows()).unwrap(), 0);
    let status = ns.run(|| g.snat_status()).unwrap();
    assert_eq!((status.translations, status.egress_ips.len()), (0, 0));
    assert_eq!(
        status.retired_pods, 0,
        "the retired pod goes with its last translation"
    );
    assert!(g.snat_translations().is_empty());
    assert!(!status.enabled, "nothing left: SNAT costs nothing");
    let after = Packet::tcp(SERVER, 443, EGRESS4, x, TCP_ACK);
    untouched(&ns, g, Leg::External, after);
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn translations_survive_a_restart_through_the_pins() {
    require_root();
    let ns = NetNs::new("snpin");
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/{}", ns.name));
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(pin_dir.clone());
    let options = GatewayOptions {
        cluster_iface: CLUSTER.into(),
        external_iface: EXTERNAL.into(),
        pin_dir: Some(pin_dir),
        ..Default::default()
    };
    setup_links(&ns);
    let mut gw = ns.run(|| {
        let mut gw = Gateway::load(options.clone()).expect("load pinned");
        gw.apply(&tables()).expect("apply");
        gw.set_snat(&config(32768..=60999)).expect("set_snat");
        gw
    });
    let syn = Packet::tcp(POD_A, 44000, SERVER, 443, TCP_SYN);
    let x = leaves_as(&ns, &mut gw, syn, 0, |p| {
        Packet::tcp(EGRESS4, p, SERVER, 443, TCP_SYN)
    });
    drop(gw);
    // The restarted gateway serves the translation before its first `set_snat`.
    let mut gw = ns.run(|| Gateway::load(options.clone()).expect("reload"));
    let status = ns.run(|| gw.snat_status()).unwrap();
    assert!(status.enabled, "adopted translations keep SNAT on");
    assert_eq!(status.translations, 1);
    // `status` in another process sees the same through the pins.
    let dir = options.pin_dir.clone().unwrap();
    let pinned = portcullis_gateway::PinnedGateway::open(&dir).expect("pinned view");
    assert_eq!(pinned.snat_status().expect("pinned status"), status);
    let reply = Packet::tcp(SERVER, 443, EGRESS4, x, TCP_SYN | TCP_ACK);
    let to_pod = Packet::tcp(SERVER, 443, POD_A, 44000, TCP_SYN | TCP_ACK);
    arrives_as(&ns, &mut gw, reply, to_pod);
    let ack = Packet::tcp(POD_A, 44000, SERVER, 443, TCP_ACK);
    leaves_as(&ns, &mut gw, ack, 0, |_| {
        Packet::tcp(EGRESS4, x, SERVER, 443, TCP_ACK)
    });
    ns.run(|| gw.unpin()).expect("unpin");
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn an_update_replaces_the_entries_and_keeps_translations_made() {
    require_root();
    let ns = NetNs::new("snupd");
    let mut gw = gateway(&ns, 32768..=60999);
    let g = &mut gw;
    let elsewhere = "8.8.8.8";
    let syn = Packet::tcp(POD_A, 46000, elsewhere, 443, TCP_SYN);
    let x = leaves_as(&ns, g, syn, 0, |p| {
        Packet::tcp(EGRESS4, p, elsewhere, 443, TCP_SYN)
    });
    // A nested entry with the same answer as the one containing it, then the outer one gone.
    let mut nested = config(32768..=60999);
    nested
        .entries
        .push((1, "192.0.2.0/24".parse().unwrap(), Some(ip(EGRESS4))));
    ns.run(|| g.set_snat(&nested)).expect("nested");
    let mut narrow = nested.clone();
    narrow.entries.retain(|(_, dst, _)| dst.prefix_len() != 0);
    let (written, deleted) = ns.run(|| g.set_snat(&narrow)).expect("narrow");
    assert_eq!((written, deleted), (0, 2), "0.0.0.0/0 and ::/0 removed");
    assert_eq!(ns.run(|| g.snat_status()).unwrap().entries, 2);
    let to_server = Packet::tcp(POD_A, 46001, SERVER, 443, TCP_SYN);
    leaves_as(&ns, g, to_server, 0, |p| {
        Packet::tcp(EGRESS4, p, SERVER, 443, TCP_SYN)
    });
    // No entry any more: a new connection leaves untranslated, the one made before keeps its
    // translation.
    let new = Packet::tcp(POD_A, 46002, elsewhere, 443, TCP_SYN);
    untouched(&ns, g, Leg::Cluster, new);
    let ack = Packet::tcp(POD_A, 46000, elsewhere, 443, TCP_ACK);
    leaves_as(&ns, g, ack, 0, |_| {
        Packet::tcp(EGRESS4, x, elsewhere, 443, TCP_ACK)
    });
}
