//! portcullis-steering: brings pod egress to an egress gateway with Linux policy routing on the
//! node, whatever the node's default route is.
//!
//! # Design
//!
//! Policy routing over the node network, without encapsulation. For each cluster CIDR (pod,
//! service and node networks) a rule `to CIDR lookup main` comes first, so pod-to-pod, node-local
//! and service traffic is never steered. Then, in the caller's order, one rule per steering route
//! `from POD/32|128 to DESTINATION lookup TABLE`, where each distinct gateway (`via`) has its own
//! table holding only `default via VIA [dev UPLINK] [onlink] metric 1` and, behind it,
//! `unreachable default metric 4294967295`: should the gateway route vanish (its device deleted,
//! say), steered traffic fails closed instead of falling through to `main`. IPv4 and IPv6 alike.
//!
//! - **Why not GENEVE/VXLAN/IPIP:** packets keep their size and headers, so there is no MTU
//!   change (pods keep the node network's MTU, no PMTU black holes), the gateway's XDP program sees
//!   the pod's own packet and needs no decapsulation, and replies need nothing: the gateway routes
//!   pod addresses back to their nodes as any router of the cluster does.
//! - **The price:** every gateway must be a neighbour of every node on the node network (one L2
//!   segment, or a routed fabric that carries pod sources). The gateway routes are on-link when an
//!   uplink device is named (an IPv6 link-local gateway is on-link by definition and needs it);
//!   without one the kernel resolves the device from the connected route and refuses a gateway that
//!   is not on-link.
//! - **Cost:** the kernel walks rules in order, so a packet costs one comparison per rule before
//!   its own: keep cluster CIDRs few and aggregated in real clusters.
//!
//! # Ownership and safety
//!
//! [`Steering`] owns the priorities `priority_base .. priority_base + PRIORITY_SPAN` and the tables
//! `table_base .. table_base + TABLE_SPAN` and touches nothing else: whatever it finds there is
//! its own (a restart adopts a previous run's tables and rules that are still wanted and removes
//! the rest). [`Steering::apply`] never leaves a moment where a steered pod's traffic falls
//! through to `main` (past the gateway): gateway routes are written before the rules that use
//! them, a changed gateway gets a fresh table, and stale rules and tables are removed last.

mod plan;
mod rtnl;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

pub use portcullis_policy::egress::SteerRoute;

use plan::{Installed, Layout, Rule, TableRoute, MAIN_TABLE};
use rtnl::Rtnl;

/// Rules one [`Steering`] may install (cluster CIDRs plus routes).
pub const PRIORITY_SPAN: u32 = 8192;
/// Gateway tables one [`Steering`] may use (one per distinct via).
pub const TABLE_SPAN: u32 = 256;
/// The priority of the kernel's `lookup main` rule: steering must come before it.
const MAIN_RULE_PRIORITY: u32 = 32766;
/// Table ids the kernel reserves: unspec, compat, default, main, local.
const RESERVED_TABLES: [u32; 5] = [0, 252, 253, 254, 255];

/// Where steering lives and what it must never steer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteeringConfig {
    /// Never steered: pod, service and node networks.
    pub cluster_cidrs: Vec<IpNet>,
    /// The device the gateways are reached on; required for link-local gateways.
    pub uplink: Option<String>,
    /// First table of the range ([`TABLE_SPAN`] tables).
    pub table_base: u32,
    /// First priority of the range ([`PRIORITY_SPAN`] priorities, all before `main`'s 32766).
    pub priority_base: u32,
}

impl SteeringConfig {
    pub const DEFAULT_TABLE_BASE: u32 = 20000;
    pub const DEFAULT_PRIORITY_BASE: u32 = 20000;

    /// The default ranges.
    pub fn new(cluster_cidrs: Vec<IpNet>, uplink: Option<String>) -> SteeringConfig {
        SteeringConfig {
            cluster_cidrs,
            uplink,
            table_base: Self::DEFAULT_TABLE_BASE,
            priority_base: Self::DEFAULT_PRIORITY_BASE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error("steering config: {0}")]
    Config(String),
    #[error("uplink {uplink}: {source}")]
    Uplink {
        uplink: String,
        #[source]
        source: io::Error,
    },
    #[error("steering route {route}: source, destination and via must be of one family")]
    MixedFamilies { route: String },
    #[error("gateway {via} is link-local: steering needs the uplink device to reach it")]
    LinkLocalWithoutUplink { via: IpAddr },
    #[error("{vias} gateways need more than the {span} tables of the steering range")]
    TablesExhausted { vias: usize, span: u32 },
    #[error("{rules} rules need more than the {span} priorities of the steering range")]
    RulesExhausted { rules: usize, span: u32 },
    #[error("{step}: {source}")]
    Netlink {
        step: String,
        #[source]
        source: io::Error,
    },
}

fn netlink(step: impl Into<String>) -> impl FnOnce(io::Error) -> SteeringError {
    move |source| SteeringError::Netlink {
        step: step.into(),
        source,
    }
}

/// What one [`Steering::apply`] changed, and the totals after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SteeringStats {
    pub rules: usize,
    pub tables: usize,
    pub rules_added: usize,
    pub rules_removed: usize,
    pub routes_written: usize,
    pub routes_removed: usize,
}

/// One gateway's table and how many pod rules use it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayStatus {
    pub via: IpAddr,
    pub table: u32,
    /// The interface index of the gateway route, when it names one.
    pub oif: Option<u32>,
    pub onlink: bool,
    /// The unreachable default is behind the gateway route.
    pub fail_closed: bool,
    pub rules: usize,
}

/// What is installed in the steering ranges now (read from the kernel), for `status --node`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SteeringStatus {
    /// `to CIDR lookup main` rules.
    pub cluster_rules: usize,
    /// Per gateway, in address order.
    pub gateways: Vec<GatewayStatus>,
    /// Rules of the range that lead to no gateway table (left by a failed apply; the next apply
    /// removes them).
    pub stray_rules: usize,
}

/// Steering of the network namespace of the thread that created it: its netlink socket belongs
/// to that namespace, so it may be used from any thread afterwards.
pub struct Steering {
    config: SteeringConfig,
    rtnl: Rtnl,
}

impl Steering {
    /// Checks the ranges and opens a netlink socket in the current network namespace. Changes
    /// nothing in the kernel.
    pub fn new(config: SteeringConfig) -> Result<Steering, SteeringError> {
        check_config(&config)?;
        let rtnl = Rtnl::new().map_err(netlink("open rtnetlink socket"))?;
        Ok(Steering { config, rtnl })
    }

    pub fn config(&self) -> &SteeringConfig {
        &self.config
    }

    fn priorities(&self) -> std::ops::Range<u32> {
        self.config.priority_base..self.config.priority_base + PRIORITY_SPAN
    }

    fn tables(&self) -> std::ops::Range<u32> {
        self.config.table_base..self.config.table_base + TABLE_SPAN
    }

    fn installed(&mut self) -> Result<Installed, SteeringError> {
        let rules = self
            .rtnl
            .rules(self.priorities())
            .map_err(netlink("dump rules"))?;
        let routes = self
            .rtnl
            .routes(self.tables())
            .map_err(netlink("dump routes"))?;
        Ok(Installed { rules, routes })
    }

    /// Makes the kernel hold exactly the rules and tables `routes` need (see the crate docs):
    /// idempotent; adds what is missing, then removes what is stale.
    pub fn apply(&mut self, routes: &[SteerRoute]) -> Result<SteeringStats, SteeringError> {
        let installed = self.installed()?;
        let uplink = match &self.config.uplink {
            Some(name) => {
                let index = self
                    .rtnl
                    .link_index(name)
                    .map_err(|source| SteeringError::Uplink {
                        uplink: name.clone(),
                        source,
                    })?;
                Some((name.as_str(), index))
            }
            None => None,
        };
        let layout = Layout {
            cluster_cidrs: &self.config.cluster_cidrs,
            uplink,
            table_base: self.config.table_base,
            priority_base: self.config.priority_base,
        };
        let changes = plan::plan(&layout, routes, &installed)?;
        for r in &changes.write_routes {
            self.rtnl
                .write_route(r)
                .map_err(netlink(format!("write route {r}")))?;
        }
        for r in &changes.add_rules {
            self.rtnl
                .add_rule(r)
                .map_err(netlink(format!("add rule {r}")))?;
        }
        for r in &changes.delete_rules {
            self.rtnl
                .delete_rule(r)
                .map_err(netlink(format!("delete rule {r}")))?;
        }
        for r in &changes.delete_routes {
            self.rtnl
                .delete_route(r)
                .map_err(netlink(format!("delete route {r}")))?;
        }
        let stats = SteeringStats {
            rules: changes.target.rules.len(),
            tables: changes
                .target
                .routes
                .iter()
                .map(|r| r.table)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            rules_added: changes.add_rules.len(),
            rules_removed: changes.delete_rules.len(),
            routes_written: changes.write_routes.len(),
            routes_removed: changes.delete_routes.len(),
        };
        if stats.rules_added + stats.rules_removed + stats.routes_written + stats.routes_removed > 0
        {
            tracing::info!(?stats, "steering applied");
        } else {
            tracing::debug!(rules = stats.rules, "steering unchanged");
        }
        Ok(stats)
    }

    /// Removes every rule and then every route of the steering ranges: traffic takes the main
    /// table again.
    pub fn clear(&mut self) -> Result<(), SteeringError> {
        let installed = self.installed()?;
        for r in &installed.rules {
            self.rtnl
                .delete_rule(r)
                .map_err(netlink(format!("delete rule {r}")))?;
        }
        for r in &installed.routes {
            self.rtnl
                .delete_route(r)
                .map_err(netlink(format!("delete route {r}")))?;
        }
        tracing::info!(
            rules = installed.rules.len(),
            routes = installed.routes.len(),
            "steering cleared"
        );
        Ok(())
    }

    /// What the steering ranges hold now.
    pub fn status(&mut self) -> Result<SteeringStatus, SteeringError> {
        Ok(status_of(&self.installed()?))
    }
}

fn status_of(installed: &Installed) -> SteeringStatus {
    let mut gateways: BTreeMap<u32, GatewayStatus> = BTreeMap::new();
    for r in &installed.routes {
        if let (Some(via), 0) = (r.via, r.destination.prefix_len()) {
            gateways.entry(r.table).or_insert(GatewayStatus {
                via,
                table: r.table,
                oif: r.oif,
                onlink: r.onlink,
                fail_closed: false,
                rules: 0,
            });
        }
    }
    for r in installed.routes.iter().filter(|r| r.unreachable) {
        if let (Some(g), 0) = (gateways.get_mut(&r.table), r.destination.prefix_len()) {
            g.fail_closed = true;
        }
    }
    let mut status = SteeringStatus::default();
    for rule in &installed.rules {
        match gateways.get_mut(&rule.table) {
            Some(g) => g.rules += 1,
            None if rule.table == MAIN_TABLE && rule.source.is_none() => status.cluster_rules += 1,
            None => status.stray_rules += 1,
        }
    }
    status.gateways = gateways.into_values().collect();
    status.gateways.sort_by_key(|g| g.via);
    status
}

fn check_config(c: &SteeringConfig) -> Result<(), SteeringError> {
    let bad = |m: String| Err(SteeringError::Config(m));
    if c.priority_base == 0 || c.priority_base + PRIORITY_SPAN > MAIN_RULE_PRIORITY {
        return bad(format!(
            "priorities {}..{} must lie in 1..{MAIN_RULE_PRIORITY} (before the main table's rule)",
            c.priority_base,
            c.priority_base.saturating_add(PRIORITY_SPAN)
        ));
    }
    let tables = c.table_base..c.table_base.saturating_add(TABLE_SPAN);
    if tables.end - tables.start < TABLE_SPAN || RESERVED_TABLES.iter().any(|t| tables.contains(t))
    {
        return bad(format!(
            "tables {}..{} overlap the kernel's reserved tables or overflow",
            tables.start, tables.end
        ));
    }
    if let Some(u) = &c.uplink {
        if u.is_empty() || u.len() >= libc::IFNAMSIZ {
            return bad(format!("uplink {u:?} is not an interface name"));
        }
    }
    Ok(())
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = if self.v4 { "0.0.0.0/0" } else { "::/0" };
        let show = |n: &Option<IpNet>| n.map_or(all.to_string(), |n| n.to_string());
        write!(
            f,
            "pref {} from {} to {} lookup {}",
            self.priority,
            show(&self.source),
            show(&self.destination),
            self.table
        )
    }
}

impl fmt::Display for TableRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unreachable {
            f.write_str("unreachable ")?;
        }
        write!(
            f,
            "{} table {} metric {}",
            self.destination, self.table, self.metric
        )?;
        if let Some(v) = self.via {
            write!(f, " via {v}")?;
        }
        if let Some(i) = self.oif {
            write!(f, " oif {i}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_ranges_are_checked() {
        let ok = SteeringConfig::new(Vec::new(), Some("gw0".into()));
        assert!(check_config(&ok).is_ok());
        for bad in [
            SteeringConfig {
                priority_base: 0,
                ..ok.clone()
            },
            SteeringConfig {
                priority_base: 30000,
                ..ok.clone()
            },
            SteeringConfig {
                table_base: 200,
                ..ok.clone()
            },
            SteeringConfig {
                table_base: u32::MAX - 10,
                ..ok.clone()
            },
            SteeringConfig {
                uplink: Some("x".repeat(16)),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(check_config(&bad), Err(SteeringError::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn status_counts_rules_per_gateway() {
        let rule = |priority, source: Option<&str>, table| Rule {
            priority,
            v4: true,
            source: source.map(|s| s.parse().unwrap()),
            destination: None,
            table,
        };
        let installed = Installed {
            rules: vec![
                Rule {
                    destination: Some("10.244.0.0/16".parse().unwrap()),
                    ..rule(1, None, MAIN_TABLE)
                },
                rule(2, Some("10.244.1.1/32"), 1000),
                rule(3, Some("10.244.1.2/32"), 1000),
                rule(4, Some("10.244.1.3/32"), 1003),
            ],
            routes: vec![TableRoute {
                table: 1000,
                destination: "0.0.0.0/0".parse().unwrap(),
                metric: 1,
                via: Some("192.168.0.2".parse().unwrap()),
                oif: Some(4),
                onlink: true,
                unreachable: false,
            }],
        };
        let s = status_of(&installed);
        assert_eq!((s.cluster_rules, s.stray_rules), (1, 1));
        assert_eq!(s.gateways.len(), 1);
        assert_eq!((s.gateways[0].table, s.gateways[0].rules), (1000, 2));
        assert!(!s.gateways[0].fail_closed);
    }
}
