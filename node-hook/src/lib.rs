//! User-space side of the Portcullis node hook: loads the tc programs, attaches them to the
//! host-side veth of each local pod as pods come and go, keeps the identity and policy tables in
//! step with compiled [`NodeTables`] through generation switches, pins maps and links so a restart
//! adopts the running state, collects expired flows, and reads counters and drop events.
//!
//! Per pod veth two programs run (TCX links on the tc/clsact hooks, see the README for why):
//! `portcullis_node_deliver` on **egress** (into the pod) decides pod-to-pod traffic after the
//! node's service translation; `portcullis_node_origin` on **ingress** (from the pod) records the
//! flows the pod opens so their replies match a flow.
//!
//! Update protocol ([`NodeHook::apply`]): two generations live side by side — identity and
//! endpoint keys carry the parity in a field, group and rule-set ids in [`GENERATION_ID_BIT`]. The
//! inactive one holds the tables of two applies ago and is brought to the new tables by a delta
//! (identities, groups and rule sets keep their ids across compiles, so only the entries a change
//! reaches are written); then one write of `CONFIG.generation` switches every CPU to it. A packet
//! sees either the whole old or the whole new policy.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{qdisc_add_clsact, SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use aya::util::KernelVersion;
use aya::Ebpf;
use ipnet::IpNet;
pub use portcullis_bpf::{generation_id, key_addr, DropEvents, GroupDrops};
use portcullis_bpf::{
    ifindex, ignore_missing, map_err, remove_pin, Delta, PolicyMaps, SharedTables,
};
pub use portcullis_common::flow_timeout_ns;
use portcullis_common::*;
use portcullis_policy::compile::node::NodeTables;
use tracing::{debug, info, warn};

/// The tc object built by `build.rs` from `node-hook/ebpf`.
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-node-ebpf"));

/// The object's name in error messages.
const OBJECT: &str = "node-hook";
const PROGRAM_DELIVER: &str = "portcullis_node_deliver";
const PROGRAM_ORIGIN: &str = "portcullis_node_origin";
const PROGRAM_PASS: &str = "tc_pass";

/// Every map of the programs; with a pin directory each is pinned there under its own name.
const MAP_NAMES: [&str; 12] = [
    "CONFIG",
    "HOST_ADDRS",
    "IDENTITIES",
    "ENDPOINTS",
    "PEERS",
    "PREFIXES",
    "RULE_SETS",
    "FLOWS",
    "COUNTERS",
    "DROPS_BY_GROUP",
    "DROP_EVENTS",
    "DROP_EVENT_WINDOW",
];

/// Pin file prefixes of the two links of an interface: `tc_egress_<ifname>`, `tc_ingress_<ifname>`.
const PIN_EGRESS: &str = "tc_egress_";
const PIN_INGRESS: &str = "tc_ingress_";

/// tc actions returned by the programs.
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Interfaces, maps and pin files.
    #[error(transparent)]
    Bpf(#[from] portcullis_bpf::Error),
    #[error("loading the node-hook object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("tc program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("tc link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("program {0} missing from the node-hook object")]
    MissingProgram(&'static str),
    #[error(
        "rule set {rule_set} has {ranges} port ranges, more than the {max} one entry can hold; \
         it is used by the group of policies [{policies}]"
    )]
    TooManyPortRanges {
        rule_set: usize,
        ranges: usize,
        max: usize,
        policies: String,
    },
    #[error("the node has {0} addresses, more than the {max} the node hook holds", max = NODE_MAX_HOST_ADDRS)]
    TooManyHostAddrs(usize),
    #[error("table refers to {what} {index}, which does not exist")]
    BadIndex { what: &'static str, index: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// bpffs directory for pinned maps and links; an existing set there is adopted.
    pub pin_dir: Option<PathBuf>,
    /// Re-check established flows against each new generation (a flow the new policy forbids is
    /// cut at its next packet).
    pub revalidate: bool,
}

/// One pod veth with both programs attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedInterface {
    pub name: String,
    /// Interface index when attached (in the namespace attach ran in); 0 for links adopted from
    /// pins at load, whose interface this process has not looked up.
    pub ifindex: u32,
    /// True when existing pinned links were taken over (their program replaced in place).
    pub adopted: bool,
}

/// What one [`NodeHook::apply`] wrote and how long it took.
#[derive(Clone, Debug, Default)]
pub struct ApplyStats {
    /// Parity of the generation now active.
    pub generation: u32,
    pub identities: usize,
    pub endpoints: usize,
    pub groups: usize,
    pub peers: usize,
    pub prefixes: usize,
    pub rule_sets: usize,
    /// Map entries written and deleted to bring the inactive generation to these tables.
    pub written: usize,
    pub deleted: usize,
    /// From the start of the apply to the switch.
    pub write: Duration,
}

/// `COUNTERS`, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub pass_flow: u64,
    pub pass_policy: u64,
    pub pass_unselected: u64,
    pub pass_non_ip: u64,
    pub drop_policy: u64,
    pub drop_malformed: u64,
    pub drop_fragment: u64,
    /// Flows recorded by the origin program (connections opened by local pods).
    pub origin_recorded: u64,
    /// Dropped because the pod-side address is no pod in force (a pod not enforced yet, spoofing).
    pub drop_unknown_pod: u64,
    /// From the node's own addresses to a local pod (always allowed).
    pub pass_host: u64,
}

#[derive(Clone, Debug)]
pub struct Status {
    pub attached: Vec<AttachedInterface>,
    pub revalidate: bool,
    pub generation: u32,
    pub identities: usize,
    pub endpoints: usize,
    pub peers: usize,
    pub prefixes: usize,
    pub rule_sets: usize,
    pub flows: usize,
    pub counters: Counters,
    pub drops_by_group: Vec<GroupDrops>,
}

/// Program run through `BPF_PROG_TEST_RUN` by [`NodeHook::test_run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestProgram {
    /// The pod veth's egress program (packets delivered to a pod).
    Deliver,
    /// The pod veth's ingress program (packets sent by a pod).
    Origin,
    /// The bare `TC_ACT_OK` program of the same object (benchmark baseline).
    Pass,
}

#[derive(Clone, Debug)]
pub struct TestRunOutcome {
    /// tc action ([`TC_ACT_OK`], [`TC_ACT_SHOT`]).
    pub action: i32,
    /// Average time per run as reported by the kernel.
    pub duration: Duration,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// One attached link: held open by this process, pinned or not.
enum HeldLink {
    /// A TCX link (kernel >= 6.6); with `pin` it is also pinned there.
    Tcx { link: FdLink, pin: Option<PathBuf> },
    /// A netlink clsact filter (older kernels): detached through the program, never pinned.
    Netlink {
        program: &'static str,
        id: aya::programs::tc::SchedClassifierLinkId,
    },
}

struct Hooked {
    info: AttachedInterface,
    links: Vec<HeldLink>,
}

pub struct NodeHook {
    ebpf: Ebpf,
    options: NodeOptions,
    tcx: bool,
    hooked: BTreeMap<String, Hooked>,
    maps: PolicyMaps,
    identities: HashMap<MapData, IdentityKey, IdentityValue>,
    peers: HashMap<MapData, PeerKey, PrefixValue>,
    host_addrs: HashMap<MapData, [u8; 16], u8>,
    drop_events: Option<RingBuf<MapData>>,
    /// Per parity: the tables that generation holds; `None` when unknown (adopted pins, an
    /// interrupted write), then its entries are found by iterating and rewritten once.
    installed: [Option<NodeTables>; 2],
    /// Group id → policies, for groups this process wrote.
    group_policies: BTreeMap<u32, Vec<String>>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    Ok(portcullis_bpf::take(ebpf, OBJECT, name)?)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()?)
}

fn pin_name(attach_type: TcAttachType, ifname: &str) -> String {
    match attach_type {
        TcAttachType::Egress => format!("{PIN_EGRESS}{ifname}"),
        _ => format!("{PIN_INGRESS}{ifname}"),
    }
}

/// The two programs of a pod veth and where they go.
const HOOKS: [(&str, TcAttachType); 2] = [
    (PROGRAM_DELIVER, TcAttachType::Egress),
    (PROGRAM_ORIGIN, TcAttachType::Ingress),
];

impl NodeHook {
    /// Loads the programs and prepares their maps. With a pin directory, pinned maps are reused
    /// and every pinned link found there gets the new program in place (no moment without
    /// enforcement); links whose interface is gone are unpinned.
    pub fn load(options: NodeOptions) -> Result<NodeHook> {
        let (mut loader, adopting) =
            portcullis_bpf::pinning_loader(options.pin_dir.as_deref(), &MAP_NAMES)?;
        let mut ebpf = loader.load(PROGRAM_OBJECT)?;
        for name in [PROGRAM_DELIVER, PROGRAM_ORIGIN] {
            program(&mut ebpf, name)?.load()?;
        }
        let mut maps = PolicyMaps::take(&mut ebpf, OBJECT)?;
        let mut current = maps.config()?;
        current.generation &= 1;
        current.flags = if options.revalidate {
            CONFIG_FLAG_REVALIDATE
        } else {
            0
        };
        maps.set_config(current)?;
        let tcx = KernelVersion::current()
            .map(|v| v >= KernelVersion::new(6, 6, 0))
            .unwrap_or(false);

        let mut hook = NodeHook {
            maps,
            identities: take(&mut ebpf, "IDENTITIES")?,
            host_addrs: take(&mut ebpf, "HOST_ADDRS")?,
            peers: take(&mut ebpf, "PEERS")?,
            drop_events: Some(take(&mut ebpf, "DROP_EVENTS")?),
            ebpf,
            tcx,
            hooked: BTreeMap::new(),
            installed: if adopting {
                [None, None]
            } else {
                [Some(NodeTables::default()), Some(NodeTables::default())]
            },
            group_policies: BTreeMap::new(),
            options,
        };
        if adopting {
            info!(generation = current.generation, "adopted pinned maps");
        }
        hook.adopt_pinned_links()?;
        Ok(hook)
    }

    /// Replaces the program of every pinned link in the pin directory.
    fn adopt_pinned_links(&mut self) -> Result<()> {
        let Some(dir) = self.options.pin_dir.clone() else {
            return Ok(());
        };
        let entries = std::fs::read_dir(&dir).map_err(|source| portcullis_bpf::Error::Io {
            path: dir.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(PIN_EGRESS) || n.starts_with(PIN_INGRESS))
            .collect();
        names.sort();
        for name in names {
            let (ifname, program_name) = match name.strip_prefix(PIN_EGRESS) {
                Some(i) => (i.to_owned(), PROGRAM_DELIVER),
                None => (name[PIN_INGRESS.len()..].to_owned(), PROGRAM_ORIGIN),
            };
            let path = dir.join(&name);
            match self.adopt_link(program_name, &path) {
                Ok(link) => {
                    info!(iface = %ifname, pin = %path.display(), "replaced the program of a pinned tc link");
                    let entry = self.hooked.entry(ifname.clone()).or_insert_with(|| Hooked {
                        info: AttachedInterface {
                            name: ifname,
                            ifindex: 0,
                            adopted: true,
                        },
                        links: Vec::new(),
                    });
                    entry.links.push(link);
                }
                Err(e) => {
                    warn!(pin = %path.display(), error = %e, "dropping a pinned tc link that cannot be adopted");
                    remove_pin(&path)?;
                }
            }
        }
        Ok(())
    }

    fn adopt_link(&mut self, program_name: &'static str, path: &Path) -> Result<HeldLink> {
        let pinned = PinnedLink::from_pin(path)?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
        let prog = program(&mut self.ebpf, program_name)?;
        let id = prog.attach_to_link(link)?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        Ok(HeldLink::Tcx {
            link,
            pin: Some(path.to_owned()),
        })
    }

    /// Attaches both programs to the pod veth `ifname` (host side) of the calling thread's
    /// network namespace: delivery checks on its egress, flow recording on its ingress. Already
    /// attached (or adopted) interfaces are left as they are.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachedInterface> {
        let index = ifindex(ifname)?;
        if let Some(h) = self.hooked.get_mut(ifname) {
            if h.links.len() == HOOKS.len() {
                if h.info.ifindex == 0 {
                    h.info.ifindex = index;
                }
                return Ok(h.info.clone());
            }
            // A half-adopted pair: start over.
            self.detach(ifname)?;
        }
        let mut links = Vec::new();
        let mut adopted = false;
        for (program_name, attach_type) in HOOKS {
            let pin = self
                .options
                .pin_dir
                .as_ref()
                .map(|d| d.join(pin_name(attach_type, ifname)));
            if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
                match self.adopt_link(program_name, path) {
                    Ok(link) => {
                        links.push(link);
                        adopted = true;
                        continue;
                    }
                    Err(e) => {
                        warn!(pin = %path.display(), error = %e, "stale pinned link replaced");
                        remove_pin(path)?;
                    }
                }
            }
            links.push(self.attach_one(program_name, attach_type, ifname, pin)?);
        }
        let info = AttachedInterface {
            name: ifname.to_owned(),
            ifindex: index,
            adopted,
        };
        debug!(iface = ifname, ifindex = index, adopted, "attached");
        self.hooked.insert(
            ifname.to_owned(),
            Hooked {
                info: info.clone(),
                links,
            },
        );
        Ok(info)
    }

    fn attach_one(
        &mut self,
        program_name: &'static str,
        attach_type: TcAttachType,
        ifname: &str,
        pin: Option<PathBuf>,
    ) -> Result<HeldLink> {
        let tcx = self.tcx;
        let prog = program(&mut self.ebpf, program_name)?;
        if !tcx {
            // clsact filters through netlink: the qdisc may already be there.
            if let Err(e) = qdisc_add_clsact(ifname) {
                debug!(iface = ifname, error = %e, "clsact qdisc not added (exists?)");
            }
            let id = prog.attach(ifname, attach_type)?;
            if pin.is_some() {
                warn!(
                    iface = ifname,
                    "kernel without TCX links: the tc filter is not pinned"
                );
            }
            return Ok(HeldLink::Netlink {
                program: program_name,
                id,
            });
        }
        let id = prog.attach_with_options(
            ifname,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        Ok(match pin {
            Some(path) => HeldLink::Tcx {
                link: FdLink::from(link.pin(&path)?),
                pin: Some(path),
            },
            None => HeldLink::Tcx { link, pin: None },
        })
    }

    /// Detaches both programs from `ifname` and removes their pins. Works after the interface is
    /// gone too (its links are then already inert).
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        let Some(h) = self.hooked.remove(ifname) else {
            return Ok(());
        };
        for link in h.links {
            match link {
                HeldLink::Tcx { link, pin } => {
                    if let Some(path) = pin {
                        remove_pin(&path)?;
                    }
                    // The last reference: closing it detaches the link.
                    drop(link);
                }
                HeldLink::Netlink { program: name, id } => {
                    if let Err(e) = program(&mut self.ebpf, name)?.detach(id) {
                        debug!(iface = ifname, error = %e, "tc filter already gone");
                    }
                }
            }
        }
        debug!(iface = ifname, "detached");
        Ok(())
    }

    pub fn attached(&self) -> Vec<AttachedInterface> {
        self.hooked.values().map(|h| h.info.clone()).collect()
    }

    /// Active generation parity.
    pub fn generation(&self) -> Result<u32> {
        Ok(self.maps.generation()?)
    }

    fn validate(tables: &NodeTables) -> Result<()> {
        for (i, rules) in tables.rule_sets.iter().enumerate() {
            if rules.len() > MAX_PORT_RANGES {
                let mut policies: Vec<&str> = tables
                    .groups
                    .iter()
                    .filter(|g| {
                        g.prefixes.iter().any(|(_, rs)| *rs as usize == i)
                            || g.peers.values().any(|rs| *rs as usize == i)
                    })
                    .flat_map(|g| g.policies.iter().map(String::as_str))
                    .collect();
                policies.sort_unstable();
                policies.dedup();
                return Err(Error::TooManyPortRanges {
                    rule_set: i,
                    ranges: rules.len(),
                    max: MAX_PORT_RANGES,
                    policies: policies.join(", "),
                });
            }
        }
        for group in &tables.groups {
            for rs in group
                .prefixes
                .iter()
                .map(|(_, rs)| rs)
                .chain(group.peers.values())
            {
                if *rs as usize >= tables.rule_sets.len() {
                    return Err(Error::BadIndex {
                        what: "rule set",
                        index: *rs,
                    });
                }
            }
        }
        for gi in tables.endpoints.values() {
            if *gi as usize >= tables.groups.len() {
                return Err(Error::BadIndex {
                    what: "group",
                    index: *gi,
                });
            }
        }
        Ok(())
    }

    /// Brings the inactive generation to `tables` by a delta and switches to it (see the crate
    /// docs). On error before the switch the active generation is untouched.
    pub fn apply(&mut self, tables: &NodeTables) -> Result<ApplyStats> {
        let start = Instant::now();
        Self::validate(tables)?;
        let active = self.generation()?;
        let next = 1 - active;
        // The inactive generation holds the tables of two applies ago; until the write
        // completes its content is unknown.
        let old = self.installed[next as usize].take();
        let mut delta = Delta::default();
        if old.is_none() {
            delta.deleted += self.delete_own_entries(next)?;
        }
        let empty = NodeTables::default();
        let before = old.as_ref().unwrap_or(&empty);
        let old_prefixes: Vec<&[(IpNet, u32)]> = before
            .groups
            .iter()
            .map(|g| g.prefixes.as_slice())
            .collect();
        let new_prefixes: Vec<&[(IpNet, u32)]> = tables
            .groups
            .iter()
            .map(|g| g.prefixes.as_slice())
            .collect();
        delta += self.maps.write_delta(
            old.as_ref().map(|t| SharedTables {
                rule_sets: &t.rule_sets,
                group_prefixes: &old_prefixes,
                endpoints: &t.endpoints,
            }),
            SharedTables {
                rule_sets: &tables.rule_sets,
                group_prefixes: &new_prefixes,
                endpoints: &tables.endpoints,
            },
            next,
        )?;
        let no_peers = BTreeMap::new();
        for gi in 0..tables.groups.len().max(before.groups.len()) {
            let had = before.groups.get(gi).map_or(&no_peers, |g| &g.peers);
            let has = tables.groups.get(gi).map_or(&no_peers, |g| &g.peers);
            if had == has {
                continue;
            }
            let group = generation_id(gi, next);
            for (identity, rs) in has {
                if had.get(identity) != Some(rs) {
                    let key = PeerKey {
                        group,
                        identity: *identity,
                    };
                    let value = PrefixValue {
                        rule_set: generation_id(*rs as usize, next),
                    };
                    self.peers.insert(key, value, 0).map_err(map_err("PEERS"))?;
                    delta.written += 1;
                }
            }
            for identity in had.keys().filter(|id| !has.contains_key(id)) {
                let key = PeerKey {
                    group,
                    identity: *identity,
                };
                ignore_missing(self.peers.remove(&key), "PEERS")?;
                delta.deleted += 1;
            }
        }
        let identity_key = |ip: &IpAddr| IdentityKey {
            addr: key_addr(*ip),
            generation: next as u8,
            _pad: [0; 3],
        };
        for (ip, identity) in &tables.identities {
            if before.identities.get(ip) != Some(identity) {
                let value = IdentityValue {
                    identity: *identity,
                };
                (self.identities)
                    .insert(identity_key(ip), value, 0)
                    .map_err(map_err("IDENTITIES"))?;
                delta.written += 1;
            }
        }
        for ip in before.identities.keys() {
            if !tables.identities.contains_key(ip) {
                ignore_missing(self.identities.remove(&identity_key(ip)), "IDENTITIES")?;
                delta.deleted += 1;
            }
        }
        self.installed[next as usize] = Some(tables.clone());

        // The switch: one array write.
        self.maps.switch_generation(next)?;
        let write = start.elapsed();
        info!(
            generation = next,
            written = delta.written,
            deleted = delta.deleted,
            "switched node policy generation"
        );
        let group_policies = (tables.groups.iter().enumerate())
            .filter(|(_, group)| !group.policies.is_empty())
            .map(|(gi, group)| (generation_id(gi, next), group.policies.clone()));
        self.group_policies
            .retain(|id, _| id & GENERATION_ID_BIT != next * GENERATION_ID_BIT);
        self.group_policies.extend(group_policies);
        Ok(ApplyStats {
            generation: next,
            identities: tables.identities.len(),
            endpoints: tables.endpoints.len(),
            groups: tables
                .groups
                .iter()
                .filter(|g| !g.policies.is_empty())
                .count(),
            peers: tables.groups.iter().map(|g| g.peers.len()).sum(),
            prefixes: tables.groups.iter().map(|g| g.prefixes.len()).sum(),
            rule_sets: tables.rule_sets.len(),
            written: delta.written,
            deleted: delta.deleted,
            write,
        })
    }

    /// Deletes the identity and peer entries of generation `parity` (unknown content: found by
    /// iterating); the shared maps are left to [`PolicyMaps::write_delta`]. Returns how many.
    fn delete_own_entries(&mut self, parity: u32) -> Result<usize> {
        let bit = parity * GENERATION_ID_BIT;
        let identities: Vec<IdentityKey> = (self.identities.keys())
            .filter_map(|k| k.ok())
            .filter(|k| u32::from(k.generation) == parity)
            .collect();
        let peers: Vec<PeerKey> = (self.peers.keys())
            .filter_map(|k| k.ok())
            .filter(|k| k.group & GENERATION_ID_BIT == bit)
            .collect();
        for k in &identities {
            ignore_missing(self.identities.remove(k), "IDENTITIES")?;
        }
        for k in &peers {
            ignore_missing(self.peers.remove(k), "PEERS")?;
        }
        debug!(
            parity,
            deleted = identities.len() + peers.len(),
            "deleted unknown generation"
        );
        Ok(identities.len() + peers.len())
    }

    /// Deletes expired flows; returns how many.
    /// Makes `addrs` (the node's own addresses) the set whose packets to local pods always pass;
    /// returns whether it changed.
    pub fn set_host_addrs(&mut self, addrs: &[IpAddr]) -> Result<bool> {
        let wanted: std::collections::BTreeSet<[u8; 16]> =
            addrs.iter().map(|ip| key_addr(*ip)).collect();
        if wanted.len() > NODE_MAX_HOST_ADDRS as usize {
            return Err(Error::TooManyHostAddrs(wanted.len()));
        }
        let present: std::collections::BTreeSet<[u8; 16]> =
            self.host_addrs.keys().filter_map(|k| k.ok()).collect();
        for gone in present.difference(&wanted) {
            ignore_missing(self.host_addrs.remove(gone), "HOST_ADDRS")?;
        }
        for new in wanted.difference(&present) {
            self.host_addrs
                .insert(new, 1, 0)
                .map_err(map_err("HOST_ADDRS"))?;
        }
        Ok(present != wanted)
    }

    pub fn gc_flows(&mut self) -> Result<usize> {
        Ok(self.maps.gc_flows()?)
    }

    /// Deletes every flow (live ones too: their next packets are judged as new connections).
    pub fn clear_flows(&mut self) -> Result<usize> {
        Ok(self.maps.clear_flows()?)
    }

    /// All flows currently in the table (expired ones included until GC).
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.maps.flows()
    }

    pub fn status(&self) -> Result<Status> {
        let counters = node_counters(&self.maps)?;
        let generation = self.generation()?;
        let (identities, endpoints, peers, prefixes, rule_sets) =
            entry_counts(&self.maps, &self.identities, &self.peers, generation);
        let drops_by_group = self.maps.group_drops(&self.group_policies);
        Ok(Status {
            attached: self.attached(),
            revalidate: self.options.revalidate,
            generation,
            identities,
            endpoints,
            peers,
            prefixes,
            rule_sets,
            flows: self.maps.flows.keys().count(),
            counters,
            drops_by_group,
        })
    }

    /// The drop-event ring buffer, for one reader (e.g. `monitor`). `None` once taken.
    pub fn take_drop_events(&mut self) -> Option<DropEvents> {
        self.drop_events.take().map(DropEvents::new)
    }

    /// Runs `packet` (an Ethernet frame) through a program of the object with
    /// `BPF_PROG_TEST_RUN`, `repeat` times. The kernel runs it on an skb of the calling thread's
    /// loopback device. Used by the packet-fixture and differential tests and the benchmarks.
    pub fn test_run(
        &mut self,
        program_kind: TestProgram,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        let name = match program_kind {
            TestProgram::Deliver => PROGRAM_DELIVER,
            TestProgram::Origin => PROGRAM_ORIGIN,
            TestProgram::Pass => PROGRAM_PASS,
        };
        let prog = program(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        let mut out = vec![0u8; packet.len() + 256];
        let result = prog.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: repeat.max(1),
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            action: result.return_value as i32,
            duration: result.duration,
            packet: out,
        })
    }

    /// Removes the pins of maps and links under the pin directory: after this process exits the
    /// programs are detached and the maps freed.
    pub fn unpin(mut self) -> Result<()> {
        for h in self.hooked.values_mut() {
            for link in &mut h.links {
                if let HeldLink::Tcx { pin, .. } = link {
                    if let Some(path) = pin.take() {
                        remove_pin(&path)?;
                    }
                }
            }
        }
        if let Some(dir) = &self.options.pin_dir {
            for name in MAP_NAMES {
                remove_pin(&dir.join(name))?;
            }
        }
        Ok(())
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.options.pin_dir.as_deref()
    }
}

/// `COUNTERS` summed over CPUs.
/// Entries of generation `parity` per table: (identities, endpoints, peers, prefixes, rule sets).
/// Status shows the generation in force; the inactive one is the base of the next delta.
fn entry_counts(
    maps: &PolicyMaps,
    identities: &HashMap<MapData, IdentityKey, IdentityValue>,
    peers: &HashMap<MapData, PeerKey, PrefixValue>,
    parity: u32,
) -> (usize, usize, usize, usize, usize) {
    let (endpoints, prefixes, rule_sets) = maps.entry_counts(parity);
    let identities = (identities.keys())
        .filter_map(|k| k.ok())
        .filter(|k| u32::from(k.generation) == parity)
        .count();
    let peers = (peers.keys())
        .filter_map(|k| k.ok())
        .filter(|k| k.group & GENERATION_ID_BIT == parity * GENERATION_ID_BIT)
        .count();
    (identities, endpoints, peers, prefixes, rule_sets)
}

fn node_counters(maps: &PolicyMaps) -> Result<Counters> {
    let sums = maps.counters::<{ NODE_COUNTER_COUNT as usize }>()?;
    let c = |i: u32| sums[i as usize];
    Ok(Counters {
        pass_flow: c(COUNTER_PASS_FLOW),
        pass_policy: c(COUNTER_PASS_POLICY),
        pass_unselected: c(COUNTER_PASS_UNSELECTED),
        pass_non_ip: c(COUNTER_PASS_NON_IP),
        drop_policy: c(COUNTER_DROP_POLICY),
        drop_malformed: c(COUNTER_DROP_MALFORMED),
        drop_fragment: c(COUNTER_DROP_FRAGMENT),
        origin_recorded: c(NODE_COUNTER_ORIGIN),
        drop_unknown_pod: c(NODE_COUNTER_DROP_UNKNOWN_POD),
        pass_host: c(NODE_COUNTER_PASS_HOST),
    })
}

/// Read-only view of a running node hook's pinned maps, for `status` and `monitor` in another
/// process. Opening it changes nothing; the daemon keeps enforcing.
pub struct PinnedNode {
    maps: PolicyMaps,
    identities: HashMap<MapData, IdentityKey, IdentityValue>,
    peers: HashMap<MapData, PeerKey, PrefixValue>,
    dir: PathBuf,
}

/// What a pinned node hook shows.
#[derive(Clone, Debug)]
pub struct PinnedStatus {
    /// Interfaces with pinned links (from the pin names `tc_egress_<ifname>`).
    pub interfaces: Vec<String>,
    pub generation: u32,
    pub revalidate: bool,
    pub identities: usize,
    pub endpoints: usize,
    pub peers: usize,
    pub prefixes: usize,
    pub rule_sets: usize,
    pub flows: usize,
    pub counters: Counters,
    pub drops_by_group: Vec<GroupDrops>,
}

impl PinnedNode {
    /// Opens the maps pinned under `dir` by a node hook started with that pin directory.
    pub fn open(dir: &Path) -> Result<PinnedNode> {
        Ok(PinnedNode {
            maps: PolicyMaps::open_pinned(dir)?,
            identities: portcullis_bpf::open_pinned(dir, "IDENTITIES")?,
            peers: portcullis_bpf::open_pinned(dir, "PEERS")?,
            dir: dir.to_path_buf(),
        })
    }

    /// Status; `policies` names the groups (the daemon publishes them beside the pins).
    pub fn status(&self, policies: &BTreeMap<u32, Vec<String>>) -> Result<PinnedStatus> {
        let config = self.maps.config()?;
        let (identities, endpoints, peers, prefixes, rule_sets) = entry_counts(
            &self.maps,
            &self.identities,
            &self.peers,
            config.generation & 1,
        );
        let mut interfaces: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_prefix(PIN_EGRESS).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        interfaces.sort();
        Ok(PinnedStatus {
            interfaces,
            generation: config.generation & 1,
            revalidate: config.flags & CONFIG_FLAG_REVALIDATE != 0,
            identities,
            endpoints,
            peers,
            prefixes,
            rule_sets,
            flows: self.maps.flows.keys().count(),
            counters: node_counters(&self.maps)?,
            drops_by_group: self.maps.group_drops(policies),
        })
    }

    /// The drop-event ring buffer. Only one reader should consume it at a time.
    pub fn drop_events(&self) -> Result<DropEvents> {
        Ok(DropEvents::new(portcullis_bpf::open_pinned(
            &self.dir,
            "DROP_EVENTS",
        )?))
    }
}
