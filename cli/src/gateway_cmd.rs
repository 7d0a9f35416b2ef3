//! `portcullis gateway`: the edge daemon. Loads and attaches the XDP program and enforces the
//! manifests' ipBlock rules for traffic crossing the cluster edge. Maps and links stay pinned when
//! it exits, so enforcement never stops across a restart or upgrade; `--unpin-on-exit` detaches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use portcullis_afxdp::engine::{Engine, EngineOptions};
use portcullis_afxdp::rings::{RingConfig, ZeroCopy};
use portcullis_afxdp::tables::PolicyTables;
use portcullis_gateway::{
    generation_id, AttachMode, Counters, Datapath, DatapathMode, EngineHandles, ForwardMode,
    Gateway, GatewayOptions,
};
use portcullis_policy::compile::GatewayCompiler;
use portcullis_policy::model::Snapshot;
use tracing::info;

use crate::daemon::{
    export_flow_records, export_flow_tables, export_group_drops, group_names, record_apply, serve,
    stop, Applied, DaemonArgs, Enforcer,
};
use crate::gateway_egress::{GatewayEgress, Served};
use crate::ha::GatewayHa;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis/gateway";
pub const DEFAULT_STATE_DIR: &str = "/run/portcullis/gateway";

#[derive(clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Interface facing the pods (egress of pods is checked on packets entering here).
    #[arg(long)]
    cluster_iface: String,
    /// Interface facing the outside (ingress to pods is checked on packets entering here).
    #[arg(long)]
    external_iface: String,
    /// What happens to allowed packets: routed in XDP (bpf_fib_lookup + redirect), or passed to
    /// the kernel stack.
    #[arg(long, value_enum, default_value_t = ForwardMode::Xdp)]
    forward: ForwardMode,
    /// Attach in generic (skb) mode; only for drivers without native XDP.
    #[arg(long)]
    generic_xdp: bool,
    /// Re-check established flows against every new policy generation (cut what it forbids).
    #[arg(long)]
    revalidate: bool,
    /// Who judges the legs' packets: the XDP program; the AF_XDP engine in user space (every
    /// routable packet); or both (XDP for known flows, the engine for new ones).
    #[arg(long, value_enum, default_value_t = DatapathMode::Xdp)]
    datapath: DatapathMode,
    /// AF_XDP: queues served per leg (default: every rx queue; the legs must have as many).
    #[arg(long)]
    queues: Option<u32>,
    /// AF_XDP: spin on the rings (busy polling) instead of sleeping; lowest latency, one CPU per
    /// queue kept busy.
    #[arg(long)]
    busy_poll: bool,
    /// AF_XDP: zero-copy sockets when the driver offers them (auto), always (fail if not), or
    /// never (copy mode; veth has only copy mode).
    #[arg(long, value_enum, default_value_t = ZeroCopyArg::Auto)]
    zero_copy: ZeroCopyArg,
    /// bpffs directory for pinned maps and links (adopted on restart).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Detach the program and remove the pins on exit (default: keep enforcing).
    #[arg(long)]
    unpin_on_exit: bool,
    /// The Node this gateway runs on: it translates for the EgressGateways whose
    /// `spec.gateway.nodeSelector` selects that Node (default: for every EgressGateway).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Source ports translations to an egress IP use (per egress IP): FIRST-LAST.
    #[arg(long, value_parser = crate::gateway_egress::parse_ports, default_value = "32768-60999")]
    snat_ports: std::ops::RangeInclusive<u16>,
    /// Failover with the other gateways of this node's egress groups (needs --node-name):
    /// heartbeats, the election of the active gateway per EgressGateway (only the active one
    /// answers for its egress IPs), and the flow table and translations synced to the peers.
    #[arg(long, requires = "node_name", env = "PORTCULLIS_HA")]
    ha: bool,
    #[command(flatten)]
    ha_args: crate::ha::HaArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ZeroCopyArg {
    Auto,
    Force,
    Off,
}

impl From<ZeroCopyArg> for ZeroCopy {
    fn from(arg: ZeroCopyArg) -> ZeroCopy {
        match arg {
            ZeroCopyArg::Auto => ZeroCopy::Auto,
            ZeroCopyArg::Force => ZeroCopy::Force,
            ZeroCopyArg::Off => ZeroCopy::Off,
        }
    }
}

struct GatewayEnforcer {
    gateway: Gateway,
    /// Long-lived, so unchanged groups are reused and ids stay stable (delta writes).
    compiler: GatewayCompiler,
    engine: EngineState,
    state_dir: PathBuf,
    last_engine_publish: Instant,
    egress: GatewayEgress,
    /// `--ha`: failover with the other gateways of its groups.
    ha: Option<GatewayHa>,
    /// Woken by the failover agent.
    wake: Arc<tokio::sync::Notify>,
    /// The snapshot in force (SNAT is reconfigured from it when the claims change).
    snapshot: Option<Arc<Snapshot>>,
    /// The egress IPs answered for now (with `--ha`).
    owned: BTreeSet<IpAddr>,
}

/// The AF_XDP engine (`--datapath afxdp|hybrid`): started with the first generation in force, so
/// it never judges by empty tables (a restart keeps the pinned generation until then).
enum EngineState {
    None,
    Waiting(EngineOptions, EngineHandles),
    Running(Engine),
}

impl EngineState {
    fn put_in_force(&mut self, tables: PolicyTables) -> Result<()> {
        match std::mem::replace(self, EngineState::None) {
            EngineState::None => {}
            EngineState::Waiting(options, handles) => {
                let engine = Engine::start(options, handles.xsks, handles.epoch, tables)
                    .context("starting the AF_XDP engine")?;
                *self = EngineState::Running(engine);
            }
            EngineState::Running(engine) => {
                engine.set_tables(tables);
                *self = EngineState::Running(engine);
            }
        }
        Ok(())
    }

    fn running(&self) -> Option<&Engine> {
        match self {
            EngineState::Running(engine) => Some(engine),
            _ => None,
        }
    }
}

impl Enforcer for GatewayEnforcer {
    fn apply(&mut self, snapshot: &Arc<Snapshot>) -> Result<Applied> {
        let started = Instant::now();
        let tables = (self.compiler.compile(snapshot)).context("compiling the gateway tables")?;
        let snat = self.egress.plan(snapshot);
        if let Some(ha) = &self.ha {
            // Which egress IPs it answers for is the election's (kept across set_snat).
            ha.agent().set_snapshot(snapshot);
        }
        let compile = started.elapsed();
        // Validated as a whole first: a configuration that cannot be enforced changes nothing
        // and the policy generation in force stays with it.
        let (snat_written, snat_deleted) =
            (self.gateway.set_snat(&snat)).context("writing the SNAT tables (EgressGateways)")?;
        let stats = self.gateway.apply(&tables)?;
        (self.engine).put_in_force(PolicyTables::new(&tables, u64::from(stats.generation)))?;
        self.snapshot = Some(Arc::clone(snapshot));
        record_apply(
            "gateway",
            compile,
            stats.write,
            stats.written,
            stats.deleted,
        );
        info!(
            groups = stats.tables.groups,
            recompiled_groups = self.compiler.recompiled(),
            prefixes = stats.tables.prefixes,
            prefix_entries = stats.tables.prefix_entries,
            endpoints = stats.tables.endpoints,
            written = stats.written,
            deleted = stats.deleted,
            snat_written,
            snat_deleted,
            compile_ms = compile.as_secs_f64() * 1e3,
            write_ms = stats.write.as_secs_f64() * 1e3,
            "gateway tables written"
        );
        Ok(Applied {
            generation: stats.generation,
            groups: group_names(
                tables.groups.iter().map(|g| &g.policies),
                stats.generation,
                generation_id,
            ),
            entries: stats.tables.entries(),
        })
    }

    fn gc_flows(&mut self) -> Result<usize> {
        Ok(self.gateway.gc_flows()?)
    }

    fn restore_pins(&mut self) -> Result<Vec<String>> {
        Ok(self.gateway.restore_pins()?)
    }

    /// Follows failover (`--ha`); publishes the engine's status and drop events once a second.
    fn poll(&mut self) -> bool {
        let failover = self.poll_ha();
        let Some(engine) = self.engine.running() else {
            return failover;
        };
        if self.last_engine_publish.elapsed() < std::time::Duration::from_secs(1) {
            return false;
        }
        self.last_engine_publish = Instant::now();
        let events = engine.take_drop_events();
        if let Err(e) = crate::engine_events::append(&self.state_dir, &events) {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not publish the engine's drop events"
            );
        }
        true
    }

    fn wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.wake))
    }

    fn engine_status(&self) -> Option<serde_json::Value> {
        let status = self.engine.running()?.status();
        serde_json::to_value(status).ok()
    }

    fn egress_status(&mut self) -> Option<serde_json::Value> {
        serde_json::to_value(EgressStatus {
            node: self.egress.node(),
            egress_gateways: self.egress.served(),
            ha: self.ha.as_ref().map(|ha| ha.agent().status()),
        })
        .ok()
    }

    fn export_metrics(&self, groups: &BTreeMap<u32, Vec<String>>) {
        let Ok(status) = self.gateway.status() else {
            return;
        };
        let c = &status.tables.counters;
        export_verdicts(c, "xdp");
        metrics::counter!("portcullis_gateway_forwarded_total", "path" => "xdp")
            .absolute(c.forward_xdp);
        metrics::counter!("portcullis_gateway_forwarded_total", "path" => "stack")
            .absolute(c.pass_stack);
        metrics::counter!("portcullis_gateway_forwarded_cached_next_hop_total")
            .absolute(c.forward_cached);
        metrics::counter!("portcullis_gateway_to_engine_total").absolute(c.to_engine);
        if let Some(engine) = self.engine.running() {
            crate::engine_events::export_metrics(&engine.status());
        }
        crate::gateway_egress::export_metrics(&status.snat);
        if let Some(ha) = &self.ha {
            ha.agent().export_metrics();
        }
        export_flow_tables("gateway", &status.tables.flows);
        export_flow_records(
            "gateway",
            &[("judged_by", "xdp")],
            &status.tables.flow_records,
        );
        metrics::gauge!("portcullis_gateway_prefixes").set(status.tables.prefixes as f64);
        export_group_drops(
            "portcullis_gateway_policy_drops_total",
            &status.tables.drops_by_group,
            groups,
        );
    }
}

impl GatewayEnforcer {
    /// One turn of failover: replicas in and out, and when the claims changed, SNAT answering
    /// for the egress IPs now owned (announced at once). True when the claims changed.
    fn poll_ha(&mut self) -> bool {
        let Some(ha) = self.ha.as_mut() else {
            return false;
        };
        let owned = match ha.poll(&mut self.gateway, self.snapshot.as_deref()) {
            Ok(Some(owned)) => owned,
            Ok(None) => return ha.agent().publish_due(),
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "failover turn failed");
                return false;
            }
        };
        if let Err(e) = (self.gateway).set_egress_ownership(&owned, Some(ha.lease_until())) {
            tracing::warn!(
                error = format!("{e:#}"),
                "could not answer for the egress IPs now owned"
            );
            return false;
        }
        let gained: BTreeSet<IpAddr> = owned.difference(&self.owned).copied().collect();
        ha.announce(&self.gateway, &gained);
        self.owned = owned;
        true
    }
}

/// The egress side as `status` shows it.
#[derive(serde::Serialize)]
struct EgressStatus<'a> {
    node: Option<&'a str>,
    egress_gateways: &'a [Served],
    /// `--ha`: the groups, the active gateways, the peers' health and the sync lag.
    ha: Option<crate::ha::HaStatus>,
}

/// `portcullis_gateway_packets_total{verdict, judged_by}`: packets by verdict, counted by the XDP
/// program (`xdp`) or the AF_XDP engine (`engine`).
pub fn export_verdicts(c: &Counters, judged_by: &'static str) {
    for (verdict, value) in [
        ("pass_flow", c.pass_flow),
        ("pass_policy", c.pass_policy),
        ("pass_unselected", c.pass_unselected),
        ("pass_non_ip", c.pass_non_ip),
        ("drop_policy", c.drop_policy),
        ("drop_malformed", c.drop_malformed),
        ("drop_fragment", c.drop_fragment),
    ] {
        let labels = [("verdict", verdict), ("judged_by", judged_by)];
        metrics::counter!("portcullis_gateway_packets_total", &labels).absolute(value);
    }
}

pub fn run(args: GatewayArgs) -> Result<ExitCode> {
    let lock = crate::preflight::check(
        "gateway",
        &args.pin_dir,
        &[
            ("cluster-iface", args.cluster_iface.as_str()),
            ("external-iface", args.external_iface.as_str()),
        ],
    )?;
    let result = run_locked(args, &lock);
    if result.is_err() {
        // A start that failed leaves no pins (and so no attached program) of its own behind.
        lock.abandon();
    }
    result
}

/// The daemon, with its pin directory locked.
fn run_locked(args: GatewayArgs, lock: &crate::preflight::PinLock) -> Result<ExitCode> {
    let gateway = Gateway::load(GatewayOptions {
        cluster_iface: args.cluster_iface.clone(),
        external_iface: args.external_iface.clone(),
        xdp_mode: if args.generic_xdp {
            AttachMode::Generic
        } else {
            AttachMode::Native
        },
        forward: args.forward,
        datapath: args.datapath,
        pin_dir: Some(args.pin_dir.clone()),
        revalidate: args.revalidate,
    })
    .context("loading and attaching the XDP gateway")?;
    let mut gateway = gateway;
    let engine = match gateway.engine_handles() {
        Some(handles) => EngineState::Waiting(
            EngineOptions {
                cluster_iface: args.cluster_iface.clone(),
                external_iface: args.external_iface.clone(),
                legs: handles.legs,
                queues: args.queues,
                rings: RingConfig {
                    busy_poll: args.busy_poll,
                    zero_copy: args.zero_copy.into(),
                    ..RingConfig::default()
                },
                hybrid_pins: (args.datapath == DatapathMode::Hybrid).then(|| args.pin_dir.clone()),
                mirror_pins: Some(args.pin_dir.clone()),
                revalidate: args.revalidate,
                pin_threads: true,
            },
            handles,
        ),
        None => EngineState::None,
    };
    for leg in gateway.attached() {
        info!(iface = %leg.name, ifindex = leg.ifindex, role = leg.role, adopted = leg.adopted, "gateway leg");
    }
    let state_dir = args
        .daemon
        .state_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    let wake = Arc::new(tokio::sync::Notify::new());
    let ha = match (args.ha, &args.node_name) {
        (true, Some(node)) => {
            let ha = GatewayHa::start(node.clone(), &args.ha_args, Arc::clone(&wake))?;
            // Nothing is answered for before the election says so (a restarted gateway may
            // find the answers of its previous run in the pins).
            (gateway.set_egress_ownership(&BTreeSet::new(), Some(ha.lease_until())))
                .context("silencing the egress IPs until the election")?;
            Some(ha)
        }
        _ => None,
    };
    let mut enforcer = GatewayEnforcer {
        gateway,
        compiler: GatewayCompiler::default(),
        engine,
        state_dir: state_dir.clone(),
        last_engine_publish: Instant::now(),
        egress: GatewayEgress::new(args.node_name.clone(), args.snat_ports.clone()),
        ha,
        wake,
        snapshot: None,
        owned: BTreeSet::new(),
    };
    serve(&mut enforcer, &args.daemon, ("gateway", lock), state_dir)?;
    let unpin = args
        .unpin_on_exit
        .then_some(move || enforcer.gateway.unpin());
    stop(unpin, &args.pin_dir)?;
    Ok(ExitCode::SUCCESS)
}
