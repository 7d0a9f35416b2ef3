//! `portcullis node`: the node daemon. Enforces pod-to-pod policy with tc programs on the host-side
//! veth of every local pod (routed or enslaved to a bridge: [`discover`]), attaching as pods
//! appear and detaching when they go, and — with the chained CNI plugin ([`cni`]) — from a pod's
//! first packet. Local pods are those with `spec.nodeName` = `--node`; without `--node`, every pod
//! this node routes straight to an interface.

mod cni;
pub(crate) mod discover;
mod routes;
mod steer;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use portcullis_node::{Datapath, NodeHook, NodeOptions};
use portcullis_policy::compile::node::{NodeCompiler, NodeTables};
use portcullis_policy::model::{Direction, Snapshot};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

pub use cni::plugin_main as cni_plugin_main;
pub use cni::PLUGIN_NAME as CNI_PLUGIN_NAME;
use discover::{Discovery, FoundBy};

use crate::daemon::{
    export_flow_records, export_flow_tables, export_group_drops, group_names, record_apply, serve,
    stop, Applied, DaemonArgs, Enforcer,
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
    /// Unix socket the chained CNI plugin asks to enforce new pods on (default: `cni.sock` in the
    /// state directory, /run/portcullis/node/cni.sock for the default one).
    #[arg(long)]
    cni_socket: Option<PathBuf>,
    /// Install the `portcullis-cni` plugin into `--cni-bin-dir` and chain it into the first
    /// conflist of `--cni-conf-dir` (retried until that conflist exists), so that new pods are
    /// enforced from their first packet.
    #[arg(long, requires_all = ["cni_bin_dir", "cni_conf_dir"])]
    install_cni: bool,
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Steer the local pods' traffic to every address outside these CIDRs (pod, service and node
    /// networks; repeatable) to their egress gateway by policy routing. Without it nothing is
    /// steered.
    #[arg(
        long = "cluster-cidr",
        value_name = "CIDR",
        env = "PORTCULLIS_CLUSTER_CIDRS",
        value_delimiter = ','
    )]
    cluster_cidrs: Vec<ipnet::IpNet>,
    /// The interface egress gateways are reached on (needed when their addresses are link-local).
    #[arg(long, requires = "cluster_cidrs", env = "PORTCULLIS_EGRESS_UPLINK")]
    egress_uplink: Option<String>,
    /// Follow egress gateway failover: heartbeats to every gateway of the egress groups, and the
    /// pods' egress steered to the gateway active for their EgressGateway.
    #[arg(long, requires = "cluster_cidrs", env = "PORTCULLIS_HA")]
    ha: bool,
    #[command(flatten)]
    ha_args: crate::ha::HaArgs,
}

/// A pod of this node and how it is enforced, as `status --node` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPod {
    /// `namespace/name`.
    pub pod: String,
    pub ips: Vec<IpAddr>,
    /// Selected by at least one policy (ingress or egress).
    pub selected: bool,
    /// Host-side interface the programs are attached to.
    pub interface: Option<String>,
    pub found_by: Option<FoundBy>,
    pub attached: bool,
    /// Why the pod is not enforced.
    pub error: Option<String>,
}

/// An interface the CNI plugin registered: attached before its pod is known, kept while it
/// exists (until the plugin's DEL).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CniInterface {
    container_id: String,
    pod: Option<String>,
    ips: Vec<IpAddr>,
}

/// A local pod of the generation in force.
struct Candidate {
    key: String,
    ips: Vec<IpAddr>,
    selected: bool,
}

/// How often local pods whose interface was not found are looked for again.
const RESYNC: Duration = Duration::from_secs(1);
/// How often the node's own addresses are read again.
const HOST_RESYNC: Duration = Duration::from_secs(5);

struct NodeEnforcer {
    hook: NodeHook,
    /// Long-lived: identities, groups and rule sets keep their ids (delta writes) and unchanged
    /// groups are reused.
    compiler: NodeCompiler,
    node: Option<String>,
    discovery: Discovery,
    candidates: Vec<Candidate>,
    pods: Vec<LocalPod>,
    /// ifname → registration; persisted in `cni_file` so a restarted daemon keeps them.
    cni: BTreeMap<String, CniInterface>,
    cni_file: PathBuf,
    requests: Option<mpsc::Receiver<cni::Pending>>,
    wake: Arc<tokio::sync::Notify>,
    /// `(bin dir, conf dir, socket)` while the plugin still has to be chained.
    install: Option<(PathBuf, PathBuf, PathBuf)>,
    last_sync: Instant,
    last_host_sync: Instant,
    /// The snapshot last applied (before the CNI addresses are added).
    snapshot: Option<Arc<Snapshot>>,
    /// A CNI ADD reported the address of a pod the API shows without one: apply again.
    reapply: bool,
    /// `--cluster-cidr`: pod egress steered to the egress gateways.
    steering: Option<steer::PodSteering>,
    /// `--ha`: which gateway each EgressGateway's traffic goes to.
    ha: Option<crate::ha::HaAgent>,
    /// The gateways steering was last put in force with.
    actives: portcullis_policy::egress::Actives,
}

impl NodeEnforcer {
    /// The pods of `snapshot` this node enforces: scheduled here (`--node`), or without `--node`
    /// every pod this namespace routes straight to an interface.
    fn local_candidates(&self, snapshot: &Snapshot, tables: &NodeTables) -> Vec<Candidate> {
        snapshot
            .pods
            .iter()
            .filter(|pod| !pod.host_network && !pod.ips.is_empty())
            .filter(|pod| match &self.node {
                Some(n) => pod.node.as_ref() == Some(n),
                None => true,
            })
            .map(|pod| Candidate {
                key: pod.key(),
                ips: pod.ips.clone(),
                selected: pod.ips.iter().any(|ip| {
                    [Direction::Ingress, Direction::Egress]
                        .iter()
                        .any(|d| tables.endpoints.contains_key(&(*d, *ip)))
                }),
            })
            .collect()
    }

    /// Attaches to the interfaces of local pods and of CNI registrations, and detaches from those
    /// neither uses any more. Returns whether the published pod list changed.
    fn sync_attachments(&mut self) -> bool {
        self.last_sync = Instant::now();
        self.sync_host_addrs();
        let found = match self.discovery.find_all(
            self.candidates
                .iter()
                .map(|c| (c.key.as_str(), c.ips.as_slice())),
            self.node.is_some(),
        ) {
            Ok(found) => found,
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "cannot list this node's interfaces"
                );
                return false;
            }
        };
        let mut pods: Vec<LocalPod> = Vec::with_capacity(found.len());
        let mut wanted = BTreeSet::new();
        for (c, (_, result)) in self.candidates.iter().zip(found) {
            let mut pod = LocalPod {
                pod: c.key.clone(),
                ips: c.ips.clone(),
                selected: c.selected,
                ..LocalPod::default()
            };
            match result {
                Ok((iface, by)) => {
                    wanted.insert(iface.clone());
                    pod.interface = Some(iface);
                    pod.found_by = Some(by);
                }
                // Without `--node` a pod routed elsewhere is simply not ours.
                Err(_) if self.node.is_none() => continue,
                Err(e) => pod.error = Some(format!("{e:#}")),
            }
            pods.push(pod);
        }
        self.cni.retain(|ifname, _| discover::exists(ifname));
        wanted.extend(self.cni.keys().cloned());
        let attached: BTreeSet<String> = self.hook.attached().into_iter().map(|a| a.name).collect();
        let mut failed = BTreeMap::new();
        for dev in wanted.difference(&attached) {
            match self.hook.attach(dev) {
                Ok(a) => info!(iface = %a.name, adopted = a.adopted, "attached to pod interface"),
                Err(e) => {
                    warn!(iface = %dev, error = %e, "could not attach to pod interface");
                    failed.insert(dev.clone(), e.to_string());
                }
            }
        }
        for dev in attached.difference(&wanted) {
            match self.hook.detach(dev) {
                Ok(()) => info!(iface = %dev, "detached from an interface no pod uses"),
                Err(e) => warn!(iface = %dev, error = %e, "could not detach"),
            }
        }
        for pod in &mut pods {
            if let Some(iface) = &pod.interface {
                match failed.get(iface) {
                    Some(e) => pod.error = Some(format!("attaching to {iface}: {e}")),
                    None => pod.attached = true,
                }
            }
        }
        self.report_unenforced(&pods);
        let changed = pods != self.pods;
        self.pods = pods;
        if changed {
            self.save_cni();
        }
        changed
    }

    /// `snapshot` with the addresses the CNI plugin reported for local pods the API shows without
    /// one yet (kubelet reports a pod's address only after its containers started): such a pod is
    /// in force as soon as its sandbox is, instead of being dropped until the API catches up.
    fn with_cni_addresses(&self, snapshot: &Arc<Snapshot>) -> Arc<Snapshot> {
        let pending = |pod: &portcullis_policy::model::Pod| {
            pod.ips.is_empty()
                && !pod.host_network
                && self
                    .node
                    .as_ref()
                    .is_none_or(|n| pod.node.as_ref() == Some(n))
        };
        let reported: BTreeMap<&str, &Vec<IpAddr>> = self
            .cni
            .values()
            .filter_map(|r| Some((r.pod.as_deref()?, &r.ips)))
            .collect();
        let needed = |pod: &portcullis_policy::model::Pod| {
            pending(pod) && reported.contains_key(pod.key().as_str())
        };
        if !snapshot.pods.iter().any(needed) {
            return Arc::clone(snapshot);
        }
        let mut with = (**snapshot).clone();
        for pod in with.pods.iter_mut() {
            if let Some(ips) = reported.get(pod.key().as_str()).filter(|_| pending(pod)) {
                pod.ips = (*ips).clone();
            }
        }
        Arc::new(with)
    }

    /// Keeps the node's own addresses (always allowed to reach local pods) current.
    fn sync_host_addrs(&mut self) {
        self.last_host_sync = Instant::now();
        let result = discover::host_addresses()
            .and_then(|addrs| Ok((self.hook.set_host_addrs(&addrs)?, addrs)));
        match result {
            Ok((true, addrs)) => info!(?addrs, "node addresses (always allowed to local pods)"),
            Ok((false, _)) => {}
            Err(e) => warn!(
                error = format!("{e:#}"),
                "cannot update the node's addresses"
            ),
        }
    }

    /// Logs every pod that became unenforced and exports the counts.
    fn report_unenforced(&self, pods: &[LocalPod]) {
        let before: BTreeSet<&str> = self
            .pods
            .iter()
            .filter(|p| !p.attached)
            .map(|p| p.pod.as_str())
            .collect();
        for pod in pods.iter().filter(|p| !p.attached) {
            if !before.contains(pod.pod.as_str()) {
                let error = pod.error.as_deref().unwrap_or("no interface");
                if pod.selected {
                    error!(pod = %pod.pod, error, "a pod selected by policy is NOT enforced");
                } else {
                    warn!(pod = %pod.pod, error, "a local pod is not enforced");
                }
            }
        }
        let unenforced = |selected: bool| {
            pods.iter()
                .filter(|p| !p.attached && (p.selected || !selected))
                .count() as f64
        };
        metrics::gauge!("portcullis_node_local_pods").set(pods.len() as f64);
        metrics::gauge!("portcullis_node_unenforced_pods").set(unenforced(false));
        metrics::gauge!("portcullis_node_unenforced_selected_pods").set(unenforced(true));
    }

    /// Steers the local pods found so far (`--cluster-cidr`).
    fn sync_steering(&mut self) {
        if let (Some(steering), Some(snapshot)) = (self.steering.as_mut(), self.snapshot.as_ref()) {
            steering.sync(snapshot, &self.pods, &self.actives);
        }
    }

    fn save_cni(&self) {
        let write = || -> Result<()> {
            if let Some(dir) = self.cni_file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = self.cni_file.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&self.cni)?)?;
            std::fs::rename(&tmp, &self.cni_file)?;
            Ok(())
        };
        if let Err(e) = write() {
            warn!(file = %self.cni_file.display(), error = format!("{e:#}"), "could not save CNI registrations");
        }
    }

    /// Answers one request of the CNI plugin.
    fn handle(&mut self, request: &cni::Request) -> Result<Option<String>> {
        match request.command {
            cni::CniCommand::Add => {
                let started = Instant::now();
                let veths = discover::veths(&request.interfaces)?;
                let Some(ifname) = veths.first() else {
                    anyhow::bail!(
                        "none of the pod's host-side interfaces {:?} is a veth: only veth layouts \
                         (routed or bridged) can be enforced, macvlan/ipvlan/OVS cannot",
                        request.interfaces
                    );
                };
                self.hook
                    .attach(ifname)
                    .with_context(|| format!("attaching to {ifname}"))?;
                self.discovery.remember(&request.ips, ifname);
                // A pod the API shows without an address yet is put in force with this one now.
                self.reapply |= self.snapshot.as_ref().is_some_and(|s| {
                    s.pods.iter().any(|p| {
                        p.ips.is_empty() && request.pod.as_deref() == Some(p.key().as_str())
                    })
                });
                self.cni.insert(
                    ifname.clone(),
                    CniInterface {
                        container_id: request.container_id.clone(),
                        pod: request.pod.clone(),
                        ips: request.ips.clone(),
                    },
                );
                self.save_cni();
                let took = started.elapsed();
                metrics::histogram!("portcullis_cni_add_seconds").record(took.as_secs_f64());
                info!(
                    iface = %ifname,
                    pod = request.pod.as_deref().unwrap_or("?"),
                    ips = ?request.ips,
                    attach_ms = took.as_secs_f64() * 1e3,
                    "CNI ADD: attached, failing closed until the pod is in force"
                );
                Ok(Some(ifname.clone()))
            }
            cni::CniCommand::Check => self
                .cni
                .iter()
                .find(|(_, r)| r.container_id == request.container_id)
                .map(|(ifname, _)| Some(ifname.clone()))
                .context("this container's interface is not registered"),
            cni::CniCommand::Del => {
                let gone: Vec<String> = self
                    .cni
                    .iter()
                    .filter(|(_, r)| r.container_id == request.container_id)
                    .map(|(ifname, _)| ifname.clone())
                    .collect();
                for ifname in gone {
                    self.cni.remove(&ifname);
                    info!(iface = %ifname, "CNI DEL: registration removed");
                }
                self.save_cni();
                Ok(None)
            }
        }
    }
}

impl Enforcer for NodeEnforcer {
    fn apply(&mut self, snapshot: &Arc<Snapshot>) -> Result<Applied> {
        let started = Instant::now();
        self.snapshot = Some(Arc::clone(snapshot));
        if let Some(ha) = &self.ha {
            ha.set_snapshot(snapshot);
        }
        let snapshot = &*self.with_cni_addresses(snapshot);
        let tables = (self.compiler.compile(snapshot)).context("compiling the node tables")?;
        let compile = started.elapsed();
        let stats = self.hook.apply(&tables)?;
        record_apply("node", compile, stats.write, stats.written, stats.deleted);
        info!(
            identities = stats.tables.identities,
            groups = stats.tables.groups,
            recompiled_groups = self.compiler.recompiled(),
            peers = stats.tables.peers,
            prefixes = stats.tables.prefixes,
            prefix_entries = stats.tables.prefix_entries,
            written = stats.written,
            deleted = stats.deleted,
            compile_ms = compile.as_secs_f64() * 1e3,
            write_ms = stats.write.as_secs_f64() * 1e3,
            "node tables written"
        );
        // Tables first: a newly attached pod is never seen by a program without its policies.
        self.candidates = self.local_candidates(snapshot, &tables);
        self.sync_attachments();
        self.sync_steering();
        Ok(Applied {
            generation: stats.generation,
            groups: group_names(
                tables.groups.iter().map(|g| &g.policies),
                stats.generation,
                portcullis_node::generation_id,
            ),
            entries: stats.tables.entries(),
        })
    }

    fn gc_flows(&mut self) -> Result<usize> {
        Ok(self.hook.gc_flows()?)
    }

    fn restore_pins(&mut self) -> Result<Vec<String>> {
        Ok(self.hook.restore_pins()?)
    }

    fn poll(&mut self) -> bool {
        let mut changed = false;
        if let Some((bin, conf, socket)) = &self.install {
            match cni::install(bin, conf, socket) {
                Ok(Some(_)) => self.install = None,
                Ok(None) => {}
                Err(e) => {
                    error!(
                        error = format!("{e:#}"),
                        "cannot chain the CNI plugin; retrying"
                    );
                }
            }
        }
        while let Some(pending) = self.requests.as_ref().and_then(|r| r.try_recv().ok()) {
            let reply = match self.handle(&pending.request) {
                Ok(interface) => cni::Reply {
                    interface,
                    error: None,
                },
                Err(e) => {
                    warn!(error = format!("{e:#}"), request = ?pending.request, "CNI request refused");
                    cni::Reply {
                        interface: None,
                        error: Some(format!("{e:#}")),
                    }
                }
            };
            let _ = pending.reply.send(reply);
            changed = true;
        }
        if self.last_host_sync.elapsed() >= HOST_RESYNC {
            self.sync_host_addrs();
        }
        if let Some(ha) = &self.ha {
            let actives = ha.actives();
            changed |= ha.publish_due();
            if actives != self.actives {
                self.actives = actives;
                self.sync_steering();
                changed = true;
            }
        }
        // Pods whose interface was not found yet (or not attachable) are looked for again.
        if self.last_sync.elapsed() >= RESYNC
            && self.pods.iter().any(|p| !p.attached)
            && self.sync_attachments()
        {
            self.sync_steering();
            changed = true;
        }
        changed
    }

    fn take_reapply(&mut self) -> bool {
        std::mem::take(&mut self.reapply)
    }

    fn wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.wake))
    }

    fn pods(&self) -> Vec<LocalPod> {
        self.pods.clone()
    }

    fn egress_status(&mut self) -> Option<serde_json::Value> {
        let mut status = self.steering.as_mut()?.status()?;
        if let (Some(ha), Some(object)) = (&self.ha, status.as_object_mut()) {
            object.insert("ha".into(), serde_json::to_value(ha.status()).ok()?);
        }
        Some(status)
    }

    fn export_metrics(&self, groups: &BTreeMap<u32, Vec<String>>) {
        let Ok(status) = self.hook.status() else {
            return;
        };
        export_flow_tables("node", &status.tables.flows);
        export_flow_records("node", &[], &status.tables.flow_records);
        metrics::gauge!("portcullis_node_attached_interfaces").set(status.attached.len() as f64);
        if let Some(ha) = &self.ha {
            ha.export_metrics();
        }
        metrics::gauge!("portcullis_node_identities").set(status.own.identities as f64);
        export_group_drops(
            "portcullis_node_policy_drops_total",
            &status.tables.drops_by_group,
            groups,
        );
    }
}

pub fn run(args: NodeArgs) -> Result<ExitCode> {
    let uplink = args
        .egress_uplink
        .iter()
        .map(|i| ("egress-uplink", i.as_str()));
    let lock = crate::preflight::check("node", &args.pin_dir, &uplink.collect::<Vec<_>>())?;
    let result = run_locked(args, &lock);
    if result.is_err() {
        // A start that failed leaves no pins (and so no attached program) of its own behind.
        lock.abandon();
    }
    result
}

/// The daemon, with its pin directory locked.
fn run_locked(args: NodeArgs, lock: &crate::preflight::PinLock) -> Result<ExitCode> {
    let hook = NodeHook::load(NodeOptions {
        pin_dir: Some(args.pin_dir.clone()),
        revalidate: args.revalidate,
    })
    .context("loading the node programs")?;
    let state_dir = args
        .daemon
        .state_dir
        .clone()
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    let cni_file = state_dir.join("cni-interfaces.json");
    // Registrations of an earlier run: their interfaces stay wanted while they exist.
    let registered: BTreeMap<String, CniInterface> = std::fs::read(&cni_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut discovery = Discovery::default();
    for (ifname, r) in &registered {
        discovery.remember(&r.ips, ifname);
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    let (tx, rx) = mpsc::channel();
    let cni_socket = args
        .cni_socket
        .clone()
        .unwrap_or_else(|| state_dir.join("cni.sock"));
    cni::serve(&cni_socket, tx, Arc::clone(&wake))?;
    let install = if args.install_cni {
        let (Some(bin), Some(conf)) = (args.cni_bin_dir.clone(), args.cni_conf_dir.clone()) else {
            anyhow::bail!("--install-cni needs --cni-bin-dir and --cni-conf-dir");
        };
        Some((bin, conf, cni_socket.clone()))
    } else {
        None
    };
    let ha = match args.ha {
        true => Some(crate::ha::HaAgent::start(
            None,
            args.node.as_deref().unwrap_or("node"),
            &args.ha_args,
            Arc::clone(&wake),
        )?),
        false => None,
    };
    let mut enforcer = NodeEnforcer {
        hook,
        compiler: NodeCompiler::default(),
        node: args.node.clone(),
        discovery,
        candidates: Vec::new(),
        pods: Vec::new(),
        cni: registered,
        cni_file,
        requests: Some(rx),
        wake,
        install,
        last_sync: Instant::now(),
        last_host_sync: Instant::now(),
        snapshot: None,
        reapply: false,
        ha,
        actives: Default::default(),
        steering: match args.cluster_cidrs.is_empty() {
            true => None,
            false => Some(steer::PodSteering::new(
                args.cluster_cidrs.clone(),
                args.egress_uplink.clone(),
            )?),
        },
    };
    serve(&mut enforcer, &args.daemon, ("node", lock), state_dir)?;
    if args.unpin_on_exit {
        if let Some(steering) = enforcer.steering.as_mut() {
            steering.clear()?;
        }
    }
    let unpin = args.unpin_on_exit.then_some(move || enforcer.hook.unpin());
    stop(unpin, &args.pin_dir)?;
    Ok(ExitCode::SUCCESS)
}
