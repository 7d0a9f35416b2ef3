//! `monitor --type translation`: the gateway's source translations as they are made and removed
//! (pod address and port → egress IP and port, towards the remote end), read from the pinned
//! translation table by polling: the program emits no event per translation, so watching costs
//! the datapath nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use portcullis_common::{NatKey, NatValue, NAT_OUTBOUND};
use portcullis_gateway::PinnedGateway;
use serde::Serialize;

use crate::status_cmd::{event_addr, protocol_name};
use crate::OutputFormat;

/// How often the table is read.
const POLL: Duration = Duration::from_millis(100);

/// One translated connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct Translation {
    protocol: String,
    pod: IpAddr,
    pod_port: u16,
    egress_ip: IpAddr,
    egress_port: u16,
    remote: IpAddr,
    remote_port: u16,
}

#[derive(Serialize)]
struct Event<'a> {
    time_unix_ms: u128,
    /// `active` (there when monitor started), `new` or `removed`.
    event: &'a str,
    #[serde(flatten)]
    translation: &'a Translation,
}

/// The translated connections of the table, by their outbound key.
fn translations(pinned: &PinnedGateway) -> BTreeMap<[u8; 40], Translation> {
    let key_bytes = |k: &NatKey| {
        let mut b = [0u8; 40];
        b[..16].copy_from_slice(&k.src);
        b[16..32].copy_from_slice(&k.dst);
        b[32..34].copy_from_slice(&k.sport.to_ne_bytes());
        b[34..36].copy_from_slice(&k.dport.to_ne_bytes());
        b[36] = k.protocol;
        b
    };
    let translation = |k: &NatKey, v: &NatValue| Translation {
        protocol: protocol_name(k.protocol),
        pod: event_addr(k.src),
        pod_port: u16::from_be(k.sport),
        egress_ip: event_addr(v.addr),
        egress_port: u16::from_be(v.port),
        remote: event_addr(k.dst),
        remote_port: u16::from_be(k.dport),
    };
    (pinned.snat_translations().iter())
        .filter(|(k, _)| k.direction == NAT_OUTBOUND)
        .map(|(k, v)| (key_bytes(k), translation(k, v)))
        .collect()
}

pub fn run(
    pin_dir: &Path,
    output: OutputFormat,
    count: Option<usize>,
    duration: Option<Duration>,
) -> Result<ExitCode> {
    let pinned = PinnedGateway::open(pin_dir)
        .with_context(|| format!("no gateway is pinned at {}", pin_dir.display()))?;
    let started = Instant::now();
    let mut shown = 0usize;
    let mut known: BTreeMap<[u8; 40], Translation> = BTreeMap::new();
    let mut first = true;
    loop {
        let now = translations(&pinned);
        let mut events: Vec<(&str, &Translation)> = Vec::new();
        for (key, t) in &now {
            if !known.contains_key(key) {
                events.push((if first { "active" } else { "new" }, t));
            }
        }
        for (key, t) in &known {
            if !now.contains_key(key) {
                events.push(("removed", t));
            }
        }
        for (event, translation) in events {
            if count.is_some_and(|n| shown >= n) {
                return Ok(ExitCode::SUCCESS);
            }
            print(output, event, translation)?;
            shown += 1;
        }
        known = now;
        first = false;
        if count.is_some_and(|n| shown >= n) || duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(POLL);
    }
}

fn print(output: OutputFormat, event: &str, t: &Translation) -> Result<()> {
    let time_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string(&Event {
                time_unix_ms,
                event,
                translation: t,
            })?
        ),
        OutputFormat::Table => println!(
            "{event:<8} {} {}:{} -> {}:{} as {}:{}",
            t.protocol, t.pod, t.pod_port, t.remote, t.remote_port, t.egress_ip, t.egress_port
        ),
    }
    Ok(())
}
