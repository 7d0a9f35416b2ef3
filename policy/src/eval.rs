//! The exact `networking.k8s.io/v1` evaluator: the oracle for `explain`, the conformance runner
//! and every differential test of the kernel datapath.
//!
//! Traffic is allowed iff the source side allows it (the source is external, or no Egress policy
//! selects the source pod, or a rule of one of them matches) and the destination side allows it
//! (the same with Ingress for the destination pod).

use std::fmt;
use std::net::IpAddr;

use crate::model::{Direction, Peer, Pod, Policy, PortMatch, Protocol, Rule, Snapshot};
use crate::probe::{Probe, ProbeEndpoint};

/// One side of a flow, resolved against the snapshot.
#[derive(Clone, Copy, Debug)]
pub enum Side<'a> {
    Pod(&'a Pod),
    External,
}

/// A concrete flow: endpoints with the addresses it uses and the IP protocol number.
#[derive(Clone, Copy, Debug)]
pub struct Flow<'a> {
    pub src: Side<'a>,
    pub src_ip: IpAddr,
    pub dst: Side<'a>,
    pub dst_ip: IpAddr,
    /// IP protocol number; only TCP, UDP and SCTP carry ports a rule can name.
    pub protocol: u8,
    pub port: u16,
}

/// The rule that allowed one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    /// `namespace/name` of the policy.
    pub policy: String,
    pub direction: Direction,
    /// Index of the rule in the policy's ingress or egress list.
    pub rule: usize,
    /// Index of the peer that matched; `None` when the rule has no peers (all peers).
    pub peer: Option<usize>,
    /// Index of the port that matched; `None` when the rule has no ports (all ports).
    pub port: Option<usize>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = match self.direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        write!(f, "{} {}[{}]", self.policy, self.direction, self.rule)?;
        match self.peer {
            Some(p) => write!(f, ".{list}[{p}]")?,
            None => write!(f, " (all peers)")?,
        }
        match self.port {
            Some(p) => write!(f, ".ports[{p}]"),
            None => write!(f, " (all ports)"),
        }
    }
}

/// What one direction's policies say about a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectionVerdict {
    /// That end is outside the cluster: no policy of this direction applies.
    External,
    /// No policy of this direction selects the pod: allowed.
    NotSelected,
    /// Policies select the pod and one of their rules allows the flow.
    Allowed { selecting: Vec<String>, by: RuleRef },
    /// Policies select the pod and none of their rules allows the flow.
    Denied { selecting: Vec<String> },
}

impl DirectionVerdict {
    pub fn allows(&self) -> bool {
        !matches!(self, DirectionVerdict::Denied { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub egress: DirectionVerdict,
    pub ingress: DirectionVerdict,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("pod {0} is not in the manifests")]
    UnknownPod(String),
    #[error("pod {0} has no IP address")]
    NoAddress(String),
    #[error("{from} and {to} share no address family")]
    NoCommonFamily { from: String, to: String },
}

impl Snapshot {
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    fn probe_side(&self, endpoint: &ProbeEndpoint) -> Result<(Side<'_>, Vec<IpAddr>), ProbeError> {
        match endpoint {
            ProbeEndpoint::External(ip) => Ok((Side::External, vec![*ip])),
            ProbeEndpoint::Pod { namespace, name } => {
                let pod = self
                    .pod(namespace, name)
                    .ok_or_else(|| ProbeError::UnknownPod(endpoint.to_string()))?;
                if pod.ips.is_empty() {
                    return Err(ProbeError::NoAddress(endpoint.to_string()));
                }
                Ok((Side::Pod(pod), pod.ips.clone()))
            }
        }
    }

    /// Resolves a probe to the flow it makes: IPv4 when both ends have it, else IPv6.
    pub fn flow_of<'a>(&'a self, probe: &Probe) -> Result<Flow<'a>, ProbeError> {
        let (src, src_ips) = self.probe_side(&probe.from)?;
        let (dst, dst_ips) = self.probe_side(&probe.to)?;
        let pair = [true, false].into_iter().find_map(|v4| {
            let s = src_ips.iter().find(|ip| ip.is_ipv4() == v4)?;
            let d = dst_ips.iter().find(|ip| ip.is_ipv4() == v4)?;
            Some((*s, *d))
        });
        let (src_ip, dst_ip) = pair.ok_or_else(|| ProbeError::NoCommonFamily {
            from: probe.from.to_string(),
            to: probe.to.to_string(),
        })?;
        Ok(Flow {
            src,
            src_ip,
            dst,
            dst_ip,
            protocol: probe.protocol.number(),
            port: probe.port,
        })
    }

    pub fn evaluate_probe(&self, probe: &Probe) -> Result<Verdict, ProbeError> {
        Ok(self.evaluate(&self.flow_of(probe)?))
    }

    pub fn evaluate(&self, flow: &Flow<'_>) -> Verdict {
        Verdict {
            egress: self.direction_verdict(flow, Direction::Egress),
            ingress: self.direction_verdict(flow, Direction::Ingress),
        }
    }

    /// Policies of `direction` that select `pod` (hostNetwork pods are never selected).
    pub fn selecting<'a>(
        &'a self,
        pod: &'a Pod,
        direction: Direction,
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies
            .iter()
            .filter(move |p| self.selects(p, pod, direction))
    }

    /// Whether `policy` selects `pod` for `direction` (hostNetwork pods are never selected).
    pub fn selects(&self, policy: &Policy, pod: &Pod, direction: Direction) -> bool {
        !pod.host_network
            && policy.namespace == pod.namespace
            && policy.rules(direction).is_some()
            && policy.pod_selector.matches(&pod.labels)
    }

    fn direction_verdict(&self, flow: &Flow<'_>, direction: Direction) -> DirectionVerdict {
        let (subject, peer, peer_ip) = match direction {
            Direction::Egress => (flow.src, flow.dst, flow.dst_ip),
            Direction::Ingress => (flow.dst, flow.src, flow.src_ip),
        };
        let Side::Pod(pod) = subject else {
            return DirectionVerdict::External;
        };
        let selecting: Vec<&Policy> = self.selecting(pod, direction).collect();
        if selecting.is_empty() {
            return DirectionVerdict::NotSelected;
        }
        let names = selecting.iter().map(|p| p.key()).collect();
        for policy in selecting {
            let rules = policy.rules(direction).unwrap_or_default();
            for (r, rule) in rules.iter().enumerate() {
                if let Some((peer_index, port_index)) =
                    self.rule_matches(policy, rule, peer, peer_ip, flow)
                {
                    return DirectionVerdict::Allowed {
                        selecting: names,
                        by: RuleRef {
                            policy: policy.key(),
                            direction,
                            rule: r,
                            peer: peer_index,
                            port: port_index,
                        },
                    };
                }
            }
        }
        DirectionVerdict::Denied { selecting: names }
    }

    /// `Some((peer, port))` indexes when `rule` of `policy` matches the peer and the destination port.
    fn rule_matches(
        &self,
        policy: &Policy,
        rule: &Rule,
        peer: Side<'_>,
        peer_ip: IpAddr,
        flow: &Flow<'_>,
    ) -> Option<(Option<usize>, Option<usize>)> {
        let peer_index = if rule.peers.is_empty() {
            None
        } else {
            Some(
                rule.peers
                    .iter()
                    .position(|p| self.peer_matches(policy, p, peer, peer_ip))?,
            )
        };
        let port_index = if rule.ports.is_empty() {
            None
        } else {
            let protocol = Protocol::from_number(flow.protocol)?;
            Some(rule.ports.iter().position(|p| {
                p.protocol == protocol
                    && match &p.port {
                        PortMatch::Any => true,
                        PortMatch::Number { first, last } => (*first..=*last).contains(&flow.port),
                        // Named ports resolve on the destination pod, whichever side selects it.
                        PortMatch::Named(name) => match flow.dst {
                            Side::Pod(dst) => dst.named_port(name, protocol) == Some(flow.port),
                            Side::External => false,
                        },
                    }
            })?)
        };
        Some((peer_index, port_index))
    }

    pub(crate) fn peer_matches(
        &self,
        policy: &Policy,
        peer: &Peer,
        side: Side<'_>,
        ip: IpAddr,
    ) -> bool {
        match peer {
            // ipBlock matches pod addresses too (as upstream e2e requires).
            Peer::IpBlock { cidr, except } => {
                cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
            }
            Peer::Pods {
                pod_selector,
                namespace_selector,
            } => {
                let Side::Pod(pod) = side else {
                    return false;
                };
                if pod.host_network {
                    return false;
                }
                let namespace_ok = match namespace_selector {
                    None => pod.namespace == policy.namespace,
                    Some(selector) => self
                        .namespaces
                        .get(&pod.namespace)
                        .is_some_and(|ns| selector.matches(&ns.labels)),
                };
                namespace_ok
                    && pod_selector
                        .as_ref()
                        .is_none_or(|selector| selector.matches(&pod.labels))
            }
        }
    }
}
