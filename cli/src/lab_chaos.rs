//! `portcullis lab chaos`: the daemons killed with -9 in a loop while connections stream. Builds
//! the lab (one gateway, a node daemon per node), opens N TCP connections from the scenario's pods
//! to an external server through the gateway (half streaming), then K times kills one daemon in
//! turn (the gateway's, then each node's), sends the scenario's denied probes while it is down,
//! starts it again (it adopts its pins) and sends them again once it has applied. Prints one JSON
//! object `{"kills": K, "connections": N, "lost": L, "denied_leaked": X, ...}` and exits non-zero
//! unless L = 0 and X = 0: enforcement never stops with its daemon, and never opens up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use portcullis_lab::Verdict;
use portcullis_policy::model::{Protocol, Snapshot};
use portcullis_policy::probe::{Probe, ProbeEndpoint};
use serde_json::json;

use crate::daemon::PublishedState;
use crate::lab_cmd::{EnforcingLab, LabFlags};
use crate::lab_streams::{load_scenario, print_outcome, Server, Streams};
use crate::OutputFormat;

#[derive(clap::Args)]
pub struct LabChaosArgs {
    /// The scenario: pods, the policies (and EgressGateways) they run under.
    #[arg(long, num_args = 1.., default_values = ["configs/failover"])]
    manifests: Vec<PathBuf>,
    /// The external server the streaming connections go to (allowed by the scenario).
    #[arg(long, default_value = "203.0.113.50:5432")]
    server: SocketAddr,
    /// How many daemons are killed (one after the other, in turn).
    #[arg(long, default_value_t = 100)]
    kills: usize,
    /// Established connections streaming through the kills.
    #[arg(long, default_value_t = 40)]
    connections: usize,
    /// One JSON object (the contract), or the same as `key: value` lines.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    output: OutputFormat,
    #[command(flatten)]
    lab: LabFlags,
}

pub fn run(args: LabChaosArgs) -> Result<ExitCode> {
    let snapshot = load_scenario(&args.manifests)?;
    let (sources, denied) = scenario(&snapshot, args.server)?;
    let mut running = EnforcingLab::start(&snapshot, &args.manifests, &denied, &args.lab)?;
    let outcome = chaos(&mut running, &args, &sources, &denied);
    running.stop()?;
    let outcome = outcome?;
    print_outcome(&outcome, args.output)?;
    Ok(
        match outcome["lost"] == 0 && outcome["denied_leaked"] == 0 {
            true => ExitCode::SUCCESS,
            false => ExitCode::FAILURE,
        },
    )
}

/// The pods allowed to reach `server` (the connections' sources), and the probes the policies
/// deny that such pods could send: to the server on the next port, and to each other.
fn scenario(snapshot: &Snapshot, server: SocketAddr) -> Result<(Vec<String>, Vec<Probe>)> {
    let allowed = |p: &Probe| snapshot.evaluate_probe(p).is_ok_and(|v| v.allowed());
    let tcp = |from: &str, to: ProbeEndpoint, port: u16| Probe {
        from: ProbeEndpoint::parse(from).expect("a pod key parses"),
        to,
        protocol: Protocol::Tcp,
        port,
    };
    let pods: Vec<String> = (snapshot.pods.iter())
        .filter(|p| !p.host_network && p.ips.iter().any(|ip| ip.is_ipv4() == server.is_ipv4()))
        .map(|p| p.key())
        .collect();
    let sources: Vec<String> = (pods.iter())
        .filter(|p| allowed(&tcp(p, ProbeEndpoint::External(server.ip()), server.port())))
        .cloned()
        .collect();
    if sources.is_empty() {
        bail!("no pod of the scenario may connect to {server}");
    }
    let mut denied = Vec::new();
    for from in &sources {
        let next_port = server.port().wrapping_add(1);
        denied.push(tcp(from, ProbeEndpoint::External(server.ip()), next_port));
        for to in pods.iter().filter(|to| *to != from) {
            denied.push(tcp(
                from,
                ProbeEndpoint::parse(to).expect("a pod key parses"),
                server.port(),
            ));
        }
    }
    denied.retain(|p| !allowed(p));
    if denied.is_empty() {
        bail!("the scenario denies none of the probes chaos sends");
    }
    Ok((sources, denied))
}

fn chaos(
    running: &mut EnforcingLab,
    args: &LabChaosArgs,
    sources: &[String],
    denied: &[Probe],
) -> Result<serde_json::Value> {
    let server = Server::start(&running.lab, args.server)?;
    let interval = Duration::from_millis(10);
    let streams = Streams::open(
        &running.lab,
        sources,
        args.server,
        args.connections,
        interval,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let daemons = running.daemons().len();
    let mut leaked: Vec<String> = Vec::new();
    let mut probes_sent = 0usize;
    let mut longest_restart = Duration::ZERO;
    for kill in 0..args.kills {
        let i = kill % daemons;
        let (name, child, state) = running.daemons().swap_remove(i);
        child.kill().with_context(|| format!("killing {name}"))?;
        // Down: the pinned programs enforce alone.
        leaked.extend(leaks(running, denied, &format!("{name} down")));
        let _ = std::fs::remove_file(state.join("state.json"));
        let restarted_at = Instant::now();
        let child = running.restart_daemon(i)?;
        wait_applied(&child, &state, &name)?;
        longest_restart = longest_restart.max(restarted_at.elapsed());
        leaked.extend(leaks(running, denied, &format!("{name} restarted")));
        probes_sent += 2 * denied.len();
    }
    let lost_during = streams.failed();
    let outcome = streams.finish(started);
    let seen = server.stop();
    Ok(json!({
        "kills": args.kills,
        "connections": args.connections,
        "lost": args.connections - outcome.survived,
        "lost_during_kills": lost_during,
        "denied_leaked": leaked.len(),
        "denied_probes": probes_sent,
        "leaks": leaked,
        "max_gap_ms": outcome.max_gap.as_millis() as u64,
        "longest_restart_ms": longest_restart.as_millis() as u64,
        "sources_seen": seen.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "errors": outcome.errors,
    }))
}

/// The denied probes that got through now (each as "probe (when)").
fn leaks(running: &EnforcingLab, denied: &[Probe], when: &str) -> Vec<String> {
    (denied.iter().zip(running.lab.probe_all(denied)))
        .filter(|(_, o)| matches!(o, Ok(o) if o.verdict == Verdict::Allow))
        .map(|(p, _)| format!("{p} ({when})"))
        .collect()
}

/// Waits (up to 30 s) until the restarted daemon has applied a generation.
fn wait_applied(
    child: &portcullis_lab::LabChild,
    state: &std::path::Path,
    name: &str,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if PublishedState::read(state).is_some_and(|s| s.applied_unix_ms > 0) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("restarted {name} exited ({status})");
        }
        if Instant::now() > deadline {
            bail!("restarted {name} did not apply within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
