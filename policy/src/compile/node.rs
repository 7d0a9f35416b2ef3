//! Compiles a snapshot into the node hooks' tables, for traffic between pods: numeric identities
//! for pods (namespace, labels and named ports: everything a selector or a named port can see), an
//! address → identity map for every pod of the cluster, and per policy group the rule set allowed
//! for each peer identity plus ipBlock prefixes (which match pod addresses too).
//!
//! The datapath allows a packet in a direction when the subject pod is not selected, or the peer's
//! identity entry of the subject's group matches, or the longest ipBlock prefix containing the
//! peer's address matches: the union of selector rules and ipBlock rules, exactly as the evaluator.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    addr128, assign_groups, canonical, contains128, flatten, new_interner, policy_names,
    port_rules, to128, CompileError, Entry, PortRule, MAX_PORT_RANGES,
};
use crate::eval::Side;
use crate::model::{ContainerPort, Direction, Labels, Peer, Pod, Policy, Snapshot};

/// First identity number; lower ones are reserved for special peers (host, world).
pub const FIRST_POD_IDENTITY: u32 = 256;

/// What makes two pods indistinguishable to every selector and named port.
type IdentityKey = (String, Labels, Vec<ContainerPort>);

/// Hands out identity numbers that stay stable across recompiles, so a label change or pod churn
/// rewrites only the entries of the identities it touches.
#[derive(Debug, Default)]
pub struct IdentityAllocator {
    ids: HashMap<IdentityKey, u32>,
    next: u32,
}

impl IdentityAllocator {
    fn id(&mut self, pod: &Pod) -> u32 {
        let key = (pod.namespace.clone(), pod.labels.clone(), pod.ports.clone());
        let next = &mut self.next;
        *self.ids.entry(key).or_insert_with(|| {
            let id = FIRST_POD_IDENTITY + *next;
            *next += 1;
            id
        })
    }

    /// Forgets identities no pod of `snapshot` has any more.
    fn retain_present(&mut self, snapshot: &Snapshot) {
        let present: std::collections::HashSet<IdentityKey> = snapshot
            .pods
            .iter()
            .map(|p| (p.namespace.clone(), p.labels.clone(), p.ports.clone()))
            .collect();
        self.ids.retain(|k, _| present.contains(k));
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTables {
    /// Every pod address of the cluster (hostNetwork pods excluded) → identity.
    pub identities: BTreeMap<IpAddr, u32>,
    /// Every pod address selected by at least one policy of that direction → index into `groups`.
    pub endpoints: super::EndpointGroups,
    pub groups: Vec<NodeGroup>,
    /// Deduplicated rule sets; id 0 is the empty set (deny).
    pub rule_sets: Vec<Vec<PortRule>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeGroup {
    pub direction: Direction,
    pub policies: Vec<String>,
    /// Peer identity → rule set allowed by selector rules (and rules without peers).
    pub peers: BTreeMap<u32, u32>,
    /// ipBlock prefixes → rule set; longest match, as in the gateway.
    pub prefixes: Vec<(IpNet, u32)>,
}

/// Compiles the node tables; identities come from (and stay in) `allocator`.
pub fn compile_node(
    snapshot: &Snapshot,
    allocator: &mut IdentityAllocator,
) -> Result<NodeTables, CompileError> {
    allocator.retain_present(snapshot);
    // One representative pod per identity: selectors and named ports see nothing else.
    let mut representatives: BTreeMap<u32, &Pod> = BTreeMap::new();
    let mut identities = BTreeMap::new();
    for pod in snapshot.pods.iter().filter(|p| !p.host_network) {
        let id = allocator.id(pod);
        representatives.entry(id).or_insert(pod);
        for ip in &pod.ips {
            identities.insert(*ip, id);
        }
    }
    let mut interner = new_interner();
    let (endpoints, groups) = assign_groups(snapshot, |direction, policies, subject| {
        let mut peers = BTreeMap::new();
        for (&id, &peer) in &representatives {
            let ports = identity_rules(snapshot, policies, direction, subject, peer);
            if ports.len() > MAX_PORT_RANGES {
                return Err(CompileError::TooManyPortRanges {
                    policies: policy_names(policies).join(", "),
                    direction,
                    count: ports.len(),
                    max: MAX_PORT_RANGES,
                });
            }
            if !ports.is_empty() {
                peers.insert(id, interner.intern(ports));
            }
        }
        let entries = ip_block_entries(snapshot, policies, direction, subject);
        Ok(NodeGroup {
            direction,
            policies: policy_names(policies),
            peers,
            prefixes: flatten(&entries, policies, direction, &mut interner)?,
        })
    })?;
    Ok(NodeTables {
        identities,
        endpoints,
        groups,
        rule_sets: interner.sets,
    })
}

/// The destination pod of traffic between `subject` and `peer` in `direction`.
fn destination<'a>(direction: Direction, subject: &'a Pod, peer: &'a Pod) -> &'a Pod {
    match direction {
        Direction::Ingress => subject,
        Direction::Egress => peer,
    }
}

/// Port rules that selector rules (and peerless rules) allow between `subject` and the identity
/// represented by `peer`.
fn identity_rules(
    snapshot: &Snapshot,
    policies: &[&Policy],
    direction: Direction,
    subject: &Pod,
    peer: &Pod,
) -> Vec<PortRule> {
    let mut rules = Vec::new();
    for policy in policies {
        for rule in policy.rules(direction).unwrap_or_default() {
            let matches = rule.peers.is_empty()
                || rule.peers.iter().any(|p| {
                    matches!(p, Peer::Pods { .. })
                        && snapshot.peer_matches(policy, p, Side::Pod(peer), IpAddr::from([0u8; 4]))
                });
            if matches {
                rules.extend(port_rules(
                    rule,
                    Some(destination(direction, subject, peer)),
                ));
            }
        }
    }
    canonical(rules)
}

/// Address entries of the group: ipBlocks, and every address for rules without peers. Numbered
/// ports apply to the whole block; named ports resolve on
/// the destination pod, so for egress they become host entries for each pod inside the block.
fn ip_block_entries(
    snapshot: &Snapshot,
    policies: &[&Policy],
    direction: Direction,
    subject: &Pod,
) -> Vec<Entry> {
    let mut entries = Vec::new();
    for policy in policies {
        for rule in policy.rules(direction).unwrap_or_default() {
            // A rule without peers also admits addresses that are no pod (external hosts, nodes);
            // pods are covered by the identity entries.
            if rule.peers.is_empty() {
                let ports = port_rules(rule, (direction == Direction::Ingress).then_some(subject));
                if !ports.is_empty() {
                    for all in ["0.0.0.0/0", "::/0"] {
                        entries.push(Entry {
                            cidr: all.parse().expect("literal CIDR"),
                            except: Vec::new(),
                            ports: ports.clone(),
                        });
                    }
                }
            }
            for peer in &rule.peers {
                let Peer::IpBlock { cidr, except } = peer else {
                    continue;
                };
                let block_ports = port_rules(
                    rule,
                    match direction {
                        Direction::Ingress => Some(subject),
                        Direction::Egress => None,
                    },
                );
                if !block_ports.is_empty() {
                    entries.push(Entry {
                        cidr: *cidr,
                        except: except.clone(),
                        ports: block_ports,
                    });
                }
                if direction == Direction::Egress
                    && rule
                        .ports
                        .iter()
                        .any(|p| matches!(p.port, crate::model::PortMatch::Named(_)))
                {
                    for pod in snapshot.pods.iter().filter(|p| !p.host_network) {
                        for ip in &pod.ips {
                            if cidr.contains(ip) && !except.iter().any(|e| e.contains(ip)) {
                                entries.push(Entry {
                                    cidr: IpNet::from(*ip),
                                    except: Vec::new(),
                                    ports: port_rules(rule, Some(pod)),
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    entries
}

impl NodeTables {
    /// The reference lookup the node program implements: is traffic between the pod at
    /// `subject_ip` and the peer at `peer_ip` allowed in `direction`? (Egress: subject → peer, the
    /// port is the peer's; ingress: peer → subject.)
    pub fn allows(
        &self,
        direction: Direction,
        subject_ip: IpAddr,
        peer_ip: IpAddr,
        protocol: u8,
        port: u16,
    ) -> bool {
        let Some(group) = self.endpoints.get(&(direction, subject_ip)) else {
            return true;
        };
        let group = &self.groups[*group as usize];
        let set_allows = |set: u32| {
            self.rule_sets[set as usize]
                .iter()
                .any(|r| r.matches(protocol, port))
        };
        let by_identity = self
            .identities
            .get(&peer_ip)
            .and_then(|id| group.peers.get(id))
            .is_some_and(|set| set_allows(*set));
        let peer = addr128(peer_ip);
        let by_prefix = group
            .prefixes
            .iter()
            .filter(|(net, _)| contains128(to128(net), peer))
            .max_by_key(|(net, _)| to128(net).1)
            .is_some_and(|(_, set)| set_allows(*set));
        by_identity || by_prefix
    }
}
