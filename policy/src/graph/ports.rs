//! Sets of (protocol, port range): what an edge of the connectivity graph allows, computed from
//! the rules that select its ends instead of by probing every port.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

use crate::model::{Pod, Protocol, Rule};

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// Disjoint, sorted, non-adjacent inclusive port ranges per protocol; a protocol with no ranges is
/// absent. Serialized as its label (`"TCP/5432, UDP/53"` or `"any"`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: BTreeMap<Protocol, Vec<(u16, u16)>>,
}

impl PortSet {
    /// Every port of every protocol a rule can name.
    pub fn all() -> PortSet {
        PortSet {
            ranges: PROTOCOLS
                .iter()
                .map(|p| (*p, vec![(0, u16::MAX)]))
                .collect(),
        }
    }

    /// What `rule` allows: the compiler's port rules of it (named ports resolve on
    /// `destination`, the pod receiving the traffic, and match nothing without one, as in the
    /// evaluator).
    pub fn of_rule(rule: &Rule, destination: Option<&Pod>) -> PortSet {
        let mut set = PortSet::default();
        for r in crate::compile::port_rules(rule, destination) {
            match r.protocol {
                None => return PortSet::all(),
                Some(protocol) => set.insert(protocol, (r.first, r.last)),
            }
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.ranges
            .get(&protocol)
            .is_some_and(|ranges| ranges.iter().any(|(f, l)| (*f..=*l).contains(&port)))
    }

    /// The ranges of each protocol present, in protocol order.
    pub fn ranges(&self) -> impl Iterator<Item = (Protocol, &[(u16, u16)])> {
        self.ranges.iter().map(|(p, r)| (*p, r.as_slice()))
    }

    fn insert(&mut self, protocol: Protocol, range: (u16, u16)) {
        let ranges = self.ranges.entry(protocol).or_default();
        ranges.push(range);
        ranges.sort_unstable();
        // Join overlapping or adjacent ranges so that equal sets compare equal.
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges.drain(..) {
            match merged.last_mut() {
                Some(prev) if u32::from(first) <= u32::from(prev.1) + 1 => {
                    prev.1 = prev.1.max(last);
                }
                _ => merged.push((first, last)),
            }
        }
        *ranges = merged;
    }

    pub fn union_with(&mut self, other: &PortSet) {
        for (protocol, ranges) in other.ranges() {
            for range in ranges {
                self.insert(protocol, *range);
            }
        }
    }

    pub fn intersection(&self, other: &PortSet) -> PortSet {
        let mut out = PortSet::default();
        for (protocol, mine) in self.ranges() {
            let Some(theirs) = other.ranges.get(&protocol) else {
                continue;
            };
            for (a_first, a_last) in mine {
                for (b_first, b_last) in theirs {
                    let first = *a_first.max(b_first);
                    let last = *a_last.min(b_last);
                    if first <= last {
                        out.insert(protocol, (first, last));
                    }
                }
            }
        }
        out
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortSet::all() {
            return f.write_str("any");
        }
        let mut parts = Vec::new();
        for (protocol, ranges) in self.ranges() {
            for &(first, last) in ranges {
                parts.push(match (first, last) {
                    (0, u16::MAX) => format!("{protocol}/all"),
                    _ if first == last => format!("{protocol}/{first}"),
                    _ => format!("{protocol}/{first}-{last}"),
                });
            }
        }
        f.write_str(&parts.join(", "))
    }
}

impl Serialize for PortSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[(Protocol, u16, u16)]) -> PortSet {
        let mut set = PortSet::default();
        for (p, f, l) in entries {
            set.insert(*p, (*f, *l));
        }
        set
    }

    #[test]
    fn merges_intersects_and_labels() {
        let a = set(&[
            (Protocol::Tcp, 80, 84),
            (Protocol::Tcp, 85, 90),
            (Protocol::Udp, 53, 53),
        ]);
        assert_eq!(a.to_string(), "TCP/80-90, UDP/53");
        let b = set(&[(Protocol::Tcp, 88, 100), (Protocol::Sctp, 1, 2)]);
        assert_eq!(a.intersection(&b).to_string(), "TCP/88-90");
        assert!(a.intersection(&set(&[(Protocol::Sctp, 1, 9)])).is_empty());
        assert_eq!(PortSet::all().to_string(), "any");
        assert_eq!(set(&[(Protocol::Udp, 0, u16::MAX)]).to_string(), "UDP/all");
        let mut u = a.clone();
        u.union_with(&b);
        assert!(u.contains(Protocol::Tcp, 100) && u.contains(Protocol::Sctp, 2));
        assert!(!u.contains(Protocol::Tcp, 101));
    }
}
