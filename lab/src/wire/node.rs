//! The node tier: one namespace per node, routing between its pods (a veth each, host side
//! `podN`) and its uplink on the cluster segment, whose default route is the gateway (or the
//! router, with `steer_via_router`). Pods on other nodes are reached straight across the fabric,
//! never through the gateway, as in a real cluster.

use super::ip_batch::Batch;
use super::{default_route_leg, fabric, first_v4, first_v6, neigh};
use crate::addressing::{
    format_mac, GATEWAY_CLUSTER_END, GATEWAY_CLUSTER_IFACE, NODE_UPLINK_IFACE, POD_IFACE,
    ROUTER_CLUSTER_END,
};
use crate::topology::{NodeInfo, PodAttachment, Topology};

/// Creates node `i`'s uplink veth (its peer is the gateway's cluster leg with one node, a fabric
/// port with more) and one veth per pod on it.
pub(super) fn links(topo: &Topology, i: usize, node: &NodeInfo) -> Batch {
    let up = NODE_UPLINK_IFACE;
    let mac = format_mac(&node.uplink_mac);
    let mut lines = vec![match &topo.fabric_netns {
        None => format!(
            "link add {up} address {mac} type veth peer name {GATEWAY_CLUSTER_IFACE} address {} netns {}",
            format_mac(&GATEWAY_CLUSTER_END.mac),
            topo.gateway.netns
        ),
        Some(f) => format!(
            "link add {up} address {mac} type veth peer name {} netns {f}",
            fabric::node_port(i)
        ),
    }];
    for p in topo.pods_on(node) {
        lines.push(format!(
            "link add {} address {} type veth peer name {POD_IFACE} address {} netns {}",
            p.host_iface,
            format_mac(&p.host_mac),
            format_mac(&p.mac),
            p.netns
        ));
    }
    Batch::new(&node.netns, "create node links", lines)
}

/// The uplink with a default route to the gateway (or the router), static neighbours for the
/// gateway, the router and the other nodes, and a route to every pod: its own pods on their
/// veths, the others via their node.
pub(super) fn configure(topo: &Topology, node: &NodeInfo) -> Batch {
    let up = NODE_UPLINK_IFACE;
    let mut lines = vec!["link set lo up".to_string(), format!("link set {up} up")];
    let default_hop = match topo.router_netns {
        Some(_) => &ROUTER_CLUSTER_END,
        None => &GATEWAY_CLUSTER_END,
    };
    lines.extend(default_route_leg(up, &node.uplink_end(), default_hop));
    if topo.router_netns.is_some() {
        // Steering's next hops.
        for gw in topo.gateways() {
            let end = gw.cluster_end();
            lines.push(neigh(&end.v4, &end.mac, up));
            lines.push(neigh(&end.v6, &end.mac, up));
        }
    }
    for other in topo.nodes.iter().filter(|o| o.netns != node.netns) {
        lines.push(neigh(&other.uplink_ipv4, &other.uplink_mac, up));
        lines.push(neigh(&other.uplink_ipv6, &other.uplink_mac, up));
    }
    for p in topo.pods.values() {
        if p.node_netns == node.netns {
            lines.extend(local_pod(p));
        } else {
            lines.extend(remote_pod(topo.node_of(p), p));
        }
    }
    Batch::new(&node.netns, "configure node", lines)
}

/// A pod on this node: on-link through its veth, with a static neighbour entry.
fn local_pod(p: &PodAttachment) -> Vec<String> {
    let h = &p.host_iface;
    let mut lines = vec![format!("link set {h} up")];
    if let Some(a) = first_v4(&p.ips) {
        lines.push(format!("route add {a}/32 dev {h} scope link"));
        lines.push(neigh(&a, &p.mac, h));
    }
    if let Some(a) = first_v6(&p.ips) {
        lines.push(format!("route add {a}/128 dev {h}"));
        lines.push(neigh(&a, &p.mac, h));
    }
    lines
}

/// A pod on another node: straight across the fabric to that node.
fn remote_pod(other: &NodeInfo, p: &PodAttachment) -> Vec<String> {
    let up = NODE_UPLINK_IFACE;
    let mut lines = Vec::new();
    if let Some(a) = first_v4(&p.ips) {
        lines.push(format!(
            "route add {a}/32 via {} dev {up}",
            other.uplink_ipv4
        ));
    }
    if let Some(a) = first_v6(&p.ips) {
        lines.push(format!(
            "route add {a}/128 via {} dev {up}",
            other.uplink_ipv6
        ));
    }
    lines
}
