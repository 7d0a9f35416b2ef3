//! User-space side of the Portcullis node hook: loads the tc programs, attaches them to the
//! host-side veth of each local pod as pods come and go ([`links`]), and keeps the identity and
//! policy tables in step with compiled [`NodeTables`] through the shared update protocol
//! ([`portcullis_bpf::Generations`]). The maps both programs have, their status, flow GC and drop
//! events come from the loader core `portcullis-bpf`; what is here is the node's own: its links,
//! `IDENTITIES`, `PEERS` and `HOST_ADDRS`.
//!
//! Per pod veth two programs run (TCX links on the tc/clsact hooks, see the README for why):
//! `portcullis_node_deliver` on **egress** (into the pod) decides pod-to-pod traffic after the
//! node's service translation; `portcullis_node_origin` on **ingress** (from the pod) records the
//! flows the pod opens so their replies match a flow.

mod links;
mod own_maps;
mod pinned;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData};
use aya::programs::SchedClassifier;
use aya::util::KernelVersion;
use aya::Ebpf;
use portcullis_bpf::object::{program, remove_pin, take};
use portcullis_bpf::PinKeeper;
pub use portcullis_bpf::{
    generation_id, key_addr, ApplyStats, Core, Counters, Datapath, DropEvents, Error, GroupDrops,
    Result, TableStatus,
};
pub use portcullis_common::actions::{TC_ACT_OK, TC_ACT_SHOT};
pub use portcullis_common::flow_timeout_ns;
use portcullis_common::*;
use portcullis_policy::compile::node::NodeTables;
use serde::Serialize;

pub use links::AttachedInterface;
use links::Links;
pub use own_maps::OwnCounts;
use own_maps::OwnMaps;
pub use pinned::{PinnedNode, PinnedStatus};

/// The tc object built by `build.rs` from `node-hook/ebpf`.
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-node-ebpf"));

/// The object's name in error messages.
const OBJECT: &str = "node-hook";
const PROGRAM_DELIVER: &str = "portcullis_node_deliver";
const PROGRAM_ORIGIN: &str = "portcullis_node_origin";
const PROGRAM_PASS: &str = "tc_pass";

/// Every map of the programs; with a pin directory each is pinned there under its own name.
fn pinned_maps() -> impl Iterator<Item = &'static str> {
    (SHARED_PINNED_MAPS.into_iter()).chain([MAP_IDENTITIES, MAP_PEERS, MAP_HOST_ADDRS])
}

#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// bpffs directory for pinned maps and links; an existing set there is adopted.
    pub pin_dir: Option<PathBuf>,
    /// Re-check established flows against each new generation (a flow the new policy forbids is
    /// cut at its next packet).
    pub revalidate: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub attached: Vec<AttachedInterface>,
    #[serde(flatten)]
    pub own: OwnCounts,
    #[serde(flatten)]
    pub tables: TableStatus,
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

/// A test run's tc action ([`TC_ACT_OK`], [`TC_ACT_SHOT`]), time and packet.
pub type TestRunOutcome = portcullis_bpf::TestRunOutcome<i32>;

pub struct NodeHook {
    ebpf: Ebpf,
    options: NodeOptions,
    links: Links,
    core: Core<NodeTables>,
    own: OwnMaps,
    host_addrs: HashMap<MapData, [u8; 16], u8>,
    /// Our own descriptors of the pinned maps and links (with a pin directory), to pin them
    /// again when their pins are removed under us.
    pins: Option<PinKeeper>,
}

impl Datapath for NodeHook {
    type Tables = NodeTables;
    fn core(&self) -> &Core<NodeTables> {
        &self.core
    }
    fn core_mut(&mut self) -> &mut Core<NodeTables> {
        &mut self.core
    }
}

impl NodeHook {
    /// Loads the programs and prepares their maps. With a pin directory, pinned maps are reused
    /// and every pinned link found there gets the new program in place (no moment without
    /// enforcement); links whose interface is gone are unpinned.
    pub fn load(options: NodeOptions) -> Result<NodeHook> {
        let names: Vec<&str> = pinned_maps().collect();
        let (mut ebpf, adopting) = portcullis_bpf::object::load_pinned(
            options.pin_dir.as_deref(),
            &names,
            (OBJECT, PROGRAM_OBJECT),
        )?;
        for name in [PROGRAM_DELIVER, PROGRAM_ORIGIN] {
            program::<SchedClassifier>(&mut ebpf, OBJECT, name)?.load()?;
        }
        let flags = if options.revalidate {
            CONFIG_FLAG_REVALIDATE
        } else {
            0
        };
        let core = Core::take(&mut ebpf, OBJECT, adopting, flags)?;
        let tcx = KernelVersion::current()
            .map(|v| v >= KernelVersion::new(6, 6, 0))
            .unwrap_or(false);
        let mut links = Links::new(options.pin_dir.clone(), tcx);
        links.adopt_pinned(&mut ebpf)?;
        let pins = match &options.pin_dir {
            Some(dir) => {
                let names = pinned_maps()
                    .map(str::to_owned)
                    .chain(links.pin_names(None));
                Some(PinKeeper::hold(dir, names)?)
            }
            None => None,
        };
        Ok(NodeHook {
            pins,
            core,
            own: OwnMaps::take(&mut ebpf)?,
            host_addrs: take(&mut ebpf, OBJECT, MAP_HOST_ADDRS)?,
            ebpf,
            links,
            options,
        })
    }

    /// Attaches both programs to the pod veth `ifname` (host side) of the calling thread's
    /// network namespace: delivery checks on its egress, flow recording on its ingress. Already
    /// attached (or adopted) interfaces are left as they are.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachedInterface> {
        let attached = self.links.attach(&mut self.ebpf, ifname)?;
        if let Some(keeper) = self.pins.as_mut() {
            for name in self.links.pin_names(Some(ifname)) {
                keeper.hold_one(&name)?;
            }
        }
        Ok(attached)
    }

    /// Detaches both programs from `ifname` and removes their pins. Works after the interface is
    /// gone too (its links are then already inert).
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        let names = self.links.pin_names(Some(ifname));
        self.links.detach(&mut self.ebpf, ifname)?;
        for name in names {
            // Unpinned on purpose: not to be pinned again.
            if let Some(keeper) = self.pins.as_mut() {
                keeper.forget(&name);
            }
        }
        Ok(())
    }

    /// Pins again every map and link whose pin was removed under us (see [`PinKeeper`]);
    /// returns their names.
    pub fn restore_pins(&self) -> Result<Vec<String>> {
        self.pins
            .as_ref()
            .map_or(Ok(Vec::new()), PinKeeper::restore)
    }

    pub fn attached(&self) -> Vec<AttachedInterface> {
        self.links.attached()
    }

    /// Brings the inactive generation to `tables` by a delta and switches to it (see
    /// [`portcullis_bpf::Generations`]). On error before the switch the active generation is
    /// untouched.
    pub fn apply(&mut self, tables: &NodeTables) -> Result<ApplyStats> {
        let (core, own) = (&mut self.core, &mut self.own);
        (core.generations).apply(&mut core.maps, tables, |old, parity| {
            own.write_delta(old, tables, parity)
        })
    }

    /// Makes `addrs` (the node's own addresses) the set whose packets to local pods always pass;
    /// returns whether it changed.
    pub fn set_host_addrs(&mut self, addrs: &[IpAddr]) -> Result<bool> {
        portcullis_bpf::host_addrs::set_host_addrs(&mut self.host_addrs, addrs)
    }

    pub fn status(&self) -> Result<Status> {
        let tables = (self.core.maps).status(self.core.generations.group_policies())?;
        Ok(Status {
            attached: self.attached(),
            own: self.own.counts(tables.generation),
            tables,
        })
    }

    /// Runs `packet` (an Ethernet frame) through a program of the object with
    /// `BPF_PROG_TEST_RUN`, `repeat` times. The kernel runs it on an skb of the calling thread's
    /// loopback device. Used by the packet-fixture and differential tests and the benchmarks.
    pub fn test_run(
        &mut self,
        which: TestProgram,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutcome> {
        let name = match which {
            TestProgram::Deliver => PROGRAM_DELIVER,
            TestProgram::Origin => PROGRAM_ORIGIN,
            TestProgram::Pass => PROGRAM_PASS,
        };
        let prog = program::<SchedClassifier>(&mut self.ebpf, OBJECT, name)?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        let outcome = portcullis_bpf::test_run(prog, packet, None, repeat)?;
        Ok(TestRunOutcome {
            action: outcome.action as i32,
            duration: outcome.duration,
            packet: outcome.packet,
        })
    }

    /// Removes the pins of maps and links under the pin directory: after this process exits the
    /// programs are detached and the maps freed.
    pub fn unpin(mut self) -> Result<()> {
        self.links.unpin()?;
        if let Some(dir) = &self.options.pin_dir {
            for name in pinned_maps() {
                remove_pin(&dir.join(name))?;
            }
        }
        Ok(())
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.options.pin_dir.as_deref()
    }
}
