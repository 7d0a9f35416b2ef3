//! The namespaces of the SNAT traffic tests, wired as a cluster edge (testkit's `EdgeNs`, or
//! `EdgePairNs` for two gateways): the pod behind a gateway's cluster leg `gc`, an external
//! server on its external leg `ge`'s segment, and the egress addresses in that segment on no
//! interface, so the external side reaches them only through the program's ARP and neighbour
//! answers.

use std::net::IpAddr;

use portcullis_gateway::{ForwardMode, Gateway, GatewayOptions, SnatConfig};
use portcullis_policy::compile::GatewayTables;
use portcullis_testkit::*;

pub const POD4: &str = "10.96.0.1";
pub const POD6: &str = "fd00:96::1";
pub const SERVER4: &str = "192.0.2.50";
pub const SERVER6: &str = "2001:db8:96::50";
pub const EGRESS4: &str = "192.0.2.100";
pub const EGRESS6: &str = "2001:db8:96::100";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A gateway's own addresses: on its cluster leg (the pods' next hop) and its external leg.
pub struct GatewayAddrs {
    pub cluster4: &'static str,
    pub cluster6: &'static str,
    pub external4: &'static str,
    pub external6: &'static str,
}

/// The gateway of the single-gateway tests, and the first of a pair.
pub const GATEWAY: GatewayAddrs = GatewayAddrs {
    cluster4: "10.96.0.254",
    cluster6: "fd00:96::254",
    external4: "192.0.2.1",
    external6: "2001:db8:96::1",
};

/// The pod on `p0`, its default routes through `via`. It checksums in software, as the lab's
/// hosts do (`lab/src/wire/offload.rs`): a locally sent packet's checksum is only completed by
/// the device, and the program can only update a complete one.
pub fn setup_pod(pod: &NetNs, via: &GatewayAddrs) {
    pod.run(|| {
        sh(&format!(
            "ip addr add {POD4}/24 dev p0 && ip -6 addr add {POD6}/64 dev p0 nodad && \
             ip link set p0 up && ip route add default via {} && \
             ip -6 route add default via {} && ethtool -K p0 tx off >/dev/null",
            via.cluster4, via.cluster6
        ))
    });
}

/// The external server's addresses on `x0` (software checksums, as the pod).
pub fn setup_external(ext: &NetNs) {
    ext.run(|| {
        sh(&format!(
            "ip addr add {SERVER4}/24 dev x0 && ip -6 addr add {SERVER6}/64 dev x0 nodad && \
             ip link set x0 up && ethtool -K x0 tx off >/dev/null"
        ))
    });
}

/// The gateway's legs `gc` and `ge` with `addrs`, forwarding on, reverse-path filtering off (a
/// translated packet enters the cluster leg with the egress address as its source).
pub fn setup_gateway(gw: &NetNs, addrs: &GatewayAddrs) {
    gw.run(|| {
        sh(&format!(
            "ip addr add {}/24 dev gc && ip -6 addr add {}/64 dev gc nodad && \
             ip addr add {}/24 dev ge && ip -6 addr add {}/64 dev ge nodad && \
             ip link set gc up && ip link set ge up && \
             sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
                 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.gc.rp_filter=0",
            addrs.cluster4, addrs.cluster6, addrs.external4, addrs.external6
        ))
    });
}

/// The gateway on `gc` / `ge` of `gw`, with `tables` applied (no SNAT configuration yet).
pub fn load(gw: &NetNs, forward: ForwardMode, tables: &GatewayTables) -> Gateway {
    gw.run(|| {
        let mut g = Gateway::load(GatewayOptions {
            cluster_iface: "gc".into(),
            external_iface: "ge".into(),
            forward,
            ..Default::default()
        })
        .expect("load");
        g.apply(tables).expect("apply");
        g
    })
}

/// The pod leaves with the egress addresses to everywhere; the gateway answers for them.
pub fn snat_config() -> SnatConfig {
    SnatConfig {
        classes: vec![(ip(POD4), 7), (ip(POD6), 7)],
        entries: vec![
            (7, "0.0.0.0/0".parse().unwrap(), Some(ip(EGRESS4))),
            (7, "::/0".parse().unwrap(), Some(ip(EGRESS6))),
        ],
        egress_ips: vec![ip(EGRESS4), ip(EGRESS6)],
        ..Default::default()
    }
}
