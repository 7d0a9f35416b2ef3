//! Finds the host side of each local pod's interface, whatever the CNI layout:
//! - a routed veth: the route to the pod names it (ptp, Calico, Cilium, kindnet);
//! - a veth enslaved to a bridge: the route names the bridge (the bridge plugin, flannel,
//!   kubenet), so the pod's network namespace is found (named netns files and every process's
//!   `/proc/PID/ns/net`) and the veth whose peer is the pod interface holding the address taken.
//!
//! Other layouts have no per-pod host interface to attach to (macvlan/ipvlan pods talk past the
//! host's stack; OVS ports are not veths of this namespace): such a pod is reported as not
//! enforced, never silently skipped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::routes::DirectRoutes;

/// One interface of a network namespace, as `ip -j -d link/addr show` reports it.
#[derive(Debug, Deserialize)]
struct IpLink {
    ifindex: u32,
    ifname: String,
    /// For a veth: its peer's index (in the peer's namespace).
    link_index: Option<u32>,
    linkinfo: Option<LinkInfo>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct LinkInfo {
    info_kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    local: Option<IpAddr>,
}

impl IpLink {
    fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }
}

/// Runs `ip -j ARGS` (in `netns` when given) and parses its JSON.
pub(super) fn ip_json<T: DeserializeOwned>(netns: Option<&Path>, args: &[&str]) -> Result<Vec<T>> {
    let mut cmd = match netns {
        Some(path) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", path.display())).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    let out = cmd
        .arg("-j")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip -j {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing the output of ip -j")
}

/// Where a pod address was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FoundBy {
    /// The route to the pod names its veth.
    Route,
    /// The veth whose peer holds the address in the pod's network namespace.
    Netns,
    /// The CNI plugin named it when the pod was set up.
    Cni,
}

/// Where a pod's interface is, or why it was not found.
pub type Found = Result<(String, FoundBy)>;

/// A network namespace seen in a scan: the (interface index, peer index) of every address in it.
type NetnsAddrs = HashMap<IpAddr, (u32, Option<u32>)>;

#[derive(Default)]
pub struct Discovery {
    /// Pod address → host interface, while that interface exists.
    cache: HashMap<IpAddr, (String, FoundBy)>,
    /// Netns (device, inode) → its addresses; only namespaces that had addresses are kept (one
    /// still being set up is looked at again).
    scanned: HashMap<(u64, u64), NetnsAddrs>,
}

impl Discovery {
    /// For each pod (addresses `ips`): its host-side interface in this network namespace, or why
    /// there is none. Pods without a direct route here are looked for in other namespaces only
    /// with `scan_unrouted` (they are known to be local).
    pub fn find_all<'a, K>(
        &mut self,
        pods: impl Iterator<Item = (K, &'a [IpAddr])>,
        scan_unrouted: bool,
    ) -> Result<Vec<(K, Found)>> {
        let links: Vec<IpLink> = ip_json(None, &["-d", "link", "show"])?;
        let mut routes = None;
        pods.map(|(k, ips)| {
            let found = self.find_with(ips, &links, &mut routes, scan_unrouted)?;
            Ok((k, found))
        })
        .collect()
    }

    /// Remembers an interface the CNI plugin named for these addresses.
    pub fn remember(&mut self, ips: &[IpAddr], ifname: &str) {
        for ip in ips {
            self.cache.insert(*ip, (ifname.to_owned(), FoundBy::Cni));
        }
    }

    /// Where the pod with addresses `ips` is; `routes` is read on the first pod the cache does not
    /// know. The outer error is a failure to read the routes, the inner one why this pod was not
    /// found.
    fn find_with(
        &mut self,
        ips: &[IpAddr],
        links: &[IpLink],
        routes: &mut Option<DirectRoutes>,
        scan_unrouted: bool,
    ) -> Result<Found> {
        let veth = |name: &str| {
            links
                .iter()
                .any(|l| l.ifname == name && l.kind() == Some("veth"))
        };
        for ip in ips {
            if let Some((name, by)) = self.cache.get(ip) {
                if veth(name) {
                    return Ok(Ok((name.clone(), *by)));
                }
                self.cache.remove(ip);
            }
        }
        let routes = match routes {
            Some(r) => r,
            None => routes.insert(DirectRoutes::read()?),
        };
        let mut routed_to = None;
        for ip in ips {
            if let Some(dev) = routes.device(*ip) {
                if veth(dev) {
                    self.cache.insert(*ip, (dev.to_owned(), FoundBy::Route));
                    return Ok(Ok((dev.to_owned(), FoundBy::Route)));
                }
                routed_to = Some(dev.to_owned());
            }
        }
        if routed_to.is_none() && !scan_unrouted {
            return Ok(Err(anyhow::anyhow!(
                "not routed directly to an interface of this node"
            )));
        }
        Ok(match self.find_in_namespaces(ips, links) {
            Ok(Some(found)) => Ok(found),
            Ok(None) => Err(not_found(routed_to)),
            Err(e) => Err(e),
        })
    }

    /// Looks for the addresses in every other network namespace of the machine; returns the veth
    /// of this namespace whose peer holds one of them.
    fn find_in_namespaces(
        &mut self,
        ips: &[IpAddr],
        links: &[IpLink],
    ) -> Result<Option<(String, FoundBy)>> {
        let mut seen = std::collections::HashSet::new();
        for (path, id) in other_namespaces()? {
            seen.insert(id);
            if let std::collections::hash_map::Entry::Vacant(entry) = self.scanned.entry(id) {
                let Some(addrs) = addresses_in(&path) else {
                    continue;
                };
                entry.insert(addrs);
            }
            if let Some(host) = host_veth(links, &self.scanned[&id], ips) {
                for ip in ips {
                    self.cache
                        .insert(*ip, (host.ifname.clone(), FoundBy::Netns));
                }
                return Ok(Some((host.ifname.clone(), FoundBy::Netns)));
            }
        }
        // Namespaces that are gone are forgotten (their inode may be reused).
        self.scanned.retain(|id, _| seen.contains(id));
        Ok(None)
    }
}

/// The network namespace of a pod of this node: the one holding one of `ips` on an interface
/// whose veth peer is in this namespace. Returns its file and the host-side veth.
pub(crate) fn pod_netns(ips: &[IpAddr]) -> Result<Option<(PathBuf, String)>> {
    let links: Vec<IpLink> = ip_json(None, &["-d", "link", "show"])?;
    for (path, _) in other_namespaces()? {
        let Some(addrs) = addresses_in(&path) else {
            continue;
        };
        if let Some(host) = host_veth(&links, &addrs, ips) {
            return Ok(Some((path, host.ifname.clone())));
        }
    }
    Ok(None)
}

/// Every network namespace of the machine but this one, once each: a file holding it and its
/// (device, inode).
fn other_namespaces() -> Result<impl Iterator<Item = (PathBuf, (u64, u64))>> {
    let here = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let mut seen = std::collections::HashSet::from([(here.dev(), here.ino())]);
    Ok(netns_candidates().into_iter().filter_map(move |path| {
        let meta = std::fs::metadata(&path).ok()?;
        let id = (meta.dev(), meta.ino());
        seen.insert(id).then_some((path, id))
    }))
}

/// The non-loopback addresses of the namespace at `path`; `None` when it cannot be read or has
/// none (one still being set up is looked at again later).
fn addresses_in(path: &Path) -> Option<NetnsAddrs> {
    let pod_links = ip_json::<IpLink>(Some(path), &["addr", "show"]).ok()?;
    let addrs: NetnsAddrs = pod_links
        .iter()
        .flat_map(|l| {
            l.addr_info
                .iter()
                .filter_map(|a| a.local)
                .filter(|a| !a.is_loopback())
                .map(|a| (a, (l.ifindex, l.link_index)))
        })
        .collect();
    (!addrs.is_empty()).then_some(addrs)
}

/// The veth of this namespace (`links`) whose peer is the interface holding one of `ips` in a
/// namespace with addresses `addrs`.
fn host_veth<'a>(links: &'a [IpLink], addrs: &NetnsAddrs, ips: &[IpAddr]) -> Option<&'a IpLink> {
    ips.iter().find_map(|ip| {
        let (pod_ifindex, Some(peer)) = addrs.get(ip)? else {
            return None;
        };
        links.iter().find(|l| {
            l.ifindex == *peer && l.kind() == Some("veth") && l.link_index == Some(*pod_ifindex)
        })
    })
}

/// The unicast addresses of this network namespace's own interfaces (loopback and link-local
/// left out): the node's addresses when the daemon runs on the host network.
pub fn host_addresses() -> Result<Vec<IpAddr>> {
    let links: Vec<IpLink> = ip_json(None, &["addr", "show"])?;
    Ok(links
        .iter()
        .flat_map(|l| l.addr_info.iter().filter_map(|a| a.local))
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
        })
        .collect())
}

/// Whether this network namespace has an interface `name`.
pub fn exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Those of `names` that are veths of this network namespace.
pub fn veths(names: &[String]) -> Result<Vec<String>> {
    let links: Vec<IpLink> = ip_json(None, &["-d", "link", "show"])?;
    Ok(names
        .iter()
        .filter(|n| {
            links
                .iter()
                .any(|l| &l.ifname == *n && l.kind() == Some("veth"))
        })
        .cloned()
        .collect())
}

/// Every network namespace file worth looking in: named namespaces (containerd, CRI-O and
/// `ip netns` keep them in /run/netns) and the namespace of every process (a pod's sandbox
/// process holds it; the daemon needs the host's PID namespace to see them).
fn netns_candidates() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        paths.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        paths.extend(
            dir.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    paths
}

/// Why a pod routed to `routed_to` (or not routed here) has no interface to attach to.
fn not_found(routed_to: Option<String>) -> anyhow::Error {
    match routed_to {
        Some(dev) => anyhow::anyhow!(
            "routed to {dev}, and no veth of this node has the pod's interface as its peer \
             (macvlan/ipvlan/OVS layouts have no per-pod host interface)"
        ),
        None => anyhow::anyhow!("no direct route to the pod and no veth peer holds its address"),
    }
}
