//! Policy tables built by hand for the gateway's kernel tests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use portcullis_policy::compile::{GatewayGroup, GatewayTables, PortRule};
use portcullis_policy::model::Direction;

/// Tables where one egress policy (`policy`, `namespace/name`) selects `pods` and allows them
/// every protocol and port to `prefixes`, and nothing else is selected.
pub fn egress_allowed(pods: &[&str], policy: &str, prefixes: &[&str]) -> GatewayTables {
    let endpoints = (pods.iter())
        .map(|p| ((Direction::Egress, p.parse::<IpAddr>().unwrap()), 0))
        .collect::<BTreeMap<_, _>>();
    GatewayTables {
        endpoints,
        groups: vec![GatewayGroup {
            direction: Direction::Egress,
            policies: vec![policy.into()],
            prefixes: (prefixes.iter()).map(|p| (p.parse().unwrap(), 0)).collect(),
        }],
        rule_sets: vec![vec![PortRule {
            protocol: None,
            first: 0,
            last: 65535,
        }]],
    }
}
