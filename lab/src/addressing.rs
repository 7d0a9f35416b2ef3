//! The lab's fixed address plan: interface names, transit addresses and MACs. Transit links are
//! link-local, so they never collide with a pod or external address; every MAC is locally
//! administered and unicast, so static neighbour entries can name them before any link exists.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Name of the pod-side interface in every pod namespace.
pub const POD_IFACE: &str = "eth0";
/// The gateway's leg towards the node(s).
pub const GATEWAY_CLUSTER_IFACE: &str = "cluster";
/// The gateway's leg towards the external hosts.
pub const GATEWAY_EXTERNAL_IFACE: &str = "external";
/// The node's interface towards the gateway.
pub const NODE_UPLINK_IFACE: &str = "gw0";
/// The external namespace's interface towards the gateway.
pub const EXT_IFACE: &str = "eth0";
/// Name of the bridge in the fabric namespace (with more than one node, or a router).
pub const FABRIC_BRIDGE: &str = "br0";
/// The router's leg on the cluster segment (with `steer_via_router`).
pub const ROUTER_CLUSTER_IFACE: &str = "cluster";
/// The router's leg towards the external namespace.
pub const ROUTER_EXTERNAL_IFACE: &str = "external";
/// The external namespace's interface towards the router.
pub const EXT_ROUTER_IFACE: &str = "rt0";
/// The node name of the gateway in [`Lab::node_manifest`](crate::Lab::node_manifest).
pub const GATEWAY_NODE: &str = "gateway";
/// The node name of the standby gateway ([`LabOptions::standby_gateway`](crate::LabOptions)).
pub const STANDBY_GATEWAY_NODE: &str = "gateway-b";
/// With a standby gateway: the external namespace's bridge joining both gateways' external legs
/// (its ports are [`EXT_IFACE`] and [`EXT_STANDBY_IFACE`]); it holds the external addresses.
pub const EXT_BRIDGE: &str = "brx";
/// The external namespace's interface towards the standby gateway.
pub const EXT_STANDBY_IFACE: &str = "eth1";
/// The label that makes the gateway's Node an egress gateway.
pub const EGRESS_GATEWAY_LABEL: &str = "portcullis.io/egress-gateway";

/// The next hop pods use (on-link, answered by a static neighbour entry for the node's MAC).
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// One end of a transit link: its addresses (IPv6 in a /64) and MAC.
pub(crate) struct TransitEnd {
    pub v4: Ipv4Addr,
    pub prefix_v4: u8,
    pub v6: Ipv6Addr,
    pub mac: [u8; 6],
}

// Cluster segment (gateway's cluster leg and every node's uplink): 169.254.16.0/20, fe80::/64.
pub(crate) const CLUSTER_PREFIX_V4: u8 = 20;
pub(crate) const GATEWAY_CLUSTER_END: TransitEnd = TransitEnd {
    v4: Ipv4Addr::new(169, 254, 16, 1),
    prefix_v4: CLUSTER_PREFIX_V4,
    v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa, 1),
    mac: [0x02, 0x70, 0x63, 0x03, 0x00, 0x00],
};
// The standby gateway: the address below the router's.
pub(crate) const STANDBY_CLUSTER_END: TransitEnd = TransitEnd {
    v4: Ipv4Addr::new(169, 254, 31, 253),
    prefix_v4: CLUSTER_PREFIX_V4,
    v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa, 0xfffd),
    mac: [0x02, 0x70, 0x63, 0x03, 0xff, 0xfd],
};
// The router: the last address of the cluster segment (nodes count up from its first).
pub(crate) const ROUTER_CLUSTER_END: TransitEnd = TransitEnd {
    v4: Ipv4Addr::new(169, 254, 31, 254),
    prefix_v4: CLUSTER_PREFIX_V4,
    v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa, 0xfffe),
    mac: [0x02, 0x70, 0x63, 0x05, 0x00, 0x01],
};

// External segment: the gateways' external legs and the external namespace, a /29 and fe80::/64.
pub(crate) const GATEWAY_EXTERNAL_PREFIX_V4: u8 = 29;
pub(crate) const GATEWAY_EXTERNAL_END: TransitEnd = TransitEnd {
    v4: Ipv4Addr::new(169, 254, 0, 5),
    prefix_v4: GATEWAY_EXTERNAL_PREFIX_V4,
    v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xb, 1),
    mac: [0x02, 0x70, 0x63, 0x04, 0x00, 0x01],
};
pub(crate) const EXTERNAL_END: TransitEnd = TransitEnd {
    v4: Ipv4Addr::new(169, 254, 0, 6),
    prefix_v4: GATEWAY_EXTERNAL_PREFIX_V4,
    v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xb, 2),
    mac: [0x02, 0x70, 0x63, 0x04, 0x00, 0x02],
};
pub(crate) const STANDBY_EXTERNAL_END: TransitEnd = TransitEnd {
    v4: Ipv4Addr::new(169, 254, 0, 2),
    prefix_v4: GATEWAY_EXTERNAL_PREFIX_V4,
    v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xb, 3),
    mac: [0x02, 0x70, 0x63, 0x04, 0x00, 0x03],
};

// Router to external namespace: a /30 beside the gateways' /29 and fe80::c:/64 addresses.
pub(crate) const EXTERNAL_PREFIX_V4: u8 = 30;
pub(crate) const ROUTER_EXTERNAL_END: TransitEnd = TransitEnd {
    v4: Ipv4Addr::new(169, 254, 0, 9),
    prefix_v4: EXTERNAL_PREFIX_V4,
    v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xc, 1),
    mac: [0x02, 0x70, 0x63, 0x06, 0x00, 0x01],
};
pub(crate) const EXTERNAL_ROUTER_END: TransitEnd = TransitEnd {
    v4: Ipv4Addr::new(169, 254, 0, 10),
    prefix_v4: EXTERNAL_PREFIX_V4,
    v6: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xc, 2),
    mac: [0x02, 0x70, 0x63, 0x06, 0x00, 0x02],
};

/// Node `i`'s uplink address (the gateway's cluster leg is the first of the segment).
pub(crate) fn node_uplink_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(GATEWAY_CLUSTER_END.v4) + 1 + i as u32)
}

pub(crate) fn node_uplink_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(GATEWAY_CLUSTER_END.v6) + 1 + i as u128)
}

pub(crate) fn node_uplink_mac(i: usize) -> [u8; 6] {
    let n = i + 1;
    [0x02, 0x70, 0x63, 0x03, (n >> 8) as u8, n as u8]
}

/// The node-side end of pod `i`'s veth.
pub(crate) fn host_mac(i: usize) -> [u8; 6] {
    let [a, b, c] = [(i >> 16) as u8, (i >> 8) as u8, i as u8];
    [0x02, 0x70, 0x63, 0x01 | (a << 4), b, c]
}

/// The pod-side end of pod `i`'s veth.
pub(crate) fn pod_mac(i: usize) -> [u8; 6] {
    let [a, b, c] = [(i >> 16) as u8, (i >> 8) as u8, i as u8];
    [0x02, 0x70, 0x63, 0x02 | (a << 4), b, c]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Link-local addresses: the lab's transit links use them, so no pod or external host may.
pub(crate) fn is_lab_reserved(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Addresses no interface can hold as a host address.
pub(crate) fn cannot_host(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip == Ipv4Addr::BROADCAST
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn macs_are_distinct_and_local() {
        let all: HashSet<[u8; 6]> = (0..300).flat_map(|i| [host_mac(i), pod_mac(i)]).collect();
        assert_eq!(all.len(), 600);
        assert!(all.iter().all(|m| m[0] & 0x02 != 0 && m[0] & 0x01 == 0));
    }

    #[test]
    fn reserved_addresses() {
        assert!(is_lab_reserved("169.254.1.1".parse().unwrap()));
        assert!(is_lab_reserved("fe80::1".parse().unwrap()));
        assert!(!is_lab_reserved("10.244.1.10".parse().unwrap()));
        assert!(!is_lab_reserved("2001:db8::1".parse().unwrap()));
    }
}
