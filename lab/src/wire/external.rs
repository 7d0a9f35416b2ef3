//! The external tier: one namespace holding every external address the probes name, behind the
//! gateway's external leg.

use std::net::IpAddr;

use super::default_route_leg;
use super::ip_batch::Batch;
use crate::addressing::{EXTERNAL_END, EXT_IFACE, GATEWAY_EXTERNAL_END};
use crate::topology::Topology;

/// The transit addresses, a default route to the gateway, and every external address as a host
/// address of the one interface.
pub(super) fn configure(topo: &Topology) -> Batch {
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("link set {EXT_IFACE} up"),
    ];
    lines.extend(default_route_leg(
        EXT_IFACE,
        &EXTERNAL_END,
        &GATEWAY_EXTERNAL_END,
    ));
    for ip in &topo.externals {
        lines.push(match ip {
            IpAddr::V4(a) => format!("addr add {a}/32 dev {EXT_IFACE}"),
            IpAddr::V6(a) => format!("addr add {a}/128 dev {EXT_IFACE} nodad"),
        });
    }
    Batch::new(&topo.ext_netns, "configure external hosts", lines)
}
