//! The fabric tier (with more than one node, or a router): one namespace whose bridge joins every
//! node's uplink (port `nI`), the gateways' cluster legs (ports `gw`, `gw2`) and the router's
//! (port `rt`) into one segment.

use std::process::Command;
use std::time::{Duration, Instant};

use super::ip_batch::Batch;
use crate::addressing::FABRIC_BRIDGE;
use crate::topology::Topology;
use crate::{command, LabError};

/// The fabric's port towards the router's cluster leg.
pub(super) const RT_PORT: &str = "rt";

/// The fabric's port towards node `i`'s uplink.
pub(super) fn node_port(i: usize) -> String {
    format!("n{i}")
}

/// Every port of the bridge: the nodes' in order, then the gateways' and the router's.
pub(super) fn ports(topo: &Topology) -> Vec<String> {
    (0..topo.nodes.len())
        .map(node_port)
        .chain(topo.gateways().map(|gw| gw.fabric_port().to_string()))
        .chain(topo.router_netns.as_ref().map(|_| RT_PORT.to_string()))
        .collect()
}

/// The bridge with every port up and enslaved.
pub(super) fn configure(netns: &str, ports: &[String]) -> Batch {
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("link add {FABRIC_BRIDGE} type bridge"),
    ];
    lines.extend(ports.iter().map(|p| format!("link set {p} up")));
    lines.extend(
        ports
            .iter()
            .map(|p| format!("link set {p} master {FABRIC_BRIDGE}")),
    );
    lines.push(format!("link set {FABRIC_BRIDGE} up"));
    Batch::new(netns, "configure fabric bridge", lines)
}

/// Waits (up to 3 s) until `ports` ports of the bridge are forwarding.
pub(super) fn wait_forwarding(netns: &str, ports: usize) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let shown = command::run(Command::new("bridge").args(["-n", netns, "link", "show"]))
            .map_err(|e| LabError::command("bridge link show", netns, e))?;
        let forwarding = shown
            .lines()
            .filter(|l| l.contains("state forwarding") && !l.contains("NO-CARRIER"))
            .count();
        if forwarding >= ports {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Command {
                step: "wait for fabric bridge ports to forward".into(),
                netns: netns.into(),
                detail: shown,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
