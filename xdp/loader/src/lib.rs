//! User-space pieces shared by the two loaders, `portcullis-gateway` (XDP) and `portcullis-node`
//! (tc): map and pin-file errors, opening the object with pinned maps, [`PolicyMaps`] (the maps
//! both programs have, with the generation writes, deletes and switch, flow GC, counter sums) and
//! the drop-event reader. Each loader keeps its own error type and wraps [`Error`] in it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;
use portcullis_common::*;
use portcullis_policy::compile::{EndpointGroups, PortRule};
use portcullis_policy::model::Direction;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {0:?} not found")]
    UnknownInterface(String),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// `object` names the program object ("XDP", "node-hook").
    #[error("map {name} missing from the {object} object")]
    MissingMap {
        name: &'static str,
        object: &'static str,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub fn map_err(name: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// Index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| Error::UnknownInterface(name.to_owned()))?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(Error::UnknownInterface(name.to_owned()));
    }
    Ok(index)
}

/// A loader that pins each of `maps` under `pin_dir` (created if needed) and reuses what is
/// pinned there; true when a pinned set exists already (its `CONFIG` is there).
pub fn pinning_loader<'a>(
    pin_dir: Option<&Path>,
    maps: &[&'a str],
) -> Result<(EbpfLoader<'a>, bool)> {
    let mut loader = EbpfLoader::new();
    let mut adopting = false;
    if let Some(dir) = pin_dir {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        adopting = dir.join("CONFIG").exists();
        for name in maps {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok((loader, adopting))
}

/// Takes map `name` out of the loaded `object` ("XDP", "node-hook": for the error message).
pub fn take<T>(ebpf: &mut Ebpf, object: &'static str, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(Error::MissingMap { name, object })?;
    T::try_from(map).map_err(map_err(name))
}

/// Opens map `name` pinned under `dir` by another process.
pub fn open_pinned<T>(dir: &Path, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
    let map = aya::maps::Map::from_map_data(data).map_err(map_err(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Removes a pin file; one already gone is fine.
pub fn remove_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A map delete whose entry is already gone (deleted by the program or a concurrent GC) is fine.
pub fn ignore_missing(r: Result<(), MapError>, name: &'static str) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            warn!(map = name, "entry vanished during delete");
            Ok(())
        }
        Err(source) => Err(Error::Map { name, source }),
    }
}

/// Address as stored in every key: 16 bytes, network order, IPv4 mapped.
pub fn key_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Group or rule-set id of index `index` in generation `parity`.
pub fn generation_id(index: usize, parity: u32) -> u32 {
    (index as u32 + 1) | (parity * GENERATION_ID_BIT)
}

fn direction_code(d: Direction) -> u8 {
    match d {
        Direction::Ingress => DIRECTION_INGRESS,
        Direction::Egress => DIRECTION_EGRESS,
    }
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The maps both programs have, under the same names with the same types.
pub struct PolicyMaps {
    /// Index 0: generation parity and `CONFIG_FLAG_*`.
    pub config: Array<MapData, Config>,
    pub endpoints: HashMap<MapData, EndpointKey, EndpointValue>,
    pub prefixes: LpmTrie<MapData, PrefixData, PrefixValue>,
    pub rule_sets: HashMap<MapData, u32, RuleSet>,
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    pub counters: PerCpuArray<MapData, u64>,
    pub drops_by_group: PerCpuHashMap<MapData, u32, u64>,
}

/// The tables both programs have (rule sets, per-group peer prefixes, endpoints), indexed by the
/// compiler's stable ids: what one generation holds.
#[derive(Clone, Copy)]
pub struct SharedTables<'a> {
    pub rule_sets: &'a [Vec<PortRule>],
    pub group_prefixes: &'a [&'a [(IpNet, u32)]],
    pub endpoints: &'a EndpointGroups,
}

static NO_ENDPOINTS: EndpointGroups = BTreeMap::new();

impl SharedTables<'_> {
    /// A generation with nothing in it.
    pub const EMPTY: SharedTables<'static> = SharedTables {
        rule_sets: &[],
        group_prefixes: &[],
        endpoints: &NO_ENDPOINTS,
    };
}

/// Entries one delta write changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Entries inserted or overwritten.
    pub written: usize,
    pub deleted: usize,
}

impl std::ops::AddAssign for Delta {
    fn add_assign(&mut self, other: Delta) {
        self.written += other.written;
        self.deleted += other.deleted;
    }
}

fn rule_set_value(rules: &[PortRule]) -> RuleSet {
    let mut value = RuleSet {
        count: rules.len() as u32,
        ranges: [PortRange::default(); MAX_PORT_RANGES],
    };
    for (slot, rule) in value.ranges.iter_mut().zip(rules) {
        *slot = PortRange {
            protocol: rule.protocol.map_or(PROTO_ANY, |p| p.number()),
            _pad: 0,
            first: rule.first,
            last: rule.last,
        };
    }
    value
}

fn prefix_key(group: u32, net: &IpNet) -> Key<PrefixData> {
    let bits = match net {
        IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
        IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    Key::new(
        PREFIX_GROUP_BITS + bits,
        PrefixData {
            group_be: group.to_be(),
            addr: key_addr(net.network()),
        },
    )
}

fn endpoint_key((direction, ip): (Direction, IpAddr), parity: u32) -> EndpointKey {
    EndpointKey {
        addr: key_addr(ip),
        direction: direction_code(direction),
        generation: parity as u8,
        _pad: [0; 2],
    }
}

/// Entries one generation has in the [`PolicyMaps`].
#[derive(Default)]
pub struct Written {
    pub endpoints: Vec<EndpointKey>,
    pub prefixes: Vec<Key<PrefixData>>,
    pub rule_sets: Vec<u32>,
}

impl PolicyMaps {
    /// Takes the maps out of the loaded `object` ("XDP", "node-hook": for error messages).
    pub fn take(ebpf: &mut Ebpf, object: &'static str) -> Result<PolicyMaps> {
        Ok(PolicyMaps {
            config: take(ebpf, object, "CONFIG")?,
            endpoints: take(ebpf, object, "ENDPOINTS")?,
            prefixes: take(ebpf, object, "PREFIXES")?,
            rule_sets: take(ebpf, object, "RULE_SETS")?,
            flows: take(ebpf, object, "FLOWS")?,
            counters: take(ebpf, object, "COUNTERS")?,
            drops_by_group: take(ebpf, object, "DROPS_BY_GROUP")?,
        })
    }

    /// Opens the maps pinned under `dir` by a running loader.
    pub fn open_pinned(dir: &Path) -> Result<PolicyMaps> {
        Ok(PolicyMaps {
            config: open_pinned(dir, "CONFIG")?,
            endpoints: open_pinned(dir, "ENDPOINTS")?,
            prefixes: open_pinned(dir, "PREFIXES")?,
            rule_sets: open_pinned(dir, "RULE_SETS")?,
            flows: open_pinned(dir, "FLOWS")?,
            counters: open_pinned(dir, "COUNTERS")?,
            drops_by_group: open_pinned(dir, "DROPS_BY_GROUP")?,
        })
    }

    /// `CONFIG` index 0.
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err("CONFIG"))
    }

    pub fn set_config(&mut self, config: Config) -> Result<()> {
        self.config.set(0, config, 0).map_err(map_err("CONFIG"))
    }

    /// Active generation parity.
    pub fn generation(&self) -> Result<u32> {
        Ok(self.config()?.generation & 1)
    }

    /// The switch to generation `next`: one array write.
    pub fn switch_generation(&mut self, next: u32) -> Result<()> {
        let mut config = self.config()?;
        config.generation = next;
        self.set_config(config)
    }

    /// Brings generation `parity` from `old` (what it holds now; `None` when unknown, e.g. adopted
    /// pins: then every entry of that parity is found by iterating and deleted first) to `new`,
    /// writing only entries that differ and deleting those `new` no longer has. Ids are the
    /// compiler's stable ones, so a policy change touches few entries. Group `i` gets id
    /// `generation_id(i, parity)`, rule set `j` gets `generation_id(j, parity)`.
    pub fn write_delta(
        &mut self,
        old: Option<SharedTables<'_>>,
        new: SharedTables<'_>,
        parity: u32,
    ) -> Result<Delta> {
        let mut delta = Delta::default();
        let old = match old {
            Some(old) => old,
            None => {
                delta.deleted += self.delete(&self.written(parity))?;
                SharedTables::EMPTY
            }
        };
        for (i, rules) in new.rule_sets.iter().enumerate() {
            if old.rule_sets.get(i) != Some(rules) {
                self.rule_sets
                    .insert(generation_id(i, parity), rule_set_value(rules), 0)
                    .map_err(map_err("RULE_SETS"))?;
                delta.written += 1;
            }
        }
        let groups = new.group_prefixes.len().max(old.group_prefixes.len());
        for gi in 0..groups {
            let before = old.group_prefixes.get(gi).copied().unwrap_or_default();
            let after = new.group_prefixes.get(gi).copied().unwrap_or_default();
            if before == after {
                continue;
            }
            let group = generation_id(gi, parity);
            let had: std::collections::HashMap<IpNet, u32> = before.iter().copied().collect();
            for (net, rs) in after {
                if had.get(net) != Some(rs) {
                    let value = PrefixValue {
                        rule_set: generation_id(*rs as usize, parity),
                    };
                    self.prefixes
                        .insert(&prefix_key(group, net), value, 0)
                        .map_err(map_err("PREFIXES"))?;
                    delta.written += 1;
                }
            }
            let has: std::collections::HashSet<IpNet> = after.iter().map(|(n, _)| *n).collect();
            for (net, _) in before.iter().filter(|(n, _)| !has.contains(n)) {
                ignore_missing(self.prefixes.remove(&prefix_key(group, net)), "PREFIXES")?;
                delta.deleted += 1;
            }
        }
        for (endpoint, gi) in new.endpoints {
            if old.endpoints.get(endpoint) != Some(gi) {
                let value = EndpointValue {
                    group: generation_id(*gi as usize, parity),
                };
                self.endpoints
                    .insert(endpoint_key(*endpoint, parity), value, 0)
                    .map_err(map_err("ENDPOINTS"))?;
                delta.written += 1;
            }
        }
        for endpoint in old.endpoints.keys() {
            if !new.endpoints.contains_key(endpoint) {
                let key = endpoint_key(*endpoint, parity);
                ignore_missing(self.endpoints.remove(&key), "ENDPOINTS")?;
                delta.deleted += 1;
            }
        }
        // Rule sets last: nothing of this generation refers to them any more.
        for i in new.rule_sets.len()..old.rule_sets.len() {
            let id = generation_id(i, parity);
            ignore_missing(self.rule_sets.remove(&id), "RULE_SETS")?;
            delta.deleted += 1;
        }
        Ok(delta)
    }

    /// The entries of generation `parity`, found by iterating (adopted maps).
    pub fn written(&self, parity: u32) -> Written {
        let bit = parity * GENERATION_ID_BIT;
        Written {
            endpoints: self
                .endpoints
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.generation as u32 == parity)
                .collect(),
            prefixes: self
                .prefixes
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| u32::from_be(k.data().group_be) & GENERATION_ID_BIT == bit)
                .collect(),
            rule_sets: self
                .rule_sets
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k & GENERATION_ID_BIT == bit)
                .collect(),
        }
    }

    /// How many entries generation `parity` has in each table: (endpoints, prefixes, rule sets).
    pub fn entry_counts(&self, parity: u32) -> (usize, usize, usize) {
        let w = self.written(parity);
        (w.endpoints.len(), w.prefixes.len(), w.rule_sets.len())
    }

    /// Deletes the `written` entries; returns how many.
    pub fn delete(&mut self, written: &Written) -> Result<usize> {
        for k in &written.endpoints {
            ignore_missing(self.endpoints.remove(k), "ENDPOINTS")?;
        }
        for k in &written.prefixes {
            ignore_missing(self.prefixes.remove(k), "PREFIXES")?;
        }
        for k in &written.rule_sets {
            ignore_missing(self.rule_sets.remove(k), "RULE_SETS")?;
        }
        Ok(written.endpoints.len() + written.prefixes.len() + written.rule_sets.len())
    }

    /// Deletes every flow (live ones too: their next packets are judged as new connections).
    pub fn clear_flows(&mut self) -> Result<usize> {
        let keys: Vec<FlowKey> = self.flows.keys().filter_map(|k| k.ok()).collect();
        for k in &keys {
            ignore_missing(self.flows.remove(k), "FLOWS")?;
        }
        Ok(keys.len())
    }

    /// Deletes the expired flows; returns how many.
    pub fn gc_flows(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let expired: Vec<FlowKey> = self
            .flows
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, v)| now.saturating_sub(v.last_seen_ns) > flow_timeout_ns(v.state))
            .map(|(k, _)| k)
            .collect();
        for k in &expired {
            ignore_missing(self.flows.remove(k), "FLOWS")?;
        }
        debug!(deleted = expired.len(), "flow GC");
        Ok(expired.len())
    }

    /// All flows currently in the table (expired ones included until GC).
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.flows.iter().filter_map(|r| r.ok()).collect()
    }

    /// The first `N` slots of `COUNTERS`, each summed over CPUs.
    pub fn counters<const N: usize>(&self) -> Result<[u64; N]> {
        let mut sums = [0u64; N];
        for (i, sum) in sums.iter_mut().enumerate() {
            let values = self
                .counters
                .get(&(i as u32), 0)
                .map_err(map_err("COUNTERS"))?;
            *sum = values.iter().sum();
        }
        Ok(sums)
    }

    /// `DROPS_BY_GROUP` summed over CPUs, with the policies of each group where known.
    pub fn group_drops(&self, policies: &BTreeMap<u32, Vec<String>>) -> Vec<GroupDrops> {
        self.drops_by_group
            .iter()
            .filter_map(|r| r.ok())
            .map(|(group, values)| GroupDrops {
                group,
                policies: policies.get(&group).cloned().unwrap_or_default(),
                packets: values.iter().sum(),
            })
            .collect()
    }
}

/// Drops charged to one policy group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDrops {
    /// Group id as in the maps (parity bit included).
    pub group: u32,
    /// Policies of that group, when it belongs to a generation this process wrote.
    pub policies: Vec<String>,
    pub packets: u64,
}

/// Reader of the program's drop events.
pub struct DropEvents {
    ring: RingBuf<MapData>,
}

impl DropEvents {
    pub fn new(ring: RingBuf<MapData>) -> DropEvents {
        DropEvents { ring }
    }

    /// The next available event, without blocking. Poll [`AsFd::as_fd`] for readability to wait.
    pub fn next_event(&mut self) -> Option<DropEvent> {
        let item = self.ring.next()?;
        if item.len() < std::mem::size_of::<DropEvent>() {
            return None;
        }
        // SAFETY: the program writes whole DropEvent records; read unaligned.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const DropEvent) })
    }
}

impl AsFd for DropEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}
