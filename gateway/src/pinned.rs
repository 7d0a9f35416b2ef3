//! Read-only view of a running gateway's pinned maps, for `status` and `monitor` in another
//! process. Opening it changes nothing; the daemon keeps enforcing.

use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData};
use portcullis_bpf::object::open_pinned;
use portcullis_bpf::{DropEvents, GroupPolicies, PolicyMaps, Result, TableStatus};
use portcullis_common::{
    Legs, NatKey, NatValue, CONFIG_FLAG_SNAT, MAP_DROP_EVENTS, MAP_LEGS, ROLE_CLUSTER,
    ROLE_EXTERNAL,
};
use serde::Serialize;

use crate::replica::{self, Replica};
use crate::snat_maps::SnatMaps;
use crate::{DatapathMode, ForwardMode, SnatStatus, LINK_PINS};

pub struct PinnedGateway {
    maps: PolicyMaps,
    legs: Array<MapData, Legs>,
    /// `None` for a gateway of a version without SNAT (its pins have no SNAT maps).
    snat: Option<SnatMaps>,
    dir: PathBuf,
}

/// What a pinned gateway shows: its maps plus the links present in the pin directory.
#[derive(Clone, Debug, Serialize)]
pub struct PinnedStatus {
    /// (ifindex, role) of the legs the program is configured for.
    #[serde(skip)]
    pub legs: Vec<(u32, u32)>,
    /// Pinned links present (`link_cluster`, `link_external`).
    #[serde(rename = "links_pinned")]
    pub links: Vec<String>,
    pub forward: ForwardMode,
    pub datapath: DatapathMode,
    #[serde(flatten)]
    pub tables: TableStatus,
    /// Source NAT: translations, egress addresses and their pools, SNAT counters.
    pub snat: SnatStatus,
}

impl PinnedGateway {
    /// Opens the maps pinned under `dir` by a gateway started with that pin directory.
    pub fn open(dir: &Path) -> Result<PinnedGateway> {
        Ok(PinnedGateway {
            maps: PolicyMaps::open_pinned(dir)?,
            legs: open_pinned(dir, MAP_LEGS)?,
            snat: SnatMaps::open_pinned(dir).ok(),
            dir: dir.to_path_buf(),
        })
    }

    /// Status; `policies` names the groups (the daemon publishes them beside the pins).
    pub fn status(&self, policies: &GroupPolicies) -> Result<PinnedStatus> {
        let flags = self.maps.config()?.flags;
        Ok(PinnedStatus {
            legs: self.legs()?,
            links: (LINK_PINS.into_iter())
                .filter(|l| self.dir.join(l).exists())
                .map(str::to_string)
                .collect(),
            forward: ForwardMode::from_config_flags(flags),
            datapath: DatapathMode::from_config_flags(flags),
            tables: self.maps.status(policies)?,
            snat: self.snat_status()?,
        })
    }

    /// The running gateway's translations, pools and SNAT counters (all empty for a gateway of
    /// a version without SNAT).
    pub fn snat_status(&self) -> Result<SnatStatus> {
        let enabled = self.maps.config()?.flags & CONFIG_FLAG_SNAT != 0;
        match &self.snat {
            Some(snat) => snat.status(enabled),
            None => Ok(SnatStatus::default()),
        }
    }

    /// Every translation of the running gateway, both directions (see
    /// [`crate::Gateway::snat_translations`]); none for a gateway of a version without SNAT.
    pub fn snat_translations(&self) -> Vec<(NatKey, NatValue)> {
        self.snat
            .as_ref()
            .map(SnatMaps::translations)
            .unwrap_or_default()
    }

    /// The running gateway's flows and translations as replicated entries (see
    /// [`crate::Gateway::export_replicas`]).
    pub fn export_replicas(&self, changed_since_ns: Option<u64>) -> Result<Vec<Replica>> {
        let translations = self.snat.as_ref().map(|s| &s.translations);
        Ok(replica::export(&self.maps, translations, changed_since_ns))
    }

    /// (ifindex, role) of the legs the program is configured for.
    fn legs(&self) -> Result<Vec<(u32, u32)>> {
        let legs = (self.legs.get(&0, 0)).map_err(portcullis_bpf::map_err(MAP_LEGS))?;
        Ok(
            [(legs.cluster, ROLE_CLUSTER), (legs.external, ROLE_EXTERNAL)]
                .into_iter()
                .filter(|(ifindex, _)| *ifindex != 0)
                .collect(),
        )
    }

    /// The drop-event ring buffer. Only one reader should consume it at a time.
    pub fn drop_events(&self) -> Result<DropEvents> {
        Ok(DropEvents::new(open_pinned(&self.dir, MAP_DROP_EVENTS)?))
    }
}
