//! The gateway tier: a namespace per gateway with a cluster leg (towards the nodes) and an
//! external leg (towards the external hosts), routing between them. Each pod is reached via its
//! node.

use super::ip_batch::Batch;
use super::{edge_tier, neigh};
use crate::addressing::{format_mac, EXTERNAL_END};
use crate::topology::{GatewayLegs, Topology};

/// Creates gateway `gw`'s external leg's veth (peer in the external namespace) and, with a
/// fabric, its cluster leg's veth (peer a port of the fabric bridge; with one node and no fabric
/// the node's uplink created it).
pub(super) fn links(topo: &Topology, gw: &GatewayLegs) -> Batch {
    let ext = &topo.ext_netns;
    let mut lines = vec![format!(
        "link add {} address {} type veth peer name {} address {} netns {ext}",
        gw.external_iface,
        format_mac(&gw.external_end().mac),
        gw.external_peer(),
        format_mac(&EXTERNAL_END.mac)
    )];
    if let Some(f) = &topo.fabric_netns {
        lines.push(format!(
            "link add {} address {} type veth peer name {} netns {f}",
            gw.cluster_iface,
            format_mac(&gw.cluster_end().mac),
            gw.fabric_port()
        ));
    }
    Batch::new(&gw.netns, "create gateway links", lines)
}

/// Both legs addressed, a default route to the external namespace, static neighbours for it,
/// every node and the other gateway, and a route to every pod address via its node.
pub(super) fn configure(topo: &Topology, gw: &GatewayLegs) -> Batch {
    let mut lines = edge_tier(
        topo,
        &gw.cluster_iface,
        gw.cluster_end(),
        &gw.external_iface,
        gw.external_end(),
        &EXTERNAL_END,
    );
    for other in topo.gateways().filter(|o| o.netns != gw.netns) {
        let end = other.cluster_end();
        lines.push(neigh(&end.v4, &end.mac, &gw.cluster_iface));
        lines.push(neigh(&end.v6, &end.mac, &gw.cluster_iface));
    }
    Batch::new(&gw.netns, "configure gateway", lines)
}
