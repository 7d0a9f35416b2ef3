//! `portcullis gateway`: the edge daemon. Loads and attaches the XDP program and enforces the
//! manifests' ipBlock rules for traffic crossing the cluster edge. Maps and links stay pinned when
//! it exits, so enforcement never stops across a restart or upgrade; `--unpin-on-exit` detaches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use portcullis_gateway::{
    generation_id, AttachMode, Datapath, ForwardMode, Gateway, GatewayOptions,
};
use portcullis_policy::compile::GatewayCompiler;
use portcullis_policy::model::Snapshot;
use tracing::info;

use crate::daemon::{
    export_flow_tables, export_group_drops, group_names, record_apply, serve, stop, Applied,
    DaemonArgs, Enforcer,
};

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
    /// bpffs directory for pinned maps and links (adopted on restart).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Detach the program and remove the pins on exit (default: keep enforcing).
    #[arg(long)]
    unpin_on_exit: bool,
}

struct GatewayEnforcer {
    gateway: Gateway,
    /// Long-lived, so unchanged groups are reused and ids stay stable (delta writes).
    compiler: GatewayCompiler,
}

impl Enforcer for GatewayEnforcer {
    fn apply(&mut self, snapshot: &Arc<Snapshot>) -> Result<Applied> {
        let started = Instant::now();
        let tables = (self.compiler.compile(snapshot)).context("compiling the gateway tables")?;
        let compile = started.elapsed();
        let stats = self.gateway.apply(&tables)?;
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

    fn export_metrics(&self, groups: &BTreeMap<u32, Vec<String>>) {
        let Ok(status) = self.gateway.status() else {
            return;
        };
        let c = &status.tables.counters;
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
        metrics::counter!("portcullis_gateway_forwarded_cached_next_hop_total")
            .absolute(c.forward_cached);
        export_flow_tables("gateway", &status.tables.flows);
        metrics::gauge!("portcullis_gateway_prefixes").set(status.tables.prefixes as f64);
        export_group_drops(
            "portcullis_gateway_policy_drops_total",
            &status.tables.drops_by_group,
            groups,
        );
    }
}

pub fn run(args: GatewayArgs) -> Result<ExitCode> {
    let gateway = Gateway::load(GatewayOptions {
        cluster_iface: args.cluster_iface.clone(),
        external_iface: args.external_iface.clone(),
        xdp_mode: if args.generic_xdp {
            AttachMode::Generic
        } else {
            AttachMode::Native
        },
        forward: args.forward,
        pin_dir: Some(args.pin_dir.clone()),
        revalidate: args.revalidate,
    })
    .context("loading and attaching the XDP gateway")?;
    for leg in gateway.attached() {
        info!(iface = %leg.name, ifindex = leg.ifindex, role = leg.role, adopted = leg.adopted, "gateway leg");
    }
    let mut enforcer = GatewayEnforcer {
        gateway,
        compiler: GatewayCompiler::default(),
    };
    let state_dir = args
        .daemon
        .state_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    serve(&mut enforcer, &args.daemon, "gateway", state_dir)?;
    let unpin = args
        .unpin_on_exit
        .then_some(move || enforcer.gateway.unpin());
    stop(unpin, &args.pin_dir)?;
    Ok(ExitCode::SUCCESS)
}
