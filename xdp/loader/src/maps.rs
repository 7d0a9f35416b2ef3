//! [`PolicyMaps`]: the maps both programs have, with the generation writes, deletes and switch,
//! flow GC, counter sums and the status they give.

use std::path::Path;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::Ebpf;
use ipnet::IpNet;
use portcullis_common::*;
use tracing::debug;

use crate::error::{ignore_missing, map_err, Error, Result};
use crate::object::{open_pinned, take};
use crate::prefix_search::{GroupSearch, SearchEntry, SearchKey};
use crate::status::{
    Counters, FlowCounts, FlowRecordCounters, GroupDrops, PrefixMemory, TableStatus,
};
use crate::tables::{endpoint_key, generation_id, rule_set_value, GroupPolicies, PolicyTables};

/// The maps both programs have, under the same names with the same types.
pub struct PolicyMaps {
    pub config: Array<MapData, Config>,
    pub endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    pub prefixes: HashMap<MapData, PrefixKey, PrefixValue>,
    pub prefix_lengths: HashMap<MapData, u32, PrefixLengths>,
    pub rule_sets: HashMap<MapData, u32, RuleSet>,
    /// Confirmed flows.
    pub flows: HashMap<MapData, FlowKey, ConfirmedFlow>,
    /// Flows waiting for their responder.
    pub embryonic_flows: HashMap<MapData, FlowKey, FlowValue>,
    pub counters: PerCpuArray<MapData, u64>,
    pub drops_by_group: PerCpuHashMap<MapData, u32, u64>,
    /// `FLOW_RECORD_COUNTERS`; `None` in the pinned view of a running program of a version
    /// without flow records (its pins have no such map).
    pub flow_record_counters: Option<PerCpuArray<MapData, u64>>,
}

/// Entries one delta write changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Entries inserted or overwritten.
    pub written: usize,
    pub deleted: usize,
    /// Change of the generation's `PREFIXES` entries (prefixes + markers).
    pub prefix_entries: isize,
}

impl std::ops::AddAssign for Delta {
    fn add_assign(&mut self, other: Delta) {
        self.written += other.written;
        self.deleted += other.deleted;
        self.prefix_entries += other.prefix_entries;
    }
}

/// Entries one generation has in the [`PolicyMaps`].
#[derive(Default)]
pub struct Written {
    pub endpoints: Vec<EndpointKey>,
    pub prefixes: Vec<PrefixKey>,
    pub prefix_lengths: Vec<u32>,
    pub rule_sets: Vec<u32>,
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE` in ns, the clock of `bpf_ktime_get_coarse_ns`: the flows' clock, for
/// user space writing flows the programs read (the AF_XDP engine).
pub fn monotonic_coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl PolicyMaps {
    /// Takes the maps out of the loaded `object` ("XDP", "node-hook": for error messages).
    pub fn take(ebpf: &mut Ebpf, object: &'static str) -> Result<PolicyMaps> {
        Ok(PolicyMaps {
            config: take(ebpf, object, MAP_CONFIG)?,
            endpoints: take(ebpf, object, MAP_ENDPOINTS)?,
            prefixes: take(ebpf, object, MAP_PREFIXES)?,
            prefix_lengths: take(ebpf, object, MAP_PREFIX_LENGTHS)?,
            rule_sets: take(ebpf, object, MAP_RULE_SETS)?,
            flows: take(ebpf, object, MAP_FLOWS)?,
            embryonic_flows: take(ebpf, object, MAP_EMBRYONIC_FLOWS)?,
            counters: take(ebpf, object, MAP_COUNTERS)?,
            drops_by_group: take(ebpf, object, MAP_DROPS_BY_GROUP)?,
            flow_record_counters: Some(take(ebpf, object, MAP_FLOW_RECORD_COUNTERS)?),
        })
    }

    /// Opens the maps pinned under `dir` by a running loader.
    pub fn open_pinned(dir: &Path) -> Result<PolicyMaps> {
        Ok(PolicyMaps {
            config: open_pinned(dir, MAP_CONFIG)?,
            endpoints: open_pinned(dir, MAP_ENDPOINTS)?,
            prefixes: open_pinned(dir, MAP_PREFIXES)?,
            prefix_lengths: open_pinned(dir, MAP_PREFIX_LENGTHS)?,
            rule_sets: open_pinned(dir, MAP_RULE_SETS)?,
            flows: open_pinned(dir, MAP_FLOWS)?,
            embryonic_flows: open_pinned(dir, MAP_EMBRYONIC_FLOWS)?,
            counters: open_pinned(dir, MAP_COUNTERS)?,
            drops_by_group: open_pinned(dir, MAP_DROPS_BY_GROUP)?,
            flow_record_counters: open_pinned(dir, MAP_FLOW_RECORD_COUNTERS).ok(),
        })
    }

    /// `CONFIG` index 0.
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Keeps the generation in force and sets the `CONFIG_FLAG_*` bits to `flags`.
    pub fn set_flags(&mut self, flags: u32) -> Result<Config> {
        let config = Config {
            generation: self.config()?.generation & 1,
            flags,
        };
        self.config.set(0, config, 0).map_err(map_err(MAP_CONFIG))?;
        Ok(config)
    }

    /// Active generation parity.
    pub fn generation(&self) -> Result<u32> {
        Ok(self.config()?.generation & 1)
    }

    /// The switch to generation `next`: one array write.
    pub fn switch_generation(&mut self, next: u32) -> Result<()> {
        let mut config = self.config()?;
        config.generation = next;
        self.config.set(0, config, 0).map_err(map_err(MAP_CONFIG))
    }

    /// Brings generation `parity` from `old` (what it holds now; `None` when unknown, e.g. adopted
    /// pins: then every entry of that parity is found by iterating and deleted first) to `new`,
    /// writing only entries that differ and deleting those `new` no longer has. Ids are the
    /// compiler's stable ones, so a policy change touches few entries. Group `i` gets id
    /// `generation_id(i, parity)`, rule set `j` gets `generation_id(j, parity)`.
    pub fn write_delta<T: PolicyTables>(
        &mut self,
        old: Option<&T>,
        new: &T,
        parity: u32,
    ) -> Result<Delta> {
        let mut delta = Delta::default();
        let empty = T::default();
        let old = match old {
            Some(old) => old,
            None => {
                delta.deleted += self.delete(&self.written(parity))?;
                &empty
            }
        };
        for (i, rules) in new.rule_sets().iter().enumerate() {
            if old.rule_sets().get(i) != Some(rules) {
                self.rule_sets
                    .insert(generation_id(i, parity), rule_set_value(rules), 0)
                    .map_err(map_err(MAP_RULE_SETS))?;
                delta.written += 1;
            }
        }
        for gi in 0..new.group_count().max(old.group_count()) {
            delta += self.write_group_prefixes(
                old.group_prefixes(gi),
                new.group_prefixes(gi),
                generation_id(gi, parity),
                parity,
            )?;
        }
        for (endpoint, gi) in new.endpoints() {
            if old.endpoints().get(endpoint) != Some(gi) {
                let value = EndpointValue {
                    group: generation_id(*gi as usize, parity),
                };
                self.endpoints
                    .insert(endpoint_key(*endpoint, parity), value, 0)
                    .map_err(map_err(MAP_ENDPOINTS))?;
                delta.written += 1;
            }
        }
        for endpoint in old.endpoints().keys() {
            if !new.endpoints().contains_key(endpoint) {
                let key = endpoint_key(*endpoint, parity);
                ignore_missing(self.endpoints.remove(&key), MAP_ENDPOINTS)?;
                delta.deleted += 1;
            }
        }
        // Rule sets last: nothing of this generation refers to them any more.
        for i in new.rule_sets().len()..old.rule_sets().len() {
            let id = generation_id(i, parity);
            ignore_missing(self.rule_sets.remove(&id), MAP_RULE_SETS)?;
            delta.deleted += 1;
        }
        Ok(delta)
    }

    /// Brings one group's search entries (prefixes, markers) and lengths from `before` to
    /// `after`: only entries whose key or value changed are written.
    fn write_group_prefixes(
        &mut self,
        before: &[(IpNet, u32)],
        after: &[(IpNet, u32)],
        group: u32,
        parity: u32,
    ) -> Result<Delta> {
        let mut delta = Delta::default();
        if before == after {
            return Ok(delta);
        }
        let (old, new) = (GroupSearch::new(before), GroupSearch::new(after));
        for (key, entry) in &new.entries {
            if old.entries.get(key) != Some(entry) {
                (self.prefixes)
                    .insert(prefix_key(group, key), prefix_value(entry, parity), 0)
                    .map_err(full_or(MAP_PREFIXES, MAX_PREFIXES))?;
                delta.written += 1;
            }
        }
        for key in old.entries.keys().filter(|k| !new.entries.contains_key(k)) {
            ignore_missing(self.prefixes.remove(&prefix_key(group, key)), MAP_PREFIXES)?;
            delta.deleted += 1;
        }
        delta.prefix_entries = new.entries.len() as isize - old.entries.len() as isize;
        if old.lengths != new.lengths {
            if new.lengths.is_empty() {
                ignore_missing(self.prefix_lengths.remove(&group), MAP_PREFIX_LENGTHS)?;
                delta.deleted += 1;
            } else {
                (self.prefix_lengths)
                    .insert(group, prefix_lengths(&new.lengths), 0)
                    .map_err(full_or(MAP_PREFIX_LENGTHS, MAX_PREFIX_GROUPS))?;
                delta.written += 1;
            }
        }
        Ok(delta)
    }

    /// The entries of generation `parity`, found by iterating (adopted maps).
    pub fn written(&self, parity: u32) -> Written {
        let bit = parity * GENERATION_ID_BIT;
        Written {
            endpoints: (self.endpoints.keys())
                .filter_map(|k| k.ok())
                .filter(|k| k.generation as u32 == parity)
                .collect(),
            prefixes: (self.prefixes.keys())
                .filter_map(|k| k.ok())
                .filter(|k| k.group & GENERATION_ID_BIT == bit)
                .collect(),
            prefix_lengths: (self.prefix_lengths.keys())
                .filter_map(|k| k.ok())
                .filter(|k| k & GENERATION_ID_BIT == bit)
                .collect(),
            rule_sets: (self.rule_sets.keys())
                .filter_map(|k| k.ok())
                .filter(|k| k & GENERATION_ID_BIT == bit)
                .collect(),
        }
    }

    /// Deletes the `written` entries; returns how many.
    pub fn delete(&mut self, written: &Written) -> Result<usize> {
        for k in &written.endpoints {
            ignore_missing(self.endpoints.remove(k), MAP_ENDPOINTS)?;
        }
        for k in &written.prefixes {
            ignore_missing(self.prefixes.remove(k), MAP_PREFIXES)?;
        }
        for k in &written.prefix_lengths {
            ignore_missing(self.prefix_lengths.remove(k), MAP_PREFIX_LENGTHS)?;
        }
        for k in &written.rule_sets {
            ignore_missing(self.rule_sets.remove(k), MAP_RULE_SETS)?;
        }
        Ok(written.endpoints.len()
            + written.prefixes.len()
            + written.prefix_lengths.len()
            + written.rule_sets.len())
    }

    /// Deletes every flow (live ones too: their next packets are judged as new connections).
    pub fn clear_flows(&mut self) -> Result<usize> {
        self.delete_flows(|_| true)
    }

    /// Deletes the expired flows of both tables; returns how many.
    pub fn gc_flows(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let deleted =
            self.delete_flows(|v| now.saturating_sub(v.last_seen_ns) > flow_timeout_ns(v.state))?;
        debug!(deleted, "flow GC");
        Ok(deleted)
    }

    /// Deletes the flows of both tables `doomed` picks, counted per table in `COUNTERS` (the
    /// eviction figures need them); returns how many.
    fn delete_flows(&mut self, doomed: impl Fn(&FlowValue) -> bool) -> Result<usize> {
        let confirmed = delete_where(&mut self.flows, MAP_FLOWS, |c| doomed(&c.flow))?;
        add_to_counter(&mut self.counters, COUNTER_GC_CONFIRMED, confirmed)?;
        let embryonic = delete_where(&mut self.embryonic_flows, MAP_EMBRYONIC_FLOWS, &doomed)?;
        add_to_counter(&mut self.counters, COUNTER_GC_EMBRYONIC, embryonic)?;
        Ok((confirmed + embryonic) as usize)
    }

    /// All flows currently in both tables, confirmed first (expired ones included until GC).
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        let confirmed = (self.flows.iter()).filter_map(|r| r.ok().map(|(k, c)| (k, c.flow)));
        confirmed
            .chain(self.embryonic_flows.iter().filter_map(|r| r.ok()))
            .collect()
    }

    /// `COUNTERS`, each summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        Ok(Counters::from_sums(&cpu_sums(
            &self.counters,
            MAP_COUNTERS,
        )?))
    }

    /// `FLOW_RECORD_COUNTERS`, each summed over CPUs (zero without the map).
    pub fn flow_record_counters(&self) -> Result<FlowRecordCounters> {
        match &self.flow_record_counters {
            Some(map) => Ok(FlowRecordCounters::from_sums(&cpu_sums(
                map,
                MAP_FLOW_RECORD_COUNTERS,
            )?)),
            None => Ok(FlowRecordCounters::default()),
        }
    }

    /// `DROPS_BY_GROUP` summed over CPUs, with the policies of each group where known.
    pub fn group_drops(&self, policies: &GroupPolicies) -> Vec<GroupDrops> {
        (self.drops_by_group.iter())
            .filter_map(|r| r.ok())
            .map(|(group, values)| GroupDrops {
                group,
                policies: policies.get(&group).cloned().unwrap_or_default(),
                packets: values.iter().sum(),
            })
            .collect()
    }

    /// What these maps hold in the generation in force (the inactive one is the base of the next
    /// delta); `policies` names the groups.
    pub fn status(&self, policies: &GroupPolicies) -> Result<TableStatus> {
        let config = self.config()?;
        let counters = self.counters()?;
        let generation = config.generation & 1;
        let written = self.written(generation);
        let real = (written.prefixes.iter())
            .filter_map(|k| self.prefixes.get(k, 0).ok())
            .filter(|v| v.flags & PREFIX_FLAG_PREFIX != 0)
            .count();
        Ok(TableStatus {
            generation,
            revalidate: config.flags & CONFIG_FLAG_REVALIDATE != 0,
            endpoints: written.endpoints.len(),
            prefixes: real,
            prefix_memory: PrefixMemory::new(real, written.prefixes.len()),
            rule_sets: written.rule_sets.len(),
            flows: FlowCounts::new(
                self.flows.keys().count(),
                self.embryonic_flows.keys().count(),
                &counters,
            ),
            counters,
            flow_records: self.flow_record_counters()?,
            drops_by_group: self.group_drops(policies),
        })
    }
}

/// Every index of per-CPU array `map` (named `name`) summed over CPUs.
pub fn cpu_sums<const N: usize>(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
) -> Result<[u64; N]> {
    let mut sums = [0u64; N];
    for (i, sum) in sums.iter_mut().enumerate() {
        *sum = map.get(&(i as u32), 0).map_err(map_err(name))?.iter().sum();
    }
    Ok(sums)
}

/// The `PREFIXES` key of search key `key` in `group`.
fn prefix_key(group: u32, (len, addr): &SearchKey) -> PrefixKey {
    PrefixKey {
        group,
        len: *len,
        _pad: [0; 3],
        addr: *addr,
    }
}

fn prefix_value(entry: &SearchEntry, parity: u32) -> PrefixValue {
    let flag = |on, bit| if on { bit } else { 0 };
    PrefixValue {
        rule_set: entry
            .rule_set
            .map_or(0, |rs| generation_id(rs as usize, parity)),
        flags: flag(entry.prefix, PREFIX_FLAG_PREFIX) | flag(entry.marker, PREFIX_FLAG_MARKER),
    }
}

fn prefix_lengths(lengths: &[u8]) -> PrefixLengths {
    let mut value = PrefixLengths {
        count: lengths.len() as u32,
        lengths: [0; PREFIX_LENGTH_SLOTS],
    };
    value.lengths[..lengths.len()].copy_from_slice(lengths);
    value
}

/// An insert into a full hash map (`E2BIG`) becomes [`Error::TableFull`]; other errors stay map
/// errors.
fn full_or(name: &'static str, capacity: u32) -> impl FnOnce(MapError) -> Error {
    move |source| match &source {
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
            Error::TableFull { name, capacity }
        }
        _ => Error::Map { name, source },
    }
}

/// Deletes the entries of flow table `table` that `doomed` picks; how many it removed (an entry
/// gone in between, evicted or deleted by the program, is not counted).
fn delete_where<V: aya::Pod>(
    table: &mut HashMap<MapData, FlowKey, V>,
    name: &'static str,
    doomed: impl Fn(&V) -> bool,
) -> Result<u64> {
    let keys: Vec<FlowKey> = (table.iter())
        .filter_map(|r| r.ok())
        .filter(|(_, v)| doomed(v))
        .map(|(k, _)| k)
        .collect();
    let mut removed = 0;
    for k in &keys {
        if ignore_missing(table.remove(k), name)? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Adds `n` to counter `index` (CPU 0's slot): counters the loader keeps beside the programs' own.
fn add_to_counter(counters: &mut PerCpuArray<MapData, u64>, index: u32, n: u64) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let mut values: Vec<u64> = (counters.get(&index, 0))
        .map_err(map_err(MAP_COUNTERS))?
        .to_vec();
    if let Some(first) = values.first_mut() {
        *first += n;
    }
    // Same length as read: one value per possible CPU.
    let values = PerCpuValues::try_from(values).map_err(|source| Error::Io {
        path: MAP_COUNTERS.into(),
        source,
    })?;
    counters
        .set(index, values, 0)
        .map_err(map_err(MAP_COUNTERS))
}
