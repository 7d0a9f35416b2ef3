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
    /// New flows written over a stale embryonic entry of the same connection.
    pub embryonic_reused: u64,
    /// Flows deleted by `--revalidate`, per table.
    pub revoked_embryonic: u64,
    pub revoked_confirmed: u64,
    /// Flows deleted by the loaders' flow GC (expired) or cleared, per table.
    pub gc_embryonic: u64,
    pub gc_confirmed: u64,
    /// Gateway: packets handed to the AF_XDP engine.
    pub to_engine: u64,
}

impl Counters {
    /// The counters of `COUNTER_*`-indexed sums (the programs' over CPUs, or the AF_XDP
    /// engine's).
    pub fn from_sums(sums: &[u64; COUNTER_COUNT as usize]) -> Counters {
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
            embryonic_reused: c(COUNTER_EMBRYONIC_REUSED),
            revoked_embryonic: c(COUNTER_REVOKED_EMBRYONIC),
            revoked_confirmed: c(COUNTER_REVOKED_CONFIRMED),
            gc_embryonic: c(COUNTER_GC_EMBRYONIC),
            gc_confirmed: c(COUNTER_GC_CONFIRMED),
            to_engine: c(COUNTER_TO_ENGINE),
        }
    }
}

/// `FLOW_RECORD_COUNTERS`, summed over CPUs: the allow records of new flows (`monitor --type
/// verdict`) written to the event ring, and those not written (over the per-CPU rate limit, or
/// the ring full). Zero for pins of a version without flow records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowRecordCounters {
    pub written: u64,
    pub lost: u64,
}

impl FlowRecordCounters {
    /// The counters of `FLOW_RECORD_COUNTER_*`-indexed sums (the programs' over CPUs, or the
    /// AF_XDP engine's).
    pub fn from_sums(sums: &[u64; FLOW_RECORD_COUNTER_COUNT as usize]) -> FlowRecordCounters {
        FlowRecordCounters {
            written: sums[FLOW_RECORD_COUNTER_WRITTEN as usize],
            lost: sums[FLOW_RECORD_COUNTER_LOST as usize],
        }
    }
}

impl std::fmt::Display for FlowRecordCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (lost {})", self.written, self.lost)
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
    /// The group's prefixes (`PREFIXES` entries that are one).
    pub prefixes: usize,
    /// `PREFIXES` entries (prefixes + markers) and their memory.
    pub prefix_memory: PrefixMemory,
    pub rule_sets: usize,
    pub flows: FlowCounts,
    pub counters: Counters,
    /// Allow records of new flows written and lost (`FLOW_RECORD_COUNTERS`).
    pub flow_records: FlowRecordCounters,
    pub drops_by_group: Vec<GroupDrops>,
}

/// Kernel memory of one element of a `NO_PREALLOC` hash map: the `htab_elem` header (48 bytes on
/// 64-bit kernels) plus key and value each rounded up to 8, plus the allocator's 8-byte list
/// node, rounded up to the `bpf_mem_alloc` size class (8, 16, 32, 64, 96, 128, 192, 256, ...).
pub const fn htab_element_bytes(key: usize, value: usize) -> usize {
    let need = 48 + key.next_multiple_of(8) + value.next_multiple_of(8) + 8;
    let mut class = 8;
    while class < need {
        class = match class {
            64 => 96,
            96 => 128,
            128 => 192,
            192 => 256,
            c => c * 2,
        };
    }
    class
}

/// Bytes of one `PREFIXES` element: 24-byte key, 8-byte value → 88 → the 96-byte class.
pub const PREFIX_ENTRY_BYTES: usize = htab_element_bytes(
    std::mem::size_of::<PrefixKey>(),
    std::mem::size_of::<PrefixValue>(),
);

/// `PREFIXES` of one generation: entries (prefixes + markers) and what they cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PrefixMemory {
    /// Hash entries: prefixes plus markers that are no prefix.
    pub entries: usize,
    /// Markers that are no prefix.
    pub markers: usize,
    /// [`PREFIX_ENTRY_BYTES`].
    pub bytes_per_entry: usize,
    /// `entries × bytes_per_entry / prefixes` (0 without prefixes).
    pub bytes_per_prefix: f64,
    /// The kernel's bucket array, allocated at map creation whatever the fill (both
    /// generations): 16 bytes × `MAX_PREFIXES` rounded up to a power of two.
    pub bucket_bytes: u64,
}

impl PrefixMemory {
    pub fn new(prefixes: usize, entries: usize) -> PrefixMemory {
        let bytes = entries * PREFIX_ENTRY_BYTES;
        PrefixMemory {
            entries,
            markers: entries.saturating_sub(prefixes),
            bytes_per_entry: PREFIX_ENTRY_BYTES,
            bytes_per_prefix: if prefixes == 0 {
                0.0
            } else {
                bytes as f64 / prefixes as f64
            },
            bucket_bytes: 16 * u64::from(MAX_PREFIXES.next_power_of_two()),
        }
    }
}

impl std::fmt::Display for PrefixMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} entries ({} markers), {} B each, {:.0} B per prefix, + {} MiB of buckets",
            self.entries,
            self.markers,
            self.bytes_per_entry,
            self.bytes_per_prefix,
            self.bucket_bytes >> 20
        )
    }
}

/// Entries, capacity and LRU evictions of the two flow tables.
///
/// The kernel does not count LRU evictions; they are derived from the counters as what entered a
/// table and did not leave it another way and is not in it: embryonic = new flows (not written
/// over a stale entry of theirs) − confirmed − revoked − deleted by GC − present; confirmed =
/// confirmed − revoked − deleted by GC − present. Counters and entries are read one after the
/// other while packets flow, so under load the figure is off by the packets in between (never
/// below 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowCounts {
    /// Confirmed flows (`FLOWS`).
    pub confirmed: usize,
    pub confirmed_capacity: u32,
    pub confirmed_evicted: u64,
    /// Flows waiting for their responder (`EMBRYONIC_FLOWS`).
    pub embryonic: usize,
    pub embryonic_capacity: u32,
    pub embryonic_evicted: u64,
}

impl FlowCounts {
    pub fn new(confirmed: usize, embryonic: usize, c: &Counters) -> FlowCounts {
        let entered_embryonic = c.flow_new.saturating_sub(c.embryonic_reused);
        let left_embryonic = c.flow_confirmed + c.revoked_embryonic + c.gc_embryonic;
        let left_confirmed = c.revoked_confirmed + c.gc_confirmed;
        FlowCounts {
            confirmed,
            confirmed_capacity: MAX_FLOWS,
            confirmed_evicted: (c.flow_confirmed)
                .saturating_sub(left_confirmed)
                .saturating_sub(confirmed as u64),
            embryonic,
            embryonic_capacity: MAX_EMBRYONIC_FLOWS,
            embryonic_evicted: entered_embryonic
                .saturating_sub(left_embryonic)
                .saturating_sub(embryonic as u64),
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
            "{} confirmed (of {}, {} evicted), {} embryonic (of {}, {} evicted)",
            self.confirmed,
            self.confirmed_capacity,
            self.confirmed_evicted,
            self.embryonic,
            self.embryonic_capacity,
            self.embryonic_evicted
        )
    }
}
