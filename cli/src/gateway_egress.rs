//! The gateway's egress side: which EgressGateways this gateway node serves (`--node-name`), the
//! SNAT plan the XDP program translates by, and what `status` shows of it.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use portcullis_gateway::{SnatConfig, SnatStatus};
use portcullis_policy::egress::{selects, served_by, snat_plan};
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
    ports: RangeInclusive<u16>,
    served: Vec<Served>,
}

impl GatewayEgress {
    /// `node`: this gateway's Node name (it serves the EgressGateways whose nodeSelector selects
    /// it); `None` serves every EgressGateway.
    /// `ports`: the source ports translations use (per egress IP).
    pub fn new(node: Option<String>, ports: RangeInclusive<u16>) -> GatewayEgress {
        GatewayEgress {
            node,
            ports,
            served: Vec::new(),
        }
    }

    /// The SNAT configuration of `snapshot` for this node; remembers what it serves for
    /// `status`.
    pub fn plan(&mut self, snapshot: &Snapshot) -> SnatConfig {
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
        SnatConfig {
            classes: plan.classes.into_iter().collect(),
            entries: (plan.entries.into_iter())
                .map(|e| (e.class, e.destination, e.egress_ip))
                .collect(),
            egress_ips: plan.egress_ips.into_iter().collect(),
            ports: self.ports.clone(),
        }
    }

    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    pub fn served(&self) -> &[Served] {
        &self.served
    }
}

/// `--snat-ports FIRST-LAST`.
pub fn parse_ports(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected FIRST-LAST, e.g. 32768-60999"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first > last {
        return Err(format!("{text:?}: the first port is after the last"));
    }
    Ok(first..=last)
}

/// Translation metrics: connections, packets each way, drops by cause, ARP/ND answers, and per
/// egress IP the translations and pool use.
pub fn export_metrics(snat: &SnatStatus) {
    let c = &snat.counters;
    metrics::gauge!("portcullis_gateway_snat_translations").set(snat.translations as f64);
    metrics::counter!("portcullis_gateway_snat_new_total").absolute(c.new_translations);
    for (direction, value) in [
        ("outbound", c.translated_outbound),
        ("inbound", c.translated_inbound),
    ] {
        metrics::counter!("portcullis_gateway_snat_packets_total", "direction" => direction)
            .absolute(value);
    }
    metrics::counter!("portcullis_gateway_snat_icmp_errors_total").absolute(c.icmp_errors);
    for (reason, value) in [
        ("pool_exhausted", c.pool_exhausted),
        ("no_mapping", c.no_mapping),
        ("table_full", c.table_full),
    ] {
        metrics::counter!("portcullis_gateway_snat_drops_total", "reason" => reason)
            .absolute(value);
    }
    for (kind, value) in [("arp", c.arp_replies), ("nd", c.nd_replies)] {
        metrics::counter!("portcullis_gateway_neighbour_replies_total", "kind" => kind)
            .absolute(value);
    }
    for ip in &snat.egress_ips {
        let ip_label = ip.ip.to_string();
        metrics::gauge!("portcullis_gateway_snat_ports_in_use", "egress_ip" => ip_label.clone())
            .set(ip.ports_in_use as f64);
        metrics::gauge!("portcullis_gateway_snat_pool_size", "egress_ip" => ip_label)
            .set(ip.pool_size as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ports;

    #[test]
    fn port_ranges_parse_or_say_why_not() {
        assert_eq!(parse_ports("40000-40001"), Ok(40000..=40001));
        assert_eq!(parse_ports(" 1 - 65535"), Ok(1..=65535));
        assert!(parse_ports("40001-40000").unwrap_err().contains("after"));
        assert!(parse_ports("0-10").unwrap_err().contains("not a port"));
        assert!(parse_ports("1000").unwrap_err().contains("FIRST-LAST"));
    }
}
