//! The AF_XDP engine's events and metrics. The engine runs inside the gateway daemon, so its
//! records cannot reach the program's event ring (`DROP_EVENTS`): the daemon appends them to a
//! file in its state directory as the ring's records (`DropEvent`, 64 bytes each: drops and the
//! allow records of new flows), and `monitor` reads both. The file is started over when it passes
//! `MAX_FILE_BYTES`; a reader that finds it shorter than its offset starts from 0.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use portcullis_afxdp::engine::EngineStatus;
use portcullis_common::*;

const FILE: &str = "engine-events";
const MAX_FILE_BYTES: u64 = 1 << 20;
const RECORD: usize = std::mem::size_of::<DropEvent>();

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Appends `events` to the state directory's engine event file.
pub fn append(state_dir: &Path, events: &[DropEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let path = path(state_dir);
    let too_long = std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_FILE_BYTES);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(!too_long)
        .write(true)
        .truncate(too_long)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::with_capacity(events.len() * RECORD);
    for e in events {
        // SAFETY: DropEvent is plain old data (repr(C), no padding beyond its explicit `_pad`).
        bytes.extend_from_slice(unsafe {
            std::slice::from_raw_parts(e as *const DropEvent as *const u8, RECORD)
        });
    }
    file.write_all(&bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Follows the engine event file of a state directory.
pub struct EngineEvents {
    path: PathBuf,
    offset: u64,
}

impl EngineEvents {
    /// Starts at the file's end: only events from now on.
    pub fn follow(state_dir: &Path) -> EngineEvents {
        let path = path(state_dir);
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        EngineEvents { path, offset }
    }

    /// Events appended since the last call.
    pub fn next_events(&mut self) -> Vec<DropEvent> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            self.offset = 0;
        }
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        let whole = bytes.len() / RECORD * RECORD;
        self.offset += whole as u64;
        bytes[..whole]
            .chunks_exact(RECORD)
            .filter_map(DropEvent::from_record)
            .collect()
    }
}

/// The engine's counters and rings through the `metrics` facade.
pub fn export_metrics(status: &EngineStatus) {
    let c = portcullis_gateway::Counters::from_sums(&status.counters());
    crate::gateway_cmd::export_verdicts(&c, "engine");
    crate::daemon::export_flow_records("gateway", &[("judged_by", "engine")], &status.flow_records);
    for q in &status.queues {
        let queue = q.queue.to_string();
        for (leg, s) in [
            ("cluster", &q.rings.cluster),
            ("external", &q.rings.external),
        ] {
            let labels = [("queue", queue.clone()), ("leg", leg.to_string())];
            metrics::counter!("portcullis_gateway_afxdp_received_total", &labels)
                .absolute(s.received);
            metrics::counter!("portcullis_gateway_afxdp_transmitted_total", &labels)
                .absolute(s.transmitted);
            metrics::counter!("portcullis_gateway_afxdp_ring_drops_total", &labels)
                .absolute(s.kernel.rx_dropped + s.kernel.rx_ring_full + s.tx_ring_full);
            metrics::gauge!("portcullis_gateway_afxdp_fill_ring_frames", &labels)
                .set(f64::from(s.fill_level));
        }
        let labels = [("queue", queue)];
        metrics::counter!("portcullis_gateway_afxdp_to_kernel_total", &labels)
            .absolute(q.to_kernel);
    }
}
