//! Memory figures: the harness's resident set and the gateway program's kernel maps.

use anyhow::{Context, Result};

use crate::lab::sh;

/// The harness process's resident set, KiB (0 if unreadable).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Locked memory of the maps of an XDP program, bytes.
pub struct MapMemory {
    /// All its maps.
    pub total: u64,
    /// Its prefix search: `PREFIXES` (prefixes, markers, the bucket array allocated at creation)
    /// and `PREFIX_LENGTHS`.
    pub prefixes: u64,
}

/// The map memory of the XDP program attached to `dev` in `ns`, from bpftool.
pub fn map_memory(ns: &str, dev: &str) -> Result<MapMemory> {
    let mut memory = MapMemory {
        total: 0,
        prefixes: 0,
    };
    for map in program_maps(ns, dev)? {
        let bytes = map["bytes_memlock"].as_u64().unwrap_or(0);
        memory.total += bytes;
        if matches!(map["name"].as_str(), Some("PREFIXES" | "PREFIX_LENGTHS")) {
            memory.prefixes += bytes;
        }
    }
    Ok(memory)
}

/// Entries the flow table (`FLOWS`) of the XDP program attached to `dev` in `ns` holds at most,
/// from bpftool: the loaded map's `max_entries`, whatever the program was built with.
pub fn flow_table_capacity(ns: &str, dev: &str) -> Result<u64> {
    program_maps(ns, dev)?
        .iter()
        .find(|m| m["name"].as_str() == Some("FLOWS"))
        .and_then(|m| m["max_entries"].as_u64())
        .with_context(|| format!("no FLOWS map with max_entries on the XDP program of {dev}"))
}

/// `bpftool map show` of every map of the XDP program attached to `dev` in `ns`.
fn program_maps(ns: &str, dev: &str) -> Result<Vec<serde_json::Value>> {
    let net: serde_json::Value = serde_json::from_str(&sh(&format!(
        "ip netns exec {ns} bpftool -j net show dev {dev}"
    ))?)?;
    let id = net
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["xdp"].as_array())
        .flatten()
        .find_map(|x| x["id"].as_u64())
        .context("no XDP program id from bpftool")?;
    let prog: serde_json::Value =
        serde_json::from_str(&sh(&format!("bpftool -j prog show id {id}"))?)?;
    prog["map_ids"]
        .as_array()
        .context("no map_ids")?
        .iter()
        .map(|m| -> Result<serde_json::Value> {
            let id = m.as_u64().unwrap_or(0);
            let show = sh(&format!("bpftool -j map show id {id}"))?;
            serde_json::from_str(&show).with_context(|| format!("bpftool map show id {id}"))
        })
        .collect()
}
