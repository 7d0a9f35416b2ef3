//! Egress gateway failover on real traffic (root, kernel): `portcullis lab failover` builds the
//! lab with two gateways, opens established TCP connections through the active one with SNAT,
//! kills its daemon (kill -9), cuts its links or restarts both daemons in turn (a rolling
//! upgrade), and every connection must carry data afterwards with the same egress IP. Then a split brain: two gateways that
//! cannot hear each other both claim; once they can, one owner remains and the other counts the
//! resolution. Every packet stays inside namespaces these tests create.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_lab::{Lab, LabChild, LabOptions};
use portcullis_policy::load::load_sources;

#[path = "support/applied.rs"]
mod applied;
use applied::wait_until_applied;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `lab failover` with `fault` and checks its contract.
fn failover(fault: &str) {
    let out = Command::new(BIN)
        .current_dir(workspace())
        .args(["lab", "failover", "--fault", fault, "--connections", "100"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run portcullis lab failover");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("lab failover --fault {fault}: {text}");
    let result: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("one JSON object expected ({e}): {text}"));
    assert_eq!(result["connections"], 100, "{result}");
    assert_eq!(
        result["survived"], 100,
        "every connection survives: {result}"
    );
    assert_eq!(result["egress_ip_only"], true, "{result}");
    assert_eq!(result["fault"], fault, "{result}");
    if fault != "rolling" {
        assert_ne!(result["active_before"], result["active_after"], "{result}");
    }
    assert!(result["active_after"].is_string(), "{result}");
    assert!(out.status.success(), "{result}");
}

#[test]
fn every_connection_survives_a_killed_gateway_daemon() {
    portcullis_testkit::require_root();
    failover("kill");
}

#[test]
fn every_connection_survives_a_gateway_whose_links_are_cut() {
    portcullis_testkit::require_root();
    failover("link-down");
}

#[test]
fn every_connection_survives_a_rolling_upgrade() {
    portcullis_testkit::require_root();
    failover("rolling");
}

const SCENARIO: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: billing, labels: {kubernetes.io/metadata.name: billing}}
---
apiVersion: portcullis.io/v1alpha1
kind: EgressGateway
metadata: {name: billing-egress}
spec:
  selectors:
  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: billing}}
  destinationCIDRs: ["203.0.113.0/24"]
  gateway:
    nodeSelector: {matchLabels: {portcullis.io/egress-gateway: "true"}}
    egressIPs: ["198.51.100.50"]
"#;

/// The EgressGateways a gateway's published state says it is active for.
fn claims(state_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(state_dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.pointer("/egress/ha/claims").cloned())
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default()
}

fn split_brains_resolved(state_dir: &Path) -> u64 {
    std::fs::read_to_string(state_dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.pointer("/egress/ha/counters/split_brains_resolved")?
                .as_u64()
        })
        .unwrap_or(0)
}

fn refused(state_dir: &Path) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_to_string(state_dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.pointer("/egress/ha/counters/refused").cloned())
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_split_brain_resolves_to_one_owner() {
    portcullis_testkit::require_root();
    let snapshot = load_sources([("scenario.yaml", SCENARIO)]).snapshot;
    let options = LabOptions {
        steer_via_router: true,
        standby_gateway: true,
        ..LabOptions::default()
    };
    let mut lab = Lab::build(&snapshot, &[], options).expect("build lab");
    let dir = std::env::temp_dir().join(format!("portcullis-failover-{}", lab.id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifests = [dir.join("scenario.yaml"), dir.join("nodes.yaml")];
    std::fs::write(&manifests[0], SCENARIO).unwrap();
    std::fs::write(&manifests[1], lab.node_manifest()).unwrap();
    let gateways = [
        lab.gateway().clone(),
        lab.standby_gateway().unwrap().clone(),
    ];
    // The gateways cannot hear each other (no node relays what it hears: no node daemon runs).
    for (gw, other) in [(&gateways[0], &gateways[1]), (&gateways[1], &gateways[0])] {
        lab.nft(&gw.netns, &partition(&other.cluster_ipv4.to_string()))
            .unwrap();
    }
    let mut daemons: Vec<(LabChild, PathBuf)> = Vec::new();
    for gw in &gateways {
        let state = dir.join(format!("state-{}", gw.node));
        let mut cmd = Command::new(BIN);
        cmd.arg("gateway")
            .arg("--manifests")
            .args(&manifests)
            .args(["--cluster-iface", &gw.cluster_iface])
            .args(["--external-iface", &gw.external_iface])
            .args(["--node-name", &gw.node, "--ha"])
            .arg("--pin-dir")
            .arg(format!("/sys/fs/bpf/{}-{}", lab.id(), gw.node))
            .arg("--state-dir")
            .arg(&state)
            .arg("--unpin-on-exit")
            .stdout(Stdio::null());
        let child = lab.spawn_in(&gw.netns, cmd).expect("start a gateway");
        wait_until_applied(&child, &gw.node, &state);
        daemons.push((child, state));
    }
    wait_for("both gateways claiming (split brain)", || {
        daemons
            .iter()
            .all(|(_, state)| claims(state) == ["billing-egress"])
    });
    for gw in &gateways {
        lab.nft(&gw.netns, "delete table inet pclpart\n").unwrap();
    }
    wait_for("one owner", || {
        let owners: Vec<usize> = (0..2)
            .filter(|i| !claims(&daemons[*i].1).is_empty())
            .collect();
        owners == [0]
    });
    assert!(
        split_brains_resolved(&daemons[1].1) >= 1,
        "gateway-b counts the resolution"
    );

    // Garbage and an older protocol version, on both ports: refused and counted, nothing
    // applied (gateway-b stays up, standby, and keeps its peer).
    let to = gateways[1].cluster_ipv4;
    lab.run_in_netns(&gateways[0].netns, move || {
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        udp.send_to(b"not a heartbeat", (to, 7471)).unwrap();
        let old_version = b"PCHA\x00\x00\x04\x00\x00\x00\x00";
        udp.send_to(old_version, (to, 7471)).unwrap();
        for bytes in [&b"garbage garbage garbage"[..], &old_version[..]] {
            let mut tcp = std::net::TcpStream::connect((to, 7472)).unwrap();
            std::io::Write::write_all(&mut tcp, bytes).unwrap();
        }
    })
    .unwrap();
    wait_for("the garbage counted as refused", || {
        let refused = refused(&daemons[1].1);
        refused.get("magic").copied().unwrap_or(0) >= 2
            && refused.get("version").copied().unwrap_or(0) >= 2
    });
    assert!(claims(&daemons[1].1).is_empty(), "gateway-b still standby");
    assert_eq!(claims(&daemons[0].1), ["billing-egress"]);
    for (child, _) in &daemons {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    for (child, _) in &daemons {
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    lab.teardown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// An nftables table dropping everything from `peer`.
fn partition(peer: &str) -> String {
    format!("table inet pclpart {{\n chain in {{\n  type filter hook input priority 0; policy accept;\n  ip saddr {peer} drop\n }}\n}}\n")
}
