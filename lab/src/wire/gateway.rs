//! The gateway tier: one namespace with a cluster leg (towards the nodes) and an external leg
//! (towards the external hosts), routing between them. Each pod is reached via its node.

use super::ip_batch::Batch;
use super::{edge_tier, fabric};
use crate::addressing::{
    format_mac, EXTERNAL_END, EXT_IFACE, GATEWAY_CLUSTER_END, GATEWAY_CLUSTER_IFACE,
    GATEWAY_EXTERNAL_END, GATEWAY_EXTERNAL_IFACE,
};
use crate::topology::Topology;

/// Creates the external leg's veth (peer in the external namespace) and, with more than one
/// node, the cluster leg's veth (peer a port of the fabric bridge; with one node the node's
/// uplink created it).
pub(super) fn links(topo: &Topology) -> Batch {
    let ext = &topo.ext_netns;
    let mut lines = vec![format!(
        "link add {GATEWAY_EXTERNAL_IFACE} address {} type veth peer name {EXT_IFACE} address {} netns {ext}",
        format_mac(&GATEWAY_EXTERNAL_END.mac),
        format_mac(&EXTERNAL_END.mac)
    )];
    if let Some(f) = &topo.fabric_netns {
        lines.push(format!(
            "link add {GATEWAY_CLUSTER_IFACE} address {} type veth peer name {} netns {f}",
            format_mac(&GATEWAY_CLUSTER_END.mac),
            fabric::GW_PORT
        ));
    }
    Batch::new(&topo.gateway.netns, "create gateway links", lines)
}

/// Both legs addressed, a default route to the external namespace, static neighbours for it
/// and every node, and a route to every pod address via its node.
pub(super) fn configure(topo: &Topology) -> Batch {
    let lines = edge_tier(
        topo,
        GATEWAY_CLUSTER_IFACE,
        &GATEWAY_CLUSTER_END,
        GATEWAY_EXTERNAL_IFACE,
        &GATEWAY_EXTERNAL_END,
        &EXTERNAL_END,
    );
    Batch::new(&topo.gateway.netns, "configure gateway", lines)
}
