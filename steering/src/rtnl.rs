//! The netlink side: reading the rules and routes of the steering ranges, and adding and deleting
//! them, over one blocking rtnetlink socket of the calling thread's network namespace.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::plan::{Rule, TableRoute};

/// Table ids above this travel in an attribute only (the header's byte says "compat").
const MAX_HEADER_TABLE: u32 = 255;

pub(crate) struct Rtnl(portcullis_netlink::Rtnl);

fn family(v4: bool) -> AddressFamily {
    if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn header_table(table: u32) -> u8 {
    if table <= MAX_HEADER_TABLE {
        table as u8
    } else {
        RouteHeader::RT_TABLE_UNSPEC
    }
}

fn net(addr: IpAddr, len: u8) -> Option<IpNet> {
    IpNet::new(addr, len).ok()
}

impl Rtnl {
    pub fn new() -> io::Result<Rtnl> {
        portcullis_netlink::Rtnl::new().map(Rtnl)
    }

    /// The index of interface `name` in the socket's namespace (not the calling thread's).
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        let mut req = LinkMessage::default();
        req.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.0.request(RouteNetlinkMessage::GetLink(req))? {
            RouteNetlinkMessage::NewLink(link) => Ok(link.header.index),
            _ => Err(io::Error::other("RTM_GETLINK: no link in the reply")),
        }
    }

    /// Every rule of both families whose priority is in `priorities`.
    pub fn rules(&mut self, priorities: std::ops::Range<u32>) -> io::Result<Vec<Rule>> {
        let mut rules = Vec::new();
        for v4 in [true, false] {
            let mut req = RuleMessage::default();
            req.header.family = family(v4);
            for msg in self.0.dump(RouteNetlinkMessage::GetRule(req))? {
                let RouteNetlinkMessage::NewRule(m) = msg else {
                    continue;
                };
                if let Some(rule) = parse_rule(&m, v4) {
                    if priorities.contains(&rule.priority) {
                        rules.push(rule);
                    }
                }
            }
        }
        Ok(rules)
    }

    /// Every route of both families in a table of `tables`.
    pub fn routes(&mut self, tables: std::ops::Range<u32>) -> io::Result<Vec<TableRoute>> {
        let mut routes = Vec::new();
        for v4 in [true, false] {
            let mut req = RouteMessage::default();
            req.header.address_family = family(v4);
            for msg in self.0.dump(RouteNetlinkMessage::GetRoute(req))? {
                let RouteNetlinkMessage::NewRoute(m) = msg else {
                    continue;
                };
                if let Some(route) = parse_route(&m, v4) {
                    if tables.contains(&route.table) {
                        routes.push(route);
                    }
                }
            }
        }
        Ok(routes)
    }

    pub fn add_rule(&mut self, rule: &Rule) -> io::Result<()> {
        let msg = RouteNetlinkMessage::NewRule(rule_message(rule));
        self.0.change(msg, NLM_F_CREATE | NLM_F_EXCL)
    }

    pub fn delete_rule(&mut self, rule: &Rule) -> io::Result<()> {
        let msg = RouteNetlinkMessage::DelRule(rule_message(rule));
        ignore_missing(self.0.change(msg, 0))
    }

    /// Adds the route, or replaces the one of the same table and destination in one write.
    pub fn write_route(&mut self, route: &TableRoute) -> io::Result<()> {
        let msg = RouteNetlinkMessage::NewRoute(route_message(route));
        self.0.change(msg, NLM_F_CREATE | NLM_F_REPLACE)
    }

    pub fn delete_route(&mut self, route: &TableRoute) -> io::Result<()> {
        let mut m = route_message(route);
        // Whatever its type and scope (as `ip route del` does): a stray route of the range goes.
        m.header.kind = RouteType::Unspec;
        m.header.scope = RouteScope::NoWhere;
        let msg = RouteNetlinkMessage::DelRoute(m);
        ignore_missing(self.0.change(msg, 0))
    }
}

/// Something already gone is deleted.
fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => Ok(()),
        r => r,
    }
}

fn parse_rule(m: &RuleMessage, v4: bool) -> Option<Rule> {
    if m.header.family != family(v4) {
        return None;
    }
    let (mut priority, mut table) = (0, u32::from(m.header.table));
    let (mut source, mut destination) = (None, None);
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Source(s) => source = net(*s, m.header.src_len),
            RuleAttribute::Destination(d) => destination = net(*d, m.header.dst_len),
            _ => {}
        }
    }
    // A rule of another shape in the range (an action that is not a lookup) is still ours to
    // remove: it comes back with table 0, which no plan asks for.
    if m.header.action != RuleAction::ToTable {
        table = 0;
    }
    Some(Rule {
        priority,
        v4,
        source,
        destination,
        table,
    })
}

fn rule_message(rule: &Rule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header = RuleHeader {
        family: family(rule.v4),
        dst_len: rule.destination.map_or(0, |d| d.prefix_len()),
        src_len: rule.source.map_or(0, |s| s.prefix_len()),
        table: header_table(rule.table),
        action: RuleAction::ToTable,
        ..RuleHeader::default()
    };
    m.attributes.push(RuleAttribute::Priority(rule.priority));
    m.attributes.push(RuleAttribute::Table(rule.table));
    if let Some(s) = rule.source {
        m.attributes.push(RuleAttribute::Source(s.addr()));
    }
    if let Some(d) = rule.destination {
        m.attributes.push(RuleAttribute::Destination(d.addr()));
    }
    m
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn parse_route(m: &RouteMessage, v4: bool) -> Option<TableRoute> {
    if m.header.address_family != family(v4) {
        return None;
    }
    let unspecified: IpAddr = if v4 {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let mut table = u32::from(m.header.table);
    let (mut dst, mut via, mut oif, mut metric) = (unspecified, None, None, 0);
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Destination(d) => dst = ip_of(d)?,
            RouteAttribute::Gateway(g) => via = ip_of(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let unreachable = m.header.kind == RouteType::Unreachable;
    Some(TableRoute {
        table,
        destination: net(dst, m.header.destination_prefix_length)?,
        metric,
        via,
        // IPv6 reports a reject route on `lo`; it has no device of its own.
        oif: oif.filter(|_| !unreachable),
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        unreachable,
    })
}

fn route_message(route: &TableRoute) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(matches!(route.destination, IpNet::V4(_)));
    m.header.destination_prefix_length = route.destination.prefix_len();
    m.header.table = header_table(route.table);
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = RouteScope::Universe;
    m.header.kind = if route.unreachable {
        RouteType::Unreachable
    } else {
        RouteType::Unicast
    };
    if route.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    m.attributes.push(RouteAttribute::Table(route.table));
    if route.metric > 0 {
        m.attributes.push(RouteAttribute::Priority(route.metric));
    }
    if route.destination.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(route.destination.addr().into()));
    }
    if let Some(via) = route.via {
        m.attributes.push(RouteAttribute::Gateway(via.into()));
    }
    if let Some(oif) = route.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_back_as_written() {
        let rules = [
            Rule {
                priority: 20001,
                v4: true,
                source: Some("10.244.1.10/32".parse().unwrap()),
                destination: None,
                table: 20000,
            },
            Rule {
                priority: 20002,
                v4: false,
                source: None,
                destination: Some("fd00::/48".parse().unwrap()),
                table: 254,
            },
        ];
        for rule in rules {
            let m = rule_message(&rule);
            // Tables past 255 travel in the attribute only.
            let in_header = if rule.table <= 255 { rule.table } else { 0 };
            assert_eq!(u32::from(m.header.table), in_header);
            assert_eq!(parse_rule(&m, rule.v4), Some(rule.clone()));
            assert_eq!(parse_rule(&m, !rule.v4), None, "other family");
        }
    }

    #[test]
    fn routes_read_back_as_written() {
        let gateway = TableRoute {
            table: 20000,
            destination: "::/0".parse().unwrap(),
            metric: 1,
            via: Some("fe80::a:1".parse().unwrap()),
            oif: Some(3),
            onlink: false,
            unreachable: false,
        };
        let fallback = TableRoute {
            metric: u32::MAX,
            via: None,
            oif: None,
            unreachable: true,
            ..gateway.clone()
        };
        let v4 = TableRoute {
            destination: "198.51.100.0/24".parse().unwrap(),
            via: Some("169.254.16.1".parse().unwrap()),
            onlink: true,
            ..gateway.clone()
        };
        for route in [gateway, fallback, v4] {
            let m = route_message(&route);
            let v4 = matches!(route.destination, IpNet::V4(_));
            assert_eq!(parse_route(&m, v4), Some(route.clone()));
        }
    }
}
