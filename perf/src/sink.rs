//! What `perf_sink` counts and records on the sink: frames, probe arrivals (`SEEN`) and the
//! watched streams of the policy-change tests (`WATCH`).

use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{Array, HashMap};

pub use portcullis_perf_common::{Watch, SINK_RECORD, SINK_WATCH, WATCH_DST_MASK};

use crate::harness::{map, map_mut, Harness};

/// A key of `SEEN` or `WATCH`: source, destination, destination port (network order).
pub type TupleKey = [u32; 3];

/// The `WATCH` key of a stream (its destination's /16: a probe stream changes the last two
/// bytes when it runs out of source ports).
pub fn watch_key(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> TupleKey {
    [
        u32::from_ne_bytes(src.octets()),
        u32::from_ne_bytes(dst.octets()) & WATCH_DST_MASK,
        dport.to_be() as u32,
    ]
}

impl Harness<'_> {
    pub fn set_sink_flags(&mut self, flags: u32) -> Result<()> {
        Array::<_, u32>::try_from(map_mut(&mut self.ebpf, "SINK_CFG")?)?.set(0, flags, 0)?;
        Ok(())
    }

    /// Frames the sink has received so far.
    pub fn sink_count(&self) -> Result<u64> {
        Ok(self.sink_count.get(&0, 0)?.iter().sum())
    }

    /// Forgets the tuples recorded in `SEEN`.
    pub fn clear_seen(&mut self) -> Result<()> {
        let mut seen = HashMap::<_, TupleKey, u64>::try_from(map_mut(&mut self.ebpf, "SEEN")?)?;
        let keys: Vec<TupleKey> = seen.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = seen.remove(&k);
        }
        Ok(())
    }

    /// Which of `keys` the sink recorded in `SEEN`.
    pub fn seen(&self, keys: &[TupleKey]) -> Result<Vec<bool>> {
        let seen = HashMap::<_, TupleKey, u64>::try_from(map(&self.ebpf, "SEEN")?)?;
        Ok(keys.iter().map(|k| seen.get(k, 0).is_ok()).collect())
    }
}
