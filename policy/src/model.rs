//! The validated, normalised view of a cluster that every other module works on. Built from
//! k8s-openapi objects by [`crate::load`]; nothing here can hold an invalid value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::service::Service;

/// Protocols a NetworkPolicy port may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn from_number(number: u8) -> Option<Protocol> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn parse(name: &str) -> Option<Protocol> {
        match name {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`), at most one per family.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    /// hostNetwork pods share the node's address and are never selected by policies.
    pub host_network: bool,
    pub node: Option<String>,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The port number a named port resolves to on this pod, for that protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// Label selector operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A label selector; the empty selector matches everything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// A port of a rule: a number, a name resolved on the destination pod, or every port of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    Any,
    Number { first: u16, last: u16 },
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPort {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// One peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// podSelector and/or namespaceSelector (both present: AND). An absent namespaceSelector
    /// means the policy's own namespace; an absent podSelector means every pod.
    Pods {
        pod_selector: Option<Selector>,
        namespace_selector: Option<Selector>,
    },
    /// Addresses in `cidr` (canonical, host bits cleared) and in none of `except`.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

/// One ingress or egress rule. An empty `peers` list matches every peer, an empty `ports` list
/// every port and protocol.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PolicyPort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// Rules of each direction; `None` when the policy does not affect that direction
    /// (after `policyTypes` defaulting), `Some(empty)` when it denies everything there.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Label whose value `"true"` marks the default egress gateway nodes: where pod traffic to
/// non-cluster addresses goes when no EgressGateway decides for it.
pub const EGRESS_GATEWAY_LABEL: &str = "portcullis.io/egress-gateway";

/// A v1 Node, as far as egress steering needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    /// `status.addresses`: InternalIP ones first, then ExternalIP, without duplicates.
    pub addresses: Vec<IpAddr>,
}

impl Node {
    /// The node's first address of the family of `like`.
    pub fn address_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == like.is_ipv4())
    }
}

/// One item of `EgressGateway.spec.selectors`: both selectors must match (at least one is set).
/// An absent namespaceSelector means every namespace (the object is cluster-scoped), an absent
/// podSelector every pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressSelector {
    pub namespace_selector: Option<Selector>,
    pub pod_selector: Option<Selector>,
}

/// A cluster-scoped `portcullis.io/v1alpha1` EgressGateway: which pods leave through which
/// gateway nodes, to which destinations, with which source address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressGateway {
    pub name: String,
    /// A pod is selected when any item matches it.
    pub selectors: Vec<EgressSelector>,
    /// Canonical (host bits cleared), non-empty.
    pub destination_cidrs: Vec<IpNet>,
    /// Canonical; destinations here are not decided by this EgressGateway.
    pub excluded_cidrs: Vec<IpNet>,
    pub node_selector: Selector,
    /// One or two addresses, at most one per family.
    pub egress_ips: Vec<IpAddr>,
}

/// A consistent view of namespaces, pods, policies, nodes, egress gateways and services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
    pub nodes: Vec<Node>,
    pub egress_gateways: Vec<EgressGateway>,
    /// Only `probe --to SERVICE` reads them: policy never sees a Service, the node translates
    /// its address to a pod's before the hooks judge.
    pub services: Vec<Service>,
}
