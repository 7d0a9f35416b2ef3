//! Numbering that survives recompiles. The kernel tables are written as deltas between two
//! generations, so a group or rule set must keep its number from one compile to the next: a
//! change then rewrites only the entries that really differ, not every entry whose index moved.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use super::node::FIRST_POD_IDENTITY;
use super::rules::PortRule;
use crate::model::{ContainerPort, Labels, Pod, Snapshot};

/// Numbers keys densely from 0; a key keeps its number while it is live, numbers of retired keys
/// are reused so tables indexed by them stay compact.
#[derive(Debug)]
pub(super) struct StableIds<K> {
    ids: HashMap<K, u32>,
    free: Vec<u32>,
    next: u32,
}

impl<K> Default for StableIds<K> {
    fn default() -> Self {
        StableIds {
            ids: HashMap::new(),
            free: Vec::new(),
            next: 0,
        }
    }
}

impl<K: Hash + Eq + Clone> StableIds<K> {
    pub(super) fn id(&mut self, key: &K) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.ids.insert(key.clone(), id);
        id
    }

    /// Retires every key `live` rejects; their numbers become free.
    pub(super) fn retain(&mut self, mut live: impl FnMut(&K, u32) -> bool) {
        let free = &mut self.free;
        self.ids.retain(|k, id| {
            let keep = live(k, *id);
            if !keep {
                free.push(*id);
            }
            keep
        });
        // Lowest numbers first, so tables shrink back when many keys go.
        free.sort_unstable_by(|a, b| b.cmp(a));
    }

    pub(super) fn contains(&self, key: &K) -> bool {
        self.ids.contains_key(key)
    }

    /// One past the highest number in use (the length of a table indexed by these numbers).
    pub(super) fn len(&self) -> u32 {
        self.ids.values().max().map_or(0, |m| m + 1)
    }
}

/// Interns rule sets so identical sets share one id, stably across compiles. Id 0 is always the
/// empty set (deny), so a zero value in a table never allows anything.
#[derive(Debug)]
pub(super) struct RuleSetInterner {
    ids: StableIds<Vec<PortRule>>,
    sets: Vec<Vec<PortRule>>,
}

impl Default for RuleSetInterner {
    fn default() -> Self {
        let mut interner = RuleSetInterner {
            ids: StableIds::default(),
            sets: Vec::new(),
        };
        interner.intern(Vec::new());
        interner
    }
}

impl RuleSetInterner {
    pub(super) fn intern(&mut self, set: Vec<PortRule>) -> u32 {
        let id = self.ids.id(&set);
        let slot = id as usize;
        if slot >= self.sets.len() {
            self.sets.resize(slot + 1, Vec::new());
        }
        self.sets[slot] = set;
        id
    }

    /// Retires every set whose id `used` does not hold (the empty set, id 0, stays) and returns
    /// the table indexed by id. A retired id holds an empty (deny) set until it is reused.
    pub(super) fn retain_used(&mut self, used: &HashSet<u32>) -> Vec<Vec<PortRule>> {
        self.ids.retain(|_, id| id == 0 || used.contains(&id));
        self.sets.truncate(self.ids.len() as usize);
        for (id, set) in self.sets.iter_mut().enumerate() {
            if id != 0 && !used.contains(&(id as u32)) {
                set.clear();
            }
        }
        self.sets.clone()
    }
}

/// What makes two pods indistinguishable to every selector and named port.
type IdentityKey = (String, Labels, Vec<ContainerPort>);

/// Hands out pod identity numbers that stay stable across recompiles (never reused), so a label
/// change or pod churn rewrites only the entries of the identities it touches.
#[derive(Debug, Default)]
pub(super) struct IdentityAllocator {
    ids: HashMap<IdentityKey, u32>,
    next: u32,
}

impl IdentityAllocator {
    pub(super) fn id(&mut self, pod: &Pod) -> u32 {
        let next = &mut self.next;
        *self.ids.entry(identity_key(pod)).or_insert_with(|| {
            let id = FIRST_POD_IDENTITY + *next;
            *next += 1;
            id
        })
    }

    /// Forgets identities no pod of `snapshot` has any more.
    pub(super) fn retain_present(&mut self, snapshot: &Snapshot) {
        let present: HashSet<IdentityKey> = snapshot.pods.iter().map(identity_key).collect();
        self.ids.retain(|k, _| present.contains(k));
    }
}

fn identity_key(pod: &Pod) -> IdentityKey {
    (pod.namespace.clone(), pod.labels.clone(), pod.ports.clone())
}
