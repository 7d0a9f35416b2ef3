//! [`Core`]: what a loaded program object has whichever program it is (the shared maps, the
//! generations written into them, the drop-event ring), the operations on it both loaders offer
//! ([`Datapath`]) and a `BPF_PROG_TEST_RUN` of one of its programs.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use aya::programs::{TestRun, TestRunOptions};
use aya::Ebpf;
use portcullis_common::{FlowKey, FlowValue, MAP_DROP_EVENTS};
use tracing::info;

use crate::error::Result;
use crate::events::DropEvents;
use crate::generations::Generations;
use crate::maps::PolicyMaps;
use crate::object::take;
use crate::tables::PolicyTables;

pub struct Core<T> {
    pub maps: PolicyMaps,
    pub generations: Generations<T>,
    drop_events: Option<RingBuf<MapData>>,
}

impl<T: PolicyTables> Core<T> {
    /// Takes the shared maps out of the loaded `object` and sets the `CONFIG_FLAG_*` bits to
    /// `flags` (keeping the generation in force). `adopting`: the maps come from pins.
    pub fn take(
        ebpf: &mut Ebpf,
        object: &'static str,
        adopting: bool,
        flags: u32,
    ) -> Result<Core<T>> {
        let mut maps = PolicyMaps::take(ebpf, object)?;
        let config = maps.set_flags(flags)?;
        if adopting {
            info!(
                object,
                generation = config.generation,
                "adopted pinned maps"
            );
        }
        Ok(Core {
            maps,
            generations: Generations::new(adopting),
            drop_events: Some(take(ebpf, object, MAP_DROP_EVENTS)?),
        })
    }
}

/// What both loaders do with their [`Core`].
pub trait Datapath {
    type Tables: PolicyTables;

    fn core(&self) -> &Core<Self::Tables>;
    fn core_mut(&mut self) -> &mut Core<Self::Tables>;

    /// Active generation parity.
    fn generation(&self) -> Result<u32> {
        self.core().maps.generation()
    }

    /// Deletes expired flows; returns how many.
    fn gc_flows(&mut self) -> Result<usize> {
        self.core_mut().maps.gc_flows()
    }

    /// Deletes every flow (live ones too: their next packets are judged as new connections).
    fn clear_flows(&mut self) -> Result<usize> {
        self.core_mut().maps.clear_flows()
    }

    /// All flows currently in the table (expired ones included until GC).
    fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.core().maps.flows()
    }

    /// The drop-event ring buffer, for one reader (e.g. `monitor`). `None` once taken.
    fn take_drop_events(&mut self) -> Option<DropEvents> {
        self.core_mut().drop_events.take().map(DropEvents::new)
    }
}

/// One `BPF_PROG_TEST_RUN`: the program's return code `A`, the kernel's average time per run and
/// the packet as the program left it.
#[derive(Clone, Debug)]
pub struct TestRunOutcome<A> {
    pub action: A,
    pub duration: Duration,
    pub packet: Vec<u8>,
}

/// Runs `packet` through `prog` (loaded first if needed) `repeat` times, with context `ctx`.
pub fn test_run<P>(
    prog: &mut P,
    packet: &[u8],
    ctx: Option<&[u8]>,
    repeat: u32,
) -> Result<TestRunOutcome<u32>>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + 256];
    let result = prog.test_run(TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        ctx_in: ctx,
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
