//! Read-only view of a running node hook's pinned maps, for `status` and `monitor` in another
//! process. Opening it changes nothing; the daemon keeps enforcing.

use std::path::{Path, PathBuf};

use portcullis_bpf::object::open_pinned;
use portcullis_bpf::{DropEvents, GroupPolicies, PolicyMaps, Result, TableStatus};
use portcullis_common::MAP_DROP_EVENTS;
use serde::Serialize;

use crate::links::pinned_interfaces;
use crate::own_maps::{OwnCounts, OwnMaps};

pub struct PinnedNode {
    maps: PolicyMaps,
    own: OwnMaps,
    dir: PathBuf,
}

/// What a pinned node hook shows.
#[derive(Clone, Debug, Serialize)]
pub struct PinnedStatus {
    /// Interfaces with pinned links (from the pin names `tc_egress_<ifname>`).
    pub interfaces: Vec<String>,
    #[serde(flatten)]
    pub own: OwnCounts,
    #[serde(flatten)]
    pub tables: TableStatus,
}

impl PinnedNode {
    /// Opens the maps pinned under `dir` by a node hook started with that pin directory.
    pub fn open(dir: &Path) -> Result<PinnedNode> {
        Ok(PinnedNode {
            maps: PolicyMaps::open_pinned(dir)?,
            own: OwnMaps::open_pinned(dir)?,
            dir: dir.to_path_buf(),
        })
    }

    /// Status; `policies` names the groups (the daemon publishes them beside the pins).
    pub fn status(&self, policies: &GroupPolicies) -> Result<PinnedStatus> {
        let tables = self.maps.status(policies)?;
        Ok(PinnedStatus {
            interfaces: pinned_interfaces(&self.dir),
            own: self.own.counts(tables.generation),
            tables,
        })
    }

    /// The drop-event ring buffer. Only one reader should consume it at a time.
    pub fn drop_events(&self) -> Result<DropEvents> {
        Ok(DropEvents::new(open_pinned(&self.dir, MAP_DROP_EVENTS)?))
    }
}
