//! The main routing table of this network namespace, read once per discovery pass (one `ip`
//! run for every pod, not one per pod address) and matched here: the interface a pod address is
//! routed to directly (no next hop), by longest prefix.

use std::net::IpAddr;

use anyhow::Result;
use ipnet::IpNet;
use serde::Deserialize;

use super::discover::ip_json;

#[derive(Deserialize)]
struct Route {
    /// "default", an address or a prefix.
    dst: String,
    dev: Option<String>,
    gateway: Option<String>,
    /// Present for non-unicast routes (unreachable, blackhole, ...).
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Routes of the main table: prefix → the device when the route is direct, `None` when it goes
/// through a next hop (or nowhere).
pub struct DirectRoutes(Vec<(IpNet, Option<String>)>);

impl DirectRoutes {
    pub fn read() -> Result<DirectRoutes> {
        let mut routes = Vec::new();
        for (family, default) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
            for r in ip_json::<Route>(None, &[family, "route", "show", "table", "main"])? {
                let dst = if r.dst == "default" { default } else { &r.dst };
                let Some(net) = parse_dst(dst) else {
                    continue;
                };
                let direct = r.gateway.is_none() && r.kind.is_none();
                routes.push((net, r.dev.filter(|_| direct)));
            }
        }
        Ok(DirectRoutes(routes))
    }

    /// The interface `ip` is routed to directly, if any (the longest matching prefix decides).
    pub fn device(&self, ip: IpAddr) -> Option<&str> {
        (self.0.iter())
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .and_then(|(_, dev)| dev.as_deref())
    }
}

fn parse_dst(dst: &str) -> Option<IpNet> {
    dst.parse::<IpNet>()
        .ok()
        .or_else(|| dst.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_direct_prefix_decides() {
        let routes = DirectRoutes(vec![
            ("0.0.0.0/0".parse().unwrap(), None),
            ("10.88.0.0/16".parse().unwrap(), Some("cni0".into())),
            ("10.88.0.5/32".parse().unwrap(), Some("veth5".into())),
            ("10.99.0.0/16".parse().unwrap(), None),
            ("fd00::/64".parse().unwrap(), Some("cni0".into())),
        ]);
        let dev = |ip: &str| routes.device(ip.parse().unwrap());
        assert_eq!(dev("10.88.0.5"), Some("veth5"));
        assert_eq!(dev("10.88.0.6"), Some("cni0"));
        assert_eq!(dev("10.99.0.1"), None);
        assert_eq!(dev("192.0.2.1"), None);
        assert_eq!(dev("fd00::7"), Some("cni0"));
        assert_eq!(parse_dst("10.0.0.1"), Some("10.0.0.1/32".parse().unwrap()));
    }
}
