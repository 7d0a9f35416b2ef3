//! Egress steering on the node (`--cluster-cidr`): the local pods' traffic to non-cluster
//! addresses goes to their egress gateway by policy routing (`portcullis-steering`), whatever the
//! node's default route is. The routes come from the policy crate (`egress::steering_routes`: the
//! deciding EgressGateway's node, else a default gateway node) and are reconciled after every
//! apply and whenever the set of local pods changes.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use ipnet::IpNet;
use portcullis_policy::egress::{steering_routes, Actives};
use portcullis_policy::model::Snapshot;
use portcullis_steering::{SteerRoute, Steering, SteeringConfig, SteeringStatus};
use tracing::{info, warn};

use super::LocalPod;

/// The node's steering and the routes last put in force.
pub struct PodSteering {
    steering: Steering,
    routes: Option<Vec<SteerRoute>>,
    error: Option<String>,
}

/// What `status --node` shows of the steering.
#[derive(serde::Serialize)]
struct Published<'a> {
    cluster_cidrs: Vec<String>,
    uplink: Option<&'a str>,
    routes: usize,
    installed: Option<SteeringStatus>,
    error: Option<&'a str>,
}

impl PodSteering {
    /// Steering in this network namespace; nothing is installed before the first [`sync`].
    pub fn new(cluster_cidrs: Vec<IpNet>, uplink: Option<String>) -> Result<PodSteering> {
        let steering = Steering::new(SteeringConfig::new(cluster_cidrs, uplink))
            .context("setting up egress steering")?;
        Ok(PodSteering {
            steering,
            routes: None,
            error: None,
        })
    }

    /// Puts in force the routes of the local pods (those found on this node) under `snapshot`,
    /// to the gateways `actives` names (failover; empty: each group's first member).
    /// A failure is logged and published; the routes installed before stay.
    pub fn sync(&mut self, snapshot: &Snapshot, local: &[LocalPod], actives: &Actives) {
        let keys: BTreeSet<&str> = local
            .iter()
            .filter(|p| p.interface.is_some())
            .map(|p| p.pod.as_str())
            .collect();
        let pods: Vec<_> = snapshot
            .pods
            .iter()
            .filter(|p| keys.contains(p.key().as_str()))
            .collect();
        let routes: Vec<SteerRoute> = steering_routes(snapshot, &pods, actives);
        if self.routes.as_ref() == Some(&routes) && self.error.is_none() {
            return;
        }
        match self.steering.apply(&routes) {
            Ok(stats) => {
                info!(
                    routes = routes.len(),
                    rules = stats.rules,
                    gateways = stats.tables,
                    rules_added = stats.rules_added,
                    rules_removed = stats.rules_removed,
                    "egress steering in force"
                );
                metrics::gauge!("portcullis_node_steering_routes").set(routes.len() as f64);
                self.routes = Some(routes);
                self.error = None;
            }
            Err(e) => {
                let e = format!("{:#}", anyhow::Error::from(e));
                warn!(error = %e, "egress steering could not be put in force");
                metrics::counter!("portcullis_node_steering_failures_total").increment(1);
                self.error = Some(e);
            }
        }
    }

    /// Removes every rule and table the steering installed (`--unpin-on-exit`).
    pub fn clear(&mut self) -> Result<()> {
        self.steering
            .clear()
            .context("removing the egress steering")
    }

    /// The steering as `status --node` shows it.
    pub fn status(&mut self) -> Option<serde_json::Value> {
        let installed = self.steering.status().ok();
        let config = self.steering.config();
        serde_json::to_value(Published {
            cluster_cidrs: config.cluster_cidrs.iter().map(IpNet::to_string).collect(),
            uplink: config.uplink.as_deref(),
            routes: self.routes.as_ref().map_or(0, Vec::len),
            installed,
            error: self.error.as_deref(),
        })
        .ok()
    }
}
