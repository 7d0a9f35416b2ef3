//! The router tier (with `steer_via_router`): a plain router on the cluster segment that is every
//! node's default route, with a leg into the external namespace. Pod egress that steering does not
//! bring to the gateway leaves through it and still reaches the external hosts, so a test sees
//! the escape (replies come back through the gateway: the external namespace routes there).

use super::ip_batch::Batch;
use super::{edge_tier, fabric};
use crate::addressing::{
    format_mac, EXTERNAL_ROUTER_END, EXT_ROUTER_IFACE, ROUTER_CLUSTER_END, ROUTER_CLUSTER_IFACE,
    ROUTER_EXTERNAL_END, ROUTER_EXTERNAL_IFACE,
};
use crate::topology::Topology;

/// Both legs' veths: the cluster leg's peer is the fabric's router port, the external leg's
/// peer is [`EXT_ROUTER_IFACE`] in the external namespace.
pub(super) fn links(topo: &Topology, netns: &str, fabric_netns: &str) -> Batch {
    let lines = vec![
        format!(
            "link add {ROUTER_CLUSTER_IFACE} address {} type veth peer name {} netns {fabric_netns}",
            format_mac(&ROUTER_CLUSTER_END.mac),
            fabric::RT_PORT
        ),
        format!(
            "link add {ROUTER_EXTERNAL_IFACE} address {} type veth peer name {EXT_ROUTER_IFACE} address {} netns {}",
            format_mac(&ROUTER_EXTERNAL_END.mac),
            format_mac(&EXTERNAL_ROUTER_END.mac),
            topo.ext_netns
        ),
    ];
    Batch::new(netns, "create router links", lines)
}

/// Addresses, a default route into the external namespace, static neighbours for every node,
/// and each pod address via its node.
pub(super) fn configure(topo: &Topology, netns: &str) -> Batch {
    let lines = edge_tier(
        topo,
        ROUTER_CLUSTER_IFACE,
        &ROUTER_CLUSTER_END,
        ROUTER_EXTERNAL_IFACE,
        &ROUTER_EXTERNAL_END,
        &EXTERNAL_ROUTER_END,
    );
    Batch::new(netns, "configure router", lines)
}
