//! `portcullis lab`: builds the network-namespace topology from manifests (a netns per pod behind
//! its node, the gateway with a cluster and an external leg, external hosts), runs the real
//! `portcullis gateway` in it, sends each probe as real traffic and reports what happened.
//! Everything is torn down afterwards, also on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use portcullis_gateway::{DatapathMode, ForwardMode};
use portcullis_lab::{
    GatewayLegs, Lab, LabChild, LabOptions, Observation, Verdict, GATEWAY_NODE, NODE_UPLINK_IFACE,
};
use portcullis_policy::explain::egress_explained;
use portcullis_policy::model::Snapshot;
use portcullis_policy::probe::{parse_probes, Probe};
use serde_json::json;

use crate::daemon::PublishedState;
use crate::explain_cmd::print_table;
use crate::{load_reporting, ManifestArgs, OutputFormat, SourceArgs};

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Run probes as real traffic through the enforcing lab; one JSON line per probe by default
    /// (the same contract as `explain --output json`; `verdict` is what the traffic did).
    Run(LabRunArgs),
    /// The demo: the example policies of configs/examples, observed next to explain's prediction.
    Demo(LabDemoArgs),
    /// Egress gateway failover: two gateways, N established connections through the active one,
    /// a fault injected into it; prints whether every connection survived, the longest gap and
    /// whether the external server only ever saw the egress IP.
    Failover(crate::lab_failover::LabFailoverArgs),
    /// The daemons killed with -9 in a loop while connections stream: prints whether any
    /// connection was lost and whether any denied probe got through during a gap.
    Chaos(crate::lab_chaos::LabChaosArgs),
}

#[derive(clap::Args)]
pub struct LabRunArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    #[arg(long)]
    probes: PathBuf,
    #[command(flatten)]
    lab: LabFlags,
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    output: OutputFormat,
}

#[derive(clap::Args)]
pub struct LabDemoArgs {
    #[arg(long, num_args = 1.., default_values = ["configs/examples", "configs/egress"])]
    manifests: Vec<PathBuf>,
    #[arg(long, default_value = "configs/demo-probes.yaml")]
    probes: PathBuf,
    #[command(flatten)]
    lab: LabFlags,
}

#[derive(clap::Args, Clone)]
pub struct LabFlags {
    /// How the gateway forwards allowed packets.
    #[arg(long, value_enum, default_value_t = ForwardMode::Xdp)]
    forward: ForwardMode,
    /// Who judges the gateway's packets (see `portcullis gateway --datapath`); the environment
    /// variable lets the conformance runner's `lab run` use the AF_XDP modes.
    #[arg(long, value_enum, default_value_t = DatapathMode::Xdp, env = "PORTCULLIS_LAB_DATAPATH")]
    datapath: DatapathMode,
    /// Per-attempt timeout of a probe in milliseconds (a deny costs two of them).
    #[arg(long, default_value_t = 700)]
    timeout_ms: u64,
    /// Nodes that pods without `spec.nodeName` are spread over, so traffic takes both same-node
    /// and cross-node paths (each node runs its own node hook).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Two gateways with failover (`lab failover`): a standby gateway, and every daemon with
    /// `--ha`.
    #[arg(skip)]
    pub failover: bool,
}

/// Removes the lab gateway's pins and state even when the run fails.
struct PinGuard {
    pin_dir: PathBuf,
    state_dir: PathBuf,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        for dir in [&self.pin_dir, &self.state_dir] {
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    eprintln!("warning: could not remove {}: {e}", dir.display());
                }
            }
            // The shared parent goes too once no other lab uses it (fails harmlessly otherwise).
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// What starts a gateway's daemon: its namespace and command line.
struct Respawn {
    netns: String,
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl Respawn {
    fn of(netns: &str, cmd: &Command) -> Respawn {
        Respawn {
            netns: netns.into(),
            program: cmd.get_program().into(),
            args: cmd.get_args().map(Into::into).collect(),
            envs: (cmd.get_envs())
                .filter_map(|(k, v)| Some((k.into(), v?.into())))
                .collect(),
        }
    }
}

/// A running lab with the gateway daemon(s) and a node daemon per node enforcing in it.
pub struct EnforcingLab {
    pub lab: Lab,
    /// (daemon, its state directory): the gateways first (the standby second), then one per
    /// node.
    daemons: Vec<(LabChild, PathBuf)>,
    /// How to start each of `daemons` again.
    respawn: Vec<Respawn>,
    /// How many of `daemons` are gateways.
    gateways: usize,
    pins: PinGuard,
}

impl EnforcingLab {
    pub fn start(
        snapshot: &Snapshot,
        manifests: &[PathBuf],
        probes: &[Probe],
        flags: &LabFlags,
    ) -> Result<EnforcingLab> {
        let options = LabOptions {
            timeout: Duration::from_millis(flags.timeout_ms),
            unscheduled_nodes: flags.nodes,
            // Only the nodes' steering brings pod egress to the gateway (issue 14).
            steer_via_router: true,
            standby_gateway: flags.failover,
            egress_ips: snapshot
                .egress_gateways
                .iter()
                .flat_map(|g| g.egress_ips.iter().copied())
                .collect(),
            ..LabOptions::default()
        };
        let mut lab = Lab::build(snapshot, probes, options).context("building the lab")?;
        let pins = PinGuard {
            pin_dir: PathBuf::from("/sys/fs/bpf/portcullis-lab").join(lab.id()),
            state_dir: std::env::temp_dir().join("portcullis-lab").join(lab.id()),
        };
        let mut manifests: Vec<PathBuf> = manifests
            .iter()
            .map(|p| std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display())))
            .collect::<Result<_>>()?;
        // The lab's nodes and its gateway (labelled as the default egress gateway) as Node
        // objects, beside the user's manifests.
        std::fs::create_dir_all(&pins.state_dir)
            .with_context(|| format!("creating {}", pins.state_dir.display()))?;
        let nodes_manifest = pins.state_dir.join("lab-nodes.yaml");
        std::fs::write(&nodes_manifest, lab.node_manifest())
            .with_context(|| format!("writing {}", nodes_manifest.display()))?;
        manifests.push(nodes_manifest);
        let exe = std::env::current_exe().context("locating portcullis")?;
        let log = std::env::var("PORTCULLIS_LOG").unwrap_or_else(|_| "warn".into());
        let daemon = |subcommand: &str, pin_dir: PathBuf, state_dir: &Path| {
            let mut cmd = Command::new(&exe);
            cmd.arg(subcommand)
                .arg("--manifests")
                .args(&manifests)
                .arg("--pin-dir")
                .arg(pin_dir)
                .arg("--state-dir")
                .arg(state_dir)
                .env("PORTCULLIS_LOG", &log)
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            cmd
        };
        let gateways: Vec<GatewayLegs> = std::iter::once(lab.gateway())
            .chain(lab.standby_gateway())
            .cloned()
            .collect();
        let mut daemons = Vec::new();
        let mut respawn = Vec::new();
        for legs in &gateways {
            // Pins and state in a directory named after the gateway's Node.
            let dir = &legs.node;
            let gateway_state = pins.state_dir.join(dir);
            let mut cmd = daemon("gateway", pins.pin_dir.join(dir), &gateway_state);
            cmd.args(legs.leg_args())
                .args(["--forward", &flags.forward.to_string()])
                .args(["--node-name", &legs.node])
                .args(["--datapath", &flags.datapath.to_string()]);
            // With failover a gateway keeps its pins when it stops, so that a restarted daemon
            // adopts them (a rolling upgrade); the pin guard removes them at the end.
            match flags.failover {
                true => cmd.arg("--ha"),
                false => cmd.arg("--unpin-on-exit"),
            };
            respawn.push(Respawn::of(&legs.netns, &cmd));
            let child = (lab.spawn_in(&legs.netns, cmd))
                .with_context(|| format!("starting the gateway {}", legs.node))?;
            daemons.push((child, gateway_state));
        }
        let nodes = lab.nodes().to_vec();
        let cluster_cidrs = lab.cluster_cidrs();
        for node in &nodes {
            let state = pins.state_dir.join(format!("node-{}", node.name));
            let mut cmd = daemon(
                "node",
                pins.pin_dir.join(format!("node-{}", node.name)),
                &state,
            );
            for cidr in &cluster_cidrs {
                cmd.arg("--cluster-cidr").arg(cidr.to_string());
            }
            cmd.args(["--egress-uplink", NODE_UPLINK_IFACE])
                .arg("--unpin-on-exit");
            if flags.failover {
                cmd.arg("--ha");
            }
            respawn.push(Respawn::of(&node.netns, &cmd));
            let child = lab
                .spawn_in(&node.netns, cmd)
                .with_context(|| format!("starting the node hook of {}", node.name))?;
            daemons.push((child, state));
        }
        let running = EnforcingLab {
            lab,
            daemons,
            respawn,
            gateways: gateways.len(),
            pins,
        };
        running.wait_until_enforcing()?;
        Ok(running)
    }

    fn wait_until_enforcing(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (child, state_dir) in &self.daemons {
            loop {
                if let Some(state) = PublishedState::read(state_dir) {
                    if state.applied_unix_ms > 0 {
                        break;
                    }
                    if let Some(e) = state.last_error {
                        bail!("a daemon did not apply the policies: {e}");
                    }
                }
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "a daemon exited before enforcing ({status}); state dir {}",
                        state_dir.display()
                    );
                }
                if Instant::now() > deadline {
                    bail!("the daemons did not apply the policies within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn gateway_pin_dir(&self) -> PathBuf {
        self.pins.pin_dir.join(GATEWAY_NODE)
    }

    pub fn gateway_state_dir(&self) -> &Path {
        &self.daemons[0].1
    }

    /// Per gateway (the standby second): its legs, its daemon and its state directory.
    pub fn gateways(&self) -> Vec<(GatewayLegs, LabChild, PathBuf)> {
        let legs = std::iter::once(self.lab.gateway()).chain(self.lab.standby_gateway());
        (legs.zip(&self.daemons[..self.gateways]))
            .map(|(legs, (child, state))| (legs.clone(), child.clone(), state.clone()))
            .collect()
    }

    /// (node name, its netns, the node hook's pin and state directories), per node.
    pub fn node_hooks(&self) -> Vec<(String, String, PathBuf, PathBuf)> {
        self.lab
            .nodes()
            .iter()
            .zip(&self.daemons[self.gateways..])
            .map(|(node, (_, state))| {
                let pins = self.pins.pin_dir.join(format!("node-{}", node.name));
                (node.name.clone(), node.netns.clone(), pins, state.clone())
            })
            .collect()
    }

    /// Every daemon (the gateways first, then the nodes'): a name, the daemon, its state
    /// directory.
    pub fn daemons(&self) -> Vec<(String, LabChild, PathBuf)> {
        let names = (std::iter::once(self.lab.gateway()).chain(self.lab.standby_gateway()))
            .map(|g| format!("gateway {}", g.node))
            .chain(self.lab.nodes().iter().map(|n| format!("node {}", n.name)));
        (names.zip(&self.daemons))
            .map(|(name, (child, state))| (name, child.clone(), state.clone()))
            .collect()
    }

    /// Starts daemon `i` (of [`EnforcingLab::daemons`]) again with the same command (after it
    /// stopped or was killed); it adopts the pins its predecessor left. Returns the new daemon.
    pub fn restart_daemon(&mut self, i: usize) -> Result<LabChild> {
        let spec = &self.respawn[i];
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = (self.lab.spawn_in(&spec.netns, cmd)).context("restarting a daemon")?;
        self.daemons[i].0 = child.clone();
        Ok(child)
    }

    /// Stops the daemons (they detach themselves) and tears the topology down.
    pub fn stop(mut self) -> Result<()> {
        for (child, _) in &self.daemons {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (child, _) in &self.daemons {
            while child.try_wait()?.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill()?;
        }
        self.lab.teardown().context("tearing the lab down")?;
        Ok(())
    }
}

fn read_probes(path: &Path) -> Result<Vec<Probe>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_probes(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
    }
}

fn observation_json(
    probe: &Probe,
    observed: &std::result::Result<Observation, portcullis_lab::LabError>,
) -> serde_json::Value {
    let mut value = json!({
        "from": probe.from.to_string(),
        "to": probe.to.to_string(),
        "port": probe.port,
        "protocol": probe.protocol.to_string(),
    });
    match observed {
        Ok(o) => {
            value["verdict"] = json!(verdict_text(o.verdict));
            value["detail"] = json!(o.detail);
            value["attempts"] = json!(o.attempts);
            value["source_seen"] = json!(o.source_seen.map(|a| a.to_string()));
        }
        Err(e) => {
            value["verdict"] = json!("error");
            value["detail"] = json!(e.to_string());
        }
    }
    value
}

pub fn run(command: LabCommand) -> Result<ExitCode> {
    match command {
        LabCommand::Run(args) => lab_run(args),
        LabCommand::Demo(args) => lab_demo(args),
        LabCommand::Failover(args) => crate::lab_failover::run(args),
        LabCommand::Chaos(args) => crate::lab_chaos::run(args),
    }
}

fn lab_run(args: LabRunArgs) -> Result<ExitCode> {
    let probes = read_probes(&args.probes)?;
    let (snapshot, rejected) = load_reporting(&SourceArgs {
        manifests: args.manifests.manifests.clone(),
        kubeconfig: None,
        kube: false,
    })?;
    let running = EnforcingLab::start(&snapshot, &args.manifests.manifests, &probes, &args.lab)?;
    let observed = running.lab.probe_all(&probes);
    running.stop()?;
    let mut rows = Vec::new();
    for (probe, o) in probes.iter().zip(&observed) {
        let value = observation_json(probe, o);
        match args.output {
            OutputFormat::Json => println!("{value}"),
            OutputFormat::Table => rows.push([
                probe.from.to_string(),
                probe.to.to_string(),
                format!("{}/{}", probe.protocol, probe.port),
                value["verdict"].as_str().unwrap_or("").to_string(),
                value["source_seen"].as_str().unwrap_or("-").to_string(),
                value["detail"].as_str().unwrap_or("").to_string(),
            ]),
        }
    }
    if args.output == OutputFormat::Table {
        print_table(
            &["FROM", "TO", "PORT", "OBSERVED", "SEEN AS", "DETAIL"],
            &rows,
        );
    }
    Ok(if rejected {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The source address an external server must see for an allowed probe from a pod to an address
/// outside the cluster: the deciding EgressGateway's egress IP, else the pod's own; `None` for
/// other probes.
fn expected_source(snapshot: &Snapshot, probe: &Probe) -> Option<std::net::IpAddr> {
    let verdict = snapshot.evaluate_probe(probe).ok()?;
    let egress = egress_explained(snapshot, probe, &verdict)?;
    if !verdict.allowed() {
        return None;
    }
    let pod_source = snapshot.flow_of(probe).ok()?.src_ip;
    Some(
        egress
            .choice
            .and_then(|c| c.egress_ip)
            .unwrap_or(pod_source),
    )
}

fn lab_demo(args: LabDemoArgs) -> Result<ExitCode> {
    let probes = read_probes(&args.probes)?;
    let (snapshot, rejected) = load_reporting(&SourceArgs {
        manifests: args.manifests.clone(),
        kubeconfig: None,
        kube: false,
    })?;
    let started = Instant::now();
    let running = EnforcingLab::start(&snapshot, &args.manifests, &probes, &args.lab)?;
    let built = started.elapsed();
    let observed = running.lab.probe_all(&probes);
    let status_of = |netns: &str, node: bool, pins: &Path, state: &Path| -> Result<String> {
        let mut c = Command::new(std::env::current_exe()?);
        c.arg("status")
            .arg("--pin-dir")
            .arg(pins)
            .arg("--state-dir")
            .arg(state);
        if node {
            c.arg("--node");
        }
        let out = running.lab.output_in(netns, c).context("reading status")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    };
    let mut status = vec![status_of(
        &running.lab.gateway().netns,
        false,
        &running.gateway_pin_dir(),
        running.gateway_state_dir(),
    )?];
    for (name, netns, pins, state) in running.node_hooks() {
        status.push(format!(
            "[{name}] {}",
            status_of(&netns, true, &pins, &state)?
        ));
    }
    running.stop()?;
    let mut rows = Vec::new();
    let mut mismatches = 0;
    for (probe, o) in probes.iter().zip(&observed) {
        let predicted = snapshot
            .evaluate_probe(probe)
            .map(|v| if v.allowed() { "allow" } else { "deny" })
            .unwrap_or("error");
        let value = observation_json(probe, o);
        let seen = value["verdict"].as_str().unwrap_or("error").to_string();
        // Pod → outside and allowed: the source the external server must see.
        let leaves_as = expected_source(&snapshot, probe);
        let seen_as = o.as_ref().ok().and_then(|o| o.source_seen);
        let agrees = seen == predicted && (leaves_as.is_none() || seen_as == leaves_as);
        mismatches += usize::from(!agrees);
        let show = |a: Option<std::net::IpAddr>| a.map_or("-".to_string(), |a| a.to_string());
        rows.push([
            probe.from.to_string(),
            probe.to.to_string(),
            format!("{}/{}", probe.protocol, probe.port),
            predicted.to_string(),
            seen,
            show(leaves_as),
            show(seen_as.filter(|_| leaves_as.is_some())),
            if agrees { "yes".into() } else { "NO".into() },
            value["detail"].as_str().unwrap_or("").to_string(),
        ]);
    }
    println!(
        "lab: {} pods on {} nodes, gateway datapath {} forwarding in {} mode, ready in {} ms; {} probes of real traffic",
        snapshot.pods.iter().filter(|p| !p.ips.is_empty()).count(),
        args.lab.nodes.max(1),
        args.lab.datapath,
        args.lab.forward,
        built.as_millis(),
        probes.len()
    );
    print_table(
        &[
            "FROM",
            "TO",
            "PORT",
            "EXPLAIN",
            "OBSERVED",
            "LEAVES AS",
            "SEEN AS",
            "AGREE",
            "DETAIL",
        ],
        &rows,
    );
    println!("\n{}", status.join("\n"));
    println!(
        "\n{} of {} probes agree with explain",
        probes.len() - mismatches,
        probes.len()
    );
    Ok(if mismatches > 0 || rejected {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
