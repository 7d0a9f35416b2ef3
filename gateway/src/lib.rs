//! User-space side of the Portcullis XDP gateway: loads the program and attaches it to both legs
//! (pinning and adopting links so a restart keeps enforcing), and keeps its policy tables in step
//! with compiled [`GatewayTables`] through the shared update protocol
//! ([`portcullis_bpf::Generations`]). The maps both programs have, their status, flow GC and drop
//! events come from the loader core `portcullis-bpf`; what is here is the gateway's own: its legs
//! (`LEGS`), its attach modes and the forwarding mode, and source NAT to egress addresses
//! ([`Gateway::set_snat`], `snat`). For a highly available group's daemon: which egress
//! addresses this gateway answers for, under a lease ([`Gateway::set_egress_ownership`]), their
//! announcement ([`announce_egress_ip`]) and the replication of flows and translations
//! ([`Gateway::export_replicas`], [`Gateway::import_replicas`]).

mod announce;
mod attach;
mod mode;
mod next_hops;
mod pinned;
mod replica;
mod snat;
mod snat_maps;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use std::os::fd::AsFd;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use aya::maps::{Array, MapData, XskMap};
use aya::programs::links::PinnedLink;
use aya::programs::Xdp;
use aya::Ebpf;
use portcullis_bpf::object::{program, remove_pin, take};
use portcullis_bpf::PinKeeper;
pub use portcullis_bpf::{
    generation_id, key_addr, monotonic_coarse_ns, ApplyStats, Core, Counters, Datapath, DropEvents,
    Error, FlowCounts, FlowRecordCounters, GroupDrops, Result, TableStatus,
};
pub use portcullis_common::actions::{XDP_DROP, XDP_PASS, XDP_REDIRECT};
pub use portcullis_common::flow_timeout_ns;
use portcullis_common::*;
use portcullis_policy::compile::GatewayTables;
use serde::Serialize;

pub use announce::announce_egress_ip;
pub use attach::{AttachMode, AttachedInterface};
pub use mode::{DatapathMode, ForwardMode};
pub use pinned::{PinnedGateway, PinnedStatus};
pub use replica::{ImportStats, Replica, REPLICA_DELTA_OVERLAP_NS};
pub use snat::{EgressIpStatus, SnatConfig, SnatCounters, SnatStatus, DEFAULT_SNAT_PORTS};
pub use snat_maps::SNAT_GC_GRACE_NS;

/// The XDP object built by `build.rs` from `xdp/ebpf`.
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-xdp-ebpf"));

/// The object's name in error messages.
const OBJECT: &str = "XDP";
const PROGRAM_GATEWAY: &str = "portcullis_gateway";
const PROGRAM_PASS: &str = "xdp_pass";

/// Pin files of the two legs' links.
const LINK_PINS: [&str; 2] = ["link_cluster", "link_external"];

/// Every map of the program; with a pin directory each is pinned there under its own name.
fn pinned_maps() -> impl Iterator<Item = &'static str> {
    SHARED_PINNED_MAPS
        .into_iter()
        .chain([MAP_LEGS, MAP_NEXT_HOP_EPOCH, MAP_HOST_ADDRS])
        .chain(SNAT_PINNED_MAPS)
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
    /// Who judges the packets: the XDP program, or the AF_XDP engine the caller runs
    /// (`portcullis-afxdp`, given [`Gateway::engine_handles`]).
    pub datapath: DatapathMode,
    /// bpffs directory for pinned maps and links; an existing set there is adopted.
    pub pin_dir: Option<PathBuf>,
    /// Re-check established flows against each new generation.
    pub revalidate: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub attached: Vec<AttachedInterface>,
    pub mode: AttachMode,
    pub forward: ForwardMode,
    pub datapath: DatapathMode,
    /// `NEXT_HOP_EPOCH`: how many route, neighbour, link or address changes invalidated the
    /// flows' cached next hops (XDP forwarding only).
    pub next_hop_epoch: u32,
    #[serde(flatten)]
    pub tables: TableStatus,
    /// Source NAT: translations, egress addresses and their pools, SNAT counters.
    pub snat: SnatStatus,
}

/// Program run through `BPF_PROG_TEST_RUN` by [`Gateway::test_run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestProgram {
    Gateway,
    /// The bare `XDP_PASS` program of the same object (benchmark baseline).
    Pass,
}

/// A test run's XDP action ([`XDP_DROP`], [`XDP_PASS`], [`XDP_REDIRECT`]), time and packet.
pub type TestRunOutcome = portcullis_bpf::TestRunOutcome<u32>;

pub struct Gateway {
    ebpf: Ebpf,
    options: GatewayOptions,
    attached: Vec<AttachedInterface>,
    /// Pinned links we keep open (the pin keeps them attached after we exit).
    _pinned_links: Vec<PinnedLink>,
    core: Core<GatewayTables>,
    next_hop_epoch: Array<MapData, u32>,
    /// Bumps `NEXT_HOP_EPOCH` (and the engine's epoch, and rewrites `HOST_ADDRS`) on netlink
    /// changes while we forward in XDP or run the engine.
    _epoch_watch: Option<next_hops::EpochWatch>,
    /// For the AF_XDP engine (`--datapath afxdp|hybrid`), until the caller takes them.
    engine: Option<EngineHandles>,
    snat: snat_maps::SnatMaps,
    /// `SNAT_LEASE`: until when the ARP/ND answers stand (0: no lease).
    lease: Array<MapData, SnatLease>,
    /// The egress addresses (keys) this gateway answers for when a highly available group's
    /// daemon decides it ([`Gateway::set_egress_ownership`]); `None`: the configuration's
    /// `egress_ips` decide ([`SnatConfig`]).
    ownership: Option<BTreeSet<[u8; 16]>>,
    /// The external leg's MAC: the ARP/ND answers for the egress addresses carry it.
    external_mac: [u8; 6],
    /// Our own descriptors of the pinned maps and links (with a pin directory), to pin them
    /// again when their pins are removed under us.
    pins: Option<PinKeeper>,
}

/// What the AF_XDP engine needs of the loaded program.
pub struct EngineHandles {
    /// `XSKS`: where the engine registers its sockets (`xsk_slot`).
    pub xsks: XskMap<MapData>,
    /// Bumped on every route, neighbour, link or address change (its next-hop cache).
    pub epoch: Arc<AtomicU32>,
    /// The legs' interface indexes (cluster, external).
    pub legs: (u32, u32),
}

impl Datapath for Gateway {
    type Tables = GatewayTables;
    fn core(&self) -> &Core<GatewayTables> {
        &self.core
    }
    fn core_mut(&mut self) -> &mut Core<GatewayTables> {
        &mut self.core
    }

    /// Deletes expired flows, then the translations of the flows gone; returns how many flows.
    fn gc_flows(&mut self) -> Result<usize> {
        let deleted = self.core.maps.gc_flows()?;
        self.gc_snat()?;
        Ok(deleted)
    }
}

impl Gateway {
    /// Loads the program, prepares its maps (adopting pinned ones) and attaches it to both legs.
    pub fn load(options: GatewayOptions) -> Result<Gateway> {
        let names: Vec<&str> = pinned_maps().collect();
        let pin_dir = options.pin_dir.clone();
        let (ebpf, adopting) = portcullis_bpf::object::load_pinned(
            options.pin_dir.as_deref(),
            &names,
            (OBJECT, PROGRAM_OBJECT),
        )?;
        Gateway::prepare(ebpf, options, adopting).inspect_err(|_| {
            // A refused first start leaves no pins behind (a restart's adopted ones stay and
            // keep enforcing).
            if let (false, Some(dir)) = (adopting, &pin_dir) {
                for name in pinned_maps() {
                    let _ = remove_pin(&dir.join(name));
                }
            }
        })
    }

    /// Loads the program into `ebpf` (its maps ready), starts the netlink follower and attaches
    /// the legs.
    fn prepare(mut ebpf: Ebpf, options: GatewayOptions, adopting: bool) -> Result<Gateway> {
        program::<Xdp>(&mut ebpf, OBJECT, PROGRAM_GATEWAY)?.load()?;
        let mut flags = options.forward.config_flag() | options.datapath.config_flag();
        if options.revalidate {
            flags |= CONFIG_FLAG_REVALIDATE;
        }
        // Adopted translations keep being served before the daemon's first `set_snat`.
        let snat = snat_maps::SnatMaps::take(&mut ebpf)?;
        let lease = take(&mut ebpf, OBJECT, MAP_SNAT_LEASE)?;
        if snat.in_use() {
            flags |= CONFIG_FLAG_SNAT;
        }
        let core = Core::take(&mut ebpf, OBJECT, adopting, flags)?;
        let (next_hop_epoch, watched) = epoch_handles(&mut ebpf)?;
        let engine_epoch = Arc::new(AtomicU32::new(0));
        let engine_follows = match options.datapath.has_engine() {
            true => Some((
                engine_epoch.clone(),
                take(&mut ebpf, OBJECT, MAP_HOST_ADDRS)?,
            )),
            false => None,
        };
        // Started before the legs are attached: no packet is forwarded with a hop cached before
        // the watch, nor steered before `HOST_ADDRS` holds the gateway's addresses.
        let epoch_watch = match options.forward == ForwardMode::Xdp || engine_follows.is_some() {
            true => Some(next_hops::watch(next_hops::Followers {
                epoch: watched,
                engine: engine_follows,
            })?),
            false => None,
        };
        let xsks = take(&mut ebpf, OBJECT, MAP_XSKS)?;
        let mut pins = match &options.pin_dir {
            Some(dir) => Some(PinKeeper::hold(dir, pinned_maps())?),
            None => None,
        };
        let (attached, pinned_links) = attach::attach_legs(&mut ebpf, &options)?;
        for keeper in pins.iter_mut() {
            for link in LINK_PINS {
                keeper.hold_one(link)?;
            }
        }
        let external_mac = interface_mac(&options.external_iface)?;
        let engine = (options.datapath.has_engine()).then(|| EngineHandles {
            xsks,
            epoch: engine_epoch,
            legs: (attached[0].ifindex, attached[1].ifindex),
        });
        Ok(Gateway {
            core,
            ebpf,
            attached,
            _pinned_links: pinned_links,
            options,
            next_hop_epoch,
            _epoch_watch: epoch_watch,
            engine,
            snat,
            lease,
            ownership: None,
            external_mac,
            pins,
        })
    }

    /// The handles the AF_XDP engine needs (`--datapath afxdp|hybrid`; once).
    pub fn engine_handles(&mut self) -> Option<EngineHandles> {
        self.engine.take()
    }

    pub fn attached(&self) -> &[AttachedInterface] {
        &self.attached
    }

    /// Installs `tables` as a new generation and switches to it (see
    /// [`portcullis_bpf::Generations`]). On error before the switch the active generation is
    /// untouched.
    pub fn apply(&mut self, tables: &GatewayTables) -> Result<ApplyStats> {
        let core = &mut self.core;
        (core.generations).apply(&mut core.maps, tables, |_, _| Ok(Default::default()))
    }

    /// Replaces the SNAT configuration (see [`SnatConfig`]): validated as a whole first (a
    /// configuration that cannot be enforced is refused with [`Error::InvalidSnat`] and nothing
    /// changes), then written new entries first, stale ones after; translations already made keep
    /// their mapping. Returns the entries written and deleted.
    ///
    /// Once [`Gateway::set_egress_ownership`] was called, the ownership it set decides which
    /// egress addresses are answered for, not the configuration's `egress_ips`: an address the
    /// update adds is answered for only if owned.
    pub fn set_snat(&mut self, cfg: &SnatConfig) -> Result<(usize, usize)> {
        let mut tables = cfg.tables(self.external_mac)?;
        if let Some(owned) = &self.ownership {
            for (ip, pool) in tables.egress_ips.iter_mut() {
                pool.answer = owned.contains(ip) as u8;
            }
        }
        let (written, deleted) = self.snat.write(&tables)?;
        self.set_snat_flag()?;
        Ok((written, deleted))
    }

    /// Highly available gateways: this gateway answers ARP/ND for the egress addresses of `owned`
    /// and for no other (from now on, also over later [`Gateway::set_snat`] calls: the daemon
    /// that elects the owners decides, not the configuration), while the lease holds:
    /// `lease_until_ns` is a time of the flow clock ([`monotonic_coarse_ns`]) after which the
    /// program answers for none (see [`Gateway::renew_lease`]); `None`: no lease, the answers
    /// stand until changed. An owned address the configuration does not have yet is answered for
    /// once a configuration adds it. Addresses given up go quiet before the lease is written and
    /// new ones are claimed after it: no address given up is answered for under the new lease,
    /// none claimed under the old one.
    pub fn set_egress_ownership(
        &mut self,
        owned: &BTreeSet<IpAddr>,
        lease_until_ns: Option<u64>,
    ) -> Result<()> {
        let owned: BTreeSet<[u8; 16]> = owned.iter().map(|ip| snat::key_of(*ip)).collect();
        self.snat.set_answers(&owned, 0)?;
        self.write_lease(lease_until_ns.map_or(SNAT_NO_LEASE, |t| t.max(1)))?;
        self.snat.set_answers(&owned, 1)?;
        self.ownership = Some(owned);
        Ok(())
    }

    /// Extends (or shortens) the lease to flow-clock time `until_ns`: the daemon renews it while
    /// it lives, a little ahead of the detection time of its peers, so a gateway whose daemon
    /// died stops answering for its egress addresses before another one takes them over. A time
    /// already past stops the answers at once (fencing).
    pub fn renew_lease(&mut self, until_ns: u64) -> Result<()> {
        self.write_lease(until_ns.max(1))
    }

    /// The lease in force: `None` when there is none (the answers stand until changed).
    pub fn lease(&self) -> Result<Option<u64>> {
        let lease = (self.lease.get(&0, 0)).map_err(portcullis_bpf::map_err(MAP_SNAT_LEASE))?;
        Ok((lease != SNAT_NO_LEASE).then_some(lease))
    }

    fn write_lease(&mut self, lease: SnatLease) -> Result<()> {
        (self.lease.set(0, lease, 0)).map_err(portcullis_bpf::map_err(MAP_SNAT_LEASE))
    }

    /// Sends a gratuitous ARP (IPv4) or an unsolicited Neighbor Advertisement (IPv6) for egress
    /// address `ip` out of the external leg with its MAC (see [`announce_egress_ip`]); from the
    /// gateway's network namespace.
    pub fn announce_egress_ip(&self, ip: IpAddr) -> std::io::Result<()> {
        announce_egress_ip(self.attached[1].ifindex, self.external_mac, ip)
    }

    /// Every flow of both tables and every translation, as replicated entries for the peers of a
    /// highly available group; with `changed_since_ns`, only the flows seen and the translations
    /// made since that flow-clock time (see `replica` for the margin a delta needs).
    pub fn export_replicas(&self, changed_since_ns: Option<u64>) -> Result<Vec<Replica>> {
        let translations = Some(&self.snat.translations);
        Ok(replica::export(
            &self.core.maps,
            translations,
            changed_since_ns,
        ))
    }

    /// Writes a peer's replicated entries into this gateway's flow and translation tables, never
    /// over a more recent flow nor over a different translation (see `replica` for the rules);
    /// says what became of each entry.
    pub fn import_replicas(&mut self, entries: &[Replica]) -> Result<ImportStats> {
        let generation = self.core.maps.generation()?;
        let maps = &mut self.core.maps;
        let stats = replica::import(maps, &mut self.snat.translations, generation, entries)?;
        // Translations imported: the program must look them up.
        self.set_snat_flag()?;
        Ok(stats)
    }

    /// `CONFIG_FLAG_SNAT` on while some pod has a class or translations remain, off otherwise
    /// (SNAT then costs the program nothing).
    fn set_snat_flag(&mut self) -> Result<()> {
        let config = self.core.maps.config()?;
        let flags = match self.snat.in_use() {
            true => config.flags | CONFIG_FLAG_SNAT,
            false => config.flags & !CONFIG_FLAG_SNAT,
        };
        if flags != config.flags {
            self.core.maps.set_flags(flags)?;
        }
        Ok(())
    }

    /// Translations in use, per egress address the pool's use, and the SNAT counters.
    pub fn snat_status(&self) -> Result<SnatStatus> {
        let enabled = self.core.maps.config()?.flags & CONFIG_FLAG_SNAT != 0;
        self.snat.status(enabled)
    }

    /// Every translation, both directions (outbound: pod → remote keyed, egress address and port
    /// as value; inbound: remote → egress keyed, pod and port as value).
    pub fn snat_translations(&self) -> Vec<(NatKey, NatValue)> {
        self.snat.translations()
    }

    /// Deletes the translations whose pod flow is gone (see `snat_maps`); returns how many
    /// connections'. [`Datapath::gc_flows`] runs it after the flow GC.
    pub fn gc_snat(&mut self) -> Result<usize> {
        let deleted = self.snat.gc(&self.core.maps)?;
        self.set_snat_flag()?;
        Ok(deleted)
    }

    pub fn status(&self) -> Result<Status> {
        Ok(Status {
            attached: self.attached.clone(),
            mode: self.options.xdp_mode,
            forward: self.options.forward,
            datapath: self.options.datapath,
            next_hop_epoch: self.next_hop_epoch()?,
            tables: (self.core.maps).status(self.core.generations.group_policies())?,
            snat: self.snat_status()?,
        })
    }

    /// `NEXT_HOP_EPOCH` in force.
    pub fn next_hop_epoch(&self) -> Result<u32> {
        next_hops::current(&self.next_hop_epoch)
    }

    /// Runs `packet` through a program of the object with `BPF_PROG_TEST_RUN`, `repeat` times, as
    /// if received on `ingress_ifindex` (which must exist in the calling thread's network
    /// namespace). Used by the packet-fixture tests and the benchmarks.
    pub fn test_run(
        &mut self,
        which: TestProgram,
        ingress_ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        let name = match which {
            TestProgram::Gateway => PROGRAM_GATEWAY,
            TestProgram::Pass => PROGRAM_PASS,
        };
        let prog = program::<Xdp>(&mut self.ebpf, OBJECT, name)?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (u32 each, host order).
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        portcullis_bpf::test_run(prog, packet, Some(&ctx), repeat)
    }

    /// Removes the pins of maps and links under the pin directory: after this process exits the
    /// program is detached and the maps freed.
    pub fn unpin(self) -> Result<()> {
        if let Some(dir) = &self.options.pin_dir {
            for name in pinned_maps().chain(LINK_PINS) {
                remove_pin(&dir.join(name))?;
            }
        }
        Ok(())
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.options.pin_dir.as_deref()
    }

    /// Pins again every map and link whose pin was removed under us (see [`PinKeeper`]);
    /// returns their names.
    pub fn restore_pins(&self) -> Result<Vec<String>> {
        self.pins
            .as_ref()
            .map_or(Ok(Vec::new()), PinKeeper::restore)
    }
}

/// The MAC address of interface `name` in the calling thread's network namespace
/// (`SIOCGIFHWADDR`; sysfs may show another namespace's interfaces).
fn interface_mac(name: &str) -> Result<[u8; 6]> {
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        family: u16,
        addr: [u8; 14],
        _pad: [u8; 8],
    }
    let io = |source| Error::Io {
        path: PathBuf::from(format!("SIOCGIFHWADDR {name}")),
        source,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        family: 0,
        addr: [0; 14],
        _pad: [0; 8],
    };
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(Error::UnknownInterface(name.to_owned()));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: plain socket call; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: `req` is a valid `struct ifreq` for SIOCGIFHWADDR; fd is ours.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req as *mut IfReq) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(io(err));
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req.addr[..6]);
    Ok(mac)
}

/// Two handles on `NEXT_HOP_EPOCH` (the watcher thread owns one).
fn epoch_handles(ebpf: &mut Ebpf) -> Result<(Array<MapData, u32>, Array<MapData, u32>)> {
    let name = MAP_NEXT_HOP_EPOCH;
    let missing = Error::MissingMap {
        name,
        object: OBJECT,
    };
    let Some(aya::maps::Map::Array(data)) = ebpf.take_map(name) else {
        return Err(missing);
    };
    let fd = (data.fd().as_fd().try_clone_to_owned()).map_err(Error::Netlink)?;
    let twin = MapData::from_fd(fd).map_err(portcullis_bpf::map_err(name))?;
    let array =
        |d| Array::try_from(aya::maps::Map::Array(d)).map_err(portcullis_bpf::map_err(name));
    Ok((array(data)?, array(twin)?))
}
