//! The node hook's own maps: pod identities (`IDENTITIES`), selector rules by peer identity
//! (`PEERS`) and the node's addresses (`HOST_ADDRS`); their delta writes in a generation and their
//! counts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use aya::maps::{HashMap, MapData};
use aya::Ebpf;
use portcullis_bpf::object::{open_pinned, take};
use portcullis_bpf::{generation_id, ignore_missing, key_addr, map_err, Delta, Result};
use portcullis_common::*;
use portcullis_policy::compile::node::NodeTables;
use serde::Serialize;
use tracing::debug;

use crate::OBJECT;

/// Entries of the generation in force in the node's own maps.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OwnCounts {
    pub identities: usize,
    pub peers: usize,
}

pub(crate) struct OwnMaps {
    identities: HashMap<MapData, IdentityKey, IdentityValue>,
    peers: HashMap<MapData, PeerKey, PeerValue>,
}

impl OwnMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<OwnMaps> {
        Ok(OwnMaps {
            identities: take(ebpf, OBJECT, MAP_IDENTITIES)?,
            peers: take(ebpf, OBJECT, MAP_PEERS)?,
        })
    }

    pub(crate) fn open_pinned(dir: &Path) -> Result<OwnMaps> {
        Ok(OwnMaps {
            identities: open_pinned(dir, MAP_IDENTITIES)?,
            peers: open_pinned(dir, MAP_PEERS)?,
        })
    }

    /// Brings generation `parity` of the node's own maps from `old` (`None`: unknown, deleted by
    /// iterating first) to `new`.
    pub(crate) fn write_delta(
        &mut self,
        old: Option<&NodeTables>,
        new: &NodeTables,
        parity: u32,
    ) -> Result<Delta> {
        let mut delta = Delta::default();
        let empty = NodeTables::default();
        let before = match old {
            Some(old) => old,
            None => {
                delta.deleted += self.delete_generation(parity)?;
                &empty
            }
        };
        let no_peers = BTreeMap::new();
        for gi in 0..new.groups.len().max(before.groups.len()) {
            let had = before.groups.get(gi).map_or(&no_peers, |g| &g.peers);
            let has = new.groups.get(gi).map_or(&no_peers, |g| &g.peers);
            if had == has {
                continue;
            }
            let group = generation_id(gi, parity);
            for (identity, rs) in has {
                if had.get(identity) != Some(rs) {
                    let key = PeerKey {
                        group,
                        identity: *identity,
                    };
                    let value = PeerValue {
                        rule_set: generation_id(*rs as usize, parity),
                    };
                    self.peers
                        .insert(key, value, 0)
                        .map_err(map_err(MAP_PEERS))?;
                    delta.written += 1;
                }
            }
            for identity in had.keys().filter(|id| !has.contains_key(id)) {
                let key = PeerKey {
                    group,
                    identity: *identity,
                };
                ignore_missing(self.peers.remove(&key), MAP_PEERS)?;
                delta.deleted += 1;
            }
        }
        let identity_key = |ip: &IpAddr| IdentityKey {
            addr: key_addr(*ip),
            generation: parity as u8,
            _pad: [0; 3],
        };
        for (ip, identity) in &new.identities {
            if before.identities.get(ip) != Some(identity) {
                let value = IdentityValue {
                    identity: *identity,
                };
                (self.identities)
                    .insert(identity_key(ip), value, 0)
                    .map_err(map_err(MAP_IDENTITIES))?;
                delta.written += 1;
            }
        }
        for ip in before.identities.keys() {
            if !new.identities.contains_key(ip) {
                ignore_missing(self.identities.remove(&identity_key(ip)), MAP_IDENTITIES)?;
                delta.deleted += 1;
            }
        }
        Ok(delta)
    }

    fn identity_keys(&self, parity: u32) -> Vec<IdentityKey> {
        (self.identities.keys())
            .filter_map(|k| k.ok())
            .filter(|k| u32::from(k.generation) == parity)
            .collect()
    }

    fn peer_keys(&self, parity: u32) -> Vec<PeerKey> {
        (self.peers.keys())
            .filter_map(|k| k.ok())
            .filter(|k| k.group & GENERATION_ID_BIT == parity * GENERATION_ID_BIT)
            .collect()
    }

    /// Deletes the entries of generation `parity` (unknown content: found by iterating).
    fn delete_generation(&mut self, parity: u32) -> Result<usize> {
        let identities = self.identity_keys(parity);
        let peers = self.peer_keys(parity);
        for k in &identities {
            ignore_missing(self.identities.remove(k), MAP_IDENTITIES)?;
        }
        for k in &peers {
            ignore_missing(self.peers.remove(k), MAP_PEERS)?;
        }
        debug!(
            parity,
            deleted = identities.len() + peers.len(),
            "deleted unknown generation"
        );
        Ok(identities.len() + peers.len())
    }

    pub(crate) fn counts(&self, parity: u32) -> OwnCounts {
        OwnCounts {
            identities: self.identity_keys(parity).len(),
            peers: self.peer_keys(parity).len(),
        }
    }
}
