//! The connectivity graph, "who may talk to whom": pods grouped by namespace and the external
//! blocks the policies name (ipBlocks) are the nodes, the allowed connections are the edges, each
//! labelled with the protocols and ports it allows and the rules that admit it. Rendered as DOT
//! ([`to_dot`]), SVG ([`to_svg`]) and a self-contained HTML page ([`to_html`]).
//!
//! Edges agree with the evaluator: an edge from A to B allows protocol/port P iff
//! [`Snapshot::evaluate`] allows P from A to B (for an external block, from or to its
//! [`BlockNode::representative`] address). The port sets are derived from the rules selecting
//! each end rather than by probing ports, so a graph costs one pass over the rules per pair.
//! A pod's traffic to itself is not drawn.

mod dot;
mod html;
mod layout;
mod ports;
mod svg;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Serialize, Serializer};

pub use dot::to_dot;
pub use html::to_html;
pub use ports::PortSet;
pub use svg::to_svg;

use crate::eval::{ProbeError, Side};
use crate::explain;
use crate::model::{Direction, Peer, Pod, Policy, Snapshot};
use crate::probe::{Probe, ProbeEndpoint};

/// Which part of the cluster to keep: the focused pods, their edges and the nodes at the other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Focus {
    Everything,
    Namespace(String),
    Pod { namespace: String, name: String },
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("namespace {0} has no pods in the snapshot")]
    UnknownNamespace(String),
    #[error("pod {0} is not in the snapshot")]
    UnknownPod(String),
    #[error("probe {probe}: {source}")]
    Probe {
        probe: String,
        #[source]
        source: ProbeError,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct Graph {
    pub namespaces: Vec<NamespaceNode>,
    pub blocks: Vec<BlockNode>,
    pub edges: Vec<Edge>,
    pub probes: Vec<ProbeEdge>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NamespaceNode {
    pub name: String,
    /// Every pod of the namespace is isolated for ingress and for egress by a policy with an
    /// empty podSelector.
    pub default_deny: bool,
    pub pods: Vec<PodNode>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PodNode {
    /// `pod:namespace/name`, the id edges refer to.
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// The policies selecting this pod, per direction; empty when no policy selects it.
    pub policies: Vec<Selection>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Selection {
    pub policy: String,
    #[serde(serialize_with = "as_text")]
    pub direction: Direction,
}

/// An external block: an ipBlock some policy names, or an address a probe names outside them.
#[derive(Clone, Debug, Serialize)]
pub struct BlockNode {
    /// `net:` and the label.
    pub id: String,
    /// The cidr, and its excepts as `except a, b`.
    pub label: String,
    #[serde(skip)]
    pub cidr: IpNet,
    #[serde(skip)]
    pub except: Vec<IpNet>,
    /// The address probed for the block's edges: its first host not in an except; `None` when
    /// the excepts cover it all (it then has no edges).
    pub representative: Option<IpAddr>,
    /// False for an address only a probe names.
    pub named_by_policy: bool,
}

/// An allowed connection.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// Never empty.
    pub ports: PortSet,
    /// The rules of both ends' policies that admit part of `ports` (none for an end no policy
    /// selects, or an external end).
    pub admitted_by: Vec<Admission>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Admission {
    pub policy: String,
    #[serde(serialize_with = "as_text")]
    pub direction: Direction,
    /// Index of the rule in the policy's ingress or egress list.
    pub rule: usize,
    /// The part of the edge's ports this rule admits.
    pub ports: PortSet,
}

/// A probe drawn over the graph with its verdict.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeEdge {
    pub from: String,
    pub to: String,
    /// `TCP/443`.
    pub port: String,
    pub allowed: bool,
    /// `explain`'s one-line reason.
    pub reason: String,
}

fn as_text<S: Serializer, T: Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// The node id of a pod.
pub fn pod_id(namespace: &str, name: &str) -> String {
    format!("pod:{namespace}/{name}")
}

/// A pod with the policies selecting it, looked up once for every pair it is part of.
struct PodView<'a> {
    pod: &'a Pod,
    ingress: Vec<&'a Policy>,
    egress: Vec<&'a Policy>,
}

/// One end of a candidate edge.
#[derive(Clone, Copy)]
enum End<'v, 'a> {
    Pod(&'v PodView<'a>),
    Block(&'v BlockNode),
}

impl End<'_, '_> {
    fn id(&self) -> String {
        match self {
            End::Pod(view) => pod_id(&view.pod.namespace, &view.pod.name),
            End::Block(block) => block.id.clone(),
        }
    }

    fn side(&self) -> Side<'_> {
        match self {
            End::Pod(view) => Side::Pod(view.pod),
            End::Block(_) => Side::External,
        }
    }

    /// The policies of `direction` selecting this end; none for a block outside the cluster.
    fn selecting(&self, direction: Direction) -> &[&Policy] {
        match (self, direction) {
            (End::Pod(view), Direction::Ingress) => &view.ingress,
            (End::Pod(view), Direction::Egress) => &view.egress,
            (End::Block(_), _) => &[],
        }
    }

    fn addresses(&self) -> Vec<IpAddr> {
        match self {
            End::Pod(view) => view.pod.ips.clone(),
            End::Block(block) => block.representative.into_iter().collect(),
        }
    }
}

/// Builds the graph of `snapshot`, overlays `probes`, and keeps the `focus`ed part.
pub fn connectivity(
    snapshot: &Snapshot,
    probes: &[Probe],
    focus: &Focus,
) -> Result<Graph, GraphError> {
    check_focus(snapshot, focus)?;
    let views: Vec<PodView> = snapshot
        .pods
        .iter()
        .map(|pod| PodView {
            pod,
            ingress: snapshot.selecting(pod, Direction::Ingress).collect(),
            egress: snapshot.selecting(pod, Direction::Egress).collect(),
        })
        .collect();
    let mut blocks = policy_blocks(snapshot);
    let in_focus = |view: &PodView| match focus {
        Focus::Everything => true,
        Focus::Namespace(ns) => &view.pod.namespace == ns,
        Focus::Pod { namespace, name } => {
            &view.pod.namespace == namespace && &view.pod.name == name
        }
    };
    let mut edges = Vec::new();
    for (i, src) in views.iter().enumerate() {
        for (j, dst) in views.iter().enumerate() {
            if i != j && (in_focus(src) || in_focus(dst)) {
                edges.extend(edge(snapshot, End::Pod(src), End::Pod(dst)));
            }
        }
        if in_focus(src) {
            for block in &blocks {
                edges.extend(edge(snapshot, End::Pod(src), End::Block(block)));
                edges.extend(edge(snapshot, End::Block(block), End::Pod(src)));
            }
        }
    }
    let mut probe_edges = Vec::new();
    for probe in probes {
        let verdict = snapshot
            .evaluate_probe(probe)
            .map_err(|source| GraphError::Probe {
                probe: probe.to_string(),
                source,
            })?;
        let probe_edge = ProbeEdge {
            from: endpoint_id(&probe.from, &mut blocks),
            to: endpoint_id(&probe.to, &mut blocks),
            port: format!("{}/{}", probe.protocol, probe.port),
            allowed: verdict.allowed(),
            reason: explain::reason(probe, &verdict),
        };
        let focused_end = |id: &str| views.iter().any(|v| in_focus(v) && view_id(v) == id);
        if focused_end(&probe_edge.from) || focused_end(&probe_edge.to) {
            probe_edges.push(probe_edge);
        }
    }
    let connected = |id: &str| {
        edges.iter().any(|e: &Edge| e.from == id || e.to == id)
            || probe_edges.iter().any(|p| p.from == id || p.to == id)
    };
    let mut namespaces: BTreeMap<&str, NamespaceNode> = BTreeMap::new();
    for view in views
        .iter()
        .filter(|v| in_focus(v) || connected(&view_id(v)))
    {
        let namespace = &view.pod.namespace;
        namespaces
            .entry(namespace)
            .or_insert_with(|| NamespaceNode {
                name: namespace.clone(),
                default_deny: has_default_deny(snapshot, namespace),
                pods: Vec::new(),
            })
            .pods
            .push(pod_node(view));
    }
    for namespace in namespaces.values_mut() {
        namespace.pods.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let keep_every_block = *focus == Focus::Everything;
    blocks.retain(|b| (keep_every_block && b.named_by_policy) || connected(&b.id));
    Ok(Graph {
        namespaces: namespaces.into_values().collect(),
        blocks,
        edges,
        probes: probe_edges,
    })
}

fn view_id(view: &PodView) -> String {
    pod_id(&view.pod.namespace, &view.pod.name)
}

fn check_focus(snapshot: &Snapshot, focus: &Focus) -> Result<(), GraphError> {
    match focus {
        Focus::Everything => Ok(()),
        Focus::Namespace(ns) => match snapshot.pods.iter().any(|p| &p.namespace == ns) {
            true => Ok(()),
            false => Err(GraphError::UnknownNamespace(ns.clone())),
        },
        Focus::Pod { namespace, name } => match snapshot.pod(namespace, name) {
            Some(_) => Ok(()),
            None => Err(GraphError::UnknownPod(format!("{namespace}/{name}"))),
        },
    }
}

fn pod_node(view: &PodView) -> PodNode {
    let selections = |policies: &[&Policy], direction| {
        policies
            .iter()
            .map(move |p| Selection {
                policy: p.key(),
                direction,
            })
            .collect::<Vec<_>>()
    };
    let mut policies = selections(&view.ingress, Direction::Ingress);
    policies.extend(selections(&view.egress, Direction::Egress));
    PodNode {
        id: view_id(view),
        namespace: view.pod.namespace.clone(),
        name: view.pod.name.clone(),
        policies,
    }
}

/// Every pod of `namespace` is isolated in both directions by policies with an empty podSelector.
fn has_default_deny(snapshot: &Snapshot, namespace: &str) -> bool {
    [Direction::Ingress, Direction::Egress].iter().all(|d| {
        snapshot
            .policies
            .iter()
            .any(|p| p.namespace == namespace && p.pod_selector.is_empty() && p.rules(*d).is_some())
    })
}

/// The distinct ipBlocks of every policy, in cidr order.
fn policy_blocks(snapshot: &Snapshot) -> Vec<BlockNode> {
    let mut distinct: BTreeMap<(IpNet, Vec<IpNet>), ()> = BTreeMap::new();
    let rules = snapshot.policies.iter().flat_map(|p| {
        let ingress = p.ingress.iter().flatten();
        ingress.chain(p.egress.iter().flatten())
    });
    for peer in rules.flat_map(|r| &r.peers) {
        if let Peer::IpBlock { cidr, except } = peer {
            let mut except = except.clone();
            except.sort();
            distinct.insert((*cidr, except), ());
        }
    }
    distinct
        .into_keys()
        .map(|(cidr, except)| block_node(cidr, except, true))
        .collect()
}

fn block_node(cidr: IpNet, except: Vec<IpNet>, named_by_policy: bool) -> BlockNode {
    let mut label = cidr.to_string();
    if !except.is_empty() {
        let excepts: Vec<String> = except.iter().map(IpNet::to_string).collect();
        label.push_str(&format!(" except {}", excepts.join(", ")));
    }
    BlockNode {
        id: format!("net:{label}"),
        label,
        representative: representative(&cidr, &except),
        cidr,
        except,
        named_by_policy,
    }
}

/// An address as a number in its family's space, so that prefixes are ranges.
fn to_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_number(number: u128, like: &IpNet) -> Option<IpAddr> {
    match like {
        IpNet::V4(_) => Some(IpAddr::V4(Ipv4Addr::from(u32::try_from(number).ok()?))),
        IpNet::V6(_) => Some(IpAddr::V6(Ipv6Addr::from(number))),
    }
}

/// The first host of `cidr` (its network address for a /31, /32, /127 or /128) not in an except.
fn representative(cidr: &IpNet, except: &[IpNet]) -> Option<IpAddr> {
    let first = to_number(cidr.network());
    let last = to_number(cidr.broadcast());
    let mut candidate = if last - first >= 2 { first + 1 } else { first };
    // Each step jumps past one except, so this ends after at most `except.len()` steps.
    while let Some(covering) = except
        .iter()
        .find(|e| e.contains(&from_number(candidate, cidr).unwrap_or(cidr.network())))
    {
        candidate = to_number(covering.broadcast()).checked_add(1)?;
        if candidate > last {
            return None;
        }
    }
    from_number(candidate, cidr)
}

/// The node a probe endpoint is drawn at: the pod, the most specific block holding the address
/// outside its excepts, or else a node of its own for the address.
fn endpoint_id(endpoint: &ProbeEndpoint, blocks: &mut Vec<BlockNode>) -> String {
    let ip = match endpoint {
        ProbeEndpoint::Pod { namespace, name } => return pod_id(namespace, name),
        ProbeEndpoint::External(ip) => *ip,
    };
    let holding = blocks
        .iter()
        .filter(|b| b.cidr.contains(&ip) && !b.except.iter().any(|e| e.contains(&ip)))
        .max_by_key(|b| b.cidr.prefix_len());
    if let Some(block) = holding {
        return block.id.clone();
    }
    let address = block_node(IpNet::from(ip), Vec::new(), false);
    let id = address.id.clone();
    blocks.push(address);
    id
}

/// The addresses a flow between the two ends uses: IPv4 when both have it, else IPv6 (the choice
/// [`Snapshot::flow_of`] makes for a probe).
fn address_pair(src: &[IpAddr], dst: &[IpAddr]) -> Option<(IpAddr, IpAddr)> {
    [true, false].into_iter().find_map(|v4| {
        let s = src.iter().find(|ip| ip.is_ipv4() == v4)?;
        let d = dst.iter().find(|ip| ip.is_ipv4() == v4)?;
        Some((*s, *d))
    })
}

/// The edge from `src` to `dst`, if anything is allowed.
fn edge(snapshot: &Snapshot, src: End, dst: End) -> Option<Edge> {
    let (src_ip, dst_ip) = address_pair(&src.addresses(), &dst.addresses())?;
    let destination = match dst {
        End::Pod(view) => Some(view.pod),
        End::Block(_) => None,
    };
    let (egress_policies, ingress_policies) = (
        src.selecting(Direction::Egress),
        dst.selecting(Direction::Ingress),
    );
    let egress = admitting_rules(
        snapshot,
        egress_policies,
        Direction::Egress,
        dst.side(),
        dst_ip,
        destination,
    );
    let ingress = admitting_rules(
        snapshot,
        ingress_policies,
        Direction::Ingress,
        src.side(),
        src_ip,
        destination,
    );
    let allowed_by = |rules: &Option<Vec<Admission>>| match rules {
        None => PortSet::all(),
        Some(rules) => rules.iter().fold(PortSet::default(), |mut set, r| {
            set.union_with(&r.ports);
            set
        }),
    };
    let ports = allowed_by(&egress).intersection(&allowed_by(&ingress));
    if ports.is_empty() {
        return None;
    }
    let admitted_by = egress
        .into_iter()
        .chain(ingress)
        .flatten()
        .filter_map(|mut rule| {
            rule.ports = rule.ports.intersection(&ports);
            (!rule.ports.is_empty()).then_some(rule)
        })
        .collect();
    Some(Edge {
        from: src.id(),
        to: dst.id(),
        ports,
        admitted_by,
    })
}

/// The rules of `selecting` (the policies of `direction` selecting one end) whose peers match the
/// other end, `peer` at `peer_ip`, each with the ports it allows; `None` when no policy selects
/// that end, so everything is allowed. Mirrors the evaluator's rule matching.
fn admitting_rules(
    snapshot: &Snapshot,
    selecting: &[&Policy],
    direction: Direction,
    peer: Side,
    peer_ip: IpAddr,
    destination: Option<&Pod>,
) -> Option<Vec<Admission>> {
    if selecting.is_empty() {
        return None;
    }
    let mut admitting = Vec::new();
    for policy in selecting {
        for (index, rule) in policy
            .rules(direction)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let peer_matches = rule.peers.is_empty()
                || rule
                    .peers
                    .iter()
                    .any(|p| snapshot.peer_matches(policy, p, peer, peer_ip));
            let ports = PortSet::of_rule(rule, destination);
            if peer_matches && !ports.is_empty() {
                admitting.push(Admission {
                    policy: policy.key(),
                    direction,
                    rule: index,
                    ports,
                });
            }
        }
    }
    Some(admitting)
}
