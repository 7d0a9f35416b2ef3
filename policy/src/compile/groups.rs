//! Policy groups, shared by both compilers: pods selected by the same policies share one group,
//! and groups keep their ids and their compiled form from one compile to the next.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::rules::PortRule;
use super::stable::{RuleSetInterner, StableIds};
use crate::model::{ContainerPort, Direction, Labels, Pod, Policy, PortMatch, Snapshot};

/// Pods with the same policies in a direction (and, where named ports are used, the same ports
/// they resolve to) share a group, so tables grow with distinct policy combinations, not with pods.
/// The key names the policies, so a group keeps its identity while their contents change.
pub(super) type GroupKey = (Direction, Vec<String>, Vec<ContainerPort>);

/// Pod address and direction → group id.
pub type EndpointGroups = BTreeMap<(Direction, IpAddr), u32>;

/// Assigns every selected pod address a group; `group_of` is called once per distinct group with
/// its key, policies and a representative pod, and returns the group's id.
pub(super) fn assign_groups<E>(
    snapshot: &Snapshot,
    mut group_of: impl FnMut(&GroupKey, &[&Policy], &Pod) -> Result<u32, E>,
) -> Result<EndpointGroups, E> {
    let mut endpoints = BTreeMap::new();
    let mut group_ids: HashMap<(Direction, Vec<usize>, Vec<ContainerPort>), u32> = HashMap::new();
    // Which policies select a pod depends only on its namespace, labels and hostNetwork: match
    // each distinct combination once, not every pod against every policy.
    let mut selecting_of: HashMap<(Direction, &str, &Labels, bool), Vec<usize>> = HashMap::new();
    for pod in &snapshot.pods {
        if pod.ips.is_empty() {
            continue;
        }
        for direction in [Direction::Ingress, Direction::Egress] {
            let selecting = selecting_of
                .entry((
                    direction,
                    pod.namespace.as_str(),
                    &pod.labels,
                    pod.host_network,
                ))
                .or_insert_with(|| {
                    snapshot
                        .policies
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| snapshot.selects(p, pod, direction))
                        .map(|(i, _)| i)
                        .collect()
                })
                .clone();
            if selecting.is_empty() {
                continue;
            }
            let policies: Vec<&Policy> = selecting.iter().map(|&i| &snapshot.policies[i]).collect();
            let uses_named = direction == Direction::Ingress
                && policies.iter().any(|p| {
                    p.rules(direction).unwrap_or_default().iter().any(|r| {
                        r.ports
                            .iter()
                            .any(|port| matches!(port.port, PortMatch::Named(_)))
                    })
                });
            let signature = if uses_named {
                pod.ports.clone()
            } else {
                Vec::new()
            };
            let local_key = (direction, selecting, signature);
            let group = match group_ids.get(&local_key) {
                Some(g) => *g,
                None => {
                    let key = (direction, policy_names(&policies), local_key.2.clone());
                    let id = group_of(&key, &policies, pod)?;
                    group_ids.insert(local_key, id);
                    id
                }
            };
            for ip in &pod.ips {
                endpoints.insert((direction, *ip), group);
            }
        }
    }
    Ok(endpoints)
}

/// Lays out groups by id; ids without a live group (retired, waiting for reuse) hold `empty`.
fn by_id<G: Clone>(mut groups: BTreeMap<u32, G>, len: u32, empty: G) -> Vec<G> {
    (0..len)
        .map(|id| groups.remove(&id).unwrap_or_else(|| empty.clone()))
        .collect()
}

pub(super) fn policy_names(policies: &[&Policy]) -> Vec<String> {
    policies.iter().map(|p| p.key()).collect()
}

/// A compiled group and the policy contents it was compiled from.
#[derive(Debug)]
pub(super) struct CachedGroup<G> {
    policies: Vec<Policy>,
    pub(super) group: G,
}

impl<G> CachedGroup<G> {
    pub(super) fn new(policies: &[&Policy], group: G) -> CachedGroup<G> {
        CachedGroup {
            policies: policies.iter().map(|p| (*p).clone()).collect(),
            group,
        }
    }

    pub(super) fn compiled_from(&self, policies: &[&Policy]) -> bool {
        self.policies.len() == policies.len()
            && self.policies.iter().zip(policies).all(|(a, b)| a == *b)
    }
}

/// A group of either compiler's tables.
pub(super) trait CompiledGroup: Clone {
    /// What an id without a live group holds: no policies, nothing allowed, no endpoint points
    /// at it.
    fn retired() -> Self;
    /// Ids of the rule sets the group refers to.
    fn rule_set_ids(&self) -> impl Iterator<Item = u32> + '_;
}

/// What a compiler keeps between compiles: stable group ids, the interned rule sets and the
/// groups compiled last, by key.
#[derive(Debug)]
pub(super) struct GroupCache<G> {
    pub(super) group_ids: StableIds<GroupKey>,
    pub(super) rule_sets: RuleSetInterner,
    pub(super) cached: HashMap<GroupKey, CachedGroup<G>>,
    /// Groups compiled (not reused) by the last compile.
    pub(super) recompiled: usize,
}

impl<G> Default for GroupCache<G> {
    fn default() -> Self {
        GroupCache {
            group_ids: StableIds::default(),
            rule_sets: RuleSetInterner::default(),
            cached: HashMap::new(),
            recompiled: 0,
        }
    }
}

impl<G: CompiledGroup> GroupCache<G> {
    /// Ends a compile that produced `groups` (by id): ids of groups no longer live are retired
    /// and their cache entries forgotten, rule sets no group uses are retired, and groups and
    /// rule sets are laid out by id.
    pub(super) fn finish(&mut self, groups: BTreeMap<u32, G>) -> (Vec<G>, Vec<Vec<PortRule>>) {
        let live: HashSet<u32> = groups.keys().copied().collect();
        self.group_ids.retain(|_, id| live.contains(&id));
        let group_ids = &self.group_ids;
        self.cached.retain(|key, _| group_ids.contains(key));
        let used: HashSet<u32> = groups.values().flat_map(G::rule_set_ids).collect();
        let groups = by_id(groups, self.group_ids.len(), G::retired());
        (groups, self.rule_sets.retain_used(&used))
    }
}
