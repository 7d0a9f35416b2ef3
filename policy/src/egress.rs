//! Egress gateway semantics: which EgressGateway decides for a pod's packet, the egress IP it
//! leaves with, and the tables the datapaths need (the gateway's SNAT plan, the nodes' steering
//! routes). Pure: no I/O; [`egress_for`] is the reference the tables are tested against.
//!
//! # Selection
//! An EgressGateway selects a pod (never a hostNetwork one) when any item of `spec.selectors`
//! matches it; inside one item both selectors must match, as in a NetworkPolicy peer. The object is
//! cluster-scoped, so an item without namespaceSelector matches pods of every namespace, and an
//! item without podSelector every pod of the namespaces it selects.
//!
//! # Conflicts: which EgressGateway decides
//! For a packet of a pod to `dst`, the candidates are the EgressGateways that select the pod,
//! have a destinationCIDR containing `dst` and no excludedCIDR containing `dst`. The candidate
//! whose containing destinationCIDR is the **longest** decides; on equal lengths the one with the
//! **smallest name**. The packet leaves with the decider's egress IP of `dst`'s family, or
//! untranslated when it has none. An exclusion only removes its own EgressGateway from the
//! candidates: another EgressGateway selecting the pod may still decide for that destination.
//! Without a candidate the packet leaves untranslated through a default gateway node (labelled
//! [`EGRESS_GATEWAY_LABEL`]`=true`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

pub(crate) mod audit;
#[cfg(test)]
mod tests;

use crate::model::{EgressGateway, Node, Pod, Snapshot, EGRESS_GATEWAY_LABEL};

/// Which EgressGateway decides for a packet of `pod` (address `src`) to `dst`, and the egress IP
/// it leaves with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressChoice {
    pub gateway: String,
    /// `None`: the EgressGateway has no egress IP of dst's family: the packet leaves untranslated.
    pub egress_ip: Option<IpAddr>,
    /// The deciding destination CIDR.
    pub destination: IpNet,
}

/// One SNAT table entry of the gateway: the packets of pods of `class` whose destination's
/// longest match among the class's entries is `destination`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatEntry {
    pub class: u32,
    pub destination: IpNet,
    /// `None` = exempt: leaves untranslated.
    pub egress_ip: Option<IpAddr>,
}

/// The SNAT tables of one gateway node. For a packet from pod address A to D: take the entries
/// of class `classes[A]` whose destination contains D, the longest; `Some(ip)` translates to ip,
/// `None` or no entry leaves untranslated. Pods no counting EgressGateway selects have no class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnatPlan {
    /// Pod address → class (from 1); pods selected by the same counting EgressGateways share one.
    pub classes: BTreeMap<IpAddr, u32>,
    pub entries: Vec<SnatEntry>,
    /// This gateway's egress IPs (it answers ARP/ND for them): of the counting EgressGateways,
    /// those whose traffic of that family this node carries (see [`gateway_node_address`]), so
    /// that two nodes never answer for one address. With no node given, all of them.
    pub egress_ips: BTreeSet<IpAddr>,
}

/// The gateway node each EgressGateway's traffic goes to, by EgressGateway name (the failover
/// election's outcome, `portcullis-ha`). An EgressGateway missing here, or naming a node that is
/// not one of its members or has no address of the family, goes to its first member by name.
pub type Actives = BTreeMap<String, String>;

/// A policy route a node installs for a local pod: traffic from `source` to `destination` goes
/// to the gateway node at `via`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SteerRoute {
    pub source: IpAddr,
    pub destination: IpNet,
    pub via: IpAddr,
}

impl std::fmt::Display for SteerRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "from {} to {} via {}",
            self.source, self.destination, self.via
        )
    }
}

/// Whether `gateway` selects `pod` (see the module docs).
pub fn selects(snapshot: &Snapshot, gateway: &EgressGateway, pod: &Pod) -> bool {
    !pod.host_network
        && gateway.selectors.iter().any(|item| {
            item.namespace_selector.as_ref().is_none_or(|selector| {
                snapshot
                    .namespaces
                    .get(&pod.namespace)
                    .is_some_and(|ns| selector.matches(&ns.labels))
            }) && item
                .pod_selector
                .as_ref()
                .is_none_or(|selector| selector.matches(&pod.labels))
        })
}

/// The EgressGateways of the snapshot that select `pod`.
pub fn selecting<'a>(snapshot: &'a Snapshot, pod: &'a Pod) -> Vec<&'a EgressGateway> {
    (snapshot.egress_gateways.iter())
        .filter(|g| selects(snapshot, g, pod))
        .collect()
}

/// THE reference semantics: which EgressGateway decides for a packet of `pod` to `dst`.
pub fn egress_for(snapshot: &Snapshot, pod: &Pod, dst: IpAddr) -> Option<EgressChoice> {
    let (gateway, destination) = decide(&selecting(snapshot, pod), IpNet::from(dst))?;
    Some(EgressChoice {
        gateway: gateway.name.clone(),
        egress_ip: egress_ip_like(gateway, dst),
        destination,
    })
}

/// The decider among `gateways` (all selecting the pod) for every address of `target`, with its
/// deciding CIDR. A host prefix gives the decision for that address; a wider prefix gives the
/// decision for its addresses that no more specific CIDR of these gateways contains, because
/// those are exactly the addresses that the same CIDRs contain.
fn decide<'a>(gateways: &[&'a EgressGateway], target: IpNet) -> Option<(&'a EgressGateway, IpNet)> {
    gateways
        .iter()
        .filter(|g| !g.excluded_cidrs.iter().any(|e| e.contains(&target)))
        .filter_map(|g| {
            let cidr = (g.destination_cidrs.iter())
                .filter(|d| d.contains(&target))
                .max_by_key(|d| d.prefix_len())?;
            Some((*g, *cidr))
        })
        // Longest CIDR first, then the smallest name.
        .min_by(|(a, a_cidr), (b, b_cidr)| {
            (b_cidr.prefix_len().cmp(&a_cidr.prefix_len())).then_with(|| a.name.cmp(&b.name))
        })
}

fn egress_ip_like(gateway: &EgressGateway, like: IpAddr) -> Option<IpAddr> {
    (gateway.egress_ips.iter().copied()).find(|ip| ip.is_ipv4() == like.is_ipv4())
}

/// Every destination and excluded CIDR of `gateways`: the prefixes where a decision can change.
fn boundaries(gateways: &[&EgressGateway]) -> BTreeSet<IpNet> {
    (gateways.iter())
        .flat_map(|g| g.destination_cidrs.iter().chain(&g.excluded_cidrs))
        .copied()
        .collect()
}

/// `(prefix, value)` pairs in longest-prefix-match order (longest first), without the prefixes
/// whose value equals that of the next less specific one (or of `outside`, the value where no
/// prefix matches): a longest-prefix match over the result gives the same value for every address.
fn minimal<V: PartialEq + Copy>(values: BTreeMap<IpNet, V>, outside: V) -> Vec<(IpNet, V)> {
    let parent_value = |net: &IpNet| {
        (values.iter())
            .filter(|(p, _)| p.prefix_len() < net.prefix_len() && p.contains(net))
            .max_by_key(|(p, _)| p.prefix_len())
            .map_or(outside, |(_, v)| *v)
    };
    let mut kept: Vec<(IpNet, V)> = (values.iter())
        .filter(|(net, value)| **value != parent_value(net))
        .map(|(net, value)| (*net, *value))
        .collect();
    kept.sort_by(|(a, _), (b, _)| (b.prefix_len().cmp(&a.prefix_len())).then(a.cmp(b)));
    kept
}

/// The SNAT plan of the gateway node `node`: only EgressGateways whose nodeSelector selects that
/// node count (`None`: all of them; a node not in the snapshot: none).
pub fn snat_plan(snapshot: &Snapshot, node: Option<&str>) -> SnatPlan {
    let counting = served_by(snapshot, node);
    // A node not in the snapshot serves nothing, so it answers for nothing either.
    let this = node.and_then(|name| snapshot.nodes.iter().find(|n| n.name == name));
    let carried_here = |g: &EgressGateway, ip: IpAddr| {
        this.is_none_or(|node| {
            gateway_node_address(snapshot, g, ip, &Actives::new())
                .is_some_and(|carrier| node.addresses.contains(&carrier))
        })
    };
    // Classes keyed by the names of their gateways, so that ids do not depend on pod order.
    let mut members: BTreeMap<Vec<&str>, Vec<IpAddr>> = BTreeMap::new();
    for pod in &snapshot.pods {
        let names: Vec<&str> = (counting.iter())
            .filter(|g| selects(snapshot, g, pod))
            .map(|g| g.name.as_str())
            .collect();
        if !names.is_empty() {
            members.entry(names).or_default().extend(&pod.ips);
        }
    }
    let mut plan = SnatPlan {
        egress_ips: (counting.iter())
            .flat_map(|g| g.egress_ips.iter().filter(|ip| carried_here(g, **ip)))
            .copied()
            .collect(),
        ..SnatPlan::default()
    };
    for (class, (names, addresses)) in (1u32..).zip(members) {
        let gateways: Vec<&EgressGateway> = (counting.iter().copied())
            .filter(|g| names.contains(&g.name.as_str()))
            .collect();
        let values = (boundaries(&gateways).into_iter())
            .map(|net| {
                let ip = decide(&gateways, net).and_then(|(g, _)| egress_ip_like(g, net.addr()));
                (net, ip)
            })
            .collect();
        for (destination, egress_ip) in minimal(values, None) {
            plan.entries.push(SnatEntry {
                class,
                destination,
                egress_ip,
            });
        }
        for address in addresses {
            plan.classes.insert(address, class);
        }
    }
    plan
}

/// The EgressGateways whose nodeSelector selects the Node named `node` (`None`: all of them; a
/// node not in the snapshot: none): those that node's gateway translates for.
pub fn served_by<'a>(snapshot: &'a Snapshot, node: Option<&str>) -> Vec<&'a EgressGateway> {
    match node {
        None => snapshot.egress_gateways.iter().collect(),
        Some(name) => match snapshot.nodes.iter().find(|n| n.name == name) {
            None => Vec::new(),
            Some(node) => (snapshot.egress_gateways.iter())
                .filter(|g| g.node_selector.matches(&node.labels))
                .collect(),
        },
    }
}

/// Nodes labelled [`EGRESS_GATEWAY_LABEL`]`=true`, by name.
pub fn default_gateways(snapshot: &Snapshot) -> Vec<&Node> {
    let mut nodes: Vec<&Node> = (snapshot.nodes.iter())
        .filter(|n| n.labels.get(EGRESS_GATEWAY_LABEL).map(String::as_str) == Some("true"))
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// The members of `gateway`'s group: the nodes its nodeSelector selects, by name.
pub fn members<'a>(snapshot: &'a Snapshot, gateway: &EgressGateway) -> Vec<&'a Node> {
    let mut nodes: Vec<&Node> = (snapshot.nodes.iter())
        .filter(|n| gateway.node_selector.matches(&n.labels))
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// The address of `like`'s family of the node that carries traffic `gateway` decides: its
/// active member in `actives` if that one has such an address, else the first member by name
/// that has one.
pub fn gateway_node_address(
    snapshot: &Snapshot,
    gateway: &EgressGateway,
    like: IpAddr,
    actives: &Actives,
) -> Option<IpAddr> {
    let nodes = members(snapshot, gateway);
    let active = actives.get(&gateway.name);
    (nodes.iter())
        .filter(|n| Some(&n.name) == active)
        .chain(&nodes)
        .find_map(|n| n.address_like(like))
}

/// The egress IPs the gateway node `node` answers for when it is active for the EgressGateways
/// named in `claims`: their egress IPs of the families the node has an address of.
pub fn owned_egress_ips(
    snapshot: &Snapshot,
    node: &str,
    claims: &BTreeSet<String>,
) -> BTreeSet<IpAddr> {
    let Some(this) = snapshot.nodes.iter().find(|n| n.name == node) else {
        return BTreeSet::new();
    };
    (served_by(snapshot, Some(node)).into_iter())
        .filter(|g| claims.contains(&g.name))
        .flat_map(|g| g.egress_ips.iter().copied())
        .filter(|ip| this.address_like(*ip).is_some())
        .collect()
}

fn default_gateway_address(snapshot: &Snapshot, like: IpAddr) -> Option<IpAddr> {
    (default_gateways(snapshot).iter()).find_map(|n| n.address_like(like))
}

/// The policy routes of `local_pods` (hostNetwork pods are node traffic and get none), in the
/// order a node installs them, first match wins: per pod address, more specific destinations
/// first, ending with the route of 0.0.0.0/0 or ::/0 (to the default gateway unless an
/// EgressGateway decides for all of it). Each destination's first matching route goes to the
/// node of its deciding EgressGateway (its active member in `actives`, see
/// [`gateway_node_address`]), or to the first default gateway node when none decides or none of
/// its nodes has an address of that family. A destination no node can take gets no route
/// and so falls to the next less specific one; that only happens when no default gateway node
/// has an address of its family.
pub fn steering_routes(
    snapshot: &Snapshot,
    local_pods: &[&Pod],
    actives: &Actives,
) -> Vec<SteerRoute> {
    let mut routes = Vec::new();
    for pod in local_pods.iter().filter(|p| !p.host_network) {
        let gateways = selecting(snapshot, pod);
        for &source in &pod.ips {
            let default_via = default_gateway_address(snapshot, source);
            let mut values: BTreeMap<IpNet, Option<IpAddr>> = (boundaries(&gateways).into_iter())
                .filter(|net| net.addr().is_ipv4() == source.is_ipv4())
                .map(|net| {
                    let via = decide(&gateways, net)
                        .and_then(|(g, _)| gateway_node_address(snapshot, g, source, actives))
                        .or(default_via);
                    (net, via)
                })
                .collect();
            let everything = IpNet::new(unspecified_like(source), 0).expect("length 0 is valid");
            values.entry(everything).or_insert(default_via);
            for (destination, via) in minimal(values, None) {
                if let Some(via) = via {
                    routes.push(SteerRoute {
                        source,
                        destination,
                        via,
                    });
                }
            }
        }
    }
    routes
}

fn unspecified_like(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}
