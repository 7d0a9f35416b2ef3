//! The external tier: one namespace holding every external address the probes name, behind the
//! gateway's external leg (and, with a router, the router's, which it only receives from). With a
//! standby gateway both gateways' external legs are ports of a bridge ([`EXT_BRIDGE`]) holding
//! the addresses, so an egress IP answered by either gateway is reached on the same segment.

use std::net::IpAddr;

use super::ip_batch::Batch;
use super::{default_route_leg, neigh};
use crate::addressing::{
    EXTERNAL_END, EXTERNAL_ROUTER_END, EXT_BRIDGE, EXT_ROUTER_IFACE, GATEWAY_EXTERNAL_END,
    ROUTER_EXTERNAL_END,
};
use crate::topology::Topology;

/// The transit addresses, a default route to the gateway (replies to pods always go back
/// through it), every external address as a host address of the one interface, and each egress
/// IP on-link towards the gateway with no static neighbour: the gateway must answer ARP/ND.
pub(super) fn configure(topo: &Topology) -> Batch {
    let mut lines = vec!["link set lo up".to_string()];
    lines.extend(
        topo.gateways()
            .map(|gw| format!("link set {} up", gw.external_peer())),
    );
    let dev = topo.external_device();
    if topo.standby.is_some() {
        lines.push(format!("link set {dev} up"));
    }
    lines.extend(default_route_leg(dev, &EXTERNAL_END, &GATEWAY_EXTERNAL_END));
    for gw in topo.standby.iter() {
        let end = gw.external_end();
        lines.push(neigh(&end.v4, &end.mac, dev));
        lines.push(neigh(&end.v6, &end.mac, dev));
    }
    if topo.router_netns.is_some() {
        let (own, rt, dev) = (&EXTERNAL_ROUTER_END, &ROUTER_EXTERNAL_END, EXT_ROUTER_IFACE);
        lines.extend([
            format!("link set {dev} up"),
            format!("addr add {}/{} dev {dev}", own.v4, own.prefix_v4),
            format!("addr add {}/64 dev {dev} nodad", own.v6),
            neigh(&rt.v4, &rt.mac, dev),
            neigh(&rt.v6, &rt.mac, dev),
        ]);
    }
    for ip in &topo.egress_ips {
        lines.push(match ip {
            IpAddr::V4(a) => format!("route add {a}/32 dev {dev} scope link"),
            IpAddr::V6(a) => format!("route add {a}/128 dev {dev}"),
        });
    }
    for ip in &topo.externals {
        lines.push(match ip {
            IpAddr::V4(a) => format!("addr add {a}/32 dev {dev}"),
            IpAddr::V6(a) => format!("addr add {a}/128 dev {dev} nodad"),
        });
    }
    Batch::new(&topo.ext_netns, "configure external hosts", lines)
}

/// With a standby gateway: the bridge, its ports (both gateways' peers, still down) enslaved.
pub(super) fn bridge(topo: &Topology) -> Batch {
    let mut lines = vec![format!("link add {EXT_BRIDGE} type bridge")];
    lines.extend(
        topo.gateways()
            .map(|gw| format!("link set {} master {EXT_BRIDGE}", gw.external_peer())),
    );
    Batch::new(&topo.ext_netns, "create external bridge", lines)
}
