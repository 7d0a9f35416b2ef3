//! User-space side of the Portcullis XDP gateway: loads and attaches the program, keeps its policy
//! tables in step with compiled [`GatewayTables`] through generation switches, pins maps and links
//! so a restart adopts the running state, collects expired flows, and reads counters and drop
//! events.
//!
//! Update protocol ([`Gateway::apply`]): two generations live side by side; group and rule-set ids
//! carry the parity in [`GENERATION_ID_BIT`], endpoint keys carry it in a field. The inactive one
//! holds the tables of two applies ago and is brought to the new tables by a delta (the compiler's
//! ids are stable, so only entries a change reaches are written or deleted); then one write of
//! `CONFIG.generation` switches every CPU to it. A packet sees either the whole old or the whole
//! new policy, and an update costs in proportion to what changed, not to the size of the tables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use aya::Ebpf;
use ipnet::IpNet;
pub use portcullis_bpf::{generation_id, key_addr, DropEvents, GroupDrops};
use portcullis_bpf::{ifindex, map_err, open_pinned, remove_pin, PolicyMaps, SharedTables};
pub use portcullis_common::flow_timeout_ns;
use portcullis_common::*;
use portcullis_policy::compile::GatewayTables;
use tracing::info;

/// The XDP object built by `build.rs` from `xdp/ebpf`.
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-xdp-ebpf"));

/// The object's name in error messages.
const OBJECT: &str = "XDP";
const PROGRAM_GATEWAY: &str = "portcullis_gateway";
const PROGRAM_PASS: &str = "xdp_pass";

/// Every map of the program; with a pin directory each is pinned there under its own name.
const MAP_NAMES: [&str; 10] = [
    "IFACE_ROLES",
    "CONFIG",
    "ENDPOINTS",
    "PREFIXES",
    "RULE_SETS",
    "FLOWS",
    "COUNTERS",
    "DROPS_BY_GROUP",
    "DROP_EVENTS",
    "DROP_EVENT_WINDOW",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Interfaces, maps and pin files.
    #[error(transparent)]
    Bpf(#[from] portcullis_bpf::Error),
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("XDP link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("pinning: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("program {0} missing from the XDP object")]
    MissingProgram(&'static str),
    #[error(
        "rule set {rule_set} has {ranges} port ranges, more than the {max} one prefix can hold; \
         it is used by the group of policies [{policies}]"
    )]
    TooManyPortRanges {
        rule_set: usize,
        ranges: usize,
        max: usize,
        policies: String,
    },
    #[error("table refers to {what} {index}, which does not exist")]
    BadIndex { what: &'static str, index: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How the program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Driver (native) XDP.
    #[default]
    Native,
    /// Generic (skb) XDP; slower, for devices without native support.
    Generic,
}

/// What happens to allowed packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardMode {
    /// Handed to the kernel stack (`XDP_PASS`), which routes them.
    #[default]
    Kernel,
    /// Routed in XDP (`bpf_fib_lookup` + `bpf_redirect`); packets the FIB cannot resolve
    /// (no neighbour entry, local destination, TTL expiring, VLAN-tagged) still go to the stack.
    Xdp,
}

#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    /// Leg facing the pods: packets entering here are checked against the source pod's egress.
    pub cluster_iface: String,
    /// Leg facing the outside: packets entering here are checked against the destination pod's
    /// ingress.
    pub external_iface: String,
    pub xdp_mode: AttachMode,
    pub forward: ForwardMode,
    /// bpffs directory for pinned maps and links; an existing set there is adopted.
    pub pin_dir: Option<PathBuf>,
    /// Re-check established flows against each new generation.
    pub revalidate: bool,
}

/// One attached leg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    /// `ROLE_CLUSTER` or `ROLE_EXTERNAL`.
    pub role: u32,
    /// True when an existing pinned link was taken over (its original attach mode is kept).
    pub adopted: bool,
}

/// What one [`Gateway::apply`] wrote and how long it took.
#[derive(Clone, Debug, Default)]
pub struct ApplyStats {
    /// Parity of the generation now active.
    pub generation: u32,
    /// Sizes of the tables now in force.
    pub endpoints: usize,
    pub groups: usize,
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
    pub forward_xdp: u64,
    pub pass_stack: u64,
}

#[derive(Clone, Debug)]
pub struct Status {
    pub attached: Vec<AttachedInterface>,
    pub mode: AttachMode,
    pub forward: ForwardMode,
    pub revalidate: bool,
    pub generation: u32,
    pub endpoints: usize,
    pub prefixes: usize,
    pub rule_sets: usize,
    pub flows: usize,
    pub counters: Counters,
    pub drops_by_group: Vec<GroupDrops>,
}

/// Program run through `BPF_PROG_TEST_RUN` by [`Gateway::test_run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestProgram {
    Gateway,
    /// The bare `XDP_PASS` program of the same object (benchmark baseline).
    Pass,
}

#[derive(Clone, Debug)]
pub struct TestRunOutcome {
    /// XDP action (`XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_REDIRECT` = 4).
    pub action: u32,
    /// Average time per run as reported by the kernel.
    pub duration: Duration,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub struct Gateway {
    ebpf: Ebpf,
    options: GatewayOptions,
    attached: Vec<AttachedInterface>,
    /// Pinned links we keep open (the pin keeps them attached after we exit).
    _pinned_links: Vec<PinnedLink>,
    maps: PolicyMaps,
    drop_events: Option<RingBuf<MapData>>,
    /// Per parity: the tables that generation holds; `None` when unknown (adopted pins, an
    /// interrupted write), then its entries are found by iterating and rewritten once.
    installed: [Option<GatewayTables>; 2],
    /// Group id → policies, for groups this process wrote.
    group_policies: BTreeMap<u32, Vec<String>>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    Ok(portcullis_bpf::take(ebpf, OBJECT, name)?)
}

impl Gateway {
    /// Loads the program, prepares its maps (adopting pinned ones) and attaches it to both legs.
    pub fn load(options: GatewayOptions) -> Result<Gateway> {
        let cluster = ifindex(&options.cluster_iface)?;
        let external = ifindex(&options.external_iface)?;
        let (mut loader, adopting) =
            portcullis_bpf::pinning_loader(options.pin_dir.as_deref(), &MAP_NAMES)?;
        let mut ebpf = loader.load(PROGRAM_OBJECT)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_GATEWAY)
            .ok_or(Error::MissingProgram(PROGRAM_GATEWAY))?
            .try_into()?;
        program.load()?;

        let mut maps = PolicyMaps::take(&mut ebpf, OBJECT)?;
        let mut roles: HashMap<MapData, u32, u32> = take(&mut ebpf, "IFACE_ROLES")?;
        let mut current = maps.config()?;
        current.generation &= 1;
        current.flags = 0;
        if options.forward == ForwardMode::Xdp {
            current.flags |= CONFIG_FLAG_XDP_FORWARD;
        }
        if options.revalidate {
            current.flags |= CONFIG_FLAG_REVALIDATE;
        }
        maps.set_config(current)?;
        let stale: Vec<u32> = roles
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| *k != cluster && *k != external)
            .collect();
        for k in stale {
            roles.remove(&k).map_err(map_err("IFACE_ROLES"))?;
        }
        roles
            .insert(cluster, ROLE_CLUSTER, 0)
            .map_err(map_err("IFACE_ROLES"))?;
        roles
            .insert(external, ROLE_EXTERNAL, 0)
            .map_err(map_err("IFACE_ROLES"))?;

        let mut attached = Vec::new();
        let mut pinned_links = Vec::new();
        let mode = match options.xdp_mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        };
        for (name, index, role, pin_name) in [
            (
                &options.cluster_iface,
                cluster,
                ROLE_CLUSTER,
                "link_cluster",
            ),
            (
                &options.external_iface,
                external,
                ROLE_EXTERNAL,
                "link_external",
            ),
        ] {
            let program: &mut Xdp = ebpf
                .program_mut(PROGRAM_GATEWAY)
                .ok_or(Error::MissingProgram(PROGRAM_GATEWAY))?
                .try_into()?;
            let pin_path = options.pin_dir.as_ref().map(|d| d.join(pin_name));
            let mut adopted = false;
            match &pin_path {
                Some(path) if path.exists() => {
                    // Swap the program inside the existing link: no moment without a program.
                    let link = PinnedLink::from_pin(path)?;
                    let fd_link: FdLink = link.into();
                    let xdp_link = XdpLink::try_from(fd_link)?;
                    program.attach_to_link(xdp_link)?;
                    pinned_links.push(PinnedLink::from_pin(path)?);
                    adopted = true;
                    info!(iface = %name, "replaced the program of the pinned XDP link");
                }
                Some(path) => {
                    let id = program.attach_to_if_index(index, mode)?;
                    let link = program.take_link(id)?;
                    let fd_link = FdLink::try_from(link)?;
                    pinned_links.push(fd_link.pin(path)?);
                    info!(iface = %name, ?mode, "attached and pinned XDP link");
                }
                None => {
                    program.attach_to_if_index(index, mode)?;
                    info!(iface = %name, ?mode, "attached XDP program");
                }
            }
            attached.push(AttachedInterface {
                name: name.clone(),
                ifindex: index,
                role,
                adopted,
            });
        }

        let gateway = Gateway {
            maps,
            drop_events: Some(take(&mut ebpf, "DROP_EVENTS")?),
            ebpf,
            attached,
            _pinned_links: pinned_links,
            installed: if adopting {
                [None, None]
            } else {
                [
                    Some(GatewayTables::default()),
                    Some(GatewayTables::default()),
                ]
            },
            group_policies: BTreeMap::new(),
            options,
        };
        if adopting {
            info!(generation = current.generation, "adopted pinned maps");
        }
        Ok(gateway)
    }

    /// Active generation parity.
    pub fn generation(&self) -> Result<u32> {
        Ok(self.maps.generation()?)
    }

    pub fn attached(&self) -> &[AttachedInterface] {
        &self.attached
    }

    /// Installs `tables` as a new generation and switches to it (see the crate docs). On error
    /// before the switch the active generation is untouched.
    pub fn apply(&mut self, tables: &GatewayTables) -> Result<ApplyStats> {
        let start = Instant::now();
        // Validate everything first: nothing is written for a table we cannot hold.
        for (i, rules) in tables.rule_sets.iter().enumerate() {
            if rules.len() > MAX_PORT_RANGES {
                let mut policies: Vec<&str> = tables
                    .groups
                    .iter()
                    .filter(|g| g.prefixes.iter().any(|(_, rs)| *rs as usize == i))
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
            for (_, rs) in &group.prefixes {
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

        let active = self.generation()?;
        let next = 1 - active;
        // The inactive generation still holds the tables of two applies ago: write only the
        // difference. Until the write completes its content is unknown.
        let old = self.installed[next as usize].take();
        let old_prefixes: Vec<&[(IpNet, u32)]> = (old.iter())
            .flat_map(|t| t.groups.iter().map(|g| g.prefixes.as_slice()))
            .collect();
        let new_prefixes: Vec<&[(IpNet, u32)]> = tables
            .groups
            .iter()
            .map(|g| g.prefixes.as_slice())
            .collect();
        let delta = self.maps.write_delta(
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
        self.installed[next as usize] = Some(tables.clone());

        // The switch: one array write.
        self.maps.switch_generation(next)?;
        let write = start.elapsed();
        info!(
            generation = next,
            written = delta.written,
            deleted = delta.deleted,
            "switched policy generation"
        );
        let group_policies = (tables.groups.iter().enumerate())
            .filter(|(_, group)| !group.policies.is_empty())
            .map(|(gi, group)| (generation_id(gi, next), group.policies.clone()));
        self.group_policies
            .retain(|id, _| id & GENERATION_ID_BIT != next * GENERATION_ID_BIT);
        self.group_policies.extend(group_policies);
        Ok(ApplyStats {
            generation: next,
            endpoints: tables.endpoints.len(),
            groups: tables
                .groups
                .iter()
                .filter(|g| !g.policies.is_empty())
                .count(),
            prefixes: tables.prefix_count(),
            rule_sets: tables.rule_sets.len(),
            written: delta.written,
            deleted: delta.deleted,
            write,
        })
    }

    /// Deletes expired flows; returns how many.
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

    /// Counts are of the generation in force (the inactive one is kept as the base of the next
    /// delta).
    pub fn status(&self) -> Result<Status> {
        let generation = self.generation()?;
        let (endpoints, prefixes, rule_sets) = self.maps.entry_counts(generation);
        Ok(Status {
            attached: self.attached.clone(),
            mode: self.options.xdp_mode,
            forward: self.options.forward,
            revalidate: self.options.revalidate,
            generation,
            endpoints,
            prefixes,
            rule_sets,
            flows: self.maps.flows.keys().count(),
            counters: counters(&self.maps)?,
            drops_by_group: self.maps.group_drops(&self.group_policies),
        })
    }

    /// The drop-event ring buffer, for one reader (e.g. `monitor`). `None` once taken.
    pub fn take_drop_events(&mut self) -> Option<DropEvents> {
        self.drop_events.take().map(DropEvents::new)
    }

    /// Runs `packet` through a program of the object with `BPF_PROG_TEST_RUN`, `repeat` times, as
    /// if received on `ingress_ifindex` (which must exist in the calling thread's network
    /// namespace). Used by the packet-fixture tests and the benchmarks.
    pub fn test_run(
        &mut self,
        program: TestProgram,
        ingress_ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        let name = match program {
            TestProgram::Gateway => PROGRAM_GATEWAY,
            TestProgram::Pass => PROGRAM_PASS,
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (u32 each, host order).
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut out = vec![0u8; packet.len() + 256];
        let result = prog.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: repeat.max(1),
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            action: result.return_value,
            duration: result.duration,
            packet: out,
        })
    }

    /// Removes the pins of maps and links under the pin directory: after this process exits the
    /// program is detached and the maps freed.
    pub fn unpin(self) -> Result<()> {
        if let Some(dir) = &self.options.pin_dir {
            for name in MAP_NAMES
                .iter()
                .copied()
                .chain(["link_cluster", "link_external"])
            {
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
fn counters(maps: &PolicyMaps) -> Result<Counters> {
    let sums = maps.counters::<{ COUNTER_COUNT as usize }>()?;
    let c = |i: u32| sums[i as usize];
    Ok(Counters {
        pass_flow: c(COUNTER_PASS_FLOW),
        pass_policy: c(COUNTER_PASS_POLICY),
        pass_unselected: c(COUNTER_PASS_UNSELECTED),
        pass_non_ip: c(COUNTER_PASS_NON_IP),
        drop_policy: c(COUNTER_DROP_POLICY),
        drop_malformed: c(COUNTER_DROP_MALFORMED),
        drop_fragment: c(COUNTER_DROP_FRAGMENT),
        forward_xdp: c(COUNTER_FORWARD_XDP),
        pass_stack: c(COUNTER_PASS_STACK),
    })
}

/// Read-only view of a running gateway's pinned maps, for `status` and `monitor` in another
/// process. Opening it changes nothing; the daemon keeps enforcing.
pub struct PinnedGateway {
    maps: PolicyMaps,
    roles: HashMap<MapData, u32, u32>,
    dir: PathBuf,
}

/// What a pinned gateway shows: its maps plus the links present in the pin directory.
#[derive(Clone, Debug)]
pub struct PinnedStatus {
    /// (ifindex, role) of the legs the program is configured for.
    pub legs: Vec<(u32, u32)>,
    /// Pinned links present (`link_cluster`, `link_external`).
    pub links: Vec<String>,
    pub generation: u32,
    pub forward: ForwardMode,
    pub revalidate: bool,
    pub endpoints: usize,
    pub prefixes: usize,
    pub rule_sets: usize,
    pub flows: usize,
    pub counters: Counters,
    pub drops_by_group: Vec<GroupDrops>,
}

impl PinnedGateway {
    /// Opens the maps pinned under `dir` by a gateway started with that pin directory.
    pub fn open(dir: &Path) -> Result<PinnedGateway> {
        Ok(PinnedGateway {
            maps: PolicyMaps::open_pinned(dir)?,
            roles: open_pinned(dir, "IFACE_ROLES")?,
            dir: dir.to_path_buf(),
        })
    }

    /// Status; `policies` names the groups (the daemon publishes them beside the pins).
    pub fn status(&self, policies: &BTreeMap<u32, Vec<String>>) -> Result<PinnedStatus> {
        let config = self.maps.config()?;
        let (endpoints, prefixes, rule_sets) = self.maps.entry_counts(config.generation & 1);
        Ok(PinnedStatus {
            legs: self.roles.iter().filter_map(|r| r.ok()).collect(),
            links: ["link_cluster", "link_external"]
                .into_iter()
                .filter(|l| self.dir.join(l).exists())
                .map(str::to_string)
                .collect(),
            generation: config.generation & 1,
            forward: if config.flags & CONFIG_FLAG_XDP_FORWARD != 0 {
                ForwardMode::Xdp
            } else {
                ForwardMode::Kernel
            },
            revalidate: config.flags & CONFIG_FLAG_REVALIDATE != 0,
            endpoints,
            prefixes,
            rule_sets,
            flows: self.maps.flows.keys().count(),
            counters: counters(&self.maps)?,
            drops_by_group: self.maps.group_drops(policies),
        })
    }

    /// The drop-event ring buffer. Only one reader should consume it at a time.
    pub fn drop_events(&self) -> Result<DropEvents> {
        Ok(DropEvents::new(open_pinned(&self.dir, "DROP_EVENTS")?))
    }
}
