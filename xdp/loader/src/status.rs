//! What the loaders report about the maps: counters, drops by group and the table status both
//! programs share (each loader's status adds what is its own).

use portcullis_common::*;
use serde::Serialize;

/// `COUNTERS`, summed over CPUs (one index space for both programs: a counter of the other
/// program's only stays 0).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub pass_flow: u64,
    pub pass_policy: u64,
    pub pass_unselected: u64,
    pub pass_non_ip: u64,
    pub drop_policy: u64,
    pub drop_malformed: u64,
    pub drop_fragment: u64,
    /// Gateway: allowed packets forwarded in XDP.
    pub forward_xdp: u64,
    /// Gateway: of those, forwarded with the flow's cached next hop (no FIB lookup).
    pub forward_cached: u64,
    /// Gateway: allowed packets handed to the kernel.
    pub pass_stack: u64,
    /// Node: flows recorded by the origin program (connections opened by local pods).
    pub origin_recorded: u64,
    /// Node: dropped because the pod-side address is no pod in force (a pod not enforced yet,
    /// spoofing).
    pub drop_unknown_pod: u64,
    /// Node: from the node's own addresses to a local pod (always allowed).
    pub pass_host: u64,
    /// New flows recorded (embryonic).
    pub flow_new: u64,
    /// Flows confirmed by their responder (moved to the confirmed table).
    pub flow_confirmed: u64,
}

impl Counters {
    pub(crate) fn from_sums(sums: &[u64; COUNTER_COUNT as usize]) -> Counters {
        let c = |i: u32| sums[i as usize];
        Counters {
            pass_flow: c(COUNTER_PASS_FLOW),
            pass_policy: c(COUNTER_PASS_POLICY),
            pass_unselected: c(COUNTER_PASS_UNSELECTED),
            pass_non_ip: c(COUNTER_PASS_NON_IP),
            drop_policy: c(COUNTER_DROP_POLICY),
            drop_malformed: c(COUNTER_DROP_MALFORMED),
            drop_fragment: c(COUNTER_DROP_FRAGMENT),
            forward_xdp: c(COUNTER_FORWARD_XDP),
            forward_cached: c(COUNTER_FORWARD_CACHED),
            pass_stack: c(COUNTER_PASS_STACK),
            origin_recorded: c(COUNTER_ORIGIN),
            drop_unknown_pod: c(COUNTER_DROP_UNKNOWN_POD),
            pass_host: c(COUNTER_PASS_HOST),
            flow_new: c(COUNTER_FLOW_NEW),
            flow_confirmed: c(COUNTER_FLOW_CONFIRMED),
        }
    }
}

/// Drops charged to one policy group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupDrops {
    /// Group id as in the maps (parity bit included).
    pub group: u32,
    /// Policies of that group, when it belongs to a generation this process wrote.
    pub policies: Vec<String>,
    pub packets: u64,
}

/// The shared maps in the generation in force.
#[derive(Clone, Debug, Serialize)]
pub struct TableStatus {
    pub generation: u32,
    pub revalidate: bool,
    pub endpoints: usize,
    pub prefixes: usize,
    pub rule_sets: usize,
    pub flows: FlowCounts,
    pub counters: Counters,
    pub drops_by_group: Vec<GroupDrops>,
}

/// Entries and capacity of the two flow tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowCounts {
    /// Confirmed flows (`FLOWS`).
    pub confirmed: usize,
    pub confirmed_capacity: u32,
    /// Flows waiting for their responder (`EMBRYONIC_FLOWS`).
    pub embryonic: usize,
    pub embryonic_capacity: u32,
}

impl FlowCounts {
    pub fn new(confirmed: usize, embryonic: usize) -> FlowCounts {
        FlowCounts {
            confirmed,
            confirmed_capacity: MAX_FLOWS,
            embryonic,
            embryonic_capacity: MAX_EMBRYONIC_FLOWS,
        }
    }

    /// Flows in both tables.
    pub fn total(&self) -> usize {
        self.confirmed + self.embryonic
    }
}

impl std::fmt::Display for FlowCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} confirmed (of {}), {} embryonic (of {})",
            self.confirmed, self.confirmed_capacity, self.embryonic, self.embryonic_capacity
        )
    }
}
