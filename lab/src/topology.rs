//! The plan of a lab, made before anything is created: which namespaces exist, which pod lives on
//! which node, and every address and MAC.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portcullis_policy::model::{Pod, Snapshot};
use portcullis_policy::probe::{Probe, ProbeEndpoint};

use crate::addressing::{
    cannot_host, host_mac, is_lab_reserved, node_uplink_mac, node_uplink_v4, node_uplink_v6,
    pod_mac, TransitEnd, CLUSTER_PREFIX_V4, EXT_BRIDGE, EXT_IFACE, EXT_STANDBY_IFACE,
    GATEWAY_CLUSTER_END, GATEWAY_CLUSTER_IFACE, GATEWAY_EXTERNAL_END, GATEWAY_EXTERNAL_IFACE,
    GATEWAY_NODE, NODE_UPLINK_IFACE, POD_IFACE, STANDBY_CLUSTER_END, STANDBY_EXTERNAL_END,
    STANDBY_GATEWAY_NODE,
};
use crate::{LabError, LabOptions};

/// More nodes than this would run out of node uplink MACs and cluster-segment addresses.
const MAX_NODES: usize = 4000;

/// A gateway namespace and its two legs: run `portcullis gateway --cluster-iface
/// CLUSTER --external-iface EXTERNAL --node-name NODE` in it with
/// [`Lab::spawn_in`](crate::Lab::spawn_in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayLegs {
    /// Its Node's name in [`Lab::node_manifest`](crate::Lab::node_manifest).
    pub node: String,
    pub netns: String,
    pub cluster_iface: String,
    pub external_iface: String,
    /// The cluster leg's addresses: the next hop nodes steer pod egress to (the IPv6 one is
    /// link-local, so a route to it needs the node's uplink device).
    pub cluster_ipv4: Ipv4Addr,
    pub cluster_ipv6: Ipv6Addr,
}

impl GatewayLegs {
    fn new(id: &str, standby: bool) -> GatewayLegs {
        let (node, role, cluster) = match standby {
            false => (GATEWAY_NODE, "gw", &GATEWAY_CLUSTER_END),
            true => (STANDBY_GATEWAY_NODE, "gw2", &STANDBY_CLUSTER_END),
        };
        GatewayLegs {
            node: node.into(),
            netns: format!("{id}-{role}"),
            cluster_iface: GATEWAY_CLUSTER_IFACE.into(),
            external_iface: GATEWAY_EXTERNAL_IFACE.into(),
            cluster_ipv4: cluster.v4,
            cluster_ipv6: cluster.v6,
        }
    }

    /// The arguments of `portcullis gateway` naming its legs.
    pub fn leg_args(&self) -> [&str; 4] {
        [
            "--cluster-iface",
            &self.cluster_iface,
            "--external-iface",
            &self.external_iface,
        ]
    }

    fn is_standby(&self) -> bool {
        self.node == STANDBY_GATEWAY_NODE
    }

    /// Its cluster leg's end of the cluster segment.
    pub(crate) fn cluster_end(&self) -> &'static TransitEnd {
        match self.is_standby() {
            false => &GATEWAY_CLUSTER_END,
            true => &STANDBY_CLUSTER_END,
        }
    }

    /// Its external leg's end of the external segment.
    pub(crate) fn external_end(&self) -> &'static TransitEnd {
        match self.is_standby() {
            false => &GATEWAY_EXTERNAL_END,
            true => &STANDBY_EXTERNAL_END,
        }
    }

    /// The external namespace's peer of its external leg.
    pub(crate) fn external_peer(&self) -> &'static str {
        match self.is_standby() {
            false => EXT_IFACE,
            true => EXT_STANDBY_IFACE,
        }
    }

    /// The fabric bridge's port towards its cluster leg.
    pub(crate) fn fabric_port(&self) -> &'static str {
        match self.is_standby() {
            false => "gw",
            true => "gw2",
        }
    }
}

/// A node namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The pods' `node` (or "node-0" when pods name none).
    pub name: String,
    pub netns: String,
    /// Interface on the cluster segment, towards the gateway's cluster leg (directly with one
    /// node and no router, else through the fabric bridge).
    pub uplink_iface: String,
    pub uplink_ipv4: Ipv4Addr,
    pub uplink_ipv6: Ipv6Addr,
    pub uplink_mac: [u8; 6],
}

impl NodeInfo {
    /// The node's end of the cluster segment.
    pub(crate) fn uplink_end(&self) -> TransitEnd {
        TransitEnd {
            v4: self.uplink_ipv4,
            prefix_v4: CLUSTER_PREFIX_V4,
            v6: self.uplink_ipv6,
            mac: self.uplink_mac,
        }
    }
}

/// Where a pod lives and how it is wired to its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAttachment {
    /// `namespace/name`.
    pub pod: String,
    pub netns: String,
    /// The pod-side interface ([`POD_IFACE`]).
    pub iface: String,
    pub mac: [u8; 6],
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub node_netns: String,
    /// The host side of the pod's veth, in the node namespace: where node hooks attach.
    pub host_iface: String,
    pub host_mac: [u8; 6],
}

/// Every namespace, address and MAC of one lab. Namespace names are `ID-ROLE`.
#[derive(Debug)]
pub(crate) struct Topology {
    /// `PREFIX-PID-N`.
    pub id: String,
    pub nodes: Vec<NodeInfo>,
    pub gateway: GatewayLegs,
    /// With [`LabOptions::standby_gateway`]: the second gateway.
    pub standby: Option<GatewayLegs>,
    /// The namespace holding every external address.
    pub ext_netns: String,
    /// With more than one node, or a router: the namespace whose bridge joins the nodes, the
    /// gateway and the router.
    pub fabric_netns: Option<String>,
    /// With `steer_via_router`: the nodes' default router.
    pub router_netns: Option<String>,
    /// Routed on-link towards the gateway's external leg by the external namespace.
    pub egress_ips: BTreeSet<IpAddr>,
    /// By `namespace/name`.
    pub pods: BTreeMap<String, PodAttachment>,
    pub externals: BTreeSet<IpAddr>,
}

pub(crate) fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl Topology {
    /// Plans every pod of `snapshot` that has addresses (host-network pods are not modelled), its
    /// node, the gateway, the router (with `steer_via_router`) and the external hosts named by
    /// `probes`. A pod that names no node goes to one of `unscheduled_nodes` nodes ("node-0",
    /// "node-1", ...), round-robin in manifest order.
    pub fn plan(
        id: String,
        snapshot: &Snapshot,
        probes: &[Probe],
        opts: &LabOptions,
    ) -> Result<Topology, LabError> {
        let modelled: Vec<&Pod> = snapshot
            .pods
            .iter()
            .filter(|p| !p.host_network && !p.ips.is_empty())
            .collect();
        let spread = opts.unscheduled_nodes.max(1);
        let node_names: Vec<String> = modelled
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.node
                    .clone()
                    .unwrap_or_else(|| format!("node-{}", i % spread))
            })
            .collect();
        let nodes = plan_nodes(&id, &node_names)?;
        let (pods, owner) = plan_pods(&id, &modelled, &node_names, &nodes)?;
        let externals = plan_externals(probes, &owner)?;
        let egress_ips = plan_egress_ips(&opts.egress_ips, &owner, &externals)?;
        let router = opts.steer_via_router;
        if opts.standby_gateway && !router {
            return Err(LabError::Unsupported(
                "a standby gateway without steer_via_router: the nodes' default route can name only one gateway".into(),
            ));
        }
        Ok(Topology {
            gateway: GatewayLegs::new(&id, false),
            standby: opts.standby_gateway.then(|| GatewayLegs::new(&id, true)),
            ext_netns: format!("{id}-ext"),
            fabric_netns: (nodes.len() > 1 || router).then(|| format!("{id}-fab")),
            router_netns: router.then(|| format!("{id}-rt")),
            egress_ips,
            nodes,
            id,
            pods,
            externals,
        })
    }

    /// Every namespace, in the order they are created.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.nodes.iter().map(|n| n.netns.as_str()).collect();
        names.extend(self.gateways().map(|g| g.netns.as_str()));
        names.push(self.ext_netns.as_str());
        names.extend(self.router_netns.as_deref());
        names.extend(self.fabric_netns.as_deref());
        names.extend(self.pods.values().map(|p| p.netns.as_str()));
        names
    }

    /// The external namespace's device on the gateways' segment, holding the external addresses:
    /// the bridge with a standby gateway, else the one gateway's peer.
    pub fn external_device(&self) -> &'static str {
        match self.standby {
            Some(_) => EXT_BRIDGE,
            None => EXT_IFACE,
        }
    }

    /// The gateway, then the standby gateway if there is one.
    pub fn gateways(&self) -> impl Iterator<Item = &GatewayLegs> {
        std::iter::once(&self.gateway).chain(&self.standby)
    }

    /// The pods wired to `node`.
    pub fn pods_on<'a>(&'a self, node: &'a NodeInfo) -> impl Iterator<Item = &'a PodAttachment> {
        self.pods.values().filter(|p| p.node_netns == node.netns)
    }

    /// The node `pod` is wired to.
    pub fn node_of(&self, pod: &PodAttachment) -> &NodeInfo {
        self.nodes
            .iter()
            .find(|n| n.netns == pod.node_netns)
            .expect("every pod's node is planned")
    }
}

/// One node per distinct name (sorted), or a lone "node-0" when there are no pods.
fn plan_nodes(id: &str, node_names: &[String]) -> Result<Vec<NodeInfo>, LabError> {
    let mut names: BTreeSet<&str> = node_names.iter().map(String::as_str).collect();
    if names.is_empty() {
        names.insert("node-0");
    }
    if names.contains(GATEWAY_NODE) {
        return Err(LabError::Unsupported(format!(
            "a pod on node {GATEWAY_NODE:?}: the lab's gateway is that node"
        )));
    }
    if names.len() > MAX_NODES {
        return Err(LabError::Unsupported(format!("{} nodes", names.len())));
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| NodeInfo {
            name: name.to_string(),
            netns: format!("{id}-n{i}"),
            uplink_iface: NODE_UPLINK_IFACE.into(),
            uplink_ipv4: node_uplink_v4(i),
            uplink_ipv6: node_uplink_v6(i),
            uplink_mac: node_uplink_mac(i),
        })
        .collect())
}

/// The pods by key, and the pod owning each address.
type PlannedPods = (BTreeMap<String, PodAttachment>, BTreeMap<IpAddr, String>);

fn plan_pods(
    id: &str,
    modelled: &[&Pod],
    node_names: &[String],
    nodes: &[NodeInfo],
) -> Result<PlannedPods, LabError> {
    let mut pods = BTreeMap::new();
    let mut owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, (p, node)) in modelled.iter().zip(node_names).enumerate() {
        let key = p.key();
        for ip in &p.ips {
            if is_lab_reserved(*ip) || cannot_host(*ip) {
                return Err(LabError::AddressConflict {
                    addr: *ip,
                    detail: format!("pod {key}: link-local/special addresses are lab-reserved"),
                });
            }
            if let Some(other) = owner.insert(*ip, key.clone()) {
                return Err(LabError::AddressConflict {
                    addr: *ip,
                    detail: format!("held by both {other} and {key}"),
                });
            }
        }
        let node_netns = nodes
            .iter()
            .find(|n| &n.name == node)
            .map(|n| n.netns.clone())
            .expect("every pod's node is listed");
        pods.insert(
            key.clone(),
            PodAttachment {
                pod: key,
                netns: format!("{id}-p{i}"),
                iface: POD_IFACE.into(),
                mac: pod_mac(i),
                ips: p.ips.clone(),
                node_netns,
                node: node.clone(),
                host_iface: format!("pod{i}"),
                host_mac: host_mac(i),
            },
        );
    }
    Ok((pods, owner))
}

/// Every external address a probe names; none may be a pod's or one the lab reserves.
fn plan_externals(
    probes: &[Probe],
    owner: &BTreeMap<IpAddr, String>,
) -> Result<BTreeSet<IpAddr>, LabError> {
    let mut externals = BTreeSet::new();
    for probe in probes {
        for ep in [&probe.from, &probe.to] {
            let ProbeEndpoint::External(ip) = ep else {
                continue;
            };
            if let Some(pod) = owner.get(ip) {
                return Err(LabError::AddressConflict {
                    addr: *ip,
                    detail: format!("external address of probe {probe} is pod {pod}'s"),
                });
            }
            if is_lab_reserved(*ip) || cannot_host(*ip) {
                return Err(LabError::AddressConflict {
                    addr: *ip,
                    detail: format!("probe {probe}: the lab cannot host this address"),
                });
            }
            externals.insert(*ip);
        }
    }
    Ok(externals)
}

/// The egress IPs: none may be a pod's, an external host's or one the lab reserves.
fn plan_egress_ips(
    ips: &[IpAddr],
    owner: &BTreeMap<IpAddr, String>,
    externals: &BTreeSet<IpAddr>,
) -> Result<BTreeSet<IpAddr>, LabError> {
    let mut out = BTreeSet::new();
    for ip in ips {
        let conflict = |detail: String| LabError::AddressConflict { addr: *ip, detail };
        if let Some(pod) = owner.get(ip) {
            return Err(conflict(format!("egress IP is pod {pod}'s")));
        }
        if externals.contains(ip) {
            return Err(conflict(
                "egress IP is an external host a probe names".into(),
            ));
        }
        if is_lab_reserved(*ip) || cannot_host(*ip) {
            return Err(conflict("the lab cannot route this egress IP".into()));
        }
        out.insert(*ip);
    }
    Ok(out)
}
