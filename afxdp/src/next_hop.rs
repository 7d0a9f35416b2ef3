//! Where a forwarded packet goes: the route the kernel would take for it (looked up as for a
//! forwarded packet, with the ingress interface), the neighbour's MAC, and the egress link's MAC
//! and MTU, all from rtnetlink, cached per destination so a hit costs one hash lookup.
//!
//! The cache follows the kernel's tables through a shared epoch the daemon bumps on every
//! link, neighbour, address and route change, and never serves a destination's entry older than
//! ~2 s (the rule the XDP program's cached next hops follow, [`portcullis_common::hop_fresh`]),
//! nor a link or neighbour answer older than 1 s (destinations share them), so a change the
//! daemon missed is still followed within ~3 s.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use ahash::AHashMap;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use portcullis_common::{hop_fresh, hop_stamp};
use portcullis_netlink::Rtnl;

/// How long a negative answer (no route, neighbour not resolved) is kept: short, since the
/// kernel path is resolving the neighbour meanwhile and its answer should be taken up soon
/// even if the epoch bump for it is late.
const NEGATIVE_TTL_NS: u64 = 100_000_000;

/// Past this many destinations the cache starts over, so random destinations cannot grow it
/// without bound.
const MAX_ENTRIES: usize = 1 << 16;

/// The next hop of a forwarded frame: what the rewrite writes into its Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    /// Egress interface.
    pub ifindex: u32,
    /// The neighbour's MAC (the gateway's, or the destination's when on-link).
    pub dmac: [u8; 6],
    /// The egress link's MAC.
    pub smac: [u8; 6],
    /// The route's MTU metric if set, else the egress link's MTU.
    pub mtu: u32,
}

struct Cached {
    hop: Option<Hop>,
    epoch: u32,
    at_ns: u64,
}

impl Cached {
    fn fresh(&self, epoch: u32, now_ns: u64) -> bool {
        match self.hop {
            Some(_) => hop_fresh(self.epoch, hop_stamp(self.at_ns), epoch, now_ns),
            None => self.epoch == epoch && now_ns.saturating_sub(self.at_ns) < NEGATIVE_TTL_NS,
        }
    }
}

/// Answers kept for at most [`RECENT_NS`] and until the epoch moves: links (MAC, MTU) and
/// neighbours, which many destinations share (every destination behind one router has the same
/// neighbour), so a destination the cache has not seen costs one route lookup, not three.
struct Recent<K, V> {
    entries: AHashMap<K, (V, u64)>,
}

/// How long a link or neighbour answer is used (under the ~2 s of a destination's).
const RECENT_NS: u64 = 1_000_000_000;

impl<K: std::hash::Hash + Eq, V: Copy> Recent<K, V> {
    fn new() -> Self {
        Recent {
            entries: AHashMap::new(),
        }
    }

    fn get(&self, key: &K, now_ns: u64) -> Option<V> {
        let (value, at) = self.entries.get(key)?;
        (now_ns.saturating_sub(*at) < RECENT_NS).then_some(*value)
    }

    fn put(&mut self, key: K, value: V, now_ns: u64) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert(key, (value, now_ns));
    }
}

/// Next-hop resolution for one engine thread: its own netlink socket and caches.
pub struct NextHops {
    rtnl: Rtnl,
    epoch: Arc<AtomicU32>,
    seen_epoch: u32,
    cache: AHashMap<[u8; 16], Cached>,
    links: Recent<u32, ([u8; 6], u32)>,
    neighbours: Recent<(u32, IpAddr), [u8; 6]>,
}

impl NextHops {
    /// `epoch` is bumped by the daemon on every netlink link/neighbour/address/route change.
    pub fn new(epoch: Arc<AtomicU32>) -> io::Result<NextHops> {
        let seen_epoch = epoch.load(Ordering::Acquire);
        Ok(NextHops {
            rtnl: Rtnl::new()?,
            epoch,
            seen_epoch,
            cache: AHashMap::new(),
            links: Recent::new(),
            neighbours: Recent::new(),
        })
    }

    /// The next hop of a packet from `src` to `dst` (IPv4-mapped `::ffff:a.b.c.d` or IPv6,
    /// network order) that arrived on `ingress_ifindex`, or `None` when the kernel must handle
    /// it: no route, a local, broadcast, multicast or unreachable route, or a neighbour not
    /// resolved. The source is part of the lookup (the kernel's forwarding lookup needs one, and
    /// reverse-path filtering judges it) but not of the cache key: results are per destination.
    pub fn resolve(
        &mut self,
        src: &[u8; 16],
        dst: &[u8; 16],
        ingress_ifindex: u32,
        now_ns: u64,
    ) -> Option<Hop> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if epoch != self.seen_epoch {
            self.cache.clear();
            self.links.entries.clear();
            self.neighbours.entries.clear();
            self.seen_epoch = epoch;
        }
        if let Some(hit) = self.cache.get(dst) {
            if hit.fresh(epoch, now_ns) {
                return hit.hop;
            }
        }
        let hop = match self.lookup(ip(src), ip(dst), ingress_ifindex, now_ns) {
            Ok(hop) => hop,
            Err(e) => {
                tracing::debug!(dst = %ip(dst), ingress_ifindex, "no next hop: {e}");
                None
            }
        };
        if self.cache.len() >= MAX_ENTRIES {
            self.cache.clear();
        }
        let entry = Cached {
            hop,
            epoch,
            at_ns: now_ns,
        };
        self.cache.insert(*dst, entry);
        hop
    }

    fn lookup(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        iif: u32,
        now_ns: u64,
    ) -> io::Result<Option<Hop>> {
        let (family, len) = match dst {
            IpAddr::V4(_) => (AddressFamily::Inet, 32),
            IpAddr::V6(_) => (AddressFamily::Inet6, 128),
        };
        if src.is_ipv4() != dst.is_ipv4() {
            return Ok(None);
        }
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        req.header.destination_prefix_length = len;
        req.header.source_prefix_length = len;
        req.attributes = vec![
            RouteAttribute::Destination(route_addr(dst)),
            RouteAttribute::Source(route_addr(src)),
            RouteAttribute::Iif(iif),
        ];
        let RouteNetlinkMessage::NewRoute(route) =
            self.rtnl.request(RouteNetlinkMessage::GetRoute(req))?
        else {
            return Ok(None);
        };
        if route.header.kind != RouteType::Unicast {
            return Ok(None);
        }
        let (mut oif, mut gateway, mut route_mtu) = (None, None, None);
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
                RouteAttribute::Metrics(metrics) => {
                    route_mtu = metrics.iter().find_map(|m| match m {
                        RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
                        _ => None,
                    })
                }
                _ => {}
            }
        }
        let Some(oif) = oif else { return Ok(None) };
        let neighbour = (oif, gateway.unwrap_or(dst));
        let dmac = match self.neighbours.get(&neighbour, now_ns) {
            Some(mac) => mac,
            None => {
                let Some(mac) = self.neighbour(neighbour.0, neighbour.1)? else {
                    return Ok(None);
                };
                self.neighbours.put(neighbour, mac, now_ns);
                mac
            }
        };
        let (smac, link_mtu) = match self.links.get(&oif, now_ns) {
            Some(link) => link,
            None => {
                let link = self.link(oif)?;
                self.links.put(oif, link, now_ns);
                link
            }
        };
        Ok(Some(Hop {
            ifindex: oif,
            dmac,
            smac,
            mtu: route_mtu.unwrap_or(link_mtu),
        }))
    }

    /// The neighbour's MAC when its entry is usable (a resolution under way or failed is not).
    fn neighbour(&mut self, ifindex: u32, addr: IpAddr) -> io::Result<Option<[u8; 6]>> {
        let mut req = NeighbourMessage::default();
        req.header.family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        req.header.ifindex = ifindex;
        req.attributes = vec![NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        })];
        let reply = match self.rtnl.request(RouteNetlinkMessage::GetNeighbour(req)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            reply => reply?,
        };
        let RouteNetlinkMessage::NewNeighbour(neigh) = reply else {
            return Ok(None);
        };
        let usable = matches!(
            neigh.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        Ok(neigh.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) if usable => mac.as_slice().try_into().ok(),
            _ => None,
        }))
    }

    /// The link's MAC and MTU.
    fn link(&mut self, ifindex: u32) -> io::Result<([u8; 6], u32)> {
        let mut req = LinkMessage::default();
        req.header.index = ifindex;
        let RouteNetlinkMessage::NewLink(link) =
            self.rtnl.request(RouteNetlinkMessage::GetLink(req))?
        else {
            return Err(io::Error::other("RTM_GETLINK: unexpected reply"));
        };
        let (mut mac, mut mtu) = (None, None);
        for attr in &link.attributes {
            match attr {
                LinkAttribute::Address(a) => mac = a.as_slice().try_into().ok(),
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                _ => {}
            }
        }
        match (mac, mtu) {
            (Some(mac), Some(mtu)) => Ok((mac, mtu)),
            _ => Err(io::Error::other(format!(
                "link {ifindex} has no Ethernet address or MTU"
            ))),
        }
    }
}

/// An address in the engine's 16-byte form: IPv4-mapped or IPv6.
fn ip(addr: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn route_addr(addr: IpAddr) -> RouteAddress {
    match addr {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// The 16-byte form of an IPv4 address (`::ffff:a.b.c.d`).
pub fn mapped(addr: Ipv4Addr) -> [u8; 16] {
    addr.to_ipv6_mapped().octets()
}
