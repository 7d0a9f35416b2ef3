//! Compiles a snapshot into the gateway's tables: pod address → policy group, and per group a set
//! of peer prefixes whose longest match gives the exact union of port rules allowed there.
//! (Implementation in progress.)

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{Direction, Protocol};

/// One allowed protocol and inclusive port range; `protocol: None` allows every protocol and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub protocol: Option<Protocol>,
    pub first: u16,
    pub last: u16,
}

/// Policy tables for traffic crossing the cluster edge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayTables {
    /// Every pod address selected by at least one policy of that direction → index into `groups`.
    pub endpoints: BTreeMap<(Direction, IpAddr), u32>,
    pub groups: Vec<GatewayGroup>,
    /// Deduplicated rule sets; a prefix value indexes this. An empty set denies.
    pub rule_sets: Vec<Vec<PortRule>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayGroup {
    pub direction: Direction,
    /// `namespace/name` of the policies selecting the group's pods in that direction.
    pub policies: Vec<String>,
    /// Peer prefixes (canonical) → index into `rule_sets`. The longest prefix containing an
    /// address gives its rule set; an address no prefix contains is denied.
    pub prefixes: Vec<(IpNet, u32)>,
}
