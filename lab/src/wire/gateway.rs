//! The gateway tier: one namespace with a cluster leg (towards the nodes) and an external leg
//! (towards the external hosts), routing between them. Each pod is reached via its node.

use std::net::IpAddr;

use super::ip_batch::Batch;
use super::{default_route_leg, fabric, neigh};
use crate::addressing::{
    format_mac, CLUSTER_PREFIX_V4, EXTERNAL_END, EXT_IFACE, GATEWAY_CLUSTER_IFACE,
    GATEWAY_EXTERNAL_END, GATEWAY_EXTERNAL_IFACE, GW_CLUSTER_V4, GW_CLUSTER_V6, MAC_EXT,
    MAC_GW_CLUSTER, MAC_GW_EXTERNAL,
};
use crate::topology::Topology;

/// Creates the external leg's veth (peer in the external namespace) and, with more than one
/// node, the cluster leg's veth (peer a port of the fabric bridge; with one node the node's
/// uplink created it).
pub(super) fn links(topo: &Topology) -> Batch {
    let ext = &topo.ext_netns;
    let mut lines = vec![format!(
        "link add {GATEWAY_EXTERNAL_IFACE} address {} type veth peer name {EXT_IFACE} address {} netns {ext}",
        format_mac(&MAC_GW_EXTERNAL),
        format_mac(&MAC_EXT)
    )];
    if let Some(f) = &topo.fabric_netns {
        lines.push(format!(
            "link add {GATEWAY_CLUSTER_IFACE} address {} type veth peer name {} netns {f}",
            format_mac(&MAC_GW_CLUSTER),
            fabric::GW_PORT
        ));
    }
    Batch::new(&topo.gateway.netns, "create gateway links", lines)
}

/// Both legs addressed, a default route to the external namespace, static neighbours for it
/// and every node, and a route to every pod address via its node.
pub(super) fn configure(topo: &Topology) -> Batch {
    let (cl, ex) = (GATEWAY_CLUSTER_IFACE, GATEWAY_EXTERNAL_IFACE);
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("link set {cl} up"),
        format!("link set {ex} up"),
        format!("addr add {GW_CLUSTER_V4}/{CLUSTER_PREFIX_V4} dev {cl}"),
        format!("addr add {GW_CLUSTER_V6}/64 dev {cl} nodad"),
    ];
    lines.extend(default_route_leg(ex, &GATEWAY_EXTERNAL_END, &EXTERNAL_END));
    for node in &topo.nodes {
        lines.push(neigh(&node.uplink_ipv4, &node.uplink_mac, cl));
        lines.push(neigh(&node.uplink_ipv6, &node.uplink_mac, cl));
    }
    for p in topo.pods.values() {
        let node = topo.node_of(p);
        for ip in &p.ips {
            lines.push(match ip {
                IpAddr::V4(a) => format!("route add {a}/32 via {} dev {cl}", node.uplink_ipv4),
                IpAddr::V6(a) => format!("route add {a}/128 via {} dev {cl}", node.uplink_ipv6),
            });
        }
    }
    Batch::new(&topo.gateway.netns, "configure gateway", lines)
}
