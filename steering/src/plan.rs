//! Pure planning: what the kernel should hold for a set of steering routes, and the changes that
//! take what it holds now there without a moment where steered traffic falls through to `main`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{SteerRoute, SteeringError, PRIORITY_SPAN, TABLE_SPAN};

/// `lookup main`.
pub(crate) const MAIN_TABLE: u32 = 254;

/// A policy routing rule `[from SOURCE] [to DESTINATION] lookup TABLE` at `priority`. A missing
/// selector matches everything of `v4`'s family (the kernel omits a /0 selector).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Rule {
    pub priority: u32,
    pub v4: bool,
    pub source: Option<IpNet>,
    pub destination: Option<IpNet>,
    pub table: u32,
}

/// A route of one of the steering tables: the default route towards a gateway, the unreachable
/// default behind it, or anything else found there (which a reconcile removes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TableRoute {
    pub table: u32,
    pub destination: IpNet,
    pub metric: u32,
    pub via: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub unreachable: bool,
}

/// The gateway route's metric (explicit: IPv6 would turn 0 into 1024).
const VIA_METRIC: u32 = 1;
/// The unreachable default's metric: used only when the gateway route is gone (its device was
/// deleted, say), so steered traffic fails closed instead of falling through to `main`.
const FALLBACK_METRIC: u32 = u32::MAX;

/// What is installed in the steering ranges: every rule whose priority is in the priority range
/// and every route of a table in the table range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Installed {
    pub rules: Vec<Rule>,
    pub routes: Vec<TableRoute>,
}

/// The ranges and the uplink, resolved to an interface index.
#[derive(Clone, Debug)]
pub(crate) struct Layout<'a> {
    pub cluster_cidrs: &'a [IpNet],
    pub uplink: Option<(&'a str, u32)>,
    pub table_base: u32,
    pub priority_base: u32,
}

/// The changes of one reconcile, in the order they must be made: gateway routes first (so no rule
/// ever points at an empty table), then new rules, then stale rules go, then stale routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub write_routes: Vec<TableRoute>,
    pub add_rules: Vec<Rule>,
    pub delete_rules: Vec<Rule>,
    pub delete_routes: Vec<TableRoute>,
    /// The state once they are made.
    pub target: Installed,
}

fn family_of(net: &IpNet) -> bool {
    matches!(net, IpNet::V4(_))
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// A /0 selector is stored as none, as the kernel reports it.
fn selector(net: IpNet) -> Option<IpNet> {
    (net.prefix_len() > 0).then(|| net.trunc())
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The default route of `via`'s table. With an uplink: out of it, and on-link unless the via is
/// an IPv6 link-local address (always on-link): the design requires the gateway to be a
/// neighbour on the node network. Without: the kernel finds the device from the connected route.
fn gateway_route(
    table: u32,
    via: IpAddr,
    uplink: Option<(&str, u32)>,
) -> Result<TableRoute, SteeringError> {
    let destination = match via {
        IpAddr::V4(_) => "0.0.0.0/0".parse::<IpNet>(),
        IpAddr::V6(_) => "::/0".parse::<IpNet>(),
    }
    .expect("a default prefix parses");
    let oif = match uplink {
        Some((_, index)) => Some(index),
        None if is_link_local(via) => return Err(SteeringError::LinkLocalWithoutUplink { via }),
        None => None,
    };
    Ok(TableRoute {
        table,
        destination,
        metric: VIA_METRIC,
        via: Some(via),
        oif,
        onlink: oif.is_some() && !(via.is_ipv6() && is_link_local(via)),
        unreachable: false,
    })
}

/// The unreachable default behind `gateway`'s route in its table.
fn fallback_route(gateway: &TableRoute) -> TableRoute {
    TableRoute {
        metric: FALLBACK_METRIC,
        via: None,
        oif: None,
        onlink: false,
        unreachable: true,
        ..gateway.clone()
    }
}

/// Checks one route: source, destination and via of one family, the source a host address.
fn check(route: &SteerRoute) -> Result<(), SteeringError> {
    let v4 = route.source.is_ipv4();
    if family_of(&route.destination) != v4 || route.via.is_ipv4() != v4 {
        return Err(SteeringError::MixedFamilies {
            route: route.to_string(),
        });
    }
    Ok(())
}

/// The table of every distinct via: the table that already routes to it when there is one (so a
/// restart or an unchanged via touches nothing), else the lowest table of the range that holds
/// nothing now (so no stale rule sees its table change under it).
fn assign_tables(
    layout: &Layout<'_>,
    vias: &BTreeSet<IpAddr>,
    installed: &Installed,
) -> Result<BTreeMap<IpAddr, u32>, SteeringError> {
    let mut by_via: BTreeMap<IpAddr, u32> = BTreeMap::new();
    for r in &installed.routes {
        if let Some(via) = r.via.filter(|v| vias.contains(v)) {
            if r.destination.prefix_len() == 0 {
                let t = by_via.entry(via).or_insert(r.table);
                *t = (*t).min(r.table);
            }
        }
    }
    let occupied: BTreeSet<u32> = installed.routes.iter().map(|r| r.table).collect();
    let mut free = (layout.table_base..layout.table_base + TABLE_SPAN)
        .filter(|t| !occupied.contains(t) && !by_via.values().any(|u| u == t));
    let mut tables = BTreeMap::new();
    for via in vias {
        let table = match by_via.get(via) {
            Some(t) => *t,
            None => free.next().ok_or(SteeringError::TablesExhausted {
                vias: vias.len(),
                span: TABLE_SPAN,
            })?,
        };
        tables.insert(*via, table);
    }
    Ok(tables)
}

/// The rules and table routes `routes` need, and the changes from `installed` to them.
pub(crate) fn plan(
    layout: &Layout<'_>,
    routes: &[SteerRoute],
    installed: &Installed,
) -> Result<Changes, SteeringError> {
    let mut seen = BTreeSet::new();
    let mut unique = Vec::new();
    for r in routes {
        check(r)?;
        if seen.insert((r.source, r.destination.trunc(), r.via)) {
            unique.push(r);
        }
    }
    let cluster: BTreeSet<IpNet> = layout.cluster_cidrs.iter().map(|c| c.trunc()).collect();
    let count = cluster.len() + unique.len();
    if count > PRIORITY_SPAN as usize {
        return Err(SteeringError::RulesExhausted {
            rules: count,
            span: PRIORITY_SPAN,
        });
    }
    let vias: BTreeSet<IpAddr> = unique.iter().map(|r| r.via).collect();
    let tables = assign_tables(layout, &vias, installed)?;

    let mut priority = layout.priority_base..;
    let mut rules: Vec<Rule> = cluster
        .iter()
        .map(|c| Rule {
            priority: priority.next().expect("unbounded"),
            v4: family_of(c),
            source: None,
            destination: selector(*c),
            table: MAIN_TABLE,
        })
        .collect();
    rules.extend(unique.iter().map(|r| Rule {
        priority: priority.next().expect("unbounded"),
        v4: r.source.is_ipv4(),
        source: Some(host(r.source)),
        destination: selector(r.destination),
        table: tables[&r.via],
    }));
    let mut gateway_routes = Vec::new();
    for (via, table) in &tables {
        let route = gateway_route(*table, *via, layout.uplink)?;
        gateway_routes.push(fallback_route(&route));
        gateway_routes.push(route);
    }

    let have_rules: BTreeSet<&Rule> = installed.rules.iter().collect();
    let want_rules: BTreeSet<&Rule> = rules.iter().collect();
    let have_routes: BTreeSet<&TableRoute> = installed.routes.iter().collect();
    let want_routes: BTreeSet<&TableRoute> = gateway_routes.iter().collect();
    // A default route that is not exactly the wanted one is replaced in place (one atomic
    // write); any other route of the range is deleted once no rule needs it.
    let replaced: BTreeSet<(u32, IpNet, u32)> = gateway_routes
        .iter()
        .map(|r| (r.table, r.destination, r.metric))
        .collect();
    Ok(Changes {
        write_routes: gateway_routes
            .iter()
            .filter(|r| !have_routes.contains(r))
            .cloned()
            .collect(),
        add_rules: rules
            .iter()
            .filter(|r| !have_rules.contains(r))
            .cloned()
            .collect(),
        delete_rules: installed
            .rules
            .iter()
            .filter(|r| !want_rules.contains(r))
            .cloned()
            .collect(),
        delete_routes: installed
            .routes
            .iter()
            .filter(|r| {
                !want_routes.contains(r) && !replaced.contains(&(r.table, r.destination, r.metric))
            })
            .cloned()
            .collect(),
        target: Installed {
            rules,
            routes: gateway_routes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(source: &str, destination: &str, via: &str) -> SteerRoute {
        SteerRoute {
            source: ip(source),
            destination: net(destination),
            via: ip(via),
        }
    }

    fn layout<'a>(cluster: &'a [IpNet], uplink: Option<(&'a str, u32)>) -> Layout<'a> {
        Layout {
            cluster_cidrs: cluster,
            uplink,
            table_base: 1000,
            priority_base: 500,
        }
    }

    /// Applies `changes` to `installed` the way the kernel would.
    fn applied(installed: &Installed, changes: &Changes) -> Installed {
        let mut rules: Vec<Rule> = installed
            .rules
            .iter()
            .filter(|r| !changes.delete_rules.contains(r))
            .cloned()
            .chain(changes.add_rules.iter().cloned())
            .collect();
        let mut routes: Vec<TableRoute> = installed
            .routes
            .iter()
            .filter(|r| {
                !changes.delete_routes.contains(r)
                    && !changes.write_routes.iter().any(|w| {
                        (w.table, w.destination, w.metric) == (r.table, r.destination, r.metric)
                    })
            })
            .cloned()
            .chain(changes.write_routes.iter().cloned())
            .collect();
        rules.sort();
        routes.sort();
        Installed { rules, routes }
    }

    fn sorted(mut i: Installed) -> Installed {
        i.rules.sort();
        i.routes.sort();
        i
    }

    #[test]
    fn cluster_rules_come_first_then_one_rule_per_route_in_order() {
        let cluster = [net("10.244.0.0/16"), net("fd00::/48")];
        let routes = [
            route("10.244.1.10", "0.0.0.0/0", "192.168.0.2"),
            route("fd00::10", "::/0", "fe80::a:1"),
            route("10.244.1.11", "203.0.113.0/24", "192.168.0.3"),
        ];
        let c = plan(
            &layout(&cluster, Some(("gw0", 7))),
            &routes,
            &Installed::default(),
        )
        .unwrap();
        let r = &c.target.rules;
        assert_eq!(r.len(), 5);
        assert_eq!(
            r[0],
            Rule {
                priority: 500,
                v4: true,
                source: None,
                destination: Some(net("10.244.0.0/16")),
                table: MAIN_TABLE
            }
        );
        assert_eq!(
            (r[1].priority, r[1].v4, r[1].table),
            (501, false, MAIN_TABLE)
        );
        // Vias get tables in address order: 192.168.0.2, 192.168.0.3, fe80::a:1.
        assert_eq!(
            r[2],
            Rule {
                priority: 502,
                v4: true,
                source: Some(net("10.244.1.10/32")),
                destination: None,
                table: 1000
            }
        );
        assert_eq!((r[3].source, r[3].table), (Some(net("fd00::10/128")), 1002));
        assert_eq!(r[4].destination, Some(net("203.0.113.0/24")));
        assert_eq!(r[4].table, 1001);
        assert_eq!(c.add_rules, c.target.rules);
        assert!(c.delete_rules.is_empty() && c.delete_routes.is_empty());
        let via = |t: u32| {
            c.write_routes
                .iter()
                .find(|r| r.table == t && !r.unreachable)
        };
        let v6 = via(1002).unwrap();
        assert_eq!(
            (v6.via, v6.oif, v6.onlink, v6.destination),
            (Some(ip("fe80::a:1")), Some(7), false, net("::/0"))
        );
        let v4 = via(1000).unwrap();
        assert_eq!((v4.oif, v4.onlink), (Some(7), true));
        // Every table fails closed behind its gateway route.
        assert_eq!(c.write_routes.len(), 6);
        for t in [1000, 1001, 1002] {
            let fallback = c
                .write_routes
                .iter()
                .find(|r| r.table == t && r.unreachable);
            let fallback = fallback.unwrap();
            assert_eq!((fallback.via, fallback.metric), (None, u32::MAX));
            assert!(fallback.metric > via(t).unwrap().metric);
        }
    }

    #[test]
    fn reapplying_the_same_routes_changes_nothing() {
        let cluster = [net("10.244.0.0/16")];
        let routes = [route("10.244.1.10", "0.0.0.0/0", "192.168.0.2")];
        let l = layout(&cluster, None);
        let first = plan(&l, &routes, &Installed::default()).unwrap();
        let now = applied(&Installed::default(), &first);
        assert_eq!(now, sorted(first.target.clone()));
        let again = plan(&l, &routes, &now).unwrap();
        assert!(again.write_routes.is_empty() && again.add_rules.is_empty());
        assert!(again.delete_rules.is_empty() && again.delete_routes.is_empty());
        let gateway = first.write_routes.iter().find(|r| !r.unreachable).unwrap();
        assert_eq!((gateway.oif, gateway.onlink), (None, false));
    }

    #[test]
    fn a_moved_via_gets_a_fresh_table_and_the_old_one_goes_after_the_rules() {
        let routes = [route("10.244.1.10", "0.0.0.0/0", "192.168.0.2")];
        let l = layout(&[], None);
        let before = applied(
            &Installed::default(),
            &plan(&l, &routes, &Installed::default()).unwrap(),
        );
        let moved = [route("10.244.1.10", "0.0.0.0/0", "192.168.0.3")];
        let c = plan(&l, &moved, &before).unwrap();
        // The new table is not the one the stale rule still points at.
        assert_eq!(c.write_routes.len(), 2);
        assert!(c.write_routes.iter().all(|r| r.table == 1001));
        assert_eq!(c.add_rules[0].table, 1001);
        assert_eq!(c.delete_rules, before.rules);
        assert_eq!(c.delete_routes, before.routes);
        assert_eq!(applied(&before, &c), sorted(c.target.clone()));
    }

    #[test]
    fn adopts_a_previous_runs_tables_and_removes_what_it_left_over() {
        let l = layout(&[], Some(("gw0", 3)));
        let kept = TableRoute {
            table: 1005,
            destination: net("0.0.0.0/0"),
            metric: VIA_METRIC,
            via: Some(ip("192.168.0.2")),
            oif: Some(3),
            onlink: true,
            unreachable: false,
        };
        let wrong_dev = TableRoute {
            table: 1006,
            destination: net("::/0"),
            via: Some(ip("fd00:1::2")),
            oif: Some(9),
            ..kept.clone()
        };
        let junk = TableRoute {
            table: 1007,
            destination: net("198.51.100.0/24"),
            metric: 0,
            via: None,
            oif: Some(3),
            onlink: false,
            unreachable: false,
        };
        let stray_rule = Rule {
            priority: 777,
            v4: true,
            source: Some(net("10.9.9.9/32")),
            destination: None,
            table: 1007,
        };
        let installed = Installed {
            rules: vec![stray_rule.clone()],
            routes: vec![
                kept.clone(),
                fallback_route(&kept),
                wrong_dev.clone(),
                junk.clone(),
            ],
        };
        let routes = [
            route("10.244.1.10", "0.0.0.0/0", "192.168.0.2"),
            route("fd00::10", "::/0", "fd00:1::2"),
        ];
        let c = plan(&l, &routes, &installed).unwrap();
        assert_eq!(c.target.rules[0].table, 1005);
        assert_eq!(c.target.rules[1].table, 1006);
        // 1006 is rewritten in place (dev changed) and gains its fallback; 1005 is untouched.
        let written: Vec<(u32, Option<u32>, bool)> = c
            .write_routes
            .iter()
            .map(|r| (r.table, r.oif, r.unreachable))
            .collect();
        assert_eq!(written, [(1006, None, true), (1006, Some(3), false)]);
        assert_eq!(c.delete_routes, vec![junk]);
        assert_eq!(c.delete_rules, vec![stray_rule]);
    }

    #[test]
    fn duplicates_collapse_and_bad_routes_are_named() {
        let l = layout(&[], None);
        let r = route("10.244.1.10", "0.0.0.0/0", "192.168.0.2");
        let c = plan(&l, &[r.clone(), r], &Installed::default()).unwrap();
        assert_eq!(c.target.rules.len(), 1);

        let mixed = route("10.244.1.10", "::/0", "192.168.0.2");
        let e = plan(&l, &[mixed], &Installed::default()).unwrap_err();
        assert!(matches!(e, SteeringError::MixedFamilies { .. }), "{e}");
        assert!(e.to_string().contains("10.244.1.10"), "{e}");

        let ll = route("fd00::10", "::/0", "fe80::a:1");
        let e = plan(&l, &[ll], &Installed::default()).unwrap_err();
        assert!(
            matches!(e, SteeringError::LinkLocalWithoutUplink { .. }),
            "{e}"
        );
    }

    #[test]
    fn ranges_are_bounded() {
        let l = layout(&[], None);
        let many: Vec<SteerRoute> = (0..=TABLE_SPAN)
            .map(|i| SteerRoute {
                source: ip("10.244.1.10"),
                destination: net("0.0.0.0/0"),
                via: IpAddr::from(std::net::Ipv4Addr::from(0xc0a8_0000 + i)),
            })
            .collect();
        let e = plan(&l, &many, &Installed::default()).unwrap_err();
        assert!(matches!(e, SteeringError::TablesExhausted { .. }), "{e}");

        let many: Vec<SteerRoute> = (0..=PRIORITY_SPAN)
            .map(|i| SteerRoute {
                source: IpAddr::from(std::net::Ipv4Addr::from(0x0af4_0000 + i)),
                destination: net("0.0.0.0/0"),
                via: ip("192.168.0.2"),
            })
            .collect();
        let e = plan(&l, &many, &Installed::default()).unwrap_err();
        assert!(matches!(e, SteeringError::RulesExhausted { .. }), "{e}");
    }
}
