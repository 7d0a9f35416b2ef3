//! The gateway's egress side: which EgressGateways this gateway node serves (`--node-name`), the
//! SNAT plan the XDP program translates by, and what `status` shows of it.

use std::net::IpAddr;

use portcullis_policy::egress::{selects, served_by, snat_plan, SnatPlan};
use portcullis_policy::model::Snapshot;
use serde::Serialize;

/// An EgressGateway this gateway translates for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Served {
    pub name: String,
    pub egress_ips: Vec<IpAddr>,
    /// Pods it selects.
    pub pods: usize,
}

/// The EgressGateways of the generation in force, as this gateway node serves them.
pub struct GatewayEgress {
    node: Option<String>,
    served: Vec<Served>,
}

impl GatewayEgress {
    /// `node`: this gateway's Node name (it serves the EgressGateways whose nodeSelector selects
    /// it); `None` serves every EgressGateway.
    pub fn new(node: Option<String>) -> GatewayEgress {
        GatewayEgress {
            node,
            served: Vec::new(),
        }
    }

    /// The SNAT plan of `snapshot` for this node; remembers what it serves for `status`.
    pub fn plan(&mut self, snapshot: &Snapshot) -> SnatPlan {
        let plan = snat_plan(snapshot, self.node.as_deref());
        self.served = (served_by(snapshot, self.node.as_deref()).into_iter())
            .map(|g| Served {
                name: g.name.clone(),
                egress_ips: g.egress_ips.clone(),
                pods: (snapshot.pods.iter())
                    .filter(|p| selects(snapshot, g, p))
                    .count(),
            })
            .collect();
        plan
    }

    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    pub fn served(&self) -> &[Served] {
        &self.served
    }
}
