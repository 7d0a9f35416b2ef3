//! `portcullis`: the one command for the gateway and node daemons and the tools around them.

mod audit_cmd;
mod daemon;
mod engine_events;
mod explain_cmd;
mod gateway_cmd;
mod gateway_egress;
mod graph_cmd;
mod ha;
mod lab_chaos;
mod lab_cmd;
mod lab_failover;
mod lab_streams;
mod monitor_snat;
mod monitor_verdict;
mod node;
mod preflight;
mod probe_cmd;
mod probe_target;
mod status_cmd;
mod status_egress;
mod status_ha;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Kubernetes NetworkPolicy enforced in the kernel with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Explain the verdict for one probe or a file of probes: which policies select each end and
    /// which rule allows it, or why nothing does.
    Explain(explain_cmd::ExplainArgs),
    /// Report namespaces without default deny, rules that allow everything, ipBlocks covering pod
    /// addresses, excepts that carve nothing and policies that select no pod.
    Audit(audit_cmd::AuditArgs),
    /// Who may talk to whom: pods, external blocks and the allowed connections with their ports.
    Graph(graph_cmd::GraphArgs),
    /// A real connection attempt from inside a pod of this node, next to what `explain`
    /// predicts, with the drop events it caused and the policies behind them.
    Probe(probe_cmd::ProbeArgs),
    /// Run the edge gateway: XDP enforcement of ipBlock rules for traffic crossing the cluster edge.
    Gateway(gateway_cmd::GatewayArgs),
    /// Run the node hook: pod-to-pod enforcement by tc programs on each local pod's interface.
    Node(node::NodeArgs),
    /// Is enforcement in place: legs, generation, table sizes, flows, counters, drops by policy.
    Status(status_cmd::StatusArgs),
    /// Live events from the datapath (`--type drop`).
    Monitor(status_cmd::MonitorArgs),
    /// The network-namespace lab: real traffic through the real datapath.
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
}

/// Manifest files (the lab builds its topology from them, so it takes only files).
#[derive(clap::Args, Clone, Debug)]
pub struct ManifestArgs {
    /// Manifest files or directories (multi-document YAML of Namespaces, Pods, NetworkPolicies).
    #[arg(long, num_args = 1.., required = true)]
    pub manifests: Vec<PathBuf>,
}

/// Where cluster state comes from: manifests on disk, or a Kubernetes API server.
#[derive(clap::Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub struct SourceArgs {
    /// Manifest files or directories (multi-document YAML of Namespaces, Pods, NetworkPolicies).
    #[arg(long, num_args = 1..)]
    pub manifests: Vec<PathBuf>,
    /// Read the cluster through this kubeconfig.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Read the cluster through the in-cluster service account (or the default kubeconfig).
    #[arg(long)]
    pub kube: bool,
}

impl SourceArgs {
    pub fn is_kube(&self) -> bool {
        self.kube || self.kubeconfig.is_some()
    }

    /// Reads the source once.
    pub fn load_once(&self) -> anyhow::Result<portcullis_watcher::Loaded> {
        if self.is_kube() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(runtime.block_on(portcullis_watcher::load_from_kube(
                self.kubeconfig.as_deref(),
            ))?)
        } else {
            Ok(portcullis_watcher::load_files(&self.manifests)?)
        }
    }
}

fn main() -> ExitCode {
    // Installed as the chained CNI plugin, this binary is run by the container runtime under
    // that name, with the request in its environment and on standard input.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(node::CNI_PLUGIN_NAME.as_ref()) {
        return node::cni_plugin_main();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs collected from a pipe stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Explain(args) => explain_cmd::run(args),
        Command::Audit(args) => audit_cmd::run(args),
        Command::Graph(args) => graph_cmd::run(args),
        Command::Probe(args) => probe_cmd::run(args),
        Command::Gateway(args) => gateway_cmd::run(args),
        Command::Node(args) => node::run(args),
        Command::Status(args) => status_cmd::status(args),
        Command::Monitor(args) => status_cmd::monitor(args),
        Command::Lab(command) => lab_cmd::run(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, as `{:#}` gives them, but each cause cut at its first
/// line break: a kernel's answer (the verifier's log) can be thousands of lines, which go to the
/// debug log instead.
fn one_line(e: &anyhow::Error) -> String {
    let mut cut = false;
    let causes: Vec<String> = e
        .chain()
        .map(|cause| {
            let text = cause.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end()
                .to_owned();
            if first.len() < text.trim_end().len() {
                cut = true;
                tracing::debug!(cause = text, "the error in full");
            }
            first
        })
        .collect();
    let mut line = causes.join(": ");
    if cut {
        line.push_str(" (the rest of the kernel's answer: run with PORTCULLIS_LOG=debug)");
    }
    line
}

/// Loads the cluster state once and reports rejected objects on stderr. Returns the snapshot and
/// whether anything was rejected (commands exit non-zero then, after doing their work on the rest).
pub fn load_reporting(
    source: &SourceArgs,
) -> anyhow::Result<(portcullis_policy::model::Snapshot, bool)> {
    let loaded = source.load_once()?;
    for error in &loaded.errors {
        eprintln!("rejected: {error}");
    }
    Ok((loaded.snapshot, !loaded.errors.is_empty()))
}
