//! The `PREFIXES` entries of one group for the datapath's binary search on prefix lengths
//! (`portcullis_ebpf_common::prefix`): the group's prefixes, plus a marker on every length the
//! search visits before reaching a longer prefix, each entry carrying the rule set of the longest
//! prefix containing it (its "best matching prefix"). Pure: the delta writer diffs two of these.
//!
//! Both families share one search: IPv4 is IPv4-mapped, so an IPv4 `/n` is the 128-bit `/96+n`
//! and the lengths of a group are at most the 129 of the 128-bit space (8 probes), exactly the
//! space the compiler's longest match (and the LPM trie before) worked in.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;
use portcullis_common::{mask_prefix, IPV4_MAPPED_PREFIX_BITS};

use crate::tables::key_addr;

/// (length, address masked to it) in the IPv4-mapped 128-bit space.
pub type SearchKey = (u8, [u8; 16]);

/// One `PREFIXES` entry, with compiler rule-set indexes (the writer adds the generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchEntry {
    /// Rule set of the longest prefix of the group containing this entry's whole range, with a
    /// length up to the entry's; `None`: no prefix does.
    pub rule_set: Option<u32>,
    /// The entry is one of the group's prefixes.
    pub prefix: bool,
    /// The entry steers the search to a longer prefix.
    pub marker: bool,
}

/// The search structure of one group: its sorted distinct lengths and its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSearch {
    pub lengths: Vec<u8>,
    pub entries: HashMap<SearchKey, SearchEntry>,
}

/// The compiler's prefix as a search key.
pub fn search_key(net: &IpNet) -> SearchKey {
    let len = match net {
        IpNet::V4(n) => IPV4_MAPPED_PREFIX_BITS + n.prefix_len(),
        IpNet::V6(n) => n.prefix_len(),
    };
    (len, mask_prefix(&key_addr(net.network()), len.into()))
}

/// The indexes of `lengths` the search probes on its way to index `target` (excluded), in order:
/// the same steps as the kernel's loop (half-open range, `mid = (lo + hi) / 2`).
fn path_to(count: usize, target: usize) -> impl Iterator<Item = usize> {
    let (mut lo, mut hi) = (0, count);
    std::iter::from_fn(move || {
        let mid = (lo + hi) / 2;
        if lo >= hi || mid == target {
            return None;
        }
        if mid < target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
        Some(mid)
    })
}

/// At most this many entries per prefix: itself and a marker on each shorter length the search
/// visits on its way (at most 8 steps over the 129 lengths).
pub const MAX_ENTRIES_PER_PREFIX: usize = 9;

/// A group's prefixes as search keys, its sorted distinct lengths and the keys of its markers.
struct Shape {
    real: HashMap<SearchKey, u32>,
    lengths: Vec<u8>,
    markers: HashSet<SearchKey>,
}

impl Shape {
    fn new(prefixes: &[(IpNet, u32)]) -> Shape {
        let real: HashMap<SearchKey, u32> = prefixes
            .iter()
            .map(|(net, rs)| (search_key(net), *rs))
            .collect();
        let mut lengths: Vec<u8> = real.keys().map(|(len, _)| *len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let index: HashMap<u8, usize> = lengths.iter().enumerate().map(|(i, l)| (*l, i)).collect();

        let mut markers: HashSet<SearchKey> = HashSet::new();
        for (len, addr) in real.keys() {
            for step in path_to(lengths.len(), index[len]) {
                // Only steps to shorter lengths need a marker: a miss already goes shorter.
                if step < index[len] {
                    let l = lengths[step];
                    markers.insert((l, mask_prefix(addr, l.into())));
                }
            }
        }
        Shape {
            real,
            lengths,
            markers,
        }
    }
}

/// How many entries [`GroupSearch::new`] makes of `prefixes`, without computing their rule sets:
/// what the loader checks against the map's room before it writes anything.
pub fn entry_count(prefixes: &[(IpNet, u32)]) -> usize {
    let shape = Shape::new(prefixes);
    let marker_only = (shape.markers.iter())
        .filter(|k| !shape.real.contains_key(k))
        .count();
    shape.real.len() + marker_only
}

impl GroupSearch {
    /// The entries for `prefixes` (compiler order; a repeated prefix keeps its last rule set, as
    /// the trie's insert and `longest_match` did).
    pub fn new(prefixes: &[(IpNet, u32)]) -> GroupSearch {
        let Shape {
            real,
            lengths,
            markers,
        } = Shape::new(prefixes);

        let mut entries = HashMap::with_capacity(real.len() + markers.len());
        for (key, rs) in &real {
            let marker = markers.contains(key);
            entries.insert(
                *key,
                SearchEntry {
                    rule_set: Some(*rs),
                    prefix: true,
                    marker,
                },
            );
        }
        for key in markers.iter().filter(|k| !real.contains_key(k)) {
            let entry = SearchEntry {
                rule_set: best_match(&real, &lengths, key),
                prefix: false,
                marker: true,
            };
            entries.insert(*key, entry);
        }
        GroupSearch { lengths, entries }
    }

    /// Markers that are no prefix (entries beyond the prefixes).
    pub fn marker_only(&self) -> usize {
        self.entries.values().filter(|e| !e.prefix).count()
    }

    /// The datapath's search over these entries: the rule set of the longest prefix containing
    /// `addr` (16 bytes, IPv4 mapped).
    pub fn lookup(&self, addr: &[u8; 16]) -> Option<u32> {
        let (mut lo, mut hi) = (0, self.lengths.len());
        let mut best = None;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let len = self.lengths[mid];
            match self.entries.get(&(len, mask_prefix(addr, len.into()))) {
                Some(e) => {
                    best = e.rule_set;
                    lo = mid + 1;
                }
                None => hi = mid,
            }
        }
        best
    }
}

/// The rule set of the longest prefix in `real` containing `key`'s range (length ≤ `key`'s).
fn best_match(real: &HashMap<SearchKey, u32>, lengths: &[u8], key: &SearchKey) -> Option<u32> {
    let (len, addr) = key;
    lengths
        .iter()
        .rev()
        .filter(|l| *l <= len)
        .find_map(|l| real.get(&(*l, mask_prefix(addr, (*l).into()))).copied())
}

#[cfg(test)]
#[path = "prefix_search_tests.rs"]
mod tests;
