//! portcullis-lab: a cluster made of network namespaces, for testing enforcement on real traffic.
//!
//! ```text
//!  pod netns (eth0) ──veth── node netns (podN … gw0) ──veth── gateway netns ──veth── ext netns
//!   pod IPs /32 /128          /32 /128 route per pod      (cluster)   (external)    every external
//!   default via 169.254.1.1   default → gateway           pod IPs → their node      address, default
//!   / fe80::1 (on-link)                                    default → external        → gateway
//! ```
//!
//! With pods on more than one node (`Pod::node`), each node's `gw0` and the gateway's `cluster` leg
//! are ports of a bridge in a fabric namespace instead; nodes route each other's pods straight
//! across it (pod-to-pod traffic never crosses the gateway, as in a real cluster).
//!
//! Every neighbour entry is static (permanent), so no ARP/ND has to happen before the first packet;
//! forwarding is on in node and gateway, rp_filter off, IPv6 DAD off. Servers run on threads that
//! `setns` into their namespace; probes run on threads that `setns` into the source namespace.
//! Nothing is ever run through `ip netns exec` (it remounts /sys, which hides bpffs).
//!
//! The gateway's legs are `cluster` and `external` (see [`Lab::gateway`]); the node side of each pod
//! is [`PodAttachment::host_iface`] in [`PodAttachment::node_netns`], where node hooks attach.

mod addressing;
mod client;
pub mod command;
mod error;
mod exec;
pub mod iface;
pub mod netns;
mod observation;
mod options;
mod probing;
pub mod sctp;
mod server;
mod topology;
mod wire;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use portcullis_policy::model::{Protocol, Snapshot};
use portcullis_policy::probe::Probe;

pub use addressing::{
    format_mac, EXT_IFACE, FABRIC_BRIDGE, GATEWAY_CLUSTER_IFACE, GATEWAY_EXTERNAL_IFACE,
    NODE_UPLINK_IFACE, POD_GATEWAY_V4, POD_GATEWAY_V6, POD_IFACE,
};
pub use error::LabError;
pub use exec::LabChild;
pub use netns::cleanup_stale;
pub use observation::{Observation, Verdict};
pub use options::LabOptions;
pub use topology::{GatewayLegs, NodeInfo, PodAttachment};

use netns::Netns;
use server::{Arrivals, Server};
use topology::{pod_key, Topology};

/// A built lab. Dropping it (or [`Lab::teardown`]) kills its children, stops its servers and
/// deletes every namespace it made.
pub struct Lab {
    topo: Topology,
    opts: LabOptions,
    netns: Vec<Netns>,
    servers: Vec<Server>,
    children: Vec<LabChild>,
    prepared: HashSet<(IpAddr, Protocol, u16)>,
    arrivals: Arrivals,
    torn_down: bool,
}

fn next_lab_number() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Lab {
    /// Builds the namespaces for every pod of `snapshot` that has addresses (host-network pods are
    /// not modelled), a node, the gateway and the external hosts named by `probes`, and starts a
    /// server for every destination, protocol and port in `probes`.
    pub fn build(snapshot: &Snapshot, probes: &[Probe], opts: LabOptions) -> Result<Lab, LabError> {
        let started = Instant::now();
        if opts.cleanup_stale {
            match netns::cleanup_stale(&opts.prefix) {
                Ok(gone) if !gone.is_empty() => {
                    tracing::info!(count = gone.len(), "deleted stale lab namespaces")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cleaning stale namespaces: {e}"),
            }
        }
        let id = format!(
            "{}-{}-{}",
            opts.prefix,
            std::process::id(),
            next_lab_number()
        );
        let topo = Topology::plan(id, snapshot, probes, opts.unscheduled_nodes)?;
        let mut lab = Lab {
            topo,
            opts,
            netns: Vec::new(),
            servers: Vec::new(),
            children: Vec::new(),
            prepared: HashSet::new(),
            arrivals: Arc::default(),
            torn_down: false,
        };
        let specs = lab.server_specs(probes);

        // On failure, dropping `lab` deletes whatever was created.
        wire::wire(&lab.topo, &mut lab.netns)?;
        for (name, spec) in specs {
            if spec.is_empty() {
                continue;
            }
            let ns = lab.find_netns(&name)?;
            let server = Server::start(&name, &ns.file, spec, lab.arrivals.clone())?;
            lab.servers.push(server);
        }
        tracing::info!(
            lab = %lab.topo.id,
            pods = lab.topo.pods.len(),
            externals = lab.topo.externals.len(),
            servers = lab.servers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "lab built"
        );
        Ok(lab)
    }

    fn find_netns(&self, name: &str) -> Result<&Netns, LabError> {
        netns::find(&self.netns, name)
    }

    /// The lab's id (`PREFIX-PID-N`); every namespace name starts with it.
    pub fn id(&self) -> &str {
        &self.topo.id
    }

    pub fn options(&self) -> &LabOptions {
        &self.opts
    }

    /// Names of every namespace the lab made.
    pub fn namespaces(&self) -> Vec<&str> {
        self.netns.iter().map(|n| n.name.as_str()).collect()
    }

    pub fn gateway(&self) -> &GatewayLegs {
        &self.topo.gateway
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.topo.nodes
    }

    /// With more than one node, the namespace whose bridge ([`FABRIC_BRIDGE`]) joins the nodes'
    /// uplinks and the gateway's cluster leg; `None` with one node (uplink and cluster leg are
    /// the two ends of one veth).
    pub fn fabric_netns(&self) -> Option<&str> {
        self.topo.fabric_netns.as_deref()
    }

    /// The namespace holding every external address.
    pub fn external_netns(&self) -> &str {
        &self.topo.ext_netns
    }

    pub fn external_addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.topo.externals.iter()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodAttachment> {
        self.topo.pods.get(&pod_key(namespace, name))
    }

    /// Every modelled pod: its namespace, and the (node netns, host-side interface) of its veth.
    pub fn pods(&self) -> impl Iterator<Item = &PodAttachment> {
        self.topo.pods.values()
    }

    /// Kills children, stops servers and deletes every namespace. Idempotent; also run on drop.
    pub fn teardown(&mut self) -> Result<(), LabError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        for c in self.children.drain(..) {
            if let Err(e) = c.kill() {
                tracing::warn!(pid = c.id(), "killing lab child: {e}");
            }
        }
        for mut s in self.servers.drain(..) {
            s.stop();
        }
        let mut first_err = None;
        for n in self.netns.drain(..).rev() {
            let name = n.name.clone();
            drop(n);
            if let Err(e) = netns::delete(&name) {
                tracing::warn!("{e}");
                first_err.get_or_insert(e);
            }
        }
        tracing::debug!(lab = %self.topo.id, "lab torn down");
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(lab = %self.topo.id, "teardown: {e}");
        }
    }
}
