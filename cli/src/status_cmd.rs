//! `portcullis status` and `portcullis monitor` (`--type drop` here, `--type verdict` in
//! `monitor_verdict`): read a running gateway's pinned maps from another process, without
//! disturbing it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::ValueEnum;
use portcullis_common::{
    DropEvent, COUNTER_DROP_FRAGMENT, COUNTER_DROP_MALFORMED, COUNTER_DROP_POLICY,
    COUNTER_PASS_FLOW, COUNTER_PASS_POLICY, COUNTER_PASS_UNSELECTED, DIRECTION_EGRESS,
    DROP_REASON_FRAGMENT, DROP_REASON_MALFORMED, DROP_REASON_SNAT_EXHAUSTED,
    DROP_REASON_SNAT_NO_MAPPING, DROP_REASON_SNAT_TABLE_FULL, DROP_REASON_UNKNOWN_POD,
};
use portcullis_gateway::{PinnedGateway, TableStatus};
use portcullis_node::PinnedNode;
use serde::Serialize;
use serde_json::json;

use crate::daemon::PublishedState;
use crate::engine_events::EngineEvents;
use crate::gateway_cmd::{DEFAULT_PIN_DIR, DEFAULT_STATE_DIR};
use crate::node;
use crate::OutputFormat;

/// Which daemon's pins to read.
#[derive(clap::Args)]
pub struct PinArgs {
    /// Read the node hook (`portcullis node`) instead of the gateway.
    #[arg(long)]
    node: bool,
    /// bpffs directory of the daemon's pins (default: the daemon's default).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// The daemon's published state (default: the daemon's default).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl PinArgs {
    fn dirs(&self) -> (PathBuf, PathBuf) {
        let (pins, state) = if self.node {
            (node::DEFAULT_PIN_DIR, node::DEFAULT_STATE_DIR)
        } else {
            (DEFAULT_PIN_DIR, DEFAULT_STATE_DIR)
        };
        (
            self.pin_dir.clone().unwrap_or_else(|| pins.into()),
            self.state_dir.clone().unwrap_or_else(|| state.into()),
        )
    }
}

fn not_running(what: &str, dir: &std::path::Path) -> String {
    format!(
        "no {what} pinned at {} (is `portcullis {what}` running?)",
        dir.display()
    )
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pins: PinArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// Only check readiness (for probes): exit 0 when the daemon is running with a policy
    /// generation in force, 1 otherwise.
    #[arg(long)]
    ready: bool,
}

/// Whether the daemon that published `state` runs and has put a generation in force.
fn ready(state: &PublishedState) -> Result<(), String> {
    if state.pid == 0 || !std::path::Path::new(&format!("/proc/{}", state.pid)).exists() {
        return Err("the daemon is not running".into());
    }
    if state.applied_unix_ms == 0 {
        return Err("no policy generation in force yet".into());
    }
    Ok(())
}

pub(crate) fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn role_name(role: u32) -> &'static str {
    match role {
        portcullis_common::ROLE_CLUSTER => "cluster",
        portcullis_common::ROLE_EXTERNAL => "external",
        _ => "unknown",
    }
}

/// What `status` shows of a daemon: its pins, what it published beside them, and its program's
/// status (`program`, flattened).
#[derive(Serialize)]
struct StatusView<'a, P: Serialize> {
    pin_dir: &'a Path,
    daemon_pid: u32,
    /// The source cannot be read right now: the generation in force is the last good one.
    stale: bool,
    rejected_objects: &'a [String],
    last_error: &'a Option<String>,
    /// Pins removed under the daemon and pinned again, and why they could not be (if so).
    pins_restored: u64,
    pins_error: &'a Option<String>,
    #[serde(flatten)]
    program: P,
}

impl<'a, P: Serialize> StatusView<'a, P> {
    fn new(pin_dir: &'a Path, published: &'a PublishedState, program: P) -> Self {
        StatusView {
            pin_dir,
            daemon_pid: published.pid,
            stale: published.stale,
            rejected_objects: &published.rejected,
            last_error: &published.last_error,
            pins_restored: published.pins_restored,
            pins_error: &published.pins_error,
            program,
        }
    }
}

#[derive(Serialize)]
struct Leg {
    iface: String,
    ifindex: u32,
    role: &'static str,
}

#[derive(Serialize)]
struct GatewayView {
    legs: Vec<Leg>,
    /// The AF_XDP engine's status as the daemon last published it (`--datapath afxdp|hybrid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    engine: Option<serde_json::Value>,
    /// The EgressGateways this gateway serves (`node`, `egress_gateways`), as published.
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<serde_json::Value>,
    #[serde(flatten)]
    status: portcullis_gateway::PinnedStatus,
}

#[derive(Serialize)]
struct NodeView<'a> {
    pods: &'a [node::LocalPod],
    /// The egress steering (`--cluster-cidr`), as published.
    #[serde(skip_serializing_if = "Option::is_none")]
    steering: Option<&'a serde_json::Value>,
    #[serde(flatten)]
    status: portcullis_node::PinnedStatus,
}

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let (pin_dir, state_dir) = args.pins.dirs();
    let published = PublishedState::read(&state_dir).unwrap_or_default();
    if args.ready {
        return Ok(match ready(&published) {
            Ok(()) => {
                println!("ready: generation {} in force", published.generation);
                ExitCode::SUCCESS
            }
            Err(why) => {
                println!("not ready: {why}");
                ExitCode::FAILURE
            }
        });
    }
    if args.pins.node {
        return node_status(&pin_dir, &published, args.output);
    }
    let pinned = PinnedGateway::open(&pin_dir).with_context(|| not_running("gateway", &pin_dir))?;
    let status = pinned.status(&published.groups)?;
    let legs = (status.legs.iter())
        .map(|(ifindex, role)| Leg {
            iface: interface_name(*ifindex),
            ifindex: *ifindex,
            role: role_name(*role),
        })
        .collect();
    let engine = published.engine.clone();
    let view = StatusView::new(
        &pin_dir,
        &published,
        GatewayView {
            legs,
            engine,
            egress: published.egress.clone(),
            status,
        },
    );
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&view)?),
        OutputFormat::Table => {
            let GatewayView {
                legs,
                engine,
                egress,
                status: s,
            } = &view.program;
            let c = &s.tables.counters;
            println!("gateway pinned at {}", pin_dir.display());
            for leg in legs {
                println!(
                    "  leg {:<10} {} (ifindex {})",
                    leg.role, leg.iface, leg.ifindex
                );
            }
            println!(
                "  links pinned: {}   forward: {}   datapath: {}",
                s.links.join(", "),
                s.forward,
                s.datapath
            );
            print_tables(&s.tables, &published);
            println!(
                "  endpoints: {}   prefixes: {}   rule sets: {}   flows: {}",
                s.tables.endpoints, s.tables.prefixes, s.tables.rule_sets, s.tables.flows
            );
            println!(
                "  passed: flow {} policy {} unselected {} non-ip {}   forwarded: xdp {} (cached next hop {}) stack {}   to AF_XDP engine {}",
                c.pass_flow,
                c.pass_policy,
                c.pass_unselected,
                c.pass_non_ip,
                c.forward_xdp,
                c.forward_cached,
                c.pass_stack,
                c.to_engine
            );
            println!(
                "  dropped: policy {} malformed {} fragment {}   flow records: {}",
                c.drop_policy, c.drop_malformed, c.drop_fragment, s.tables.flow_records
            );
            print_drops_and_errors(&s.tables, &published);
            if let Some(engine) = engine {
                print_engine(engine);
            }
            crate::status_egress::print_gateway(egress.as_ref(), &s.snat);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The AF_XDP engine's lines (from the daemon's published status).
fn print_engine(engine: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let counter = |i: u32| num(&engine["counters"][i as usize]);
    println!(
        "  AF_XDP engine: {}   flows {} embryonic {} confirmed   drop events lost {}",
        text(&engine["mode"]),
        num(&engine["embryonic_flows"]),
        num(&engine["confirmed_flows"]),
        num(&engine["drop_events_lost"])
    );
    println!(
        "    passed: flow {} policy {} unselected {}   dropped: policy {} malformed {} fragment {}   flow records: {} (lost {})",
        counter(COUNTER_PASS_FLOW),
        counter(COUNTER_PASS_POLICY),
        counter(COUNTER_PASS_UNSELECTED),
        counter(COUNTER_DROP_POLICY),
        counter(COUNTER_DROP_MALFORMED),
        counter(COUNTER_DROP_FRAGMENT),
        num(&engine["flow_records"]["written"]),
        num(&engine["flow_records"]["lost"])
    );
    for q in engine["queues"].as_array().into_iter().flatten() {
        println!(
            "    queue {}: forwarded {} to kernel {} (errors {})",
            num(&q["queue"]),
            num(&q["forwarded"]),
            num(&q["to_kernel"]),
            num(&q["to_kernel_errors"])
        );
        for leg in ["cluster", "external"] {
            let l = &q["rings"][leg];
            println!(
                "      {leg:<8} {} socket ({}): rx {} tx {} dropped {} fill {}   kernel: rx dropped {} ring full {} fill empty {}",
                text(&l["iface"]),
                if l["zero_copy"].as_bool().unwrap_or(false) { "zero-copy" } else { "copy" },
                num(&l["received"]),
                num(&l["transmitted"]),
                num(&l["dropped"]),
                num(&l["fill_level"]),
                num(&l["kernel"]["rx_dropped"]),
                num(&l["kernel"]["rx_ring_full"]),
                num(&l["kernel"]["rx_fill_ring_empty_descs"])
            );
        }
    }
}

/// The lines both daemons' tables start with.
fn print_tables(t: &TableStatus, published: &PublishedState) {
    println!(
        "  generation: {}   revalidate: {}   stale source: {}",
        t.generation, t.revalidate, published.stale
    );
    println!("  prefix table: {}", t.prefix_memory);
}

/// The lines both daemons' tables end with.
fn print_drops_and_errors(t: &TableStatus, published: &PublishedState) {
    for g in &t.drops_by_group {
        println!(
            "  drops by group {:#x} ({}): {}",
            g.group,
            g.policies.join(", "),
            g.packets
        );
    }
    if let Some(e) = &published.last_error {
        println!("  LAST UPDATE FAILED (previous generation enforced): {e}");
    }
    for r in &published.rejected {
        println!("  rejected: {r}");
    }
    if published.pins_restored > 0 {
        println!(
            "  pins removed under the daemon and pinned again: {}",
            published.pins_restored
        );
    }
    if let Some(e) = &published.pins_error {
        println!("  PINS REMOVED AND NOT RESTORED (the daemon keeps trying): {e}");
    }
}

fn node_status(
    pin_dir: &Path,
    published: &PublishedState,
    output: OutputFormat,
) -> Result<ExitCode> {
    let pinned = PinnedNode::open(pin_dir).with_context(|| not_running("node", pin_dir))?;
    let status = pinned.status(&published.groups)?;
    let view = StatusView::new(
        pin_dir,
        published,
        NodeView {
            pods: &published.pods,
            steering: published.egress.as_ref(),
            status,
        },
    );
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&view)?),
        OutputFormat::Table => {
            let s = &view.program.status;
            let (t, c) = (&s.tables, &s.tables.counters);
            println!("node hook pinned at {}", pin_dir.display());
            println!("  pod interfaces: {}", s.interfaces.join(", "));
            print_tables(t, published);
            println!(
                "  identities: {}   endpoints: {}   peer entries: {}   prefixes: {}   rule sets: {}   flows: {}",
                s.own.identities, t.endpoints, s.own.peers, t.prefixes, t.rule_sets, t.flows
            );
            println!(
                "  passed: flow {} policy {} unselected {} non-ip {} from the node {}   origin flows recorded: {}",
                c.pass_flow, c.pass_policy, c.pass_unselected, c.pass_non_ip, c.pass_host, c.origin_recorded
            );
            println!(
                "  dropped: policy {} malformed {} fragment {} unknown pod address {}   flow records: {}",
                c.drop_policy, c.drop_malformed, c.drop_fragment, c.drop_unknown_pod, t.flow_records
            );
            print_drops_and_errors(t, published);
            print_local_pods(&published.pods);
            crate::status_egress::print_node(published.egress.as_ref());
        }
    }
    // A selected pod left unenforced is an error, not a quiet success.
    Ok(
        if published.pods.iter().any(|p| p.selected && !p.attached) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        },
    )
}

fn print_local_pods(pods: &[crate::node::LocalPod]) {
    println!("  local pods: {}", pods.len());
    for p in pods {
        let ips: Vec<String> = p.ips.iter().map(|ip| ip.to_string()).collect();
        let state = match (&p.interface, p.attached) {
            (Some(iface), true) => format!("enforced on {iface}"),
            _ if p.selected => format!(
                "ERROR: selected by policy but NOT enforced: {}",
                p.error.as_deref().unwrap_or("no interface")
            ),
            _ => format!(
                "not enforced: {}",
                p.error.as_deref().unwrap_or("no interface")
            ),
        };
        println!("    {} ({}): {state}", p.pod, ips.join(", "));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EventType {
    /// Dropped packets (rate-limited drop events).
    Drop,
    /// The gateway's source translations (EgressGateway) as they are made and removed.
    Translation,
    /// The first packet of every new flow, allowed or denied, with the policies (and, given the
    /// cluster, the rule) behind the verdict.
    Verdict,
}

#[derive(clap::Args)]
pub struct MonitorArgs {
    /// Which events to show.
    #[arg(long = "type", value_enum, default_value_t = EventType::Drop)]
    event_type: EventType,
    #[command(flatten)]
    pins: PinArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) output: OutputFormat,
    /// Stop after this many events.
    #[arg(long)]
    pub(crate) count: Option<usize>,
    /// Stop after this long (e.g. 10s).
    #[arg(long, value_parser = crate::daemon::parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// `--type verdict`: aggregate per (source, destination, port, protocol, verdict) and print
    /// one JSON line per key at the end of every window.
    #[arg(long)]
    pub(crate) summary: bool,
    /// `--summary`'s window.
    #[arg(long, value_parser = crate::daemon::parse_duration, default_value = "10s")]
    pub(crate) window: Duration,
    /// `--type verdict`: the cluster's manifests (as the daemon reads them), to name the rule
    /// that allowed each flow. Without a cluster, records name the admitting policies only.
    #[arg(long, num_args = 1.., conflicts_with_all = ["kubeconfig", "kube"])]
    manifests: Vec<PathBuf>,
    /// `--type verdict`: read the cluster through this kubeconfig (see `--manifests`).
    #[arg(long, conflicts_with = "kube")]
    kubeconfig: Option<PathBuf>,
    /// `--type verdict`: read the cluster through the in-cluster service account (see
    /// `--manifests`).
    #[arg(long)]
    kube: bool,
}

/// Waits until the event ring `ring` has records, 200 ms at most (the engine's event file is
/// read between waits).
pub(crate) fn wait_readable(ring: &impl AsFd) {
    let mut fd = libc::pollfd {
        fd: ring.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut fd, 1, 200) };
}

pub(crate) fn event_addr(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if bytes == [0; 16] => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(v6),
    }
}

pub(crate) fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        other => format!("proto-{other}"),
    }
}

pub fn monitor(args: MonitorArgs) -> Result<ExitCode> {
    let (pin_dir, state_dir) = args.pins.dirs();
    if args.event_type == EventType::Translation {
        anyhow::ensure!(
            !args.pins.node,
            "translations are the gateway's: drop --node"
        );
        return crate::monitor_snat::run(&pin_dir, args.output, args.count, args.duration);
    }
    let mut events = if args.pins.node {
        PinnedNode::open(&pin_dir)
            .with_context(|| not_running("node", &pin_dir))?
            .drop_events()?
    } else {
        PinnedGateway::open(&pin_dir)
            .with_context(|| not_running("gateway", &pin_dir))?
            .drop_events()?
    };
    // The gateway's AF_XDP engine reports its drops through the state directory.
    let mut engine_events = (!args.pins.node).then(|| EngineEvents::follow(&state_dir));
    if args.event_type == EventType::Verdict {
        let source = crate::SourceArgs {
            manifests: args.manifests.clone(),
            kubeconfig: args.kubeconfig.clone(),
            kube: args.kube,
        };
        let snapshot = if source.manifests.is_empty() && !source.is_kube() {
            None
        } else {
            Some(crate::load_reporting(&source)?.0)
        };
        return crate::monitor_verdict::run(&args, events, engine_events, &state_dir, snapshot);
    }
    let mut from_engine = std::collections::VecDeque::new();
    let started = Instant::now();
    let mut seen = 0usize;
    // Group names change with generations: reread the published state as events come.
    let mut groups = PublishedState::read(&state_dir).unwrap_or_default().groups;
    loop {
        if args.count.is_some_and(|n| seen >= n)
            || args.duration.is_some_and(|d| started.elapsed() >= d)
        {
            return Ok(ExitCode::SUCCESS);
        }
        if from_engine.is_empty() {
            if let Some(engine) = &mut engine_events {
                from_engine.extend(engine.next_events().into_iter().filter(DropEvent::is_drop));
            }
        }
        let Some(event) = from_engine.pop_front().or_else(|| events.next_event()) else {
            wait_readable(&events);
            continue;
        };
        seen += 1;
        if !groups.contains_key(&event.group) {
            groups = PublishedState::read(&state_dir).unwrap_or_default().groups;
        }
        print_event(&event, groups.get(&event.group), args.output);
    }
}

fn print_event(event: &DropEvent, policies: Option<&Vec<String>>, output: OutputFormat) {
    let policies = policies.map(Vec::as_slice).unwrap_or_default();
    match output {
        OutputFormat::Json => println!("{}", event_json(event, policies)),
        OutputFormat::Table => println!("{}", event_line(event, policies)),
    }
}

fn direction_name(event: &DropEvent) -> &'static str {
    if event.direction == DIRECTION_EGRESS {
        "egress"
    } else {
        "ingress"
    }
}

pub(crate) fn reason_name(event: &DropEvent) -> &'static str {
    match event.reason {
        DROP_REASON_MALFORMED => "malformed",
        DROP_REASON_FRAGMENT => "fragment",
        DROP_REASON_UNKNOWN_POD => "unknown-pod-address",
        DROP_REASON_SNAT_EXHAUSTED => "snat-pool-exhausted",
        DROP_REASON_SNAT_NO_MAPPING => "snat-no-mapping",
        DROP_REASON_SNAT_TABLE_FULL => "snat-table-full",
        _ => "policy",
    }
}

/// A drop event as one JSON object (`monitor --output json`); `policies` name its group.
pub(crate) fn event_json(event: &DropEvent, policies: &[String]) -> serde_json::Value {
    json!({
        "time": humantime_now(), "iface": interface_name(event.ifindex),
        "src": event_addr(event.src).to_string(), "src_port": event.src_port,
        "dst": event_addr(event.dst).to_string(), "dst_port": event.dst_port,
        "protocol": protocol_name(event.protocol), "direction": direction_name(event),
        "reason": reason_name(event), "group": event.group, "policies": policies,
    })
}

/// A drop event as one line (`monitor`'s table output).
pub(crate) fn event_line(event: &DropEvent, policies: &[String]) -> String {
    format!(
        "{} {} DROP {} {} {} {}:{} -> {}:{} group {:#x} ({})",
        humantime_now(),
        interface_name(event.ifindex),
        direction_name(event),
        reason_name(event),
        protocol_name(event.protocol),
        event_addr(event.src),
        event.src_port,
        event_addr(event.dst),
        event.dst_port,
        event.group,
        policies.join(", ")
    )
}

/// Wall-clock time as seconds.millis since the epoch (event timestamps are monotonic).
pub(crate) fn humantime_now() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}
