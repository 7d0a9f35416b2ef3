//! Compiles a snapshot into the gateway's tables: pod address → policy group, and per group a set
//! of peer prefixes whose longest match gives the exact union of port rules allowed there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{
    ContainerPort, Direction, Labels, Peer, Pod, Policy, PortMatch, Protocol, Rule, Snapshot,
};

/// One allowed protocol and inclusive port range; `protocol: None` allows every protocol and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub protocol: Option<Protocol>,
    pub first: u16,
    pub last: u16,
}

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

impl PortRule {
    pub const ANY: PortRule = PortRule {
        protocol: None,
        first: 0,
        last: u16::MAX,
    };

    pub fn matches(&self, protocol: u8, port: u16) -> bool {
        match self.protocol {
            None => true,
            Some(p) => p.number() == protocol && (self.first..=self.last).contains(&port),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("{policies}: {direction} rules allow {count} disjoint port ranges at one prefix; the datapath holds at most {max}")]
    TooManyPortRanges {
        policies: String,
        direction: Direction,
        count: usize,
        max: usize,
    },
}

/// Most port ranges one prefix's rule set may hold (the kernel's `MAX_PORT_RANGES`).
pub const MAX_PORT_RANGES: usize = 16;

/// IPv4 addresses live in the IPv4-mapped range of one 128-bit space, as in the kernel tables.
const V4_MAPPED: u128 = 0xffff_0000_0000;

/// An address prefix in the shared 128-bit space: `(network, length)`, length 0..=128.
type Prefix128 = (u128, u8);

fn to128(net: &IpNet) -> Prefix128 {
    match net {
        IpNet::V4(n) => (
            (V4_MAPPED << 32) | u128::from(u32::from(n.network())),
            96 + n.prefix_len(),
        ),
        IpNet::V6(n) => (u128::from(n.network()), n.prefix_len()),
    }
}

fn addr128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => (V4_MAPPED << 32) | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from128((addr, len): Prefix128, v4: bool) -> IpNet {
    if v4 {
        IpNet::V4(
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(addr as u32), len - 96)
                .expect("IPv4 prefix length within 0..=32"),
        )
    } else {
        IpNet::V6(
            ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(addr), len)
                .expect("IPv6 prefix length within 0..=128"),
        )
    }
}

fn contains128((net, len): Prefix128, addr: u128) -> bool {
    len == 0 || (net ^ addr) >> (128 - u32::from(len)) == 0
}

/// One allowed address range of a group: an ipBlock (or "all addresses") with its port rules.
struct Entry {
    cidr: IpNet,
    except: Vec<IpNet>,
    ports: Vec<PortRule>,
}

/// Merges port rules into the canonical form: sorted, overlapping or adjacent ranges of one
/// protocol joined, everything subsumed by "any protocol" dropped.
fn canonical(rules: impl IntoIterator<Item = PortRule>) -> Vec<PortRule> {
    let mut rules: Vec<PortRule> = rules.into_iter().collect();
    if rules.iter().any(|r| r.protocol.is_none()) {
        return vec![PortRule::ANY];
    }
    rules.sort();
    let mut out: Vec<PortRule> = Vec::with_capacity(rules.len());
    for r in rules {
        match out.last_mut() {
            Some(prev)
                if prev.protocol == r.protocol
                    && u32::from(r.first) <= u32::from(prev.last) + 1 =>
            {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Flattens the entries of one address family into prefixes whose longest match is exact.
///
/// Every cidr and except becomes a node. For an address, let P be the longest node containing it:
/// every cidr or except containing the address contains P (they are nodes too), so the entries
/// allowing the address are exactly those whose cidr contains P and none of whose excepts does.
/// A depth-first walk over the sorted nodes keeps that set incrementally (entries enter at their
/// cidr, leave at their excepts), so the cost is O(nodes · log nodes) plus the rule sets built.
/// A node whose rule set equals the one inherited from its parent is left out.
fn flatten_family(
    entries: &[&Entry],
    v4: bool,
    interner: &mut RuleSetInterner,
    out: &mut Vec<(IpNet, u32)>,
) -> Result<(), usize> {
    let mut cidr_at: HashMap<Prefix128, Vec<usize>> = HashMap::new();
    let mut except_at: HashMap<Prefix128, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        cidr_at.entry(to128(&e.cidr)).or_default().push(i);
        for x in &e.except {
            except_at.entry(to128(x)).or_default().push(i);
        }
    }
    let mut nodes: Vec<Prefix128> = cidr_at.keys().chain(except_at.keys()).copied().collect();
    nodes.sort_unstable();
    nodes.dedup();

    let mut except_depth = vec![0u32; entries.len()];
    let mut active_ports: BTreeMap<PortRule, u32> = BTreeMap::new();
    // (node, rule set in force below it) for the chain of enclosing nodes.
    let mut stack: Vec<(Prefix128, Vec<PortRule>)> = Vec::new();
    let activate = |ports: &mut BTreeMap<PortRule, u32>, e: &Entry, on: bool| {
        for r in &e.ports {
            let count = ports.entry(*r).or_insert(0);
            if on {
                *count += 1;
            } else {
                *count -= 1;
                if *count == 0 {
                    ports.remove(r);
                }
            }
        }
    };
    let leave = |node: Prefix128, except_depth: &mut [u32], ports: &mut BTreeMap<PortRule, u32>| {
        for &i in except_at.get(&node).into_iter().flatten() {
            except_depth[i] -= 1;
            if except_depth[i] == 0 {
                activate(ports, entries[i], true);
            }
        }
        for &i in cidr_at.get(&node).into_iter().flatten() {
            if except_depth[i] == 0 {
                activate(ports, entries[i], false);
            }
        }
    };
    for node in nodes {
        while let Some((top, _)) = stack.last() {
            if top.1 < node.1 && contains128(*top, node.0) {
                break;
            }
            let (top, _) = stack.pop().expect("stack is not empty");
            leave(top, &mut except_depth, &mut active_ports);
        }
        for &i in cidr_at.get(&node).into_iter().flatten() {
            if except_depth[i] == 0 {
                activate(&mut active_ports, entries[i], true);
            }
        }
        for &i in except_at.get(&node).into_iter().flatten() {
            if except_depth[i] == 0 {
                activate(&mut active_ports, entries[i], false);
            }
            except_depth[i] += 1;
        }
        let set = canonical(active_ports.keys().copied());
        if set.len() > MAX_PORT_RANGES {
            return Err(set.len());
        }
        let inherited = stack.last().map(|(_, s)| s.as_slice()).unwrap_or(&[]);
        if set != inherited {
            out.push((from128(node, v4), interner.intern(set.clone())));
        }
        stack.push((node, set));
    }
    Ok(())
}

/// The port rules one rule contributes. Named ports resolve on `destination`, the pod receiving
/// the traffic; with no destination pod (an external host) they match nothing.
fn port_rules(rule: &Rule, destination: Option<&Pod>) -> Vec<PortRule> {
    if rule.ports.is_empty() {
        return vec![PortRule::ANY];
    }
    rule.ports
        .iter()
        .filter_map(|p| {
            let (first, last) = match &p.port {
                PortMatch::Any => (0, u16::MAX),
                PortMatch::Number { first, last } => (*first, *last),
                PortMatch::Named(name) => {
                    let n = destination?.named_port(name, p.protocol)?;
                    (n, n)
                }
            };
            Some(PortRule {
                protocol: Some(p.protocol),
                first,
                last,
            })
        })
        .collect()
}

/// The pod on the receiving end for traffic between `subject` and an external peer.
fn external_destination(direction: Direction, subject: &Pod) -> Option<&Pod> {
    match direction {
        Direction::Ingress => Some(subject),
        Direction::Egress => None,
    }
}

/// The address ranges (with ports) that `policies` allow for `pod` in `direction`.
fn group_entries(policies: &[&Policy], direction: Direction, pod: &Pod) -> Vec<Entry> {
    let mut entries = Vec::new();
    for policy in policies {
        for rule in policy.rules(direction).unwrap_or_default() {
            let ports = port_rules(rule, external_destination(direction, pod));
            if ports.is_empty() {
                continue;
            }
            if rule.peers.is_empty() {
                for all in ["0.0.0.0/0", "::/0"] {
                    entries.push(Entry {
                        cidr: all.parse().expect("literal CIDR"),
                        except: Vec::new(),
                        ports: ports.clone(),
                    });
                }
            }
            for peer in &rule.peers {
                if let Peer::IpBlock { cidr, except } = peer {
                    entries.push(Entry {
                        cidr: *cidr,
                        except: except.clone(),
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    entries
}

/// Pods with the same policies in a direction (and, where named ports are used, the same ports
/// they resolve to) share a group, so tables grow with distinct policy combinations, not with pods.
/// The key names the policies, so a group keeps its identity while their contents change.
type GroupKey = (Direction, Vec<String>, Vec<ContainerPort>);

/// Pod address and direction → group id.
pub type EndpointGroups = BTreeMap<(Direction, IpAddr), u32>;

/// Assigns every selected pod address a group; `group_of` is called once per distinct group with
/// its key, policies and a representative pod, and returns the group's id.
fn assign_groups<E>(
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

fn policy_names(policies: &[&Policy]) -> Vec<String> {
    policies.iter().map(|p| p.key()).collect()
}

/// Flattens entries of both families into `prefixes`.
fn flatten(
    entries: &[Entry],
    policies: &[&Policy],
    direction: Direction,
    interner: &mut RuleSetInterner,
) -> Result<Vec<(IpNet, u32)>, CompileError> {
    let mut prefixes = Vec::new();
    for v4 in [true, false] {
        let family: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.cidr.addr().is_ipv4() == v4)
            .collect();
        flatten_family(&family, v4, interner, &mut prefixes).map_err(|count| {
            CompileError::TooManyPortRanges {
                policies: policy_names(policies).join(", "),
                direction,
                count,
                max: MAX_PORT_RANGES,
            }
        })?;
    }
    // An IPv6 prefix covering the IPv4-mapped range must not answer for IPv4 addresses: shadow
    // it with the IPv4 root (deny unless 0.0.0.0/0 is listed).
    let mapped_root: IpNet = "::ffff:0:0/96".parse().expect("literal CIDR");
    let v4_root = "0.0.0.0/0".parse::<IpNet>().expect("literal CIDR");
    if prefixes.iter().any(|(p, _)| p.contains(&mapped_root))
        && !prefixes.iter().any(|(p, _)| *p == v4_root)
    {
        prefixes.push((v4_root, 0));
    }
    Ok(prefixes)
}

/// Compiles the gateway's tables for traffic between pods and external addresses, once. A daemon
/// that recompiles on every change uses a [`GatewayCompiler`] instead.
pub fn compile_gateway(snapshot: &Snapshot) -> Result<GatewayTables, CompileError> {
    GatewayCompiler::default().compile(snapshot)
}

/// A compiled group and the policy contents it was compiled from.
#[derive(Debug)]
struct CachedGroup<G> {
    policies: Vec<Policy>,
    group: G,
}

impl<G> CachedGroup<G> {
    fn compiled_from(&self, policies: &[&Policy]) -> bool {
        self.policies.len() == policies.len()
            && self.policies.iter().zip(policies).all(|(a, b)| a == *b)
    }
}

/// Compiles snapshot after snapshot, incrementally: a group whose policies did not change is
/// reused, not recompiled, and groups and rule sets keep their ids across compiles, so the next
/// tables differ from the previous ones only where the policy change reaches (the loaders write
/// just that difference). Pure: no I/O.
#[derive(Debug, Default)]
pub struct GatewayCompiler {
    group_ids: StableIds<GroupKey>,
    rule_sets: RuleSetInterner,
    cache: HashMap<GroupKey, CachedGroup<GatewayGroup>>,
    /// Groups compiled (not reused) by the last `compile`.
    recompiled: usize,
}

impl GatewayCompiler {
    /// The tables for `snapshot`. On error nothing already handed out changes meaning: ids stay
    /// reserved for the groups of the last successful compile.
    pub fn compile(&mut self, snapshot: &Snapshot) -> Result<GatewayTables, CompileError> {
        let GatewayCompiler {
            group_ids,
            rule_sets,
            cache,
            recompiled,
        } = self;
        *recompiled = 0;
        let mut groups = BTreeMap::new();
        let endpoints = assign_groups(snapshot, |key, policies, pod| {
            let id = group_ids.id(key);
            let group = match cache.get(key).filter(|c| c.compiled_from(policies)) {
                Some(cached) => cached.group.clone(),
                None => {
                    *recompiled += 1;
                    let direction = key.0;
                    let entries = group_entries(policies, direction, pod);
                    let group = GatewayGroup {
                        direction,
                        policies: key.1.clone(),
                        prefixes: flatten(&entries, policies, direction, rule_sets)?,
                    };
                    cache.insert(
                        key.clone(),
                        CachedGroup {
                            policies: policies.iter().map(|p| (*p).clone()).collect(),
                            group: group.clone(),
                        },
                    );
                    group
                }
            };
            groups.insert(id, group);
            Ok(id)
        })?;
        let live: HashSet<u32> = groups.keys().copied().collect();
        group_ids.retain(|_, id| live.contains(&id));
        cache.retain(|key, _| group_ids.contains(key));
        let used: HashSet<u32> = (groups.values())
            .flat_map(|g| g.prefixes.iter().map(|(_, rs)| *rs))
            .collect();
        Ok(GatewayTables {
            endpoints,
            groups: by_id(groups, group_ids.len(), GatewayGroup::retired()),
            rule_sets: rule_sets.retain_used(&used),
        })
    }

    /// Groups the last [`compile`](Self::compile) had to compile (the rest were reused).
    pub fn recompiled(&self) -> usize {
        self.recompiled
    }
}

impl GatewayGroup {
    /// What an id without a live group holds: no policies, no prefixes, no endpoint points at it.
    fn retired() -> GatewayGroup {
        GatewayGroup {
            direction: Direction::Ingress,
            policies: Vec::new(),
            prefixes: Vec::new(),
        }
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
        let peer = addr128(peer_ip);
        let best = self.groups[*group as usize]
            .prefixes
            .iter()
            .filter(|(net, _)| contains128(to128(net), peer))
            .max_by_key(|(net, _)| to128(net).1);
        best.is_some_and(|(_, set)| {
            self.rule_sets[*set as usize]
                .iter()
                .any(|r| r.matches(protocol, port))
        })
    }

    pub fn prefix_count(&self) -> usize {
        self.groups.iter().map(|g| g.prefixes.len()).sum()
    }
}

pub mod node;
mod stable;

use stable::{RuleSetInterner, StableIds};
