//! `portcullis monitor --type verdict`: one record for the first packet of every new flow, allowed
//! or denied, on the gateway or a node hook (`--node`), as JSON lines (or one line of text each).
//!
//! Sources: the event ring (`DROP_EVENTS`) carries both the programs' drop events (a denied first
//! packet) and their allow records (`EVENT_KIND_ALLOW_*`, written by the pipeline when it opens a
//! flow, rate-limited per CPU: `FLOW_RECORD_COUNTER_LOST` counts what was not written); the
//! gateway's AF_XDP engine writes the same records to its event file.
//!
//! Names: the policies of a record's group come from the daemon's published state (`groups`);
//! the pod on each side from its `addresses` (the pods of the generation in force). The rule that
//! allowed a flow is computed only when `monitor` is given the cluster (`--manifests`,
//! `--kubeconfig`, `--kube`): the policy crate's evaluator judges the record's 5-tuple on that
//! snapshot (`rules`: policy, direction and rule index of each side that a rule allowed).
//!
//! `--summary` aggregates the records per (source, destination, destination port, protocol,
//! verdict) over a window (`--window`, default 10s) and prints one line per key at its end, like
//! Calico's Goldmane.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use portcullis_common::*;
use portcullis_gateway::DropEvents;
use portcullis_policy::eval::DirectionVerdict;
use portcullis_policy::model::{Protocol, Snapshot};
use portcullis_policy::probe::{Probe, ProbeEndpoint};
use serde_json::{json, Value};

use crate::daemon::PublishedState;
use crate::engine_events::EngineEvents;
use crate::status_cmd::{event_addr, humantime_now, protocol_name, reason_name, MonitorArgs};
use crate::OutputFormat;

/// What the daemon published that names a record's group and addresses.
struct Names {
    groups: BTreeMap<u32, Vec<String>>,
    addresses: BTreeMap<IpAddr, String>,
    /// Modification time of the state file read.
    read_at: Option<SystemTime>,
}

impl Names {
    fn read(state_dir: &Path) -> Names {
        let read_at = modified(state_dir);
        let state = PublishedState::read(state_dir).unwrap_or_default();
        Names {
            groups: state.groups,
            addresses: state.addresses,
            read_at,
        }
    }

    /// Reads the state again when the daemon has published since (a new generation: new groups
    /// and pods).
    fn refresh(&mut self, state_dir: &Path) {
        if modified(state_dir) != self.read_at {
            *self = Names::read(state_dir);
        }
    }

    fn pod(&self, addr: IpAddr) -> Option<&str> {
        self.addresses.get(&addr).map(String::as_str)
    }
}

fn modified(state_dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(PublishedState::path(state_dir))
        .and_then(|m| m.modified())
        .ok()
}

/// The `CHECK_*` sides of a record as words.
fn sides_names(sides: u8) -> Vec<&'static str> {
    let mut out = Vec::new();
    if sides & CHECK_EGRESS_OF_SRC != 0 {
        out.push("egress-of-source");
    }
    if sides & CHECK_INGRESS_OF_DST != 0 {
        out.push("ingress-of-destination");
    }
    out
}

fn admitted_by(record: &DropEvent) -> &'static str {
    match record.kind {
        EVENT_KIND_ALLOW_POLICY => "policy",
        EVENT_KIND_ALLOW_UNSELECTED => "unselected",
        EVENT_KIND_ALLOW_HOST => "host",
        _ => "none",
    }
}

/// The rules that allowed the record's flow, by the evaluator on `snapshot` (TCP, UDP and SCTP:
/// the protocols a probe can name); empty when nothing names one.
fn rules(snapshot: &Snapshot, names: &Names, record: &DropEvent) -> Vec<Value> {
    let protocol = match record.protocol {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        PROTO_SCTP => Protocol::Sctp,
        _ => return Vec::new(),
    };
    let endpoint = |addr: IpAddr| match names.pod(addr).and_then(|p| p.split_once('/')) {
        Some((namespace, name)) => ProbeEndpoint::Pod {
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        None => ProbeEndpoint::External(addr),
    };
    let probe = Probe {
        from: endpoint(event_addr(record.src)),
        to: endpoint(event_addr(record.dst)),
        protocol,
        port: record.dst_port,
    };
    let Ok(verdict) = snapshot.evaluate_probe(&probe) else {
        return Vec::new();
    };
    [verdict.egress, verdict.ingress]
        .into_iter()
        .filter_map(|side| match side {
            DirectionVerdict::Allowed { by, .. } => Some(json!({
                "policy": by.policy, "direction": by.direction.to_string(), "index": by.rule,
            })),
            _ => None,
        })
        .collect()
}

/// One record as a JSON object.
fn record_json(
    record: &DropEvent,
    node: &str,
    names: &Names,
    snapshot: Option<&Snapshot>,
) -> Value {
    let (src, dst) = (event_addr(record.src), event_addr(record.dst));
    let policies = names.groups.get(&record.group).cloned().unwrap_or_default();
    let mut object = json!({
        "time": humantime_now(), "node": node,
        "iface": crate::status_cmd::interface_name(record.ifindex),
        "src": src.to_string(), "src_port": record.src_port, "src_pod": names.pod(src),
        "dst": dst.to_string(), "dst_port": record.dst_port, "dst_pod": names.pod(dst),
        "protocol": protocol_name(record.protocol), "sides": sides_names(record.sides),
        "verdict": if record.is_drop() { "deny" } else { "allow" },
        "group": record.group, "policies": policies,
    });
    if record.is_drop() {
        object["reason"] = reason_name(record).into();
    } else {
        object["admitted_by"] = admitted_by(record).into();
        if let Some(snapshot) = snapshot {
            object["rules"] = rules(snapshot, names, record).into();
        }
    }
    object
}

/// The key `--summary` aggregates on.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FlowKey {
    src: String,
    dst: String,
    dst_port: u16,
    protocol: u8,
    deny: bool,
}

/// One summary line's totals.
struct Aggregate {
    flows: u64,
    policies: Vec<String>,
}

fn endpoint_name(names: &Names, addr: [u8; 16]) -> String {
    let ip = event_addr(addr);
    names.pod(ip).map_or_else(|| ip.to_string(), str::to_string)
}

/// The node's name (the kernel's hostname).
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Follows the event ring (and on the gateway the engine's event file) until `--count` records
/// or `--duration`.
pub fn run(
    args: &MonitorArgs,
    mut ring: DropEvents,
    mut engine: Option<EngineEvents>,
    state_dir: &Path,
    snapshot: Option<Snapshot>,
) -> Result<ExitCode> {
    let node = node_name();
    let mut names = Names::read(state_dir);
    let started = Instant::now();
    let mut window_start = Instant::now();
    let mut summary: BTreeMap<FlowKey, Aggregate> = BTreeMap::new();
    let mut pending = std::collections::VecDeque::new();
    let mut seen = 0usize;
    loop {
        let done = args.count.is_some_and(|n| seen >= n)
            || args.duration.is_some_and(|d| started.elapsed() >= d);
        if args.summary && (done || window_start.elapsed() >= args.window) {
            print_summary(&std::mem::take(&mut summary), window_start.elapsed());
            window_start = Instant::now();
        }
        if done {
            return Ok(ExitCode::SUCCESS);
        }
        if pending.is_empty() {
            if let Some(engine) = &mut engine {
                pending.extend(engine.next_events());
            }
        }
        let Some(record) = pending.pop_front().or_else(|| ring.next_record()) else {
            crate::status_cmd::wait_readable(&ring);
            continue;
        };
        seen += 1;
        names.refresh(state_dir);
        if args.summary {
            let key = FlowKey {
                src: endpoint_name(&names, record.src),
                dst: endpoint_name(&names, record.dst),
                dst_port: record.dst_port,
                protocol: record.protocol,
                deny: record.is_drop(),
            };
            let entry = summary.entry(key).or_insert_with(|| Aggregate {
                flows: 0,
                policies: names.groups.get(&record.group).cloned().unwrap_or_default(),
            });
            entry.flows += 1;
            continue;
        }
        let object = record_json(&record, &node, &names, snapshot.as_ref());
        match args.output {
            OutputFormat::Json => println!("{object}"),
            OutputFormat::Table => println!("{}", record_line(&object)),
        }
    }
}

/// A record as one line of text.
fn record_line(o: &Value) -> String {
    let end = |ip: &str, port: &Value, pod: &Value| match pod.as_str() {
        Some(pod) => format!("{pod}({ip}):{port}"),
        None => format!("{ip}:{port}"),
    };
    format!(
        "{} {} {} {} {} {} -> {} policies {}{}",
        o["time"].as_str().unwrap_or_default(),
        o["iface"].as_str().unwrap_or_default(),
        o["verdict"].as_str().unwrap_or_default().to_uppercase(),
        o["protocol"].as_str().unwrap_or_default(),
        o["sides"],
        end(
            o["src"].as_str().unwrap_or_default(),
            &o["src_port"],
            &o["src_pod"]
        ),
        end(
            o["dst"].as_str().unwrap_or_default(),
            &o["dst_port"],
            &o["dst_pod"]
        ),
        o["policies"],
        o.get("rules")
            .map(|r| format!(" rules {r}"))
            .unwrap_or_default(),
    )
}

/// One JSON line per aggregated key of the window that just ended.
fn print_summary(summary: &BTreeMap<FlowKey, Aggregate>, window: Duration) {
    for (key, aggregate) in summary {
        println!(
            "{}",
            json!({
                "time": humantime_now(), "window_seconds": window.as_secs_f64(),
                "src": key.src, "dst": key.dst, "dst_port": key.dst_port,
                "protocol": protocol_name(key.protocol),
                "verdict": if key.deny { "deny" } else { "allow" },
                "policies": aggregate.policies, "flows": aggregate.flows,
            })
        );
    }
}
