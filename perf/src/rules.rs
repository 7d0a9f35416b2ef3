//! The same compiled policy, expressed for each contender.
//!
//! Every contender gets its rules from one `GatewayTables` (compiled by `portcullis_policy` from
//! the synthetic NetworkPolicies), so they enforce the same thing by construction; the harness
//! checks it on real packets too (verdict agreement). The compiled table maps each policy group's
//! prefixes (longest match wins; an empty rule set is an `except` carve-out) to port rules:
//! - nftables: per group and per distinct port rule one `flags interval` set of the disjoint
//!   address ranges where that rule applies (the longest-match table flattened into intervals —
//!   exact whatever the overlaps, and the best form for nftables' interval tree).
//! - iptables + ipset: per group and port rule one `hash:net` set holding the group's prefixes,
//!   with `nomatch` on those where the rule does not apply (excepts and other carve-outs);
//!   `hash:net` tries the most specific prefix first, so this is the same longest match.
//! - linear iptables: the group's prefixes longest first, `ACCEPT` for each allowed port rule
//!   then `DROP` (a carve-out stops there), in one chain per group.
//!
//! Source pods select their group (an nftables verdict map; an ipset `hash:ip` per group for
//! iptables). Packets from unselected sources pass, as in the gateway.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use portcullis_policy::compile::{GatewayTables, PortRule};
use portcullis_policy::model::{Direction, Protocol};

/// One group's IPv4 longest-match table flattened: disjoint, sorted, merged ranges.
pub struct Flat {
    pub ranges: Vec<Range>,
}

impl Flat {
    /// The first range that does not end before `a` (the one holding `a`: the ranges cover
    /// every address).
    pub fn range_at(&self, a: u32) -> Option<&Range> {
        let i = self.ranges.partition_point(|r| r.last < a);
        self.ranges.get(i)
    }
}

/// Addresses `first..=last` (host order) and the rule-set id valid there (`None`: no prefix,
/// denied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub first: u32,
    pub last: u32,
    pub rule_set: Option<u32>,
}

impl Range {
    pub fn contains(&self, a: u32) -> bool {
        self.first <= a && a <= self.last
    }
}

/// An IPv4 prefix of a group's table: network address (host order), length, rule-set id.
struct V4Prefix {
    start: u32,
    len: u8,
    rule_set: u32,
}

fn v4_prefixes(prefixes: &[(IpNet, u32)]) -> Vec<V4Prefix> {
    prefixes
        .iter()
        .filter_map(|(net, set)| match net {
            IpNet::V4(n) => Some(V4Prefix {
                start: u32::from(n.network()),
                len: n.prefix_len(),
                rule_set: *set,
            }),
            IpNet::V6(_) => None,
        })
        .collect()
}

fn last_of(start: u32, len: u8) -> u32 {
    match len {
        0 => u32::MAX,
        32 => start,
        _ => start | (u32::MAX >> len),
    }
}

pub fn flatten(prefixes: &[(IpNet, u32)]) -> Flat {
    let v4 = v4_prefixes(prefixes);
    let mut by_len: Vec<HashMap<u32, u32>> = vec![HashMap::new(); 33];
    let mut bounds: Vec<u64> = vec![0, 1u64 << 32];
    for p in &v4 {
        by_len[p.len as usize].insert(p.start, p.rule_set);
        bounds.push(p.start as u64);
        bounds.push(last_of(p.start, p.len) as u64 + 1);
    }
    bounds.sort_unstable();
    bounds.dedup();
    let lens: Vec<u8> = (0..=32u8)
        .rev()
        .filter(|l| !by_len[*l as usize].is_empty())
        .collect();
    let lookup = |a: u32| -> Option<u32> {
        lens.iter().find_map(|l| {
            let mask = if *l == 0 { 0 } else { u32::MAX << (32 - l) };
            by_len[*l as usize].get(&(a & mask)).copied()
        })
    };
    let mut ranges: Vec<Range> = Vec::new();
    for w in bounds.windows(2) {
        let (first, last) = (w[0] as u32, (w[1] - 1) as u32);
        let rule_set = lookup(first);
        match ranges.last_mut() {
            Some(prev) if prev.rule_set == rule_set && prev.last as u64 + 1 == first as u64 => {
                prev.last = last
            }
            _ => ranges.push(Range {
                first,
                last,
                rule_set,
            }),
        }
    }
    Flat { ranges }
}

/// Distinct port rules used by a group.
fn universe(tables: &GatewayTables, flat: &Flat) -> Vec<PortRule> {
    let mut u = BTreeSet::new();
    for s in flat.ranges.iter().filter_map(|r| r.rule_set) {
        u.extend(tables.rule_sets[s as usize].iter().copied());
    }
    u.into_iter().collect()
}

fn rule_match_nft(r: &PortRule) -> String {
    match r.protocol {
        None => String::new(),
        Some(p) => {
            let name = proto_name(p);
            if r.first == r.last {
                format!("{name} dport {} ", r.first)
            } else {
                format!("{name} dport {}-{} ", r.first, r.last)
            }
        }
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p.number() {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "udp",
    }
}

fn rule_match_ipt(r: &PortRule) -> String {
    match r.protocol {
        None => String::new(),
        Some(p) => format!("-p {} --dport {}:{} ", proto_name(p), r.first, r.last),
    }
}

/// Egress groups (index, pods) — the traffic measured is pod → external.
pub fn egress_groups(tables: &GatewayTables) -> BTreeMap<u32, Vec<Ipv4Addr>> {
    let mut g: BTreeMap<u32, Vec<Ipv4Addr>> = BTreeMap::new();
    for ((dir, ip), group) in &tables.endpoints {
        if let (Direction::Egress, IpAddr::V4(v4)) = (dir, ip) {
            g.entry(*group).or_default().push(*v4);
        }
    }
    g
}

/// Every egress group by id: its pods and its flattened table.
pub struct Flattened {
    pub groups: BTreeMap<u32, Group>,
}

pub struct Group {
    pub pods: Vec<Ipv4Addr>,
    pub flat: Flat,
}

pub fn flatten_all(tables: &GatewayTables) -> Flattened {
    Flattened {
        groups: egress_groups(tables)
            .into_iter()
            .map(|(g, pods)| {
                let flat = flatten(&tables.groups[g as usize].prefixes);
                (g, Group { pods, flat })
            })
            .collect(),
    }
}

/// An `nft -f` script and its interval elements.
pub struct NftRules {
    pub script: String,
    pub elements: usize,
}

/// An `ipset restore` script, the `iptables-restore` script using its sets, and how many set
/// entries or rules they hold.
pub struct IptRules {
    pub ipset: String,
    pub iptables: String,
    pub count: usize,
}

/// `nft -f` script (table `ip pcperf`, forward hook, packets entering `iface`). `stateful` puts
/// conntrack in front, as a stateful firewall is usually written: packets of a connection that
/// conntrack already has in state established or related are accepted before the rules, so only
/// new connections pay for them (and every packet pays conntrack's lookup, new ones its insert).
pub fn nftables(tables: &GatewayTables, flat: &Flattened, iface: &str, stateful: bool) -> NftRules {
    let mut s = String::from("table ip pcperf {\n");
    let mut elements = 0;
    let mut chains = String::new();
    let mut vmap = Vec::new();
    for (g, Group { pods, flat: f }) in &flat.groups {
        for pod in pods {
            vmap.push(format!("{pod} : jump g{g}"));
        }
        let _ = writeln!(chains, "  chain g{g} {{");
        for (ri, r) in universe(tables, f).iter().enumerate() {
            let ranges: Vec<String> = f
                .ranges
                .iter()
                .filter(|range| {
                    range
                        .rule_set
                        .is_some_and(|s| tables.rule_sets[s as usize].contains(r))
                })
                .map(|range| {
                    let (a, b) = (Ipv4Addr::from(range.first), Ipv4Addr::from(range.last));
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            // Adjacent ranges of one rule are merged by `auto-merge`; the flattening already
            // merged runs of the same rule set.
            elements += ranges.len();
            let _ = writeln!(
                s,
                "  set g{g}r{ri} {{ type ipv4_addr; flags interval; auto-merge; {} }}",
                if ranges.is_empty() {
                    String::new()
                } else {
                    format!("elements = {{ {} }}", ranges.join(", "))
                }
            );
            let _ = writeln!(
                chains,
                "    {}ip daddr @g{g}r{ri} accept",
                rule_match_nft(r)
            );
        }
        let _ = writeln!(chains, "    drop\n  }}");
    }
    let _ = writeln!(
        s,
        "  map pods {{ type ipv4_addr : verdict; elements = {{ {} }} }}",
        vmap.join(", ")
    );
    s.push_str(&chains);
    let _ = writeln!(
        s,
        "  chain forward_filter {{ type filter hook forward priority 0; policy accept;\n    {}iifname \"{iface}\" ip saddr vmap @pods\n  }}\n}}",
        if stateful {
            "ct state established,related accept\n    "
        } else {
            ""
        }
    );
    NftRules {
        script: s,
        elements,
    }
}

/// The scripts of an iptables contender, written group by group: the ipset script, the chain
/// declarations and the rules of the `iptables-restore` script.
struct IptWriter<'a> {
    iface: &'a str,
    tag: &'a str,
    sets: String,
    chains: String,
    rules: String,
    count: usize,
}

impl<'a> IptWriter<'a> {
    fn new(iface: &'a str, tag: &'a str) -> IptWriter<'a> {
        IptWriter {
            iface,
            tag,
            sets: String::new(),
            chains: String::new(),
            rules: String::new(),
            count: 0,
        }
    }

    /// Group `g`'s `hash:ip` set of its pods and the `FORWARD` rule sending their packets to
    /// the group's chain `G<g>`.
    fn pod_chain(&mut self, g: u32, pods: &[Ipv4Addr]) {
        let (iface, tag) = (self.iface, self.tag);
        let _ = writeln!(self.sets, "create {tag}p{g} hash:ip family inet");
        for p in pods {
            let _ = writeln!(self.sets, "add {tag}p{g} {p}");
        }
        let _ = writeln!(self.chains, ":G{g} - [0:0]");
        let _ = writeln!(
            self.rules,
            "-A FORWARD -i {iface} -m set --match-set {tag}p{g} src -j G{g}"
        );
    }

    fn finish(self) -> IptRules {
        IptRules {
            ipset: self.sets,
            iptables: format!("*filter\n{}{}COMMIT\n", self.chains, self.rules),
            count: self.count,
        }
    }
}

/// `ipset restore` script and `iptables-restore` script for the ipset contender (`count`: set
/// entries).
pub fn ipset(tables: &GatewayTables, flat: &Flattened, iface: &str, tag: &str) -> IptRules {
    let mut w = IptWriter::new(iface, tag);
    for (g, group) in &flat.groups {
        let prefixes = v4_prefixes(&tables.groups[*g as usize].prefixes);
        w.pod_chain(*g, &group.pods);
        for (ri, r) in universe(tables, &group.flat).iter().enumerate() {
            let name = format!("{tag}g{g}r{ri}");
            let _ = writeln!(
                w.sets,
                "create {name} hash:net family inet hashsize {} maxelem {}",
                (prefixes.len().next_power_of_two()).max(1024),
                prefixes.len().max(1024) * 2
            );
            for p in &prefixes {
                if p.len == 0 {
                    continue; // hash:net has no /0; the synthetic rules never use it
                }
                let allowed = tables.rule_sets[p.rule_set as usize].contains(r);
                let _ = writeln!(
                    w.sets,
                    "add {name} {}/{}{}",
                    Ipv4Addr::from(p.start),
                    p.len,
                    if allowed { "" } else { " nomatch" }
                );
                w.count += 1;
            }
            let _ = writeln!(
                w.rules,
                "-A G{g} {}-m set --match-set {name} dst -j ACCEPT",
                rule_match_ipt(r)
            );
        }
        let _ = writeln!(w.rules, "-A G{g} -j DROP");
    }
    w.finish()
}

/// `iptables-restore` script of linear rules, with the ipset script of the pods' sets (pods are
/// still matched by a small ipset per group; `count`: rules).
pub fn linear(tables: &GatewayTables, flat: &Flattened, iface: &str, tag: &str) -> IptRules {
    let mut w = IptWriter::new(iface, tag);
    for (g, group) in &flat.groups {
        w.pod_chain(*g, &group.pods);
        let mut prefixes = v4_prefixes(&tables.groups[*g as usize].prefixes);
        prefixes.sort_by_key(|p| (std::cmp::Reverse(p.len), p.start));
        for p in prefixes {
            let net = format!("{}/{}", Ipv4Addr::from(p.start), p.len);
            for r in &tables.rule_sets[p.rule_set as usize] {
                let _ = writeln!(w.rules, "-A G{g} -d {net} {}-j ACCEPT", rule_match_ipt(r));
                w.count += 1;
            }
            let _ = writeln!(w.rules, "-A G{g} -d {net} -j DROP");
            w.count += 1;
        }
        let _ = writeln!(w.rules, "-A G{g} -j DROP");
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_is_longest_match() {
        let p: Vec<(IpNet, u32)> = vec![
            ("11.0.0.0/8".parse().unwrap(), 1),
            ("11.1.0.0/16".parse().unwrap(), 0),
            ("11.1.2.0/24".parse().unwrap(), 1),
        ];
        let f = flatten(&p);
        let at = |a: &str| {
            let a = u32::from(a.parse::<Ipv4Addr>().unwrap());
            f.ranges.iter().find(|r| r.contains(a)).unwrap().rule_set
        };
        assert_eq!(at("10.255.255.255"), None);
        assert_eq!(at("11.0.0.1"), Some(1));
        assert_eq!(at("11.1.0.1"), Some(0));
        assert_eq!(at("11.1.2.200"), Some(1));
        assert_eq!(at("11.1.3.0"), Some(0));
        assert_eq!(at("12.0.0.0"), None);
        assert_eq!(at("255.255.255.255"), None);
    }
}
