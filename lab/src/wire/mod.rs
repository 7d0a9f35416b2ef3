//! Creating and wiring the namespaces of a planned [`Topology`], one step per tier: nodes (with
//! their pods' veths), the gateway, the router, the external hosts, the pods, and the fabric
//! bridge. Every neighbour entry is static, so no ARP/ND has to happen before the first packet
//! (except the egress IPs', which the gateway must answer).

mod carrier;
mod external;
mod fabric;
mod gateway;
mod ip_batch;
mod node;
mod offload;
mod pod;
mod router;
mod sysctl;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::addressing::{format_mac, TransitEnd};
use crate::netns::{self, Netns};
use crate::topology::Topology;
use crate::LabError;
use ip_batch::Batch;

/// Creates every namespace of `topo` (each pushed to `namespaces` at once, so whoever owns them
/// deletes them even when a later step fails) and wires them.
pub(crate) fn wire(topo: &Topology, namespaces: &mut Vec<Netns>) -> Result<(), LabError> {
    for name in topo.namespaces() {
        let file = netns::create(name)?;
        namespaces.push(Netns {
            name: name.to_string(),
            file,
        });
    }
    sysctl::apply(topo, namespaces)?;
    create_links(topo)?;
    configure(topo)?;
    offload::set(topo)?;
    carrier::wait_running(topo, namespaces)
}

/// Phase 1: the veth pairs, each end created straight in its namespace. One node and no router:
/// its uplink is the peer of the gateway's cluster leg. Else every cluster-segment leg is the
/// peer of a port of the fabric bridge.
fn create_links(topo: &Topology) -> Result<(), LabError> {
    for (i, node) in topo.nodes.iter().enumerate() {
        ip_batch::run(&node::links(topo, i, node))?;
    }
    for gw in topo.gateways() {
        ip_batch::run(&gateway::links(topo, gw))?;
    }
    if topo.standby.is_some() {
        ip_batch::run(&external::bridge(topo))?;
    }
    if let (Some(rt), Some(fab)) = (&topo.router_netns, &topo.fabric_netns) {
        ip_batch::run(&router::links(topo, rt, fab))?;
    }
    Ok(())
}

/// Phase 2: addresses, routes and static neighbours, every namespace at once.
fn configure(topo: &Topology) -> Result<(), LabError> {
    let mut batches: Vec<Batch> = topo
        .nodes
        .iter()
        .map(|node| node::configure(topo, node))
        .collect();
    batches.extend(topo.gateways().map(|gw| gateway::configure(topo, gw)));
    batches.push(external::configure(topo));
    batches.extend(
        topo.router_netns
            .as_deref()
            .map(|rt| router::configure(topo, rt)),
    );
    batches.extend(topo.pods.values().map(pod::configure));
    ip_batch::run_all(&batches)?;
    // The bridge last, once every node uplink and the cluster leg are up: a port whose peer came
    // up while the port was being enslaved was seen to stay without carrier.
    if let Some(f) = &topo.fabric_netns {
        let ports = fabric::ports(topo);
        ip_batch::run(&fabric::configure(f, &ports))?;
        fabric::wait_forwarding(f, ports.len())?;
    }
    if topo.standby.is_some() {
        fabric::wait_forwarding(&topo.ext_netns, 2)?;
    }
    Ok(())
}

/// `ip` line: a permanent neighbour entry.
fn neigh(ip: &dyn fmt::Display, mac: &[u8; 6], dev: &str) -> String {
    format!(
        "neigh replace {ip} lladdr {} dev {dev} nud permanent",
        format_mac(mac)
    )
}

/// `ip` lines for interface `dev`, end `own` of a transit link whose other end `hop` is the
/// default next hop: the addresses, a static neighbour entry for `hop`, default routes via it.
fn default_route_leg(dev: &str, own: &TransitEnd, hop: &TransitEnd) -> Vec<String> {
    vec![
        format!("addr add {}/{} dev {dev}", own.v4, own.prefix_v4),
        format!("addr add {}/64 dev {dev} nodad", own.v6),
        neigh(&hop.v4, &hop.mac, dev),
        neigh(&hop.v6, &hop.mac, dev),
        format!("route add 0.0.0.0/0 via {} dev {dev}", hop.v4),
        format!("route add ::/0 via {} dev {dev}", hop.v6),
    ]
}

/// `ip` lines of a tier between the cluster segment and the external namespace (the gateway, the
/// router): both legs up, cluster leg `cl` addressed as `own`, external leg `ex` addressed as
/// `ex_own` with its default route via `hop`, static neighbours for every node on the cluster
/// leg, and each pod address via its node.
fn edge_tier(
    topo: &Topology,
    cl: &str,
    own: &TransitEnd,
    ex: &str,
    ex_own: &TransitEnd,
    hop: &TransitEnd,
) -> Vec<String> {
    let mut lines = vec![
        "link set lo up".to_string(),
        format!("link set {cl} up"),
        format!("link set {ex} up"),
        format!("addr add {}/{} dev {cl}", own.v4, own.prefix_v4),
        format!("addr add {}/64 dev {cl} nodad", own.v6),
    ];
    lines.extend(default_route_leg(ex, ex_own, hop));
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
    lines
}

fn first_v4(ips: &[IpAddr]) -> Option<Ipv4Addr> {
    ips.iter().find_map(|a| match a {
        IpAddr::V4(a) => Some(*a),
        _ => None,
    })
}

fn first_v6(ips: &[IpAddr]) -> Option<Ipv6Addr> {
    ips.iter().find_map(|a| match a {
        IpAddr::V6(a) => Some(*a),
        _ => None,
    })
}
