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
    /// Its `PREFIXES` map (the LPM trie).
    pub prefixes: u64,
}

/// The map memory of the XDP program attached to `dev` in `ns`, from bpftool.
pub fn map_memory(ns: &str, dev: &str) -> Result<MapMemory> {
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
    let mut memory = MapMemory {
        total: 0,
        prefixes: 0,
    };
    for m in prog["map_ids"].as_array().context("no map_ids")? {
        let map: serde_json::Value = serde_json::from_str(&sh(&format!(
            "bpftool -j map show id {}",
            m.as_u64().unwrap_or(0)
        ))?)?;
        let bytes = map["bytes_memlock"].as_u64().unwrap_or(0);
        memory.total += bytes;
        if map["name"].as_str() == Some("PREFIXES") {
            memory.prefixes = bytes;
        }
    }
    Ok(memory)
}
