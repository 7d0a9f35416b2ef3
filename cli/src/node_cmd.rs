//! `portcullis node`: the node daemon. Enforces pod-to-pod policy with tc programs on the host-side
//! interface of every local pod, attaching as pods appear and detaching when they go. A pod is
//! local when this node routes its address directly to an interface (no next hop), which is how
//! routed CNIs wire pods; `--node` further limits it to pods scheduled on that node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result};
use portcullis_node::{NodeHook, NodeOptions};
use portcullis_policy::compile::node::NodeCompiler;
use portcullis_policy::model::Snapshot;
use tracing::{info, warn};

use crate::daemon::{
    export_group_drops, group_names, record_apply, serve, Applied, DaemonArgs, Enforcer,
};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis/node";
pub const DEFAULT_STATE_DIR: &str = "/run/portcullis/node";

#[derive(clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Only pods with this `spec.nodeName` are local (default: every pod routed directly here).
    #[arg(long)]
    node: Option<String>,
    /// Re-check established flows against every new policy generation (cut what it forbids).
    #[arg(long)]
    revalidate: bool,
    /// bpffs directory for pinned maps and links (adopted on restart).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Detach the programs and remove the pins on exit (default: keep enforcing).
    #[arg(long)]
    unpin_on_exit: bool,
}

/// The interface this network namespace routes `ip` to directly, if any.
fn direct_route_device(ip: IpAddr) -> Option<String> {
    let out = Command::new("ip")
        .args(["-j", "route", "get", &ip.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let routes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let route = routes.get(0)?;
    if route.get("gateway").is_some() || route.get("type").and_then(|t| t.as_str()) == Some("local")
    {
        return None;
    }
    route.get("dev")?.as_str().map(str::to_string)
}

struct NodeEnforcer {
    hook: NodeHook,
    /// Long-lived: identities, groups and rule sets keep their ids (delta writes) and unchanged
    /// groups are reused.
    compiler: NodeCompiler,
    node: Option<String>,
}

impl NodeEnforcer {
    /// Attaches to the interfaces of local pods and detaches from those no pod uses any more.
    fn sync_attachments(&mut self, snapshot: &Snapshot) {
        let mut wanted = BTreeSet::new();
        for pod in &snapshot.pods {
            if pod.host_network
                || self
                    .node
                    .as_ref()
                    .is_some_and(|n| pod.node.as_ref() != Some(n))
            {
                continue;
            }
            if let Some(dev) = pod.ips.iter().find_map(|ip| direct_route_device(*ip)) {
                wanted.insert(dev);
            }
        }
        let attached: BTreeSet<String> = self.hook.attached().into_iter().map(|a| a.name).collect();
        for dev in wanted.difference(&attached) {
            match self.hook.attach(dev) {
                Ok(a) => info!(iface = %a.name, adopted = a.adopted, "attached to pod interface"),
                Err(e) => warn!(iface = %dev, error = %e, "could not attach to pod interface"),
            }
        }
        for dev in attached.difference(&wanted) {
            match self.hook.detach(dev) {
                Ok(()) => info!(iface = %dev, "detached from a pod interface no pod uses"),
                Err(e) => warn!(iface = %dev, error = %e, "could not detach"),
            }
        }
    }
}

impl Enforcer for NodeEnforcer {
    fn apply(&mut self, snapshot: &Snapshot) -> Result<Applied> {
        let started = Instant::now();
        let tables = (self.compiler.compile(snapshot)).context("compiling the node tables")?;
        let compile = started.elapsed();
        let stats = self.hook.apply(&tables)?;
        record_apply("node", compile, stats.write, stats.written, stats.deleted);
        info!(
            identities = stats.identities,
            groups = stats.groups,
            recompiled_groups = self.compiler.recompiled(),
            peers = stats.peers,
            prefixes = stats.prefixes,
            written = stats.written,
            deleted = stats.deleted,
            compile_ms = compile.as_secs_f64() * 1e3,
            write_ms = stats.write.as_secs_f64() * 1e3,
            "node tables written"
        );
        // Tables first: a newly attached pod is never seen by a program without its policies.
        self.sync_attachments(snapshot);
        Ok(Applied {
            generation: stats.generation,
            groups: group_names(
                tables.groups.iter().map(|g| &g.policies),
                stats.generation,
                portcullis_node::generation_id,
            ),
            entries: stats.identities
                + stats.endpoints
                + stats.peers
                + stats.prefixes
                + stats.rule_sets,
        })
    }

    fn gc_flows(&mut self) -> Result<usize> {
        Ok(self.hook.gc_flows()?)
    }

    fn export_metrics(&self, groups: &BTreeMap<u32, Vec<String>>) {
        let Ok(status) = self.hook.status() else {
            return;
        };
        metrics::gauge!("portcullis_node_flows").set(status.flows as f64);
        metrics::gauge!("portcullis_node_attached_interfaces").set(status.attached.len() as f64);
        metrics::gauge!("portcullis_node_identities").set(status.identities as f64);
        export_group_drops(
            "portcullis_node_policy_drops_total",
            &status.drops_by_group,
            groups,
        );
    }
}

pub fn run(args: NodeArgs) -> Result<ExitCode> {
    let hook = NodeHook::load(NodeOptions {
        pin_dir: Some(args.pin_dir.clone()),
        revalidate: args.revalidate,
    })
    .context("loading the node programs")?;
    let mut enforcer = NodeEnforcer {
        hook,
        compiler: NodeCompiler::default(),
        node: args.node.clone(),
    };
    let state_dir = args
        .daemon
        .state_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    serve(&mut enforcer, &args.daemon, "node", state_dir)?;
    if args.unpin_on_exit {
        enforcer.hook.unpin().context("removing pins")?;
        // The directory goes too when nothing else is pinned there (fails harmlessly otherwise).
        let _ = std::fs::remove_dir(&args.pin_dir);
        info!("stopped; programs detached and pins removed");
    } else {
        info!(pin_dir = %args.pin_dir.display(), "stopped; the pinned programs keep enforcing");
    }
    Ok(ExitCode::SUCCESS)
}
