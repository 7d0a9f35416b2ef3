//! The engine's flow table in each mode, over the XDP program's pinned flow maps
//! ([`PinnedMaps`]: `FLOWS`, `EMBRYONIC_FLOWS`).
//!
//! - hybrid ([`Flows::Pinned`]): the pinned maps are the table. The engine sees only packets no
//!   live flow vouches for, so it never finds one; what it admits it writes as a new embryonic
//!   flow (dropping a stale confirmed entry of the same key, which the program would otherwise
//!   keep finding first), and the program confirms it when the responder answers.
//! - afxdp ([`Flows::Local`]): the engine's own table ([`LocalFlows`]), mirrored into the pinned
//!   maps when the engine has them: a flow is written to `FLOWS` when it is confirmed (with the
//!   state it has then) and deleted with it; embryonic flows and refreshes are not written, so a
//!   new flow costs one map write, and a flood of new flows none. When the daemon dies, its
//!   sockets close and the program judges every packet again, with these flows: established
//!   connections keep passing (a connection still opening is judged again by its next SYN). A
//!   restarted engine reads them back.

use std::path::Path;

use aya::maps::{HashMap, MapData};
use portcullis_common::*;
use tracing::{info, warn};

use crate::engine::EngineError;
use crate::flows::{FlowStore, Hit, LocalFlows};

/// The program's pinned flow maps.
pub struct PinnedMaps {
    flows: HashMap<MapData, FlowKey, ConfirmedFlow>,
    embryonic: HashMap<MapData, FlowKey, FlowValue>,
}

impl PinnedMaps {
    pub fn open(dir: &Path) -> Result<PinnedMaps, EngineError> {
        fn open<V: aya::Pod>(
            dir: &Path,
            name: &'static str,
        ) -> Result<HashMap<MapData, FlowKey, V>, EngineError> {
            let err = |source| EngineError::FlowMaps {
                name,
                dir: dir.display().to_string(),
                source,
            };
            let data = MapData::from_pin(dir.join(name)).map_err(err)?;
            let map = aya::maps::Map::from_map_data(data).map_err(err)?;
            HashMap::try_from(map).map_err(err)
        }
        Ok(PinnedMaps {
            flows: open(dir, MAP_FLOWS)?,
            embryonic: open(dir, MAP_EMBRYONIC_FLOWS)?,
        })
    }

    /// Writes a new flow as embryonic, replacing any entry of its key.
    fn write_new(&mut self, key: &FlowKey, flow: &FlowValue) {
        let _ = self.flows.remove(key);
        if let Err(e) = self.embryonic.insert(key, flow, 0) {
            warn!(error = %e, "could not write a new flow into EMBRYONIC_FLOWS");
        }
    }

    /// Writes a confirmed flow, with no next hop cached.
    fn write_confirmed(&mut self, key: &FlowKey, flow: &FlowValue) {
        let entry = ConfirmedFlow {
            flow: *flow,
            ..ConfirmedFlow::default()
        };
        if let Err(e) = self.flows.insert(key, entry, 0) {
            warn!(error = %e, "could not write a confirmed flow into FLOWS");
        }
    }

    fn delete(&mut self, key: &FlowKey) {
        let _ = self.flows.remove(key);
        let _ = self.embryonic.remove(key);
    }

    /// Loads the maps' flows into `local` (a restarted engine, or one taking over from the
    /// program); returns how many.
    fn load_into(&self, local: &mut LocalFlows) -> usize {
        let mut n = 0;
        for (key, flow) in self.embryonic.iter().filter_map(|e| e.ok()) {
            local.open(&key, &flow);
            n += 1;
        }
        for (key, entry) in self.flows.iter().filter_map(|e| e.ok()) {
            local.open(&key, &entry.flow);
            local.confirm(&key);
            n += 1;
        }
        n
    }
}

/// The flow table of the mode (see the module).
pub enum Flows {
    /// Boxed: the engine holds one, behind its lock.
    Local(Box<LocalFlows>, Option<PinnedMaps>),
    Pinned(PinnedMaps),
}

impl Flows {
    /// hybrid: the pinned maps; afxdp: a local table, mirrored into them when given and started
    /// with their flows.
    pub fn new(hybrid: bool, pins: Option<&Path>) -> Result<Flows, EngineError> {
        let maps = pins.map(PinnedMaps::open).transpose()?;
        Ok(match (hybrid, maps) {
            (true, Some(maps)) => Flows::Pinned(maps),
            (_, maps) => {
                let mut local = Box::<LocalFlows>::default();
                if let Some(m) = &maps {
                    // Loaded outside the log macro, which evaluates its fields only when enabled.
                    let flows = m.load_into(&mut local);
                    info!(flows, "flows taken from the pinned maps");
                }
                Flows::Local(local, maps)
            }
        })
    }

    /// Entries (embryonic, confirmed) of the engine's own table; the pinned maps are the XDP
    /// program's, counted by its `status`.
    pub fn lengths(&self) -> (usize, usize) {
        match self {
            Flows::Local(f, _) => (f.embryonic_len(), f.confirmed_len()),
            Flows::Pinned(_) => (0, 0),
        }
    }

    /// Deletes expired flows of the engine's own table (the daemon's GC serves the pinned maps).
    pub fn expire(&mut self, now_ns: u64) -> (usize, usize) {
        match self {
            Flows::Local(f, _) => f.expire(now_ns),
            Flows::Pinned(_) => (0, 0),
        }
    }
}

impl FlowStore for Flows {
    fn find(&mut self, key: &FlowKey) -> Option<Hit<'_>> {
        match self {
            Flows::Local(f, _) => f.find(key),
            Flows::Pinned(_) => None,
        }
    }

    fn related_live(&self, key: &FlowKey, now_ns: u64) -> bool {
        let live = |f: &FlowValue| now_ns.wrapping_sub(f.last_seen_ns) <= flow_timeout_ns(f.state);
        match self {
            Flows::Local(f, _) => f.related_live(key, now_ns),
            Flows::Pinned(m) => match m.flows.get(key, 0) {
                Ok(c) => live(&c.flow),
                Err(_) => m.embryonic.get(key, 0).is_ok_and(|f| live(&f)),
            },
        }
    }

    fn open(&mut self, key: &FlowKey, flow: &FlowValue) {
        match self {
            Flows::Local(f, mirror) => {
                // A confirmed flow replaced by a new one (port reuse): its mirror goes.
                if let (
                    Some(m),
                    Some(Hit {
                        embryonic: false, ..
                    }),
                ) = (mirror, f.find(key))
                {
                    m.delete(key);
                }
                f.open(key, flow);
            }
            Flows::Pinned(m) => m.write_new(key, flow),
        }
    }

    fn confirm(&mut self, key: &FlowKey) -> bool {
        let Flows::Local(f, mirror) = self else {
            return false;
        };
        if !f.confirm(key) {
            return false;
        }
        if let (Some(m), Some(hit)) = (mirror, f.find(key)) {
            m.write_confirmed(key, hit.flow);
        }
        true
    }

    fn remove(&mut self, key: &FlowKey, embryonic: bool) -> bool {
        let Flows::Local(f, mirror) = self else {
            return false;
        };
        if let Some(m) = mirror {
            m.delete(key);
        }
        f.remove(key, embryonic)
    }
}
