//! The engine's flow state: [`FlowStore`], what the pipeline needs of a flow table, and
//! [`LocalFlows`], the AF_XDP mode's own table, laid out like the kernel's two: new flows in a
//! table of at most `MAX_EMBRYONIC_FLOWS` unconfirmed entries, answered ones moved to a table of
//! at most `MAX_FLOWS` confirmed entries. A flood of new flows evicts only unconfirmed flows;
//! confirmed flows are evicted only by other confirmed flows.
//!
//! Eviction when a table is full (the kernel's LRU, approximated in O(1) amortised per packet):
//! each table keeps its keys in insertion order; the oldest is evicted unless its flow saw a
//! packet since it was queued, in which case it is queued again at the back (a second chance,
//! at most [`SECOND_CHANCES`] per insertion so no insertion scans far). Removed entries leave
//! stale queue slots, skipped when reached and compacted away once they outnumber the live ones.

use std::collections::VecDeque;

use ahash::AHashMap;
use portcullis_common::{flow_timeout_ns, FlowKey, FlowValue, MAX_EMBRYONIC_FLOWS, MAX_FLOWS};

/// Recently used entries one insertion into a full table may pass over before evicting one.
pub const SECOND_CHANCES: usize = 8;

/// A flow-table hit: the flow (updated in place by the pipeline) and which table holds it.
pub struct Hit<'a> {
    pub flow: &'a mut FlowValue,
    pub embryonic: bool,
}

/// The flow table the pipeline reads and writes, with the kernel's two-table semantics.
pub trait FlowStore {
    /// The entry of `key`: the confirmed one first, then the embryonic one.
    fn find(&mut self, key: &FlowKey) -> Option<Hit<'_>>;
    /// Whether `key` has an unexpired entry (ICMP errors related to a flow pass).
    fn related_live(&self, key: &FlowKey, now_ns: u64) -> bool;
    /// Records a new flow, `flow` complete as the kernel's `open_flow` builds it: in place of a
    /// confirmed entry of `key` when there is one (the pipeline found it and it did not vouch for
    /// the packet), else as an embryonic entry (replacing a stale one).
    fn open(&mut self, key: &FlowKey, flow: &FlowValue);
    /// Moves the embryonic entry of `key` to the confirmed table; true when it did. A store whose
    /// [`find`](FlowStore::find) never hits is never asked.
    fn confirm(&mut self, _key: &FlowKey) -> bool {
        false
    }
    /// Deletes the entry of `key` from the embryonic or the confirmed table; true when there was
    /// one. A store whose [`find`](FlowStore::find) never hits is never asked.
    fn remove(&mut self, _key: &FlowKey, _embryonic: bool) -> bool {
        false
    }
}

fn live(flow: &FlowValue, now_ns: u64) -> bool {
    now_ns.wrapping_sub(flow.last_seen_ns) <= flow_timeout_ns(flow.state)
}

struct Entry {
    flow: FlowValue,
    /// Identifies this entry's slot in the queue (a key removed and inserted again gets a new one).
    seq: u64,
    /// `last_seen_ns` when the entry was queued: a later one means it was used since.
    queued_seen: u64,
}

/// One bounded table (see the module's eviction rule).
struct BoundedTable {
    entries: AHashMap<FlowKey, Entry>,
    order: VecDeque<(FlowKey, u64)>,
    next_seq: u64,
    capacity: usize,
}

impl BoundedTable {
    fn new(capacity: usize) -> BoundedTable {
        BoundedTable {
            entries: AHashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            capacity: capacity.max(1),
        }
    }

    fn get(&self, key: &FlowKey) -> Option<&FlowValue> {
        self.entries.get(key).map(|e| &e.flow)
    }

    fn get_mut(&mut self, key: &FlowKey) -> Option<&mut FlowValue> {
        self.entries.get_mut(key).map(|e| &mut e.flow)
    }

    fn insert(&mut self, key: &FlowKey, flow: FlowValue) {
        if let Some(e) = self.entries.get_mut(key) {
            e.flow = flow;
            return;
        }
        if self.entries.len() >= self.capacity {
            self.evict_one();
        }
        let seq = self.queue(*key);
        let entry = Entry {
            flow,
            seq,
            queued_seen: flow.last_seen_ns,
        };
        self.entries.insert(*key, entry);
        if self.order.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.order
                .retain(|(k, seq)| entries.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    fn queue(&mut self, key: FlowKey) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((key, seq));
        seq
    }

    fn evict_one(&mut self) {
        let mut chances = SECOND_CHANCES;
        while let Some((key, seq)) = self.order.pop_front() {
            let Some(e) = self.entries.get_mut(&key).filter(|e| e.seq == seq) else {
                continue;
            };
            if chances > 0 && e.flow.last_seen_ns != e.queued_seen {
                chances -= 1;
                e.queued_seen = e.flow.last_seen_ns;
                e.seq = self.next_seq;
                self.next_seq += 1;
                self.order.push_back((key, e.seq));
                continue;
            }
            self.entries.remove(&key);
            return;
        }
    }

    fn remove(&mut self, key: &FlowKey) -> Option<FlowValue> {
        self.entries.remove(key).map(|e| e.flow)
    }

    /// Deletes the expired entries; how many.
    fn expire(&mut self, now_ns: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| live(&e.flow, now_ns));
        before - self.entries.len()
    }
}

/// The AF_XDP mode's flow table (one per engine thread).
pub struct LocalFlows {
    embryonic: BoundedTable,
    confirmed: BoundedTable,
}

impl Default for LocalFlows {
    fn default() -> LocalFlows {
        LocalFlows::new(MAX_EMBRYONIC_FLOWS as usize, MAX_FLOWS as usize)
    }
}

impl LocalFlows {
    /// A table of at most `embryonic` unconfirmed and `confirmed` confirmed flows (the kernel's
    /// sizes: [`LocalFlows::default`]).
    pub fn new(embryonic: usize, confirmed: usize) -> LocalFlows {
        LocalFlows {
            embryonic: BoundedTable::new(embryonic),
            confirmed: BoundedTable::new(confirmed),
        }
    }

    /// Deletes expired flows (the periodic GC): (embryonic, confirmed) removed.
    pub fn expire(&mut self, now_ns: u64) -> (usize, usize) {
        (self.embryonic.expire(now_ns), self.confirmed.expire(now_ns))
    }

    pub fn embryonic_len(&self) -> usize {
        self.embryonic.entries.len()
    }

    pub fn confirmed_len(&self) -> usize {
        self.confirmed.entries.len()
    }

    /// Forgets every flow.
    pub fn clear(&mut self) {
        *self = LocalFlows::new(self.embryonic.capacity, self.confirmed.capacity);
    }
}

impl FlowStore for LocalFlows {
    fn find(&mut self, key: &FlowKey) -> Option<Hit<'_>> {
        if let Some(flow) = self.confirmed.get_mut(key) {
            return Some(Hit {
                flow,
                embryonic: false,
            });
        }
        let flow = self.embryonic.get_mut(key)?;
        Some(Hit {
            flow,
            embryonic: true,
        })
    }

    fn related_live(&self, key: &FlowKey, now_ns: u64) -> bool {
        (self.confirmed.get(key))
            .or_else(|| self.embryonic.get(key))
            .is_some_and(|f| live(f, now_ns))
    }

    fn open(&mut self, key: &FlowKey, flow: &FlowValue) {
        match self.confirmed.get_mut(key) {
            Some(existing) => *existing = *flow,
            None => self.embryonic.insert(key, *flow),
        }
    }

    fn confirm(&mut self, key: &FlowKey) -> bool {
        match self.embryonic.remove(key) {
            Some(flow) => {
                self.confirmed.insert(key, flow);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, key: &FlowKey, embryonic: bool) -> bool {
        let table = if embryonic {
            &mut self.embryonic
        } else {
            &mut self.confirmed
        };
        table.remove(key).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_common::FLOW_STATE_ACTIVE;

    fn key(n: u16) -> FlowKey {
        FlowKey {
            addr_lo: [0; 16],
            addr_hi: [1; 16],
            port_lo: n,
            port_hi: 80,
            protocol: 17,
            _pad: [0; 3],
        }
    }

    fn flow(now: u64) -> FlowValue {
        FlowValue {
            last_seen_ns: now,
            state: FLOW_STATE_ACTIVE,
            ..FlowValue::default()
        }
    }

    #[test]
    fn a_flood_of_new_flows_evicts_only_unconfirmed_ones() {
        let mut flows = LocalFlows::new(4, 4);
        for n in 0..4 {
            flows.open(&key(n), &flow(1));
            assert!(flows.confirm(&key(n)));
        }
        for n in 100..1100 {
            flows.open(&key(n), &flow(2));
        }
        assert_eq!((flows.embryonic_len(), flows.confirmed_len()), (4, 4));
        assert!((0..4).all(|n| flows.related_live(&key(n), 3)));
        // The newest unconfirmed flows stayed.
        assert!(flows.related_live(&key(1099), 3));
        assert!(!flows.related_live(&key(100), 3));
    }

    #[test]
    fn a_recently_used_confirmed_flow_gets_a_second_chance() {
        let mut flows = LocalFlows::new(8, 2);
        for n in 0..2 {
            flows.open(&key(n), &flow(1));
            flows.confirm(&key(n));
        }
        flows.find(&key(0)).unwrap().flow.last_seen_ns = 5;
        flows.open(&key(2), &flow(6));
        flows.confirm(&key(2));
        assert!(flows.related_live(&key(0), 7));
        assert!(!flows.related_live(&key(1), 7));
    }

    #[test]
    fn expire_removes_idle_flows_from_both_tables() {
        let mut flows = LocalFlows::default();
        flows.open(&key(1), &flow(0));
        flows.open(&key(2), &flow(0));
        flows.confirm(&key(2));
        flows.open(&key(3), &flow(50_000_000_000));
        let later = 50_000_000_000 + 30_000_000_000;
        assert_eq!(flows.expire(later), (1, 1));
        assert_eq!((flows.embryonic_len(), flows.confirmed_len()), (1, 0));
    }
}
