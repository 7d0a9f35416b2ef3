//! The types of the maps both programs have, sized from `portcullis_common::maps` (which says what
//! each holds and who writes it), and [`datapath_maps!`], which declares them in a program and
//! gives the shared pipeline access to them through [`Maps`].

use aya_ebpf::btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use portcullis_common::*;

use crate::parse::Packet;

/// `BPF_F_NO_PREALLOC`: the policy maps are written only by the loader, so their memory grows with
/// the cluster instead of being reserved for `max_entries` up front.
pub const NO_PREALLOC: usize = 1;

pub type ConfigMap = Array<Config, 1>;
pub type EndpointMap = HashMap<EndpointKey, EndpointValue, { MAX_ENDPOINTS as usize }, NO_PREALLOC>;
pub type PrefixMap = HashMap<PrefixKey, PrefixValue, { MAX_PREFIXES as usize }, NO_PREALLOC>;
pub type PrefixLengthMap = HashMap<u32, PrefixLengths, { MAX_PREFIX_GROUPS as usize }, NO_PREALLOC>;
pub type RuleSetMap = HashMap<u32, RuleSet, { MAX_RULE_SETS as usize }, NO_PREALLOC>;
pub type FlowMap = LruHashMap<FlowKey, ConfirmedFlow, { MAX_FLOWS as usize }>;
pub type EmbryonicFlowMap = LruHashMap<FlowKey, FlowValue, { MAX_EMBRYONIC_FLOWS as usize }>;
pub type CounterMap = PerCpuArray<u64, { COUNTER_COUNT as usize }>;
pub type GroupDropMap = PerCpuHashMap<u32, u64, { MAX_GROUP_DROPS as usize }>;
pub type DropEventRing = RingBuf<DropEvent, { DROP_EVENTS_BYTES as usize }>;
/// A per-CPU one-second rate-limit window, `[window start ns, records sent]` (one slot).
pub type RateWindowMap = PerCpuArray<[u64; 2], 1>;
pub type FlowRecordCounterMap = PerCpuArray<u64, { FLOW_RECORD_COUNTER_COUNT as usize }>;
pub type IdentityMap =
    HashMap<IdentityKey, IdentityValue, { MAX_IDENTITIES as usize }, NO_PREALLOC>;
pub type PeerMap = HashMap<PeerKey, PeerValue, { MAX_PEERS as usize }, NO_PREALLOC>;

/// The shared maps of one program, for the pipeline ([`crate::flow`], [`crate::policy`]).
/// Implemented by [`datapath_maps!`]; the program names no map of it by hand.
pub trait Maps {
    fn config() -> &'static ConfigMap;
    fn endpoints() -> &'static EndpointMap;
    fn prefixes() -> &'static PrefixMap;
    fn prefix_lengths() -> &'static PrefixLengthMap;
    fn rule_sets() -> &'static RuleSetMap;
    fn flows() -> &'static FlowMap;
    fn embryonic_flows() -> &'static EmbryonicFlowMap;
    fn counters() -> &'static CounterMap;
    fn drops_by_group() -> &'static GroupDropMap;
    fn drop_events() -> &'static DropEventRing;
    fn drop_event_window() -> &'static RateWindowMap;
    fn flow_record_counters() -> &'static FlowRecordCounterMap;
    fn flow_record_window() -> &'static RateWindowMap;
    /// The rule set of `group`'s selector rules for the pod at `peer` in generation `g` (node hook:
    /// `IDENTITIES` → `PEERS`); `None` for a program without selectors (the gateway).
    fn selector_rule_set(group: u32, peer: &[u8; 16], g: u32) -> Option<u32>;
}

/// Adds one to counter `idx` (`COUNTER_*`) of this CPU.
#[inline(always)]
pub fn count<M: Maps>(idx: u32) {
    add_one(M::counters(), idx);
}

/// Adds one to flow-record counter `idx` (`FLOW_RECORD_COUNTER_*`) of this CPU.
#[inline(always)]
pub fn count_flow_record<M: Maps>(idx: u32) {
    add_one(M::flow_record_counters(), idx);
}

#[inline(always)]
fn add_one<const N: usize>(counters: &PerCpuArray<u64, N>, idx: u32) {
    if let Some(c) = counters.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// The active generation parity and `CONFIG_FLAG_*` bits.
#[inline(always)]
pub fn config<M: Maps>() -> (u32, u32) {
    match M::config().get(0) {
        Some(c) => (c.generation & 1, c.flags),
        None => (0, 0),
    }
}

/// Node hook: the selector-rule lookup through its `IDENTITIES` and `PEERS` maps.
#[inline(always)]
pub fn selector_lookup(
    identities: &IdentityMap,
    peers: &PeerMap,
    group: u32,
    peer: &[u8; 16],
    g: u32,
) -> Option<u32> {
    let ik = IdentityKey {
        addr: *peer,
        generation: g as u8,
        _pad: crate::words::zero_pad3(),
    };
    // SAFETY: value pointer from a successful lookup.
    let identity = unsafe { (*identities.get_ptr(&ik)?).identity };
    let pk = PeerKey { group, identity };
    // SAFETY: value pointer from a successful lookup.
    Some(unsafe { (*peers.get_ptr(&pk)?).rule_set })
}

/// The per-CPU work area of one packet (the parsed packet, its flow key and its policy query):
/// too large for the BPF stack, so programs keep it in a per-CPU array.
#[repr(C)]
pub struct Work {
    pub pkt: Packet,
    pub key: FlowKey,
    pub query: crate::policy::Query,
    /// `CONFIG_FLAG_*` bits of the configuration in force.
    pub flags: u32,
    /// `flow::flow_clock` when the pipeline judged the packet.
    pub now: u64,
    /// The entry of a new or newly confirmed flow, built here before it is inserted.
    pub entry: ConfirmedFlow,
}

/// Declares the shared maps (named as in `portcullis_common::maps`) in the calling program and
/// implements [`Maps`] for the unit type `$maps` over them. `selectors: $f` names the program's
/// selector lookup (`fn(group, peer, generation) -> Option<u32>`), or `selectors: none`.
#[macro_export]
macro_rules! datapath_maps {
    ($maps:ident, selectors: none) => {
        $crate::datapath_maps!(@declare $maps, |_group: u32, _peer: &[u8; 16], _g: u32| None);
    };
    ($maps:ident, selectors: $f:path) => {
        $crate::datapath_maps!(@declare $maps, $f);
    };
    (@declare $maps:ident, $selectors:expr) => {
        #[btf_map]
        static CONFIG: $crate::maps::ConfigMap = $crate::maps::ConfigMap::new();
        #[btf_map]
        static ENDPOINTS: $crate::maps::EndpointMap = $crate::maps::EndpointMap::new();
        #[btf_map]
        static PREFIXES: $crate::maps::PrefixMap = $crate::maps::PrefixMap::new();
        #[btf_map]
        static PREFIX_LENGTHS: $crate::maps::PrefixLengthMap =
            $crate::maps::PrefixLengthMap::new();
        #[btf_map]
        static RULE_SETS: $crate::maps::RuleSetMap = $crate::maps::RuleSetMap::new();
        #[btf_map]
        static FLOWS: $crate::maps::FlowMap = $crate::maps::FlowMap::new();
        #[btf_map]
        static EMBRYONIC_FLOWS: $crate::maps::EmbryonicFlowMap =
            $crate::maps::EmbryonicFlowMap::new();
        #[btf_map]
        static COUNTERS: $crate::maps::CounterMap = $crate::maps::CounterMap::new();
        #[btf_map]
        static DROPS_BY_GROUP: $crate::maps::GroupDropMap = $crate::maps::GroupDropMap::new();
        #[btf_map]
        static DROP_EVENTS: $crate::maps::DropEventRing = $crate::maps::DropEventRing::new();
        #[btf_map]
        static DROP_EVENT_WINDOW: $crate::maps::RateWindowMap = $crate::maps::RateWindowMap::new();
        #[btf_map]
        static FLOW_RECORD_COUNTERS: $crate::maps::FlowRecordCounterMap =
            $crate::maps::FlowRecordCounterMap::new();
        #[btf_map]
        static FLOW_RECORD_WINDOW: $crate::maps::RateWindowMap =
            $crate::maps::RateWindowMap::new();

        /// This program's shared maps, for the pipeline.
        struct $maps;

        impl $crate::maps::Maps for $maps {
            #[inline(always)]
            fn config() -> &'static $crate::maps::ConfigMap {
                &CONFIG
            }
            #[inline(always)]
            fn endpoints() -> &'static $crate::maps::EndpointMap {
                &ENDPOINTS
            }
            #[inline(always)]
            fn prefixes() -> &'static $crate::maps::PrefixMap {
                &PREFIXES
            }
            #[inline(always)]
            fn prefix_lengths() -> &'static $crate::maps::PrefixLengthMap {
                &PREFIX_LENGTHS
            }
            #[inline(always)]
            fn rule_sets() -> &'static $crate::maps::RuleSetMap {
                &RULE_SETS
            }
            #[inline(always)]
            fn flows() -> &'static $crate::maps::FlowMap {
                &FLOWS
            }
            #[inline(always)]
            fn embryonic_flows() -> &'static $crate::maps::EmbryonicFlowMap {
                &EMBRYONIC_FLOWS
            }
            #[inline(always)]
            fn counters() -> &'static $crate::maps::CounterMap {
                &COUNTERS
            }
            #[inline(always)]
            fn drops_by_group() -> &'static $crate::maps::GroupDropMap {
                &DROPS_BY_GROUP
            }
            #[inline(always)]
            fn drop_events() -> &'static $crate::maps::DropEventRing {
                &DROP_EVENTS
            }
            #[inline(always)]
            fn drop_event_window() -> &'static $crate::maps::RateWindowMap {
                &DROP_EVENT_WINDOW
            }
            #[inline(always)]
            fn flow_record_counters() -> &'static $crate::maps::FlowRecordCounterMap {
                &FLOW_RECORD_COUNTERS
            }
            #[inline(always)]
            fn flow_record_window() -> &'static $crate::maps::RateWindowMap {
                &FLOW_RECORD_WINDOW
            }
            #[inline(always)]
            fn selector_rule_set(group: u32, peer: &[u8; 16], g: u32) -> Option<u32> {
                ($selectors)(group, peer, g)
            }
        }
    };
}
