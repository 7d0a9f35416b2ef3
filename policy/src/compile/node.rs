//! Compiles a snapshot into the node hooks' tables, for traffic between pods: numeric identities
//! for pods (namespace, labels and named ports: everything a selector or a named port can see), an
//! address → identity map for every pod of the cluster, and per policy group the rule set allowed
//! for each peer identity plus ipBlock prefixes (which match pod addresses too).
//!
//! The datapath allows a packet in a direction when the subject pod is not selected, or the peer's
//! identity entry of the subject's group matches, or the longest ipBlock prefix containing the
//! peer's address matches: the union of selector rules and ipBlock rules, exactly as the evaluator.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::groups::{assign_groups, CachedGroup, CompiledGroup, EndpointGroups, GroupCache};
use super::kernel_abi::check_port_ranges;
use super::prefixes::{external_entries, flatten, longest_match, Entry};
use super::rules::{canonical, port_rules, rule_set_allows, PortRule};
use super::stable::IdentityAllocator;
use super::CompileError;
use crate::eval::Side;
use crate::model::{Direction, Namespace, Peer, Pod, Policy, PortMatch, Snapshot};

/// First identity number; lower ones are reserved for special peers (host, world).
pub const FIRST_POD_IDENTITY: u32 = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTables {
    /// Every pod address of the cluster (hostNetwork pods excluded) → identity.
    pub identities: BTreeMap<IpAddr, u32>,
    /// Every pod address selected by at least one policy of that direction → index into `groups`.
    pub endpoints: EndpointGroups,
    /// Indexed by group id, stable across a [`NodeCompiler`]'s compiles; an id without a live
    /// group holds an empty one until it is reused.
    pub groups: Vec<NodeGroup>,
    /// Deduplicated rule sets indexed by (stable) id; id 0 is the empty set (deny).
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

/// Compiles the node tables once. A daemon that recompiles on every change uses a
/// [`NodeCompiler`] instead.
pub fn compile_node(snapshot: &Snapshot) -> Result<NodeTables, CompileError> {
    NodeCompiler::default().compile(snapshot)
}

/// Compiles snapshot after snapshot, incrementally. Identities, groups and rule sets keep their
/// ids across compiles (so the loader writes only the entries that changed), and a group whose
/// policies did not change is not recompiled: only the peer entries of identities that appeared
/// are computed and those of identities that went are dropped. A change of namespace labels
/// (which namespace selectors see) recompiles every group. Pure: no I/O.
#[derive(Debug, Default)]
pub struct NodeCompiler {
    identities: IdentityAllocator,
    groups: GroupCache<NodeGroup>,
    /// Identities and namespaces the cached groups were computed against.
    cached_identities: BTreeSet<u32>,
    cached_namespaces: BTreeMap<String, Namespace>,
}

impl NodeCompiler {
    pub fn compile(&mut self, snapshot: &Snapshot) -> Result<NodeTables, CompileError> {
        let NodeCompiler {
            identities: allocator,
            groups: group_cache,
            cached_identities,
            cached_namespaces,
        } = self;
        let GroupCache {
            group_ids,
            rule_sets,
            cached: cache,
            recompiled,
        } = group_cache;
        *recompiled = 0;
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
        if *cached_namespaces != snapshot.namespaces {
            cache.clear();
            cached_namespaces.clone_from(&snapshot.namespaces);
        }
        let appeared: Vec<u32> = (representatives.keys())
            .filter(|id| !cached_identities.contains(id))
            .copied()
            .collect();
        let gone: Vec<u32> = (cached_identities.iter())
            .filter(|id| !representatives.contains_key(id))
            .copied()
            .collect();

        let mut groups = BTreeMap::new();
        let endpoints = assign_groups(snapshot, |key, policies, subject| {
            let id = group_ids.id(key);
            let direction = key.0;
            let mut peer_rules = |peer: &Pod, peers: &mut BTreeMap<u32, u32>, identity: u32| {
                let ports = identity_rules(snapshot, policies, direction, subject, peer);
                check_port_ranges(&ports, policies, direction)?;
                if ports.is_empty() {
                    peers.remove(&identity);
                } else {
                    peers.insert(identity, rule_sets.intern(ports));
                }
                Ok(())
            };
            let group = match cache.get_mut(key).filter(|c| c.compiled_from(policies)) {
                Some(cached) => {
                    for identity in &gone {
                        cached.group.peers.remove(identity);
                    }
                    for identity in &appeared {
                        peer_rules(
                            representatives[identity],
                            &mut cached.group.peers,
                            *identity,
                        )?;
                    }
                    cached.group.clone()
                }
                None => {
                    *recompiled += 1;
                    let mut peers = BTreeMap::new();
                    for (&identity, &peer) in &representatives {
                        peer_rules(peer, &mut peers, identity)?;
                    }
                    let entries = ip_block_entries(snapshot, policies, direction, subject);
                    let group = NodeGroup {
                        direction,
                        policies: key.1.clone(),
                        peers,
                        prefixes: flatten(&entries, policies, direction, rule_sets)?,
                    };
                    // Cached groups must be exactly the groups in use: their rule sets are
                    // kept alive by appearing in the output.
                    if depends_on_pod_addresses(policies, direction) {
                        cache.remove(key);
                    } else {
                        cache.insert(key.clone(), CachedGroup::new(policies, group.clone()));
                    }
                    group
                }
            };
            groups.insert(id, group);
            Ok(id)
        });
        let endpoints = match endpoints {
            Ok(endpoints) => endpoints,
            Err(e) => {
                // Cached groups may be half updated to this snapshot's identities: start over.
                cache.clear();
                cached_identities.clear();
                return Err(e);
            }
        };
        *cached_identities = representatives.keys().copied().collect();
        let (groups, rule_sets) = group_cache.finish(groups);
        Ok(NodeTables {
            identities,
            endpoints,
            groups,
            rule_sets,
        })
    }

    /// Groups the last [`compile`](Self::compile) compiled from scratch (the rest were reused).
    pub fn recompiled(&self) -> usize {
        self.groups.recompiled
    }
}

impl CompiledGroup for NodeGroup {
    fn retired() -> NodeGroup {
        NodeGroup {
            direction: Direction::Ingress,
            policies: Vec::new(),
            peers: BTreeMap::new(),
            prefixes: Vec::new(),
        }
    }

    fn rule_set_ids(&self) -> impl Iterator<Item = u32> + '_ {
        (self.prefixes.iter().map(|(_, set)| *set)).chain(self.peers.values().copied())
    }
}

/// Egress rules with named ports and ipBlocks become host entries for the pods inside the
/// block (see [`ip_block_entries`]): such a group changes with pod addresses, so it is not cached.
fn depends_on_pod_addresses(policies: &[&Policy], direction: Direction) -> bool {
    direction == Direction::Egress
        && policies.iter().any(|p| {
            p.rules(direction).unwrap_or_default().iter().any(|r| {
                r.peers
                    .iter()
                    .any(|peer| matches!(peer, Peer::IpBlock { .. }))
                    && (r.ports.iter()).any(|port| matches!(port.port, PortMatch::Named(_)))
            })
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

/// Address entries of the group: ipBlocks, and every address for rules without peers (which
/// also admit addresses that are no pod: external hosts, nodes; pods are covered by the identity
/// entries). Numbered ports apply to the whole block; named ports resolve on the destination pod,
/// so for egress they become host entries for each pod inside the block.
fn ip_block_entries(
    snapshot: &Snapshot,
    policies: &[&Policy],
    direction: Direction,
    subject: &Pod,
) -> Vec<Entry> {
    let mut entries = Vec::new();
    for policy in policies {
        for rule in policy.rules(direction).unwrap_or_default() {
            entries.extend(external_entries(rule, direction, subject));
            let named_egress = direction == Direction::Egress
                && (rule.ports.iter()).any(|p| matches!(p.port, PortMatch::Named(_)));
            if !named_egress {
                continue;
            }
            for peer in &rule.peers {
                let Peer::IpBlock { cidr, except } = peer else {
                    continue;
                };
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
        let set_allows = |set: u32| rule_set_allows(&self.rule_sets, set, protocol, port);
        let by_identity = self
            .identities
            .get(&peer_ip)
            .and_then(|id| group.peers.get(id))
            .is_some_and(|set| set_allows(*set));
        let by_prefix = longest_match(&group.prefixes, peer_ip).is_some_and(set_allows);
        by_identity || by_prefix
    }
}
