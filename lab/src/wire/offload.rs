//! Offload settings. The gateway may forward in XDP (redirect to the other leg). A veth receives
//! redirected frames only while its NAPI runs, which GRO turns on: the peers of both legs get
//! GRO. A redirected frame also loses the "checksum to be completed" mark of a locally sent
//! packet, so the hosts that originate traffic (pods, external hosts) checksum in software, as
//! packets from a real wire always are.

use std::process::Command;

use crate::addressing::{NODE_UPLINK_IFACE, POD_IFACE};
use crate::topology::Topology;
use crate::{command, LabError};

/// Sets every interface's offloads, all at once.
pub(super) fn set(topo: &Topology) -> Result<(), LabError> {
    let mut features: Vec<(&str, &str, &[&str])> = Vec::new();
    for gw in topo.gateways() {
        let cluster_peer = match &topo.fabric_netns {
            Some(f) => (f.as_str(), gw.fabric_port()),
            None => (topo.nodes[0].netns.as_str(), NODE_UPLINK_IFACE),
        };
        features.push((cluster_peer.0, cluster_peer.1, &["gro", "on"]));
        features.push((
            &topo.ext_netns,
            gw.external_peer(),
            &["gro", "on", "tx", "off"],
        ));
    }
    for p in topo.pods.values() {
        features.push((&p.netns, POD_IFACE, &["tx", "off"]));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = features
            .iter()
            .map(|(ns, iface, f)| scope.spawn(move || set_features(ns, iface, f)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("ethtool thread does not panic"))
    })
}

/// `ethtool -K IFACE FEATURE on|off ...` in `netns` (ethtool touches no bpffs, so `ip netns
/// exec` is fine here).
fn set_features(netns: &str, iface: &str, features: &[&str]) -> Result<(), LabError> {
    command::run(
        Command::new("ip")
            .args(["netns", "exec", netns, "ethtool", "-K", iface])
            .args(features),
    )
    .map(drop)
    .map_err(|e| {
        LabError::command(
            format!("ethtool -K {iface} {}", features.join(" ")),
            netns,
            e,
        )
    })
}
