//! The external tier: one namespace holding every external address the probes name, behind the
//! gateway's external leg.

use std::net::IpAddr;

use super::ip_batch::Batch;
use super::neigh;
use crate::addressing::{
    EXT_IFACE, EXT_V4, EXT_V6, GW_EXTERNAL_V4, GW_EXTERNAL_V6, MAC_GW_EXTERNAL,
};
use crate::topology::Topology;

/// The transit addresses, a default route to the gateway, and every external address as a host
/// address of the one interface.
pub(super) fn configure(topo: &Topology) -> Batch {
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("link set {EXT_IFACE} up"),
        format!("addr add {EXT_V4}/30 dev {EXT_IFACE}"),
        format!("addr add {EXT_V6}/64 dev {EXT_IFACE} nodad"),
        neigh(&GW_EXTERNAL_V4, &MAC_GW_EXTERNAL, EXT_IFACE),
        neigh(&GW_EXTERNAL_V6, &MAC_GW_EXTERNAL, EXT_IFACE),
        format!("route add 0.0.0.0/0 via {GW_EXTERNAL_V4} dev {EXT_IFACE}"),
        format!("route add ::/0 via {GW_EXTERNAL_V6} dev {EXT_IFACE}"),
    ];
    for ip in &topo.externals {
        lines.push(match ip {
            IpAddr::V4(a) => format!("addr add {a}/32 dev {EXT_IFACE}"),
            IpAddr::V6(a) => format!("addr add {a}/128 dev {EXT_IFACE} nodad"),
        });
    }
    Batch::new(&topo.ext_netns, "configure external hosts", lines)
}
