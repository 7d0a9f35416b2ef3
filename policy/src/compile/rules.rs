//! Port rules: what one NetworkPolicy rule allows at an address, in the canonical form the
//! tables store.

use crate::model::{Direction, Pod, PortMatch, Protocol, Rule};

/// One allowed protocol and inclusive port range; `protocol: None` allows every protocol and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub protocol: Option<Protocol>,
    pub first: u16,
    pub last: u16,
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

/// Does the rule set `set` of `rule_sets` allow `protocol` and `port`?
pub(super) fn rule_set_allows(
    rule_sets: &[Vec<PortRule>],
    set: u32,
    protocol: u8,
    port: u16,
) -> bool {
    rule_sets[set as usize]
        .iter()
        .any(|r| r.matches(protocol, port))
}

/// Merges port rules into the canonical form: sorted, overlapping or adjacent ranges of one
/// protocol joined, everything subsumed by "any protocol" dropped.
pub(super) fn canonical(rules: impl IntoIterator<Item = PortRule>) -> Vec<PortRule> {
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

/// The port rules one rule contributes. Named ports resolve on `destination`, the pod receiving
/// the traffic; with no destination pod (an external host) they match nothing.
pub(crate) fn port_rules(rule: &Rule, destination: Option<&Pod>) -> Vec<PortRule> {
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
pub(super) fn external_destination(direction: Direction, subject: &Pod) -> Option<&Pod> {
    match direction {
        Direction::Ingress => Some(subject),
        Direction::Egress => None,
    }
}
