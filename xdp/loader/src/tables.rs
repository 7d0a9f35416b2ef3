//! The compiled tables as the loaders write them: what both kinds have ([`PolicyTables`]), their
//! validation against what the maps can hold, and the map keys and values they become.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_common::*;
use portcullis_policy::compile::node::NodeTables;
use portcullis_policy::compile::{EndpointGroups, GatewayTables, PortRule};
use portcullis_policy::model::Direction;

use crate::error::{Error, Result};
use crate::prefix_search::{entry_count, MAX_ENTRIES_PER_PREFIX};

/// Entry counts of one set of tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSizes {
    /// Node only: pod addresses with an identity.
    pub identities: usize,
    pub endpoints: usize,
    /// Groups with at least one policy.
    pub groups: usize,
    /// Node only: (group, peer identity) entries.
    pub peers: usize,
    pub prefixes: usize,
    /// `PREFIXES` entries: the prefixes plus the search's markers (known once written).
    pub prefix_entries: usize,
    /// Groups with prefixes (`PREFIX_LENGTHS` entries).
    pub prefix_groups: usize,
    pub rule_sets: usize,
}

impl TableSizes {
    /// Map entries in all: what one generation occupies (`PREFIXES`: the prefixes alone until
    /// the write has counted the markers).
    pub fn entries(&self) -> usize {
        let prefix_entries = self.prefix_entries.max(self.prefixes);
        self.identities
            + self.endpoints
            + self.peers
            + prefix_entries
            + self.prefix_groups
            + self.rule_sets
    }
}

/// The compiled tables of either program, as the shared loader core sees them: rule sets, groups
/// (their policies, prefixes and the rule sets they refer to) and endpoints, all indexed by the
/// compiler's stable ids.
pub trait PolicyTables: Clone + Default {
    fn rule_sets(&self) -> &[Vec<PortRule>];
    fn endpoints(&self) -> &EndpointGroups;
    fn group_count(&self) -> usize;
    fn group_policies(&self, group: usize) -> &[String];
    fn group_prefixes(&self, group: usize) -> &[(IpNet, u32)];
    /// Every rule-set index group `group` refers to.
    fn group_rule_sets(&self, group: usize) -> Vec<u32>;
    fn sizes(&self) -> TableSizes;
}

/// The accessors both table types have alike (same field names).
macro_rules! table_accessors {
    () => {
        fn rule_sets(&self) -> &[Vec<PortRule>] {
            &self.rule_sets
        }
        fn endpoints(&self) -> &EndpointGroups {
            &self.endpoints
        }
        fn group_count(&self) -> usize {
            self.groups.len()
        }
        fn group_policies(&self, group: usize) -> &[String] {
            &self.groups[group].policies
        }
        fn group_prefixes(&self, group: usize) -> &[(IpNet, u32)] {
            self.groups
                .get(group)
                .map_or(&[], |g| g.prefixes.as_slice())
        }
    };
}

fn live_groups<'a>(policies: impl Iterator<Item = &'a Vec<String>>) -> usize {
    policies.filter(|p| !p.is_empty()).count()
}

impl PolicyTables for GatewayTables {
    table_accessors!();
    fn group_rule_sets(&self, group: usize) -> Vec<u32> {
        self.groups[group]
            .prefixes
            .iter()
            .map(|(_, rs)| *rs)
            .collect()
    }
    fn sizes(&self) -> TableSizes {
        TableSizes {
            endpoints: self.endpoints.len(),
            groups: live_groups(self.groups.iter().map(|g| &g.policies)),
            prefixes: self.prefix_count(),
            prefix_groups: self
                .groups
                .iter()
                .filter(|g| !g.prefixes.is_empty())
                .count(),
            rule_sets: self.rule_sets.len(),
            ..TableSizes::default()
        }
    }
}

impl PolicyTables for NodeTables {
    table_accessors!();
    fn group_rule_sets(&self, group: usize) -> Vec<u32> {
        let g = &self.groups[group];
        g.prefixes
            .iter()
            .map(|(_, rs)| *rs)
            .chain(g.peers.values().copied())
            .collect()
    }
    fn sizes(&self) -> TableSizes {
        TableSizes {
            identities: self.identities.len(),
            endpoints: self.endpoints.len(),
            groups: live_groups(self.groups.iter().map(|g| &g.policies)),
            peers: self.groups.iter().map(|g| g.peers.len()).sum(),
            prefixes: self.groups.iter().map(|g| g.prefixes.len()).sum(),
            prefix_groups: self
                .groups
                .iter()
                .filter(|g| !g.prefixes.is_empty())
                .count(),
            rule_sets: self.rule_sets.len(),
            ..TableSizes::default()
        }
    }
}

/// Each policy map with what one generation of `sizes` puts in it and its capacity (both
/// generations).
fn room(sizes: &TableSizes) -> [(&'static str, &'static str, usize, u32); 7] {
    [
        (
            MAP_ENDPOINTS,
            "endpoints (selected pod address and direction)",
            sizes.endpoints,
            MAX_ENDPOINTS,
        ),
        (MAP_PREFIXES, "prefixes", sizes.prefixes, MAX_PREFIXES),
        (
            MAP_PREFIX_LENGTHS,
            "groups with prefixes",
            sizes.prefix_groups,
            MAX_PREFIX_GROUPS,
        ),
        (MAP_RULE_SETS, "rule sets", sizes.rule_sets, MAX_RULE_SETS),
        (
            MAP_DROPS_BY_GROUP,
            "policy groups (each with a drop counter)",
            sizes.groups,
            MAX_GROUP_DROPS,
        ),
        (
            MAP_IDENTITIES,
            "pod addresses with an identity",
            sizes.identities,
            MAX_IDENTITIES,
        ),
        (
            MAP_PEERS,
            "(group, peer identity) entries",
            sizes.peers,
            MAX_PEERS,
        ),
    ]
}

/// The room one generation has in a map of `capacity` entries: half (the one in force stays
/// beside it).
fn generation_room(capacity: u32) -> usize {
    capacity as usize / 2
}

/// Checks that the maps can hold `tables` and that every index in them exists: nothing is
/// written for tables that would be rejected half way. Each generation may fill half of a policy
/// map (the one in force stays beside it). `PREFIXES` also holds the search's markers, which
/// depend on what the generation held before: [`check_prefix_entries`] counts them, also before
/// anything is written.
pub fn validate<T: PolicyTables>(tables: &T) -> Result<()> {
    let sizes = tables.sizes();
    for (map, what, needed, capacity) in room(&sizes) {
        let max = generation_room(capacity);
        if needed > max {
            return Err(Error::TooManyEntries {
                map,
                what,
                needed,
                max,
                capacity,
            });
        }
    }
    for (i, rules) in tables.rule_sets().iter().enumerate() {
        if rules.len() > MAX_PORT_RANGES {
            let mut policies: Vec<&str> = (0..tables.group_count())
                .filter(|&g| tables.group_rule_sets(g).contains(&(i as u32)))
                .flat_map(|g| tables.group_policies(g).iter().map(String::as_str))
                .collect();
            policies.sort_unstable();
            policies.dedup();
            return Err(Error::TooManyPortRanges {
                rule_set: i,
                ranges: rules.len(),
                max: MAX_PORT_RANGES,
                policies: policies.join(", "),
            });
        }
    }
    for g in 0..tables.group_count() {
        for rs in tables.group_rule_sets(g) {
            if rs as usize >= tables.rule_sets().len() {
                return Err(Error::BadIndex {
                    what: "rule set",
                    index: rs,
                });
            }
        }
    }
    for gi in tables.endpoints().values() {
        if *gi as usize >= tables.group_count() {
            return Err(Error::BadIndex {
                what: "group",
                index: *gi,
            });
        }
    }
    Ok(())
}

/// The `PREFIXES` entries (prefixes and the search's markers) generation `new` will have once
/// written over `old` (which has `old_entries` of them; `None`: unknown, the generation is
/// rewritten from empty), checked against the generation's room before anything is written.
/// Cheap when the bound of [`MAX_ENTRIES_PER_PREFIX`] per prefix fits; otherwise the changed
/// groups' entries are counted. Returns the count when it was computed.
pub fn check_prefix_entries<T: PolicyTables>(
    old: Option<&T>,
    old_entries: usize,
    new: &T,
) -> Result<Option<usize>> {
    let max = generation_room(MAX_PREFIXES);
    if new.sizes().prefixes.saturating_mul(MAX_ENTRIES_PER_PREFIX) <= max {
        return Ok(None);
    }
    let empty = T::default();
    let (old, mut needed) = match old {
        Some(old) => (old, old_entries),
        None => (&empty, 0),
    };
    for g in 0..new.group_count().max(old.group_count()) {
        let (before, after) = (old.group_prefixes(g), new.group_prefixes(g));
        if before != after {
            needed = (needed + entry_count(after)).saturating_sub(entry_count(before));
        }
    }
    if needed > max {
        return Err(Error::TooManyEntries {
            map: MAP_PREFIXES,
            what: "entries (prefixes and the search's markers)",
            needed,
            max,
            capacity: MAX_PREFIXES,
        });
    }
    Ok(Some(needed))
}

/// Address as stored in every key: 16 bytes, network order, IPv4 mapped.
pub fn key_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Group or rule-set id of index `index` in generation `parity`.
pub fn generation_id(index: usize, parity: u32) -> u32 {
    (index as u32 + 1) | (parity * GENERATION_ID_BIT)
}

pub(crate) fn rule_set_value(rules: &[PortRule]) -> RuleSet {
    let mut value = RuleSet {
        count: rules.len() as u32,
        ranges: [PortRange::default(); MAX_PORT_RANGES],
    };
    for (slot, rule) in value.ranges.iter_mut().zip(rules) {
        *slot = PortRange {
            protocol: rule.protocol.map_or(PROTO_ANY, |p| p.number()),
            _pad: 0,
            first: rule.first,
            last: rule.last,
        };
    }
    value
}

pub(crate) fn endpoint_key((direction, ip): (Direction, IpAddr), parity: u32) -> EndpointKey {
    EndpointKey {
        addr: key_addr(ip),
        direction: match direction {
            Direction::Ingress => DIRECTION_INGRESS,
            Direction::Egress => DIRECTION_EGRESS,
        },
        generation: parity as u8,
        _pad: [0; 2],
    }
}

/// Group id → the policies of that group, for groups of the generations this process wrote.
pub type GroupPolicies = BTreeMap<u32, Vec<String>>;
