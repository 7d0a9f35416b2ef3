//! Address entries (ipBlocks with their port rules) and their flattening into prefixes whose
//! longest match gives the exact union of the rules allowed at an address.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::kernel_abi::{
    addr128, check_port_ranges, contains128, from128, shadow_v4_mapped, to128, Prefix128,
};
use super::rules::{canonical, external_destination, port_rules, PortRule};
use super::stable::RuleSetInterner;
use super::CompileError;
use crate::model::{Direction, Peer, Pod, Policy, Rule};

/// One allowed address range of a group: an ipBlock (or "all addresses") with its port rules.
pub(super) struct Entry {
    pub(super) cidr: IpNet,
    pub(super) except: Vec<IpNet>,
    pub(super) ports: Vec<PortRule>,
}

/// The entries `rule` allows for traffic between `subject` and addresses outside the cluster:
/// its ipBlocks, or every address when it names no peers. Named ports resolve on `subject` for
/// ingress; for egress there is no destination pod, so they match nothing.
pub(super) fn external_entries(rule: &Rule, direction: Direction, subject: &Pod) -> Vec<Entry> {
    let ports = port_rules(rule, external_destination(direction, subject));
    if ports.is_empty() {
        return Vec::new();
    }
    let mut entries = Vec::new();
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
    entries
}

/// Flattens entries of both families into prefixes.
pub(super) fn flatten(
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
        flatten_family(&family, v4, policies, direction, interner, &mut prefixes)?;
    }
    shadow_v4_mapped(&mut prefixes);
    Ok(prefixes)
}

/// The rule set of the longest of `prefixes` containing `addr`, the lookup the datapath makes.
pub(super) fn longest_match(prefixes: &[(IpNet, u32)], addr: IpAddr) -> Option<u32> {
    let addr = addr128(addr);
    prefixes
        .iter()
        .filter(|(net, _)| contains128(to128(net), addr))
        .max_by_key(|(net, _)| to128(net).1)
        .map(|(_, set)| *set)
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
    policies: &[&Policy],
    direction: Direction,
    interner: &mut RuleSetInterner,
    out: &mut Vec<(IpNet, u32)>,
) -> Result<(), CompileError> {
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
        check_port_ranges(&set, policies, direction)?;
        let inherited = stack.last().map(|(_, s)| s.as_slice()).unwrap_or(&[]);
        if set != inherited {
            out.push((from128(node, v4), interner.intern(set.clone())));
        }
        stack.push((node, set));
    }
    Ok(())
}
