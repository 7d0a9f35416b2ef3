//! The gateway's tables, for traffic crossing the cluster edge: pod address → policy group, and
//! per group the peer prefixes whose longest match gives the port rules allowed there.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::groups::{assign_groups, CachedGroup, CompiledGroup, EndpointGroups, GroupCache};
use super::prefixes::{external_entries, flatten, longest_match};
use super::rules::{rule_set_allows, PortRule};
use super::CompileError;
use crate::model::{Direction, Snapshot};

/// Policy tables for traffic crossing the cluster edge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayTables {
    /// Every pod address selected by at least one policy of that direction → index into `groups`.
    pub endpoints: EndpointGroups,
    /// Indexed by group id. Ids are stable across a [`GatewayCompiler`]'s compiles; an id without
    /// a live group holds an empty one (no policies, no prefixes) until it is reused.
    pub groups: Vec<GatewayGroup>,
    /// Deduplicated rule sets, indexed by (stable) id; a prefix value indexes this. An empty set
    /// denies; id 0 is always empty.
    pub rule_sets: Vec<Vec<PortRule>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayGroup {
    pub direction: Direction,
    /// `namespace/name` of the policies selecting the group's pods in that direction.
    pub policies: Vec<String>,
    /// Peer prefixes (canonical) → index into `rule_sets`. The longest prefix containing an
    /// address gives its rule set; an address no prefix contains is denied.
    pub prefixes: Vec<(IpNet, u32)>,
}

/// Compiles the gateway's tables for traffic between pods and external addresses, once. A daemon
/// that recompiles on every change uses a [`GatewayCompiler`] instead.
pub fn compile_gateway(snapshot: &Snapshot) -> Result<GatewayTables, CompileError> {
    GatewayCompiler::default().compile(snapshot)
}

/// Compiles snapshot after snapshot, incrementally: a group whose policies did not change is
/// reused, not recompiled, and groups and rule sets keep their ids across compiles, so the next
/// tables differ from the previous ones only where the policy change reaches (the loaders write
/// just that difference). Pure: no I/O.
#[derive(Debug, Default)]
pub struct GatewayCompiler {
    groups: GroupCache<GatewayGroup>,
}

impl GatewayCompiler {
    /// The tables for `snapshot`. On error nothing already handed out changes meaning: ids stay
    /// reserved for the groups of the last successful compile.
    pub fn compile(&mut self, snapshot: &Snapshot) -> Result<GatewayTables, CompileError> {
        let GroupCache {
            group_ids,
            rule_sets,
            cached,
            recompiled,
        } = &mut self.groups;
        *recompiled = 0;
        let mut groups = BTreeMap::new();
        let endpoints = assign_groups(snapshot, |key, policies, pod| {
            let id = group_ids.id(key);
            let group = match cached.get(key).filter(|c| c.compiled_from(policies)) {
                Some(cached) => cached.group.clone(),
                None => {
                    *recompiled += 1;
                    let direction = key.0;
                    let entries: Vec<_> = (policies.iter())
                        .flat_map(|p| p.rules(direction).unwrap_or_default())
                        .flat_map(|rule| external_entries(rule, direction, pod))
                        .collect();
                    let group = GatewayGroup {
                        direction,
                        policies: key.1.clone(),
                        prefixes: flatten(&entries, policies, direction, rule_sets)?,
                    };
                    cached.insert(key.clone(), CachedGroup::new(policies, group.clone()));
                    group
                }
            };
            groups.insert(id, group);
            Ok(id)
        })?;
        let (groups, rule_sets) = self.groups.finish(groups);
        Ok(GatewayTables {
            endpoints,
            groups,
            rule_sets,
        })
    }

    /// Groups the last [`compile`](Self::compile) had to compile (the rest were reused).
    pub fn recompiled(&self) -> usize {
        self.groups.recompiled
    }
}

impl CompiledGroup for GatewayGroup {
    fn retired() -> GatewayGroup {
        GatewayGroup {
            direction: Direction::Ingress,
            policies: Vec::new(),
            prefixes: Vec::new(),
        }
    }

    fn rule_set_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.prefixes.iter().map(|(_, set)| *set)
    }
}

impl GatewayTables {
    /// The reference lookup the kernel program implements: is traffic between `pod_ip` and the
    /// external `peer_ip` allowed in `direction` (egress: pod → peer; ingress: peer → pod)?
    pub fn allows(
        &self,
        direction: Direction,
        pod_ip: IpAddr,
        peer_ip: IpAddr,
        protocol: u8,
        port: u16,
    ) -> bool {
        let Some(group) = self.endpoints.get(&(direction, pod_ip)) else {
            return true;
        };
        longest_match(&self.groups[*group as usize].prefixes, peer_ip)
            .is_some_and(|set| rule_set_allows(&self.rule_sets, set, protocol, port))
    }

    pub fn prefix_count(&self) -> usize {
        self.groups.iter().map(|g| g.prefixes.len()).sum()
    }
}
