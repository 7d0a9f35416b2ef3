//! `portcullis lab failover`: the egress gateway failover measurement. Builds the lab with two
//! gateways (every daemon with `--ha`), opens N TCP connections from the pods an EgressGateway
//! selects to an external server through the active gateway (half of them streaming a message
//! every few milliseconds, half idle), injects a fault into the active gateway, and reports what
//! survived as one JSON object:
//! `{"connections": N, "survived": M, "max_gap_ms": X, "egress_ip_only": bool, "fault": F, ...}`.
//! A connection survived when it carried a message both ways after the failover without a reset;
//! `max_gap_ms` is the longest interval without an echo on any streaming connection;
//! `egress_ip_only` whether the server only ever saw the egress IP as the source.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use portcullis_lab::{GatewayLegs, Lab, LabChild};
use portcullis_policy::egress::selects;
use portcullis_policy::model::Snapshot;
use serde::Serialize;
use serde_json::json;

use crate::daemon::PublishedState;
use crate::lab_cmd::{EnforcingLab, LabFlags};
use crate::lab_streams::{load_scenario, print_outcome, Server, Streams};
use crate::OutputFormat;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// `kill -9` of the active gateway's daemon (its XDP program stays attached).
    Kill,
    /// Both legs of the active gateway cut (`ip link set … down`).
    LinkDown,
    /// A rolling upgrade: the active gateway's daemon stopped (SIGTERM, pins kept) and started
    /// again, then, once it is ready, the other gateway's.
    Rolling,
}

#[derive(clap::Args)]
pub struct LabFailoverArgs {
    /// The scenario: pods, an EgressGateway whose nodeSelector picks the lab's gateway nodes
    /// (labelled portcullis.io/egress-gateway=true), the policies.
    #[arg(long, num_args = 1.., default_values = ["configs/failover"])]
    manifests: Vec<PathBuf>,
    /// The external server the pods talk to (through the EgressGateway).
    #[arg(long, default_value = "203.0.113.50:5432")]
    server: SocketAddr,
    /// Established connections through the active gateway when the fault strikes.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    #[arg(long, value_enum, default_value_t = Fault::Kill)]
    fault: Fault,
    /// Streaming connections send a message this often (milliseconds).
    #[arg(long, default_value_t = 10)]
    stream_interval_ms: u64,
    /// How long after the fault the connections are checked (milliseconds).
    #[arg(long, default_value_t = 3000)]
    settle_ms: u64,
    /// One JSON object (the contract), or the same as `key: value` lines.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    output: OutputFormat,
    #[command(flatten)]
    lab: LabFlags,
}

pub fn run(mut args: LabFailoverArgs) -> Result<ExitCode> {
    let snapshot = load_scenario(&args.manifests)?;
    let (pods, egress_ip) = scenario(&snapshot, args.server.ip())?;
    args.lab.failover = true;
    let mut running = EnforcingLab::start(&snapshot, &args.manifests, &[], &args.lab)?;
    let outcome = measure(&mut running, &args, &pods, egress_ip);
    running.stop()?;
    let outcome = outcome?;
    print_outcome(&outcome, args.output)?;
    Ok(match outcome["survived"] == outcome["connections"] {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// The pods (`namespace/name`) some EgressGateway with an egress IP of the server's family
/// selects for the server's address, and that egress IP.
fn scenario(snapshot: &Snapshot, server: IpAddr) -> Result<(Vec<String>, IpAddr)> {
    let mut egress = None;
    let mut pods = Vec::new();
    for pod in snapshot
        .pods
        .iter()
        .filter(|p| !p.host_network && !p.ips.is_empty())
    {
        let Some(choice) = portcullis_policy::egress::egress_for(snapshot, pod, server) else {
            continue;
        };
        let Some(ip) = choice.egress_ip else { continue };
        if snapshot
            .egress_gateways
            .iter()
            .any(|g| g.name == choice.gateway && selects(snapshot, g, pod))
        {
            egress.get_or_insert(ip);
            pods.push(pod.key());
        }
    }
    match (egress, pods.is_empty()) {
        (Some(ip), false) => Ok((pods, ip)),
        _ => bail!("no pod of the scenario leaves through an EgressGateway with an egress IP towards {server}"),
    }
}

fn measure(
    running: &mut EnforcingLab,
    args: &LabFailoverArgs,
    pods: &[String],
    egress_ip: IpAddr,
) -> Result<serde_json::Value> {
    let gateways = running.gateways();
    let active = wait_for_one_active(running, &gateways)?;
    let lab = &running.lab;
    let (active_legs, active_child, _) = gateways
        .iter()
        .find(|(legs, _, _)| legs.node == active)
        .cloned()
        .context("the active gateway is one of the lab's")?;

    let server = Server::start(lab, args.server)?;
    let interval = Duration::from_millis(args.stream_interval_ms);
    let streams = Streams::open(lab, pods, args.server, args.connections, interval)?;
    // Established, replicated (the sync streams send deltas every heartbeat interval).
    std::thread::sleep(Duration::from_millis(1500));
    let fault_at = Instant::now();
    match args.fault {
        Fault::Rolling => {
            let first = (gateways.iter())
                .position(|(legs, _, _)| legs.node == active)
                .expect("the active gateway is one of the lab's");
            for i in [first, 1 - first] {
                restart(running, i)?;
            }
        }
        Fault::Kill => (active_child.kill()).context("killing the active gateway's daemon")?,
        Fault::LinkDown => cut_links(&running.lab, &active_legs)?,
    }
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    // With its links cut the faulted gateway's daemon still runs, alone, and keeps its claim;
    // nobody hears it. What matters is who else claims (after a rolling upgrade: who claims).
    let claiming = claimants(&running.gateways());
    let after = match args.fault {
        Fault::Rolling => claiming.first(),
        Fault::Kill | Fault::LinkDown => claiming.iter().find(|g| **g != active),
    };
    let outcome = streams.finish(fault_at - Duration::from_secs(1));
    let seen = server.stop();
    Ok(json!({
        "connections": args.connections,
        "survived": outcome.survived,
        "max_gap_ms": outcome.max_gap.as_millis() as u64,
        "egress_ip_only": !seen.is_empty() && seen.iter().all(|ip| *ip == egress_ip),
        "fault": args.fault,
        "active_before": active,
        "active_after": after,
        "claiming_after": claiming,
        "sources_seen": seen.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "errors": outcome.errors,
    }))
}

/// Stops gateway `i`'s daemon (SIGTERM: it keeps its pins), starts it again and waits (up to
/// 15 s) until the new one says it is ready (it has its peers' full dumps).
fn restart(running: &mut EnforcingLab, i: usize) -> Result<()> {
    let (legs, child, state) = running.gateways().swap_remove(i);
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("gateway {} did not stop within 5 s", legs.node);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(state.join("state.json"));
    let child = running.restart_daemon(i)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = PublishedState::read(&state)
            .and_then(|s| s.egress)
            .and_then(|e| e.pointer("/ha/ready").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("restarted gateway {} exited ({status})", legs.node);
        }
        if Instant::now() > deadline {
            bail!("restarted gateway {} not ready within 15 s", legs.node);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Cuts both legs of gateway `legs`.
fn cut_links(lab: &Lab, legs: &GatewayLegs) -> Result<()> {
    for dev in [&legs.cluster_iface, &legs.external_iface] {
        let mut c = Command::new("ip");
        c.args(["link", "set", dev, "down"]);
        let out = lab.output_in(&legs.netns, c)?;
        if !out.status.success() {
            bail!("cutting {dev}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// The gateways whose daemon runs and whose published state claims an EgressGateway.
fn claimants(gateways: &[(GatewayLegs, LabChild, PathBuf)]) -> Vec<String> {
    (gateways.iter())
        .filter(|(_, child, _)| matches!(child.try_wait(), Ok(None)))
        .filter(|(_, _, state)| {
            PublishedState::read(state)
                .and_then(|s| s.egress)
                .and_then(|e| e.pointer("/ha/claims").cloned())
                .and_then(|c| c.as_array().map(|a| !a.is_empty()))
                .unwrap_or(false)
        })
        .map(|(legs, _, _)| legs.node.clone())
        .collect()
}

/// Waits (up to 10 s) until exactly one live gateway claims the scenario's EgressGateway and
/// returns its node name.
fn wait_for_one_active(
    running: &EnforcingLab,
    gateways: &[(GatewayLegs, LabChild, PathBuf)],
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let claiming = claimants(gateways);
        if claiming.len() == 1 {
            return Ok(claiming[0].clone());
        }
        if Instant::now() > deadline {
            bail!(
                "no single active gateway within 10 s (claiming: {claiming:?}); lab {}",
                running.lab.id()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
