//! The program's SNAT maps from user space: writing a configuration's tables, the status of the
//! translations, and their GC.
//!
//! GC: the program makes translations and never removes them (the table is no LRU: evicting one
//! half could let two connections share a translated tuple). A translation goes when the pod's
//! flow it was made for (keyed on pod addresses in `FLOWS` / `EMBRYONIC_FLOWS`) is gone or
//! expired, and it is older than [`SNAT_GC_GRACE_NS`] (a new translation's flow is written just
//! before it; the grace keeps the GC from racing a connection being set up). Both halves are
//! removed, the inbound one (the translated tuple) last, so the tuple is free only once no
//! outbound entry points at it. A pod the configuration dropped keeps a retired class
//! (`SNAT_CLASS_RETIRED`) while its translations remain, and loses it with the last one. Inbound
//! entries without their outbound half (a program killed
//! between the two inserts cannot happen, but a table written by hand can) go the same way.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::Ebpf;
use portcullis_bpf::object::{open_pinned, take};
use portcullis_bpf::{cpu_sums, map_err, monotonic_coarse_ns, PolicyMaps, Result};
use portcullis_common::*;

use crate::snat::{
    addr_of, entry_from_id, entry_id, EgressIpStatus, SnatCounters, SnatStatus, SnatTables,
};
use crate::OBJECT;

/// Translations younger than this are never collected (their flow may be being written).
pub const SNAT_GC_GRACE_NS: u64 = 2_000_000_000;

pub(crate) struct SnatMaps {
    classes: HashMap<MapData, [u8; 16], SnatClass>,
    entries: LpmTrie<MapData, SnatEntryKey, SnatTarget>,
    egress_ips: HashMap<MapData, [u8; 16], EgressIp>,
    /// Read and written by the replication too (`crate::replica`).
    pub(crate) translations: HashMap<MapData, NatKey, NatValue>,
    counters: PerCpuArray<MapData, u64>,
}

impl SnatMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<SnatMaps> {
        Ok(SnatMaps {
            classes: take(ebpf, OBJECT, MAP_SNAT_CLASSES)?,
            entries: take(ebpf, OBJECT, MAP_SNAT_ENTRIES)?,
            egress_ips: take(ebpf, OBJECT, MAP_SNAT_EGRESS_IPS)?,
            translations: take(ebpf, OBJECT, MAP_SNAT_TRANSLATIONS)?,
            counters: take(ebpf, OBJECT, MAP_SNAT_COUNTERS)?,
        })
    }

    pub fn open_pinned(dir: &Path) -> Result<SnatMaps> {
        Ok(SnatMaps {
            classes: open_pinned(dir, MAP_SNAT_CLASSES)?,
            entries: open_pinned(dir, MAP_SNAT_ENTRIES)?,
            egress_ips: open_pinned(dir, MAP_SNAT_EGRESS_IPS)?,
            translations: open_pinned(dir, MAP_SNAT_TRANSLATIONS)?,
            counters: open_pinned(dir, MAP_SNAT_COUNTERS)?,
        })
    }

    /// Whether the program must look at the SNAT tables: some pod has a class, or translations
    /// (and their egress addresses) remain.
    pub fn in_use(&self) -> bool {
        self.classes.keys().next().is_some() || self.translations.keys().next().is_some()
    }

    /// Egress addresses translations use.
    fn egress_in_use(&self) -> BTreeSet<[u8; 16]> {
        (self.translations.iter().filter_map(|r| r.ok()))
            .filter(|(k, _)| k.direction == NAT_INBOUND)
            .map(|(k, _)| k.dst)
            .collect()
    }

    /// Replaces the configuration tables with `t`: new and changed entries first, stale ones
    /// after (an egress address translations still use stays). Returns entries written and
    /// deleted.
    pub fn write(&mut self, t: &SnatTables) -> Result<(usize, usize)> {
        let mut written = 0;
        for (ip, pool) in &t.egress_ips {
            if self.egress_ips.get(ip, 0).ok() != Some(*pool) {
                (self.egress_ips.insert(ip, pool, 0)).map_err(map_err(MAP_SNAT_EGRESS_IPS))?;
                written += 1;
            }
        }
        // By iteration, not lookup: a trie lookup answers with the longest prefix containing the
        // key, which may be another entry.
        let existing: BTreeMap<(u32, [u8; 24]), SnatTarget> =
            (self.entries.iter().filter_map(|r| r.ok()))
                .map(|(k, v)| (entry_id(&k), v))
                .collect();
        for (id, target) in &t.entries {
            let key = entry_from_id(*id);
            if existing.get(id) != Some(target) {
                (self.entries.insert(&key, target, 0)).map_err(map_err(MAP_SNAT_ENTRIES))?;
                written += 1;
            }
        }
        for (pod, class) in &t.classes {
            if self.classes.get(pod, 0).ok() != Some(*class) {
                (self.classes.insert(pod, class, 0)).map_err(map_err(MAP_SNAT_CLASSES))?;
                written += 1;
            }
        }
        let mut deleted = 0;
        let translated = self.pods_translated();
        let stale: Vec<([u8; 16], SnatClass)> = (self.classes.iter().filter_map(|r| r.ok()))
            .filter(|(k, _)| !t.classes.contains_key(k))
            .collect();
        for (pod, class) in stale {
            if !translated.contains(&pod) {
                (self.classes.remove(&pod)).map_err(map_err(MAP_SNAT_CLASSES))?;
                deleted += 1;
            } else if class != SNAT_CLASS_RETIRED {
                let retired = SNAT_CLASS_RETIRED;
                (self.classes.insert(pod, retired, 0)).map_err(map_err(MAP_SNAT_CLASSES))?;
                written += 1;
            }
        }
        let stale: Vec<Key<SnatEntryKey>> = (self.entries.keys().filter_map(|k| k.ok()))
            .filter(|k| !t.entries.contains_key(&entry_id(k)))
            .collect();
        for key in stale {
            (self.entries.remove(&key)).map_err(map_err(MAP_SNAT_ENTRIES))?;
            deleted += 1;
        }
        let retired: Vec<([u8; 16], EgressIp)> = (self.egress_ips.iter().filter_map(|r| r.ok()))
            .filter(|(ip, pool)| pool.configured != 0 && !t.egress_ips.contains_key(ip))
            .collect();
        for (ip, pool) in retired {
            let pool = EgressIp {
                configured: 0,
                ..pool
            };
            (self.egress_ips.insert(ip, pool, 0)).map_err(map_err(MAP_SNAT_EGRESS_IPS))?;
        }
        deleted += self.remove_retired_egress()?;
        Ok((written, deleted))
    }

    /// Sets `answer` to `value` for every egress address whose wanted answer (`owned`: 1 when it
    /// is in the set) is `value` and differs; returns how many it rewrote. Called for 0 then 1,
    /// so that addresses given up go quiet before new ones are claimed.
    pub fn set_answers(&mut self, owned: &BTreeSet<[u8; 16]>, value: u8) -> Result<usize> {
        let changed: Vec<([u8; 16], EgressIp)> = (self.egress_ips.iter().filter_map(|r| r.ok()))
            .filter(|(ip, pool)| owned.contains(ip) as u8 == value && pool.answer != value)
            .collect();
        for (ip, pool) in &changed {
            let pool = EgressIp {
                answer: value,
                ..*pool
            };
            (self.egress_ips.insert(ip, pool, 0)).map_err(map_err(MAP_SNAT_EGRESS_IPS))?;
        }
        Ok(changed.len())
    }

    /// Pods with outbound translations.
    fn pods_translated(&self) -> BTreeSet<[u8; 16]> {
        (self.translations.keys().filter_map(|k| k.ok()))
            .filter(|k| k.direction == NAT_OUTBOUND)
            .map(|k| k.src)
            .collect()
    }

    /// Removes the retired classes of pods without translations left.
    fn remove_retired_classes(&mut self) -> Result<()> {
        let translated = self.pods_translated();
        let stale: Vec<[u8; 16]> = (self.classes.iter().filter_map(|r| r.ok()))
            .filter(|(pod, class)| *class == SNAT_CLASS_RETIRED && !translated.contains(pod))
            .map(|(pod, _)| pod)
            .collect();
        for pod in &stale {
            (self.classes.remove(pod)).map_err(map_err(MAP_SNAT_CLASSES))?;
        }
        Ok(())
    }

    /// Removes the egress addresses the configuration dropped that no translation uses any more.
    fn remove_retired_egress(&mut self) -> Result<usize> {
        let used = self.egress_in_use();
        let stale: Vec<[u8; 16]> = (self.egress_ips.iter().filter_map(|r| r.ok()))
            .filter(|(ip, pool)| pool.configured == 0 && !used.contains(ip))
            .map(|(ip, _)| ip)
            .collect();
        for ip in &stale {
            (self.egress_ips.remove(ip)).map_err(map_err(MAP_SNAT_EGRESS_IPS))?;
        }
        Ok(stale.len())
    }

    pub fn counters(&self) -> Result<SnatCounters> {
        let sums = cpu_sums(&self.counters, MAP_SNAT_COUNTERS)?;
        Ok(SnatCounters::from_sums(&sums))
    }

    pub fn status(&self, enabled: bool) -> Result<SnatStatus> {
        let mut per_ip: BTreeMap<[u8; 16], (usize, BTreeSet<u16>)> = BTreeMap::new();
        let mut translations = 0;
        for (k, _) in self.translations.iter().filter_map(|r| r.ok()) {
            if k.direction == NAT_INBOUND {
                let e = per_ip.entry(k.dst).or_default();
                e.0 += 1;
                e.1.insert(k.dport);
            } else {
                translations += 1;
            }
        }
        let classes: Vec<SnatClass> = (self.classes.iter().filter_map(|r| r.ok()))
            .map(|(_, c)| c)
            .collect();
        let egress_ips = (self.egress_ips.iter().filter_map(|r| r.ok()))
            .map(|(ip, pool)| {
                let (n, ports) = per_ip.remove(&ip).unwrap_or_default();
                EgressIpStatus {
                    ip: addr_of(ip),
                    translations: n,
                    ports_in_use: ports.len(),
                    pool_size: (pool.port_last as usize + 1)
                        .saturating_sub(pool.port_first as usize),
                }
            })
            .collect();
        Ok(SnatStatus {
            enabled,
            pods: classes.iter().filter(|c| **c != SNAT_CLASS_RETIRED).count(),
            retired_pods: classes.iter().filter(|c| **c == SNAT_CLASS_RETIRED).count(),
            entries: self.entries.keys().count(),
            translations,
            egress_ips,
            counters: self.counters()?,
        })
    }

    /// Every translation as (key, value), both directions.
    pub fn translations(&self) -> Vec<(NatKey, NatValue)> {
        (self.translations.iter().filter_map(|r| r.ok())).collect()
    }

    /// Deletes the translations whose flow is gone (see the module); returns how many
    /// connections' translations it deleted.
    pub fn gc(&mut self, flows: &PolicyMaps) -> Result<usize> {
        let now = monotonic_coarse_ns();
        let live = |key: &FlowKey| {
            let flow = (flows.flows.get(key, 0).map(|c| c.flow))
                .or_else(|_| flows.embryonic_flows.get(key, 0));
            matches!(flow, Ok(f) if now.saturating_sub(f.last_seen_ns) <= flow_timeout_ns(f.state))
        };
        let all = self.translations();
        let mut referenced = HashSet::new();
        let mut doomed = Vec::new();
        for (k, v) in all.iter().filter(|(k, _)| k.direction == NAT_OUTBOUND) {
            let inbound = inbound_key(k, v);
            let young = now.saturating_sub(v.created_ns) < SNAT_GC_GRACE_NS;
            if young || live(&flow_key(k)) {
                referenced.insert(inbound);
            } else {
                doomed.push((*k, inbound));
            }
        }
        for (outbound, inbound) in &doomed {
            (self.translations.remove(outbound)).map_err(map_err(MAP_SNAT_TRANSLATIONS))?;
            (self.translations.remove(inbound)).map_err(map_err(MAP_SNAT_TRANSLATIONS))?;
        }
        let orphans = all.iter().filter(|(k, v)| {
            k.direction == NAT_INBOUND
                && !referenced.contains(k)
                && !doomed.iter().any(|(_, i)| i == k)
                && now.saturating_sub(v.created_ns) >= SNAT_GC_GRACE_NS
        });
        for (k, _) in orphans {
            (self.translations.remove(k)).map_err(map_err(MAP_SNAT_TRANSLATIONS))?;
        }
        if !doomed.is_empty() {
            self.remove_retired_egress()?;
            self.remove_retired_classes()?;
        }
        Ok(doomed.len())
    }
}

/// The inbound key of the outbound translation `k` → `v`: (remote, remote port → egress,
/// translated port); ICMP echo: the translated identifier as both ports.
pub(crate) fn inbound_key(k: &NatKey, v: &NatValue) -> NatKey {
    let icmp = k.protocol == PROTO_ICMP || k.protocol == PROTO_ICMPV6;
    NatKey {
        src: k.dst,
        dst: v.addr,
        sport: if icmp { v.port } else { k.dport },
        dport: v.port,
        protocol: k.protocol,
        direction: NAT_INBOUND,
        _pad: [0; 2],
    }
}

/// The normalised flow key of the pod's connection of outbound key `k` (as the programs'
/// `flow_key`: the smaller (address, port) endpoint is `lo`).
fn flow_key(k: &NatKey) -> FlowKey {
    let src = (k.src, u16::from_be(k.sport));
    let dst = (k.dst, u16::from_be(k.dport));
    let ((addr_lo, port_lo), (addr_hi, port_hi)) = if src <= dst {
        ((k.src, k.sport), (k.dst, k.dport))
    } else {
        ((k.dst, k.dport), (k.src, k.sport))
    };
    FlowKey {
        addr_lo,
        addr_hi,
        port_lo,
        port_hi,
        protocol: k.protocol,
        _pad: [0; 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, protocol: u8) -> NatKey {
        NatKey {
            src: ipv4_mapped(src),
            dst: ipv4_mapped(dst),
            sport: sport.to_be(),
            dport: dport.to_be(),
            protocol,
            direction: NAT_OUTBOUND,
            _pad: [0; 2],
        }
    }

    #[test]
    fn the_flow_key_is_normalised_as_the_programs_do() {
        // The pod is the smaller endpoint: it is `lo`.
        let k = flow_key(&key([10, 0, 0, 1], 40000, [192, 0, 2, 1], 443, PROTO_TCP));
        assert_eq!(
            (k.addr_lo, k.port_lo),
            (ipv4_mapped([10, 0, 0, 1]), 40000u16.to_be())
        );
        // Larger: `hi`; same address: the smaller port (host order) first.
        let k = flow_key(&key([203, 0, 113, 1], 1, [192, 0, 2, 1], 443, PROTO_UDP));
        assert_eq!(k.addr_lo, ipv4_mapped([192, 0, 2, 1]));
        let k = flow_key(&key([10, 0, 0, 1], 256, [10, 0, 0, 1], 2, PROTO_UDP));
        assert_eq!((k.port_lo, k.port_hi), (2u16.to_be(), 256u16.to_be()));
    }

    #[test]
    fn the_inbound_key_is_the_reply_as_it_arrives() {
        let out = key([10, 0, 0, 1], 40000, [192, 0, 2, 1], 443, PROTO_TCP);
        let v = NatValue {
            addr: ipv4_mapped([203, 0, 113, 9]),
            port: 33000u16.to_be(),
            ..Default::default()
        };
        let i = inbound_key(&out, &v);
        assert_eq!((i.src, i.dst), (out.dst, v.addr));
        assert_eq!(
            (i.sport, i.dport, i.direction),
            (out.dport, v.port, NAT_INBOUND)
        );
        // Echo: the translated identifier both ways.
        let echo = key([10, 0, 0, 1], 7, [192, 0, 2, 1], 7, PROTO_ICMP);
        let i = inbound_key(&echo, &v);
        assert_eq!((i.sport, i.dport), (v.port, v.port));
    }
}
