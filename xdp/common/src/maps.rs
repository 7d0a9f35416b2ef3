//! Every map of the two programs: its name (the kernel object's symbol, the pin file, the key the
//! loaders take it by), its capacity, what it holds and who writes it. The kernel crates declare
//! them from these sizes (`portcullis_ebpf_common::maps`), the loaders open them by these names.
//!
//! Shared by the gateway (XDP) and the node hook (tc):
//! - `CONFIG`: index 0 holds the active generation parity and the `CONFIG_FLAG_*` bits. Written by
//!   the loader; the generation switch is its single write.
//! - `ENDPOINTS`: (pod address, direction, generation) → policy group of every selected pod.
//!   Written by the loader per generation.
//! - `PREFIXES`: (group, prefix length, masked address) → rule set of the group's ipBlock rules:
//!   the group's prefixes and the markers that steer the binary search on prefix lengths (each
//!   with the rule set of the longest prefix containing it). Written by the loader per
//!   generation; group ids carry the generation bit.
//! - `PREFIX_LENGTHS`: group → its distinct prefix lengths, sorted (the search's steps). Written by
//!   the loader per generation, for groups with at least one prefix.
//! - `RULE_SETS`: rule-set id → allowed (protocol, port range) list. Written by the loader per
//!   generation.
//! - `FLOWS`: confirmed connections (normalised key → `ConfirmedFlow`: state and, on the gateway,
//!   the cached next hop of each direction; LRU). A flow enters it only when its responder
//!   answered (UDP and others: the first reply; TCP: the initiator's ACK after the SYN-ACK), so a
//!   flood of new flows cannot evict it. Written by the programs (promote, refresh, next-hop
//!   cache, revalidation delete) and by the loader's flow GC (delete expired).
//! - `EMBRYONIC_FLOWS`: flows not confirmed yet (LRU, its own capacity): every new flow starts
//!   here, and a flood of new flows evicts only other unconfirmed flows. Written by the programs
//!   (create, refresh, promote = delete) and by the loader's flow GC.
//! - `COUNTERS`: `COUNTER_*` → packets, per CPU. Written by the programs, summed by the loader.
//! - `DROPS_BY_GROUP`: group → packets dropped by its policy, per CPU. Written by the programs.
//! - `DROP_EVENTS`: the event ring (ring buffer of `DropEvent`, defined by its size in bytes):
//!   drop reports, at most `DROP_EVENTS_PER_SECOND` per CPU, and the allow record of every new
//!   flow, at most `FLOW_RECORDS_PER_SECOND` per CPU (`DropEvent::kind` tells them apart).
//!   Written by the programs, read by `monitor` and the loaders' tests.
//! - `DROP_EVENT_WINDOW`: per CPU `[window start ns, events sent]` of the drop events' rate
//!   limit. Programs only.
//! - `FLOW_RECORD_COUNTERS`: `FLOW_RECORD_COUNTER_*` → allow records written and lost, per CPU.
//!   Written by the programs, summed by the loader (`status`, metrics).
//! - `FLOW_RECORD_WINDOW`: per CPU `[window start ns, records written]` of the allow records'
//!   rate limit (its own window: new flows never silence the drop events). Programs only.
//! - `SCRATCH`: per CPU, the packet being processed (too large for the 512-byte BPF stack).
//!   Programs only; never pinned.
//!
//! Gateway only:
//! - `LEGS`: index 0 holds the interface indexes of the two legs (`Legs`). Written by the loader
//!   at attach.
//! - `NEXT_HOP_EPOCH`: index 0 holds the epoch of the next hops cached in flow entries
//!   (`ConfirmedFlow::hops`); a hop cached at another epoch is looked up again. Bumped by the gateway
//!   daemon on every netlink route, rule, neighbour, link and address change; read by the program.
//! - `XSKS`: the AF_XDP sockets of the engine (`--datapath afxdp|hybrid`), one per leg and
//!   receive queue at `xsk_slot(role, queue)`. Written by the gateway daemon when its engine
//!   threads open their sockets; the kernel removes a socket's entry when it closes. Not pinned
//!   (a socket dies with its process).
//! - `HOST_ADDRS` (also the node hook's): the gateway's own addresses, whose packets the program
//!   never steers to the engine (the kernel delivers them). Written by the gateway daemon.
//! - `SNAT_CLASSES`: pod address → its SNAT class (`SnatClass`), for pods an EgressGateway
//!   selects. Written by the gateway loader (`set_snat`).
//! - `SNAT_ENTRIES`: (class, family, destination prefix) → egress address or exemption
//!   (`SnatTarget`; LPM trie: the longest prefix decides). Written by the gateway loader.
//! - `SNAT_EGRESS_IPS`: egress address → the external leg's MAC (ARP/ND answers) and its port
//!   pool (`EgressIp`). Written by the gateway loader.
//! - `SNAT_TRANSLATIONS`: both directions of every translated connection (`NatKey` →
//!   `NatValue`). A plain hash, not an LRU: evicting one half could let two connections share a
//!   translated tuple; when full a new translation is dropped (`DROP_REASON_SNAT_TABLE_FULL`).
//!   Written by the program (new translations: inbound entry first, with `BPF_NOEXIST`, then the
//!   outbound one) and by the gateway loader's GC (both halves, once the pod's flow is gone).
//! - `SNAT_COUNTERS`: `SNAT_COUNTER_*` → packets, per CPU. Written by the program.
//! - `SNAT_LEASE`: index 0 holds the flow-clock time (`CLOCK_MONOTONIC_COARSE`, ns) until which
//!   the ARP/ND answers of `SNAT_EGRESS_IPS` stand; past it the program answers for no egress
//!   address (a gateway whose daemon died stops claiming them: fencing). 0: no lease, answers as
//!   `EgressIp::answer` says (a gateway without HA). Written by the gateway loader
//!   (`set_egress_ownership`, `renew_lease`), read by the program. A map of its own, so that
//!   adopting an older version's pins (which lack it: it is created beside them) changes no
//!   existing map's definition.
//!
//! Node hook only:
//! - `IDENTITIES`: (pod address, generation) → identity of every pod of the cluster. Written by
//!   the loader per generation.
//! - `PEERS`: (group, peer identity) → rule set of the group's selector rules. Written by the
//!   loader per generation.
//! - `HOST_ADDRS`: addresses of the node's own interfaces (value unused). Written by the daemon.
//!   The gateway has one too (below).

pub const MAP_CONFIG: &str = "CONFIG";
pub const MAP_ENDPOINTS: &str = "ENDPOINTS";
pub const MAP_PREFIXES: &str = "PREFIXES";
pub const MAP_PREFIX_LENGTHS: &str = "PREFIX_LENGTHS";
pub const MAP_RULE_SETS: &str = "RULE_SETS";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_EMBRYONIC_FLOWS: &str = "EMBRYONIC_FLOWS";
pub const MAP_COUNTERS: &str = "COUNTERS";
pub const MAP_DROPS_BY_GROUP: &str = "DROPS_BY_GROUP";
pub const MAP_DROP_EVENTS: &str = "DROP_EVENTS";
pub const MAP_DROP_EVENT_WINDOW: &str = "DROP_EVENT_WINDOW";
pub const MAP_FLOW_RECORD_COUNTERS: &str = "FLOW_RECORD_COUNTERS";
pub const MAP_FLOW_RECORD_WINDOW: &str = "FLOW_RECORD_WINDOW";
pub const MAP_LEGS: &str = "LEGS";
pub const MAP_NEXT_HOP_EPOCH: &str = "NEXT_HOP_EPOCH";
pub const MAP_IDENTITIES: &str = "IDENTITIES";
pub const MAP_PEERS: &str = "PEERS";
pub const MAP_HOST_ADDRS: &str = "HOST_ADDRS";
pub const MAP_XSKS: &str = "XSKS";
pub const MAP_SNAT_CLASSES: &str = "SNAT_CLASSES";
pub const MAP_SNAT_ENTRIES: &str = "SNAT_ENTRIES";
pub const MAP_SNAT_EGRESS_IPS: &str = "SNAT_EGRESS_IPS";
pub const MAP_SNAT_TRANSLATIONS: &str = "SNAT_TRANSLATIONS";
pub const MAP_SNAT_COUNTERS: &str = "SNAT_COUNTERS";
pub const MAP_SNAT_LEASE: &str = "SNAT_LEASE";

/// The gateway's SNAT maps, all pinned (a restarted gateway keeps its translations and its
/// lease). A map missing from an older version's pin directory is created and pinned there.
pub const SNAT_PINNED_MAPS: [&str; 6] = [
    MAP_SNAT_CLASSES,
    MAP_SNAT_ENTRIES,
    MAP_SNAT_EGRESS_IPS,
    MAP_SNAT_TRANSLATIONS,
    MAP_SNAT_COUNTERS,
    MAP_SNAT_LEASE,
];

/// The maps both programs have and pin (a restarted loader adopts them: flows and policy survive).
/// A pinned map's definition never changes (a daemon upgraded in place adopts the running one's
/// pins, and `check_pins` refuses one of another shape): what a new version needs goes into a
/// new map. A map missing from the pin directory (pins of a version before it) is created and
/// pinned at load, the others adopted.
pub const SHARED_PINNED_MAPS: [&str; 13] = [
    MAP_CONFIG,
    MAP_ENDPOINTS,
    MAP_PREFIXES,
    MAP_PREFIX_LENGTHS,
    MAP_RULE_SETS,
    MAP_FLOWS,
    MAP_EMBRYONIC_FLOWS,
    MAP_COUNTERS,
    MAP_DROPS_BY_GROUP,
    MAP_DROP_EVENTS,
    MAP_DROP_EVENT_WINDOW,
    MAP_FLOW_RECORD_COUNTERS,
    MAP_FLOW_RECORD_WINDOW,
];

/// `ENDPOINTS` capacity: selected pod addresses × directions, both generations.
pub const MAX_ENDPOINTS: u32 = 262_144;
/// `PREFIXES` capacity (prefixes + markers), both generations. Entries are allocated on insert
/// (`NO_PREALLOC`), but the kernel's bucket array (16 bytes per entry of capacity: 64 MiB here)
/// is allocated up front, so this is a trade: 4M holds two generations of ~2M entries, e.g. the
/// 1M random ipBlocks of `perf/` (517k prefixes, ~1.1M entries with markers).
pub const MAX_PREFIXES: u32 = 4_194_304;
/// `PREFIX_LENGTHS` capacity: groups with prefixes, both generations.
pub const MAX_PREFIX_GROUPS: u32 = 131_072;
/// `RULE_SETS` capacity, both generations.
pub const MAX_RULE_SETS: u32 = 65_536;
/// `FLOWS` capacity: confirmed connections (LRU: the least recently used is evicted when full).
pub const MAX_FLOWS: u32 = 262_144;
/// `EMBRYONIC_FLOWS` capacity: flows waiting for their responder (LRU among themselves).
pub const MAX_EMBRYONIC_FLOWS: u32 = 131_072;
/// `DROPS_BY_GROUP` capacity.
pub const MAX_GROUP_DROPS: u32 = 65_536;
/// `DROP_EVENTS` ring size in bytes.
pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;
/// `IDENTITIES` capacity: pod addresses of the cluster, both generations.
pub const MAX_IDENTITIES: u32 = 262_144;
/// `PEERS` capacity: (group, identity) pairs, both generations.
pub const MAX_PEERS: u32 = 1_048_576;
/// `HOST_ADDRS` capacity: addresses of the node's own interfaces.
pub const MAX_HOST_ADDRS: u32 = 1024;
/// `SNAT_CLASSES` capacity: pod addresses an EgressGateway selects.
pub const MAX_SNAT_CLASSES: u32 = 262_144;
/// `SNAT_ENTRIES` capacity: (class, destination prefix) entries.
pub const MAX_SNAT_ENTRIES: u32 = 65_536;
/// `SNAT_EGRESS_IPS` capacity.
pub const MAX_SNAT_EGRESS_IPS: u32 = 1024;
/// `SNAT_TRANSLATIONS` capacity: two entries per translated connection.
pub const MAX_SNAT_TRANSLATIONS: u32 = 524_288;
/// Receive queues per leg the AF_XDP engine can serve (`XSKS` holds both legs').
pub const MAX_XSK_QUEUES: u32 = 64;
