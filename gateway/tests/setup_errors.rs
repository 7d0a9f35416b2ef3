//! Bad set-up is one clear error naming the interface and the fix, and leaves nothing behind:
//! a leg whose driver has no native XDP (a bridge) after the other leg was attached, and a leg
//! that does not exist.

use std::path::PathBuf;

use portcullis_gateway::{DatapathMode, Error, Gateway, GatewayOptions};
use portcullis_testkit::*;

fn pinned_files(dir: &PathBuf) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn a_leg_without_native_xdp_is_refused_and_nothing_stays_attached() {
    require_root();
    let ns = NetNs::new("noxdp");
    let pins = PinDir::of(&ns);
    ns.run(|| {
        sh(
            "ip link add gc type veth peer name gcp && ip link set gc up && ip link set gcp up && \
            ip link add br0 type bridge && ip link set br0 up",
        );
        let err = Gateway::load(GatewayOptions {
            cluster_iface: "gc".into(),
            external_iface: "br0".into(),
            datapath: DatapathMode::Afxdp,
            pin_dir: Some(pins.0.clone()),
            ..Default::default()
        })
        .err()
        .expect("a bridge has no native XDP");
        let message = err.to_string();
        assert!(
            matches!(&err, Error::NativeXdp { iface, .. } if iface == "br0"),
            "{message}"
        );
        assert!(message.contains("--generic-xdp"), "{message}");
        let link = sh("ip -d link show gc");
        assert!(
            !link.contains("xdp"),
            "the first leg stayed attached: {link}"
        );
        assert_eq!(
            pinned_files(&pins.0),
            Vec::<String>::new(),
            "pins left behind"
        );
    });
}

#[test]
#[ignore = "needs root (BPF, network namespaces): scripts/test runs it with --include-ignored"]
fn a_missing_leg_is_refused_by_name() {
    require_root();
    let ns = NetNs::new("noleg");
    ns.run(|| {
        sh("ip link add gc type veth peer name gcp && ip link set gc up");
        let err = Gateway::load(GatewayOptions {
            cluster_iface: "gc".into(),
            external_iface: "nosuch0".into(),
            ..Default::default()
        })
        .err()
        .expect("no such interface");
        assert!(err.to_string().contains("nosuch0"), "{err}");
        let link = sh("ip -d link show gc");
        assert!(!link.contains("xdp"), "attached after the refusal: {link}");
    });
}
