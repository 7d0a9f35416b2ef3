//! The pod tier: one namespace per pod, its addresses as /32 and /128 on `eth0` and a default
//! route through an on-link next hop answered by a static entry for the node side's MAC (the
//! veth itself is created from the node, see `node::links`).

use super::ip_batch::Batch;
use super::{first_v4, first_v6, neigh};
use crate::addressing::{POD_GATEWAY_V4, POD_GATEWAY_V6, POD_IFACE};
use crate::topology::PodAttachment;

pub(super) fn configure(p: &PodAttachment) -> Batch {
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("link set {POD_IFACE} up"),
    ];
    if let Some(a) = first_v4(&p.ips) {
        lines.push(format!("addr add {a}/32 dev {POD_IFACE}"));
        lines.push(format!(
            "route add {POD_GATEWAY_V4}/32 dev {POD_IFACE} scope link"
        ));
        lines.push(neigh(&POD_GATEWAY_V4, &p.host_mac, POD_IFACE));
        lines.push(format!(
            "route add 0.0.0.0/0 via {POD_GATEWAY_V4} dev {POD_IFACE} src {a}"
        ));
    }
    if let Some(a) = first_v6(&p.ips) {
        lines.push(format!("addr add {a}/128 dev {POD_IFACE} nodad"));
        lines.push(neigh(&POD_GATEWAY_V6, &p.host_mac, POD_IFACE));
        lines.push(format!(
            "route add ::/0 via {POD_GATEWAY_V6} dev {POD_IFACE}"
        ));
    }
    Batch::new(&p.netns, "configure pod", lines)
}
