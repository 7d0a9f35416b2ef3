//! `portcullis gateway`: the edge daemon. Loads and attaches the XDP program, compiles the
//! manifests into tables and applies them by generation, reloads when the manifests change
//! (keeping the last good generation when the new input is broken), collects expired flows and
//! publishes metrics. Maps and links stay pinned when it exits, so enforcement never stops across
//! a restart or upgrade; `--unpin-on-exit` detaches instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use clap::ValueEnum;
use portcullis_gateway::{AttachMode, ForwardMode, Gateway, GatewayOptions};
use portcullis_policy::compile::{compile_gateway, GatewayTables};
use portcullis_policy::model::Snapshot;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::{manifests, ManifestArgs};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis/gateway";
pub const DEFAULT_STATE_DIR: &str = "/run/portcullis/gateway";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Forward {
    /// Route allowed packets in XDP (bpf_fib_lookup + redirect).
    Xdp,
    /// Pass allowed packets to the kernel stack.
    Kernel,
}

#[derive(clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    /// Interface facing the pods (egress of pods is checked on packets entering here).
    #[arg(long)]
    cluster_iface: String,
    /// Interface facing the outside (ingress to pods is checked on packets entering here).
    #[arg(long)]
    external_iface: String,
    #[arg(long, value_enum, default_value_t = Forward::Xdp)]
    forward: Forward,
    /// Attach in generic (skb) mode; only for drivers without native XDP.
    #[arg(long)]
    generic_xdp: bool,
    /// Re-check established flows against every new policy generation (cut what it forbids).
    #[arg(long)]
    revalidate: bool,
    /// bpffs directory for pinned maps and links (adopted on restart).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Directory for the daemon's published state (group names, last apply), read by `status`.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// How often the manifests are checked for changes.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    reload_interval: Duration,
    /// Detach the program and remove the pins on exit (default: keep enforcing).
    #[arg(long)]
    unpin_on_exit: bool,
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
}

/// What the daemon publishes beside its pins for `status` and `monitor`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PublishedState {
    pub pid: u32,
    /// Group id (as in the maps) → `namespace/name` of its policies.
    pub groups: BTreeMap<u32, Vec<String>>,
    pub generation: u32,
    pub applied_unix_ms: u128,
    pub prefixes: usize,
    pub rejected: Vec<String>,
    pub last_error: Option<String>,
}

impl PublishedState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    pub fn read(state_dir: &Path) -> Option<PublishedState> {
        let text = std::fs::read_to_string(Self::path(state_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, state_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let tmp = state_dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, Self::path(state_dir))
            .with_context(|| format!("publishing {}", state_dir.display()))
    }
}

/// Files, sizes and modification times of the manifests: a change in any means reload.
fn manifest_signature(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifests::manifest_files(paths)
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (f, len, modified)
        })
        .collect()
}

struct Daemon {
    gateway: Gateway,
    /// The snapshot of the generation in force.
    last_good: Snapshot,
    state: PublishedState,
    state_dir: PathBuf,
}

impl Daemon {
    /// Loads and compiles the manifests and applies them, keeping the last good state: an object
    /// rejected by name keeps its previous version, and input that cannot be attributed to
    /// objects (or cannot be compiled) leaves the active generation in force.
    fn reload(&mut self, paths: &[PathBuf]) -> Result<()> {
        let started = Instant::now();
        let result = manifests::load(paths).and_then(|loaded| {
            for e in &loaded.errors {
                warn!(error = %e, "rejected object; its last good version (if any) stays");
            }
            metrics::counter!("portcullis_rejected_objects_total")
                .increment(loaded.errors.len() as u64);
            let rejected = loaded.errors.iter().map(|e| e.to_string()).collect();
            let snapshot = loaded.with_last_good(&self.last_good)?;
            let tables = compile_gateway(&snapshot).context("compiling the gateway tables")?;
            Ok((snapshot, rejected, tables))
        });
        match result {
            Ok((snapshot, rejected, tables)) => {
                self.state.rejected = rejected;
                if self.apply(&tables, started) {
                    self.last_good = snapshot;
                }
                Ok(())
            }
            Err(e) => {
                error!(
                    error = format!("{e:#}"),
                    "update not applied; the last good generation stays enforced"
                );
                metrics::counter!("portcullis_apply_failures_total").increment(1);
                self.state.last_error = Some(format!("{e:#}"));
                self.publish();
                Err(e)
            }
        }
    }

    /// Applies `tables`; true when they are now enforced.
    fn apply(&mut self, tables: &GatewayTables, started: Instant) -> bool {
        match self.gateway.apply(tables) {
            Ok(stats) => {
                let parity = stats.generation;
                self.state.groups = tables
                    .groups
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        (
                            portcullis_gateway::generation_id(i, parity),
                            g.policies.clone(),
                        )
                    })
                    .collect();
                self.state.generation = parity;
                self.state.prefixes = stats.prefixes;
                self.state.last_error = None;
                self.state.applied_unix_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let latency = started.elapsed();
                metrics::histogram!("portcullis_apply_seconds").record(latency.as_secs_f64());
                metrics::gauge!("portcullis_generation").set(f64::from(parity));
                info!(
                    generation = parity,
                    groups = stats.groups,
                    prefixes = stats.prefixes,
                    endpoints = stats.endpoints,
                    deleted = stats.deleted,
                    write_ms = stats.write.as_secs_f64() * 1e3,
                    total_ms = latency.as_secs_f64() * 1e3,
                    "applied policy generation"
                );
                self.publish();
                true
            }
            Err(e) => {
                error!(error = %e, "apply failed; the last good generation stays enforced");
                metrics::counter!("portcullis_apply_failures_total").increment(1);
                self.state.last_error = Some(e.to_string());
                self.publish();
                false
            }
        }
    }

    fn publish(&self) {
        if let Err(e) = self.state.write(&self.state_dir) {
            warn!(error = format!("{e:#}"), "could not publish state");
        }
    }

    fn export_metrics(&self) {
        let Ok(status) = self.gateway.status() else {
            return;
        };
        let c = &status.counters;
        for (verdict, value) in [
            ("pass_flow", c.pass_flow),
            ("pass_policy", c.pass_policy),
            ("pass_unselected", c.pass_unselected),
            ("pass_non_ip", c.pass_non_ip),
            ("drop_policy", c.drop_policy),
            ("drop_malformed", c.drop_malformed),
            ("drop_fragment", c.drop_fragment),
        ] {
            metrics::counter!("portcullis_gateway_packets_total", "verdict" => verdict)
                .absolute(value);
        }
        metrics::counter!("portcullis_gateway_forwarded_total", "path" => "xdp")
            .absolute(c.forward_xdp);
        metrics::counter!("portcullis_gateway_forwarded_total", "path" => "stack")
            .absolute(c.pass_stack);
        metrics::gauge!("portcullis_gateway_flows").set(status.flows as f64);
        metrics::gauge!("portcullis_gateway_prefixes").set(status.prefixes as f64);
        for g in &status.drops_by_group {
            let policies = self
                .state
                .groups
                .get(&g.group)
                .map(|p| p.join(","))
                .unwrap_or_default();
            metrics::counter!("portcullis_gateway_policy_drops_total", "group" => g.group.to_string(), "policies" => policies)
                .absolute(g.packets);
        }
    }
}

pub fn run(args: GatewayArgs) -> Result<ExitCode> {
    if let Some(addr) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
        info!(%addr, "serving Prometheus metrics");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let gateway = Gateway::load(GatewayOptions {
        cluster_iface: args.cluster_iface.clone(),
        external_iface: args.external_iface.clone(),
        xdp_mode: if args.generic_xdp {
            AttachMode::Generic
        } else {
            AttachMode::Native
        },
        forward: match args.forward {
            Forward::Xdp => ForwardMode::Xdp,
            Forward::Kernel => ForwardMode::Kernel,
        },
        pin_dir: Some(args.pin_dir.clone()),
        revalidate: args.revalidate,
    })
    .context("loading and attaching the XDP gateway")?;
    for leg in gateway.attached() {
        info!(iface = %leg.name, ifindex = leg.ifindex, role = leg.role, adopted = leg.adopted, "gateway leg");
    }
    let mut daemon = Daemon {
        gateway,
        state: PublishedState {
            pid: std::process::id(),
            ..PublishedState::default()
        },
        state_dir: args.state_dir.clone(),
        last_good: Snapshot::default(),
    };
    let paths = &args.manifests.manifests;
    let mut signature = manifest_signature(paths);
    // A first input that cannot be used at all is fatal (pins of an earlier run keep enforcing);
    // later bad input only holds back that update.
    daemon
        .reload(paths)
        .context("the initial manifests cannot be enforced")?;
    let mut last_gc = Instant::now();
    let mut last_metrics = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(args.reload_interval.min(Duration::from_millis(200)));
        let now = manifest_signature(paths);
        if now != signature {
            signature = now;
            info!("manifests changed; reloading");
            // A failed update is logged, counted and published by reload; keep serving.
            let _ = daemon.reload(paths);
        }
        if last_gc.elapsed() >= Duration::from_secs(10) {
            last_gc = Instant::now();
            match daemon.gateway.gc_flows() {
                Ok(n) => {
                    metrics::counter!("portcullis_gateway_flows_expired_total").increment(n as u64)
                }
                Err(e) => warn!(error = %e, "flow GC failed"),
            }
        }
        if args.metrics_addr.is_some() && last_metrics.elapsed() >= Duration::from_secs(1) {
            last_metrics = Instant::now();
            daemon.export_metrics();
        }
    }
    if args.unpin_on_exit {
        daemon.gateway.unpin().context("removing pins")?;
        info!("stopped; program detached and pins removed");
    } else {
        info!(pin_dir = %args.pin_dir.display(), "stopped; the pinned program keeps enforcing");
    }
    Ok(ExitCode::SUCCESS)
}
