//! The compiled gateway tables of one generation in the engine's lookup form, and the policy
//! check over them with exactly the semantics of `portcullis_ebpf_common::policy::check`: the
//! same sides, egress of the source first, deny wins, an unselected side allows, ICMP matched
//! only by "any protocol" rules, and the same [`Verdict`] (group ids as the loader writes them
//! for that generation, so drop events and per-group drop counts name the same policies).

use ahash::AHashMap;
use portcullis_bpf::{generation_id, key_addr};
use portcullis_common::*;
use portcullis_ebpf_common::policy::{Query, Verdict, KIND_ALLOW, KIND_DENY};
use portcullis_policy::compile::GatewayTables;
use portcullis_policy::model::Direction;

/// One group's peer prefixes: per prefix length (IPv4-mapped space) the masked addresses and
/// their rule-set index. A peer's longest prefix is found by probing the lengths longest first:
/// at most one hash probe per distinct length of the group.
#[derive(Default)]
struct GroupPrefixes {
    /// Distinct lengths, longest first.
    lengths: Vec<u8>,
    prefixes: AHashMap<(u8, [u8; 16]), u32>,
}

impl GroupPrefixes {
    fn longest(&self, peer: &[u8; 16]) -> Option<u32> {
        self.lengths.iter().find_map(|&len| {
            let masked = mask_prefix(peer, u32::from(len));
            self.prefixes.get(&(len, masked)).copied()
        })
    }
}

/// The gateway's policy of one generation, ready for per-packet checks.
pub struct PolicyTables {
    generation: u64,
    /// The generation parity the kernel would judge these tables under.
    parity: u32,
    /// (pod address, `DIRECTION_*`) → group index.
    endpoints: AHashMap<([u8; 16], u8), u32>,
    /// Indexed by group index.
    groups: Vec<GroupPrefixes>,
    /// Indexed by rule-set index, as the loader writes them (`RuleSet` ranges).
    rule_sets: Vec<Vec<PortRange>>,
}

impl PolicyTables {
    /// The lookup form of `tables`, generation `generation` (its parity, `generation & 1`, is
    /// the kernel's `Config::generation` bit the ids carry).
    pub fn new(tables: &GatewayTables, generation: u64) -> PolicyTables {
        let endpoints = tables
            .endpoints
            .iter()
            .map(|(&(direction, ip), &group)| {
                let direction = match direction {
                    Direction::Ingress => DIRECTION_INGRESS,
                    Direction::Egress => DIRECTION_EGRESS,
                };
                ((key_addr(ip), direction), group)
            })
            .collect();
        let groups = tables
            .groups
            .iter()
            .map(|group| {
                let mut prefixes = GroupPrefixes::default();
                for (net, rule_set) in &group.prefixes {
                    let mapped_v4 = if net.addr().is_ipv4() {
                        IPV4_MAPPED_PREFIX_BITS
                    } else {
                        0
                    };
                    let len = mapped_v4 + net.prefix_len();
                    let addr = mask_prefix(&key_addr(net.network()), u32::from(len));
                    prefixes.prefixes.insert((len, addr), *rule_set);
                    prefixes.lengths.push(len);
                }
                prefixes.lengths.sort_unstable_by(|a, b| b.cmp(a));
                prefixes.lengths.dedup();
                prefixes
            })
            .collect();
        let rule_sets = tables
            .rule_sets
            .iter()
            .map(|rules| {
                (rules.iter())
                    .map(|rule| PortRange {
                        protocol: rule.protocol.map_or(PROTO_ANY, |p| p.number()),
                        _pad: 0,
                        first: rule.first,
                        last: rule.last,
                    })
                    .collect()
            })
            .collect();
        PolicyTables {
            generation,
            parity: (generation & 1) as u32,
            endpoints,
            groups,
            rule_sets,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The generation parity (`Config::generation & 1`), as flows record it.
    pub fn parity(&self) -> u32 {
        self.parity
    }

    /// Judges `q` on every side in `q.sides`, egress of the source first; `q.g` is ignored (these
    /// tables are one generation).
    pub fn check(&self, q: &Query) -> Verdict {
        let mut egress = Verdict::UNSELECTED;
        if q.sides & CHECK_EGRESS_OF_SRC != 0 {
            egress = self.side(q, DIRECTION_EGRESS);
            if egress.is_deny() {
                return egress;
            }
        }
        if q.sides & CHECK_INGRESS_OF_DST != 0 {
            let ingress = self.side(q, DIRECTION_INGRESS);
            if !ingress.is_unselected() {
                return ingress;
            }
        }
        egress
    }

    /// One side: the subject pod (source for egress, destination for ingress) and its peer.
    fn side(&self, q: &Query, direction: u8) -> Verdict {
        let (pod, peer) = if direction == DIRECTION_EGRESS {
            (&q.src, &q.dst)
        } else {
            (&q.dst, &q.src)
        };
        let Some(&group) = self.endpoints.get(&(*pod, direction)) else {
            return Verdict::UNSELECTED;
        };
        let allowed = self.groups[group as usize]
            .longest(peer)
            .is_some_and(|rule_set| self.rule_set_allows(rule_set, q.proto, q.port));
        let kind = if allowed { KIND_ALLOW } else { KIND_DENY };
        let id = generation_id(group as usize, self.parity);
        Verdict::new(kind, id, u32::from(direction))
    }

    /// The kernel's bounded scan of one rule set: any protocol, or the protocol with the port in
    /// range (ICMP has no ports: only "any protocol" rules allow it).
    fn rule_set_allows(&self, rule_set: u32, proto: u8, port: u16) -> bool {
        let icmp = proto == PROTO_ICMP || proto == PROTO_ICMPV6;
        self.rule_sets[rule_set as usize]
            .iter()
            .take(MAX_PORT_RANGES)
            .any(|r| {
                r.protocol == PROTO_ANY
                    || (!icmp && r.protocol == proto && (r.first..=r.last).contains(&port))
            })
    }
}
