//! The router tier (with `steer_via_router`): a plain router on the cluster segment that is every
//! node's default route, with a leg into the external namespace. Pod egress that steering does not
//! bring to the gateway leaves through it and still reaches the external hosts, so a test sees
//! the escape (replies come back through the gateway: the external namespace routes there).

use std::net::IpAddr;

use super::ip_batch::Batch;
use super::{default_route_leg, fabric, neigh};
use crate::addressing::{
    format_mac, EXTERNAL_ROUTER_END, EXT_ROUTER_IFACE, MAC_EXT_RT, MAC_RT_CLUSTER, MAC_RT_EXTERNAL,
    ROUTER_CLUSTER_END, ROUTER_CLUSTER_IFACE, ROUTER_EXTERNAL_END, ROUTER_EXTERNAL_IFACE,
};
use crate::topology::Topology;

/// Both legs' veths: the cluster leg's peer is the fabric's router port, the external leg's
/// peer is [`EXT_ROUTER_IFACE`] in the external namespace.
pub(super) fn links(topo: &Topology, netns: &str, fabric_netns: &str) -> Batch {
    let lines = vec![
        format!(
            "link add {ROUTER_CLUSTER_IFACE} address {} type veth peer name {} netns {fabric_netns}",
            format_mac(&MAC_RT_CLUSTER),
            fabric::RT_PORT
        ),
        format!(
            "link add {ROUTER_EXTERNAL_IFACE} address {} type veth peer name {EXT_ROUTER_IFACE} address {} netns {}",
            format_mac(&MAC_RT_EXTERNAL),
            format_mac(&MAC_EXT_RT),
            topo.ext_netns
        ),
    ];
    Batch::new(netns, "create router links", lines)
}

/// Addresses, a default route into the external namespace, static neighbours for every node,
/// and each pod address via its node.
pub(super) fn configure(topo: &Topology, netns: &str) -> Batch {
    let (cl, ex) = (ROUTER_CLUSTER_IFACE, ROUTER_EXTERNAL_IFACE);
    let own = &ROUTER_CLUSTER_END;
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("link set {cl} up"),
        format!("link set {ex} up"),
        format!("addr add {}/{} dev {cl}", own.v4, own.prefix_v4),
        format!("addr add {}/64 dev {cl} nodad", own.v6),
    ];
    lines.extend(default_route_leg(
        ex,
        &ROUTER_EXTERNAL_END,
        &EXTERNAL_ROUTER_END,
    ));
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
    Batch::new(netns, "configure router", lines)
}
