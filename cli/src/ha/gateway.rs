//! The gateway daemon's side of failover, run from its loop (which owns the maps): write the
//! replicas the peers sent, send this gateway's changes, make the full dumps new streams ask for,
//! follow the election (the egress IPs it answers for) and keep its answers' lease.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result};
use portcullis_gateway::{monotonic_coarse_ns, Gateway, REPLICA_DELTA_OVERLAP_NS};
use portcullis_policy::egress::owned_egress_ips;
use portcullis_policy::model::Snapshot;
use tracing::{info, warn};

use super::{HaAgent, HaArgs};

/// Failover on a gateway (`--ha`).
pub struct GatewayHa {
    agent: HaAgent,
    node: String,
    /// Flow-clock time of the last delta scan.
    last_scan_ns: u64,
    claims: BTreeSet<String>,
    lease_ns: u64,
}

impl GatewayHa {
    pub fn start(
        node: String,
        args: &HaArgs,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Result<GatewayHa> {
        let agent = HaAgent::start(Some(node.clone()), &node, args, wake)?;
        let lease_ns = agent.shared.timing.detection_ms() * 1_000_000;
        Ok(GatewayHa {
            agent,
            node,
            last_scan_ns: 0,
            claims: BTreeSet::new(),
            lease_ns,
        })
    }

    pub fn agent(&self) -> &HaAgent {
        &self.agent
    }

    /// The egress IPs this gateway answers for under `snapshot`: those of the EgressGateways it
    /// is active for.
    pub fn owned(&self, snapshot: &Snapshot) -> BTreeSet<IpAddr> {
        owned_egress_ips(snapshot, &self.node, &self.claims)
    }

    /// One turn of the daemon's loop. Returns the egress IPs to answer for when the claims
    /// changed (the caller reconfigures SNAT with them, then calls [`GatewayHa::announce`]).
    pub fn poll(
        &mut self,
        gateway: &mut Gateway,
        snapshot: Option<&Snapshot>,
    ) -> Result<Option<BTreeSet<IpAddr>>> {
        let imports = self.agent.take_imports();
        if !imports.is_empty() {
            let stats = gateway
                .import_replicas(&imports)
                .context("writing replicated flows and translations")?;
            metrics::counter!("portcullis_ha_replicas_imported_total", "kind" => "flow")
                .increment(stats.flows);
            metrics::counter!("portcullis_ha_replicas_imported_total", "kind" => "translation")
                .increment(stats.translations);
            if stats.conflicts > 0 {
                metrics::counter!("portcullis_ha_replica_conflicts_total")
                    .increment(stats.conflicts);
                warn!(
                    conflicts = stats.conflicts,
                    "replicated translations conflicting with this gateway's own were refused"
                );
            }
        }
        for peer in self.agent.take_dumps_wanted() {
            let all = gateway
                .export_replicas(None)
                .context("exporting a full dump")?;
            info!(peer, entries = all.len(), "full dump queued for a peer");
            self.agent.send(&all, Some(&peer));
        }
        let now = monotonic_coarse_ns();
        let since = self.last_scan_ns.saturating_sub(REPLICA_DELTA_OVERLAP_NS);
        let delta = gateway
            .export_replicas(Some(since))
            .context("exporting changed flows and translations")?;
        self.last_scan_ns = now;
        self.agent.send(&delta, None);
        gateway
            .renew_lease(self.lease_until())
            .context("renewing the egress IPs' lease")?;
        let claims = self.agent.claims();
        if claims == self.claims {
            return Ok(None);
        }
        self.claims = claims;
        Ok(snapshot.map(|s| self.owned(s)))
    }

    /// The lease of the egress IPs' answers from now: one detection time (a gateway whose
    /// daemon died goes quiet about when its peers take over).
    pub fn lease_until(&self) -> u64 {
        monotonic_coarse_ns() + self.lease_ns
    }

    /// Announces the egress IPs this gateway just took (gratuitous ARP, unsolicited neighbour
    /// advertisement), so the external network sends their replies here at once.
    pub fn announce(&self, gateway: &Gateway, gained: &BTreeSet<IpAddr>) {
        for ip in gained {
            if let Err(e) = gateway.announce_egress_ip(*ip) {
                warn!(%ip, error = %e, "could not announce the egress IP");
            } else {
                info!(%ip, "egress IP announced");
            }
        }
    }
}
