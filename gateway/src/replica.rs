//! The gateway side of replication between the gateways of a highly available group
//! (`portcullis_ha`): its flows and translations read as [`Replica`] entries
//! ([`crate::Gateway::export_replicas`], also [`crate::PinnedGateway::export_replicas`]) and a
//! peer's entries written into its maps ([`crate::Gateway::import_replicas`]). The transport (a
//! stream per peer, a full dump then deltas) and when to call these are the HA daemon's.
//!
//! **Time.** Each gateway's flow clock (`CLOCK_MONOTONIC_COARSE`, [`monotonic_coarse_ns`]) is its
//! own, so an entry travels with its age: a flow with its idle time (`now - last_seen_ns`), a
//! translation with its age (`now - created_ns`), and the receiver writes it at its own
//! `now - age`.
//!
//! **Deltas.** `changed_since_ns = Some(t)` exports the flows seen at or after `t` and the
//! translations made at or after `t`. The program reads the clock a little before it writes an
//! entry, so the daemon passes the start of its previous scan minus a margin
//! ([`REPLICA_DELTA_OVERLAP_NS`]): an entry sent twice is harmless (import is idempotent). A
//! flow's `last_seen_ns` moves at most every `FLOW_REFRESH_NS` (~1 s), so a busy flow is in about
//! one delta a second. Deletions are not replicated: each gateway expires flows by their own
//! timeouts and collects translations with their flows (`snat_maps`).
//!
//! **Import rules.**
//! - Flows: written with `last_seen_ns = now - idle_ns`, without the sender's next hops (a flow
//!   this gateway has already keeps its own cached hops; a new one has none: its first packets
//!   look their route up here). The generation parity is set to the *opposite* of this gateway's
//!   current one: with `--revalidate`, the first packet of each imported flow is re-checked
//!   against this gateway's own policy (the flow stays when it allows it, and is marked current),
//!   so a peer whose policy lagged or differed cannot vouch for a connection this gateway's policy
//!   denies. Without `--revalidate`, imported flows are trusted as a policy update trusts
//!   established flows. A flow this gateway has with a more recent `last_seen_ns` is left alone
//!   (`stale`), as is an expired one; a confirmed replica goes to `FLOWS` (and removes an
//!   embryonic entry of the same key, as the program's promotion does), an embryonic one to
//!   `EMBRYONIC_FLOWS` and never over a confirmed entry. Both tables are LRUs: an import never
//!   fails for room, it evicts as a new flow would.
//! - Translations: both halves of a translation (outbound: pod tuple → egress address and port;
//!   inbound: the translated tuple → pod) are written together from the outbound entry, inbound
//!   first, each with `BPF_NOEXIST` as the program does, so two connections never share a
//!   translated tuple: an existing entry with the same mapping is kept (counted as imported),
//!   one with a different mapping is a `conflict`, never overwritten (and the other half written
//!   for it is withdrawn); a full table counts as `full`. An inbound entry whose outbound half is
//!   not in the batch is written alone (it reserves its tuple; the GC removes it if no outbound
//!   half follows). `created_ns = now - age_ns`.
//!
//! Translations to an egress address this gateway has not configured (yet) are imported all the
//! same: the receiver may not have applied the EgressGateway configuration when the peer's dump
//! arrives; they are used once it has (the program translates replies only to configured egress
//! addresses, `SNAT_EGRESS_IPS`).

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData, MapError};
use portcullis_bpf::{
    delete_if_present, ignore_missing, map_err, monotonic_coarse_ns, PolicyMaps, Result,
};
use portcullis_common::*;
pub use portcullis_ha::replica::Replica;
use serde::Serialize;

use crate::snat_maps::inbound_key;

/// What a delta's `changed_since_ns` should overlap the previous scan by (see the module).
pub const REPLICA_DELTA_OVERLAP_NS: u64 = 100_000_000;

const BPF_NOEXIST: u64 = 1;

/// What an import did with its entries: each entry counts in exactly one field. The names are
/// those of the metrics (`..._replica_import_{flows,translations,...}_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportStats {
    /// Flows written (`FLOWS` or `EMBRYONIC_FLOWS`).
    pub flows: u64,
    /// Translation entries (one direction each) written, or already there with the same mapping.
    pub translations: u64,
    /// Translation entries refused: this gateway maps the key (or the other half's key)
    /// differently. The existing entry stays.
    pub conflicts: u64,
    /// Translation entries refused: `SNAT_TRANSLATIONS` is full.
    pub full: u64,
    /// Flows left alone: this gateway's entry is more recent, an embryonic replica of a
    /// confirmed flow, or expired already.
    pub stale: u64,
}

impl ImportStats {
    /// Entries counted.
    pub fn total(&self) -> u64 {
        self.flows + self.translations + self.conflicts + self.full + self.stale
    }
}

impl std::ops::AddAssign for ImportStats {
    fn add_assign(&mut self, o: ImportStats) {
        self.flows += o.flows;
        self.translations += o.translations;
        self.conflicts += o.conflicts;
        self.full += o.full;
        self.stale += o.stale;
    }
}

/// The flows of both tables and the translations, as [`Replica`] entries (see the module for
/// `since`).
pub(crate) fn export(
    maps: &PolicyMaps,
    translations: Option<&HashMap<MapData, NatKey, NatValue>>,
    since: Option<u64>,
) -> Vec<Replica> {
    let now = monotonic_coarse_ns();
    let fresh = |t: u64| since.is_none_or(|s| t >= s);
    let flow = |key, value: FlowValue, confirmed| Replica::Flow {
        key,
        value,
        confirmed,
        idle_ns: now.saturating_sub(value.last_seen_ns),
    };
    let confirmed = (maps.flows.iter().filter_map(|r| r.ok()))
        .filter(|(_, c)| fresh(c.flow.last_seen_ns))
        .map(|(k, c)| flow(k, c.flow, true));
    let embryonic = (maps.embryonic_flows.iter().filter_map(|r| r.ok()))
        .filter(|(_, f)| fresh(f.last_seen_ns))
        .map(|(k, f)| flow(k, f, false));
    let translated = (translations.into_iter())
        .flat_map(|t| t.iter().filter_map(|r| r.ok()))
        .filter(|(_, v)| fresh(v.created_ns))
        .map(|(key, value)| Replica::Translation {
            key,
            value,
            age_ns: now.saturating_sub(value.created_ns),
        });
    confirmed.chain(embryonic).chain(translated).collect()
}

/// Writes `entries` into `maps` and `translations` by the module's rules; `generation`: this
/// gateway's generation parity in force.
pub(crate) fn import(
    maps: &mut PolicyMaps,
    translations: &mut HashMap<MapData, NatKey, NatValue>,
    generation: u32,
    entries: &[Replica],
) -> Result<ImportStats> {
    let now = monotonic_coarse_ns();
    let mut stats = ImportStats::default();
    // Flows first: a translation is only kept by the GC while its flow lives.
    for e in entries {
        if let Replica::Flow {
            key,
            value,
            confirmed,
            idle_ns,
        } = e
        {
            let at = (now, *idle_ns, generation ^ 1);
            match import_flow(maps, key, *value, *confirmed, at)? {
                true => stats.flows += 1,
                false => stats.stale += 1,
            }
        }
    }
    let mut t = Translations {
        map: translations,
        now,
    };
    // Outbound entries bring their inbound half; what became of a pair, by its inbound key.
    let mut pairs: StdHashMap<NatKey, (NatValue, Outcome)> = StdHashMap::new();
    for e in entries {
        if let Replica::Translation { key, value, age_ns } = e {
            if key.direction == NAT_OUTBOUND {
                let (inbound, half) = inbound_half(key, value);
                let outcome = t.pair(key, value, (&inbound, &half), *age_ns)?;
                outcome.count(&mut stats);
                pairs.insert(inbound, (half, outcome));
            }
        }
    }
    for e in entries {
        if let Replica::Translation { key, value, age_ns } = e {
            if key.direction == NAT_OUTBOUND {
                continue;
            }
            let outcome = match pairs.get(key) {
                Some((half, outcome)) if same_mapping(half, value) => *outcome,
                // The peer's inbound entry disagrees with its own outbound one: not written.
                Some(_) => Outcome::Conflict,
                None => match t.insert(key, &t.aged(value, *age_ns))? {
                    Insert::Added | Insert::Present => Outcome::Imported,
                    Insert::Conflict => Outcome::Conflict,
                    Insert::Full => Outcome::Full,
                },
            };
            outcome.count(&mut stats);
        }
    }
    Ok(stats)
}

/// Writes one flow (`at`: this gateway's clock, the flow's idle time and the generation parity to
/// give it); false when it is left alone.
fn import_flow(
    maps: &mut PolicyMaps,
    key: &FlowKey,
    value: FlowValue,
    confirmed: bool,
    (now, idle_ns, parity): (u64, u64, u32),
) -> Result<bool> {
    if idle_ns > flow_timeout_ns(value.state) {
        return Ok(false);
    }
    let last_seen_ns = now.saturating_sub(idle_ns);
    let value = FlowValue {
        last_seen_ns,
        generation: parity as u8,
        ..value
    };
    let existing = maps.flows.get(key, 0).ok();
    if !confirmed {
        let newer = maps.embryonic_flows.get(key, 0).ok();
        if existing.is_some() || newer.is_some_and(|f| f.last_seen_ns > last_seen_ns) {
            return Ok(false);
        }
        (maps.embryonic_flows.insert(key, value, 0)).map_err(map_err(MAP_EMBRYONIC_FLOWS))?;
        return Ok(true);
    }
    if existing.is_some_and(|c| c.flow.last_seen_ns > last_seen_ns) {
        return Ok(false);
    }
    // This gateway's own cached next hops stay (checked against its epoch as ever); none when
    // the flow is new here.
    let entry = ConfirmedFlow {
        flow: value,
        ..existing.unwrap_or_default()
    };
    (maps.flows.insert(key, entry, 0)).map_err(map_err(MAP_FLOWS))?;
    // Usually not there: the flow was confirmed on the peer before its first replica.
    delete_if_present(maps.embryonic_flows.remove(key), MAP_EMBRYONIC_FLOWS)?;
    Ok(true)
}

/// What became of one translation entry (or pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Imported,
    Conflict,
    Full,
}

impl Outcome {
    fn count(self, stats: &mut ImportStats) {
        match self {
            Outcome::Imported => stats.translations += 1,
            Outcome::Conflict => stats.conflicts += 1,
            Outcome::Full => stats.full += 1,
        }
    }
}

/// One `BPF_NOEXIST` insert.
enum Insert {
    Added,
    /// There already, with the same mapping.
    Present,
    /// There already, with another mapping.
    Conflict,
    Full,
}

/// The inbound half of outbound translation `key` → `value`: the translated tuple, mapped back to
/// the pod's address and port (the original echo identifier for ICMP), as the program writes it.
fn inbound_half(key: &NatKey, value: &NatValue) -> (NatKey, NatValue) {
    let half = NatValue {
        addr: key.src,
        port: key.sport,
        ..*value
    };
    (inbound_key(key, value), half)
}

/// Whether two values map to the same address and port (the time they were made aside).
fn same_mapping(a: &NatValue, b: &NatValue) -> bool {
    (a.addr, a.port) == (b.addr, b.port)
}

struct Translations<'a> {
    map: &'a mut HashMap<MapData, NatKey, NatValue>,
    now: u64,
}

impl Translations<'_> {
    /// `value` made `age_ns` ago by this gateway's clock.
    fn aged(&self, value: &NatValue, age_ns: u64) -> NatValue {
        NatValue {
            created_ns: self.now.saturating_sub(age_ns),
            ..*value
        }
    }

    /// Writes outbound `key` → `value` and its inbound half, inbound first; a half refused
    /// withdraws the other one if this call wrote it.
    fn pair(
        &mut self,
        key: &NatKey,
        value: &NatValue,
        (inbound, half): (&NatKey, &NatValue),
        age_ns: u64,
    ) -> Result<Outcome> {
        let added_inbound = match self.insert(inbound, &self.aged(half, age_ns))? {
            Insert::Added => true,
            Insert::Present => false,
            Insert::Conflict => return Ok(Outcome::Conflict),
            Insert::Full => return Ok(Outcome::Full),
        };
        let refused = match self.insert(key, &self.aged(value, age_ns))? {
            Insert::Added | Insert::Present => return Ok(Outcome::Imported),
            Insert::Conflict => Outcome::Conflict,
            Insert::Full => Outcome::Full,
        };
        if added_inbound {
            ignore_missing(self.map.remove(inbound), MAP_SNAT_TRANSLATIONS)?;
        }
        Ok(refused)
    }

    fn insert(&mut self, key: &NatKey, value: &NatValue) -> Result<Insert> {
        // Twice at most: an entry that exists when inserting but is gone when read was removed
        // in between (GC); the second try settles it.
        for _ in 0..2 {
            match self.map.insert(key, value, BPF_NOEXIST) {
                Ok(()) => return Ok(Insert::Added),
                Err(e) if errno(&e) == Some(libc::E2BIG) => return Ok(Insert::Full),
                Err(e) if errno(&e) == Some(libc::EEXIST) => match self.map.get(key, 0) {
                    Ok(v) if same_mapping(&v, value) => return Ok(Insert::Present),
                    Ok(_) => return Ok(Insert::Conflict),
                    Err(MapError::KeyNotFound) => continue,
                    Err(e) => return Err(map_err(MAP_SNAT_TRANSLATIONS)(e)),
                },
                Err(e) => return Err(map_err(MAP_SNAT_TRANSLATIONS)(e)),
            }
        }
        Ok(Insert::Conflict)
    }
}

fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbound_half_maps_the_translated_tuple_back_to_the_pod() {
        let out = NatKey {
            src: ipv4_mapped([10, 0, 0, 1]),
            dst: ipv4_mapped([192, 0, 2, 1]),
            sport: 40000u16.to_be(),
            dport: 443u16.to_be(),
            protocol: PROTO_TCP,
            direction: NAT_OUTBOUND,
            _pad: [0; 2],
        };
        let v = NatValue {
            addr: ipv4_mapped([203, 0, 113, 9]),
            port: 33000u16.to_be(),
            created_ns: 7,
            _pad: [0; 6],
        };
        let (key, half) = inbound_half(&out, &v);
        assert_eq!(
            (key.dst, key.dport, key.direction),
            (v.addr, v.port, NAT_INBOUND)
        );
        assert_eq!(
            (half.addr, half.port, half.created_ns),
            (out.src, out.sport, 7)
        );
        assert!(same_mapping(
            &half,
            &NatValue {
                created_ns: 9,
                ..half
            }
        ));
        assert!(!same_mapping(&half, &v));
    }

    #[test]
    fn stats_count_every_entry_once() {
        let mut a = ImportStats {
            flows: 1,
            translations: 2,
            conflicts: 3,
            full: 4,
            stale: 5,
        };
        a += a;
        assert_eq!(a.total(), 30);
    }
}
