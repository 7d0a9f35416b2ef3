//! Kernel/user ABI of the Portcullis gateway and node hook: every map key, map value and
//! ring-buffer event, defined once. The kernel crates (`portcullis-xdp-ebpf`,
//! `portcullis-node-ebpf`) and the loaders (`portcullis-gateway`, `portcullis-node`) all use these
//! definitions; nothing here is written twice.
//!
//! Conventions: addresses are 16 bytes in network byte order, IPv4 as IPv4-mapped IPv6
//! (`::ffff:a.b.c.d`) so one key type serves both families. Ports are stored in host byte order
//! unless a field says otherwise. Every struct has a `const` size assertion: a layout change is a
//! compile error on both sides, not a silent mismatch.
#![no_std]

/// Port ranges one rule set can hold; the program scans them linearly (bounded loop), so the
/// per-packet cost is independent of the number of prefixes.
pub const MAX_PORT_RANGES: usize = 16;
/// Protocol number meaning "any protocol" in a [`PortRange`] (a rule without `ports`).
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Direction of a policy check, as stored in [`EndpointKey::direction`].
pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

/// Role of an interface the gateway program is attached to (see [`Legs`]).
/// Packets entering on the cluster leg are checked against the source pod's egress policy;
/// packets entering on the external leg against the destination pod's ingress policy.
pub const ROLE_CLUSTER: u32 = 1;
pub const ROLE_EXTERNAL: u32 = 2;

/// `LEGS` value (array, one entry): the gateway's two legs. An array of one, not a hash keyed by
/// interface: the program reads it with a direct load on every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Legs {
    /// Interface index of the leg facing the pods ([`ROLE_CLUSTER`]; 0: none).
    pub cluster: u32,
    /// Interface index of the leg facing the outside ([`ROLE_EXTERNAL`]; 0: none).
    pub external: u32,
}
const _: () = assert!(core::mem::size_of::<Legs>() == 8);

impl Legs {
    /// `ROLE_*` of interface `ifindex`, 0 when it is no leg.
    #[inline(always)]
    pub fn role(&self, ifindex: u32) -> u32 {
        if ifindex == 0 {
            0
        } else if ifindex == self.cluster {
            ROLE_CLUSTER
        } else if ifindex == self.external {
            ROLE_EXTERNAL
        } else {
            0
        }
    }
}

/// Bit of group and rule-set ids that carries the generation parity: the two live generations
/// never share an id, so a new generation is written beside the old one.
pub const GENERATION_ID_BIT: u32 = 1 << 31;

/// `ENDPOINTS` key (hash): a pod address in one direction of one generation.
/// Written by the loader for every pod selected by at least one policy of that direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// Pod address, network byte order, IPv4 mapped.
    pub addr: [u8; 16],
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
    /// Generation parity (0 or 1).
    pub generation: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 20);

/// `ENDPOINTS` value: the policy group of that pod and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointValue {
    /// Group id (host byte order), unique within its generation.
    pub group: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointValue>() == 4);

/// Prefix lengths one group can have: 0..=128 in the IPv4-mapped space (an IPv4 `/n` is `/96+n`,
/// so both families share one sorted list and one search).
pub const MAX_PREFIX_LENGTHS: usize = 129;
/// Probes of the binary search over [`MAX_PREFIX_LENGTHS`] lengths: ceil(log2(129 + 1)).
pub const PREFIX_SEARCH_PROBES: usize = 8;
/// Slots of [`PrefixLengths::lengths`]: [`MAX_PREFIX_LENGTHS`] rounded up to keep the value
/// 4-byte aligned.
pub const PREFIX_LENGTH_SLOTS: usize = 132;

/// `PREFIXES` key (hash): a peer prefix of one group, the address masked to `len` bits. The
/// datapath finds the longest prefix containing an address by a binary search on the group's
/// lengths (`PREFIX_LENGTHS`), one hash probe per step (Waldvogel et al.). 8-byte aligned (no
/// padding: 24 bytes) so the program writes it as three words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefixKey {
    /// Group id (host byte order), generation parity in [`GENERATION_ID_BIT`].
    pub group: u32,
    /// Prefix length in the IPv4-mapped space (0..=128).
    pub len: u8,
    pub _pad: [u8; 3],
    /// Address masked to `len` bits, network byte order, IPv4 mapped.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PrefixKey>() == 24);

/// [`PrefixValue::flags`]: the entry is one of the group's prefixes.
pub const PREFIX_FLAG_PREFIX: u32 = 1;
/// [`PrefixValue::flags`]: the entry is a marker (a longer prefix of the group lies below it, so a
/// hit sends the search to longer lengths).
pub const PREFIX_FLAG_MARKER: u32 = 2;

/// `PREFIXES` value: the rule set of the longest prefix of the group containing the entry's whole
/// range with a length up to the entry's own (for a prefix, its own rule set).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixValue {
    /// Key into `RULE_SETS` (host byte order); 0 (no rule-set id is 0): no prefix contains it.
    pub rule_set: u32,
    /// `PREFIX_FLAG_*` bits (both for a prefix that is also a marker).
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PrefixValue>() == 8);

/// `PREFIX_LENGTHS` value (hash keyed by group id): the group's distinct prefix lengths, sorted.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixLengths {
    /// Number of valid entries in `lengths`.
    pub count: u32,
    /// Ascending; entries past `count` are 0.
    pub lengths: [u8; PREFIX_LENGTH_SLOTS],
}
const _: () = assert!(core::mem::size_of::<PrefixLengths>() == 136);
const _: () = assert!(MAX_PREFIX_LENGTHS <= PREFIX_LENGTH_SLOTS);
const _: () = assert!(MAX_PREFIX_LENGTHS < 1 << PREFIX_SEARCH_PROBES);

/// `addr` (16 bytes, network order) with every bit past the first `len` cleared: the address part
/// of the [`PrefixKey`] at that length. Two 64-bit halves, so the kernel does it in a few
/// instructions.
#[inline(always)]
pub fn mask_prefix(addr: &[u8; 16], len: u32) -> [u8; 16] {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&addr[..8]);
    lo.copy_from_slice(&addr[8..]);
    let hi = u64::from_be_bytes(hi) & half_mask(len);
    let lo = u64::from_be_bytes(lo) & half_mask(len.saturating_sub(64));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    out
}

/// The mask of the first `len` bits of a 64-bit half (`len` ≥ 64: all of it).
#[inline(always)]
pub const fn half_mask(len: u32) -> u64 {
    if len == 0 {
        0
    } else if len >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - len)
    }
}

/// One allowed protocol and inclusive port range. `protocol == PROTO_ANY` allows every protocol
/// and port (including ICMP); a range of `0..=65535` with a protocol allows every port of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortRange {
    pub protocol: u8,
    pub _pad: u8,
    /// First port, host byte order.
    pub first: u16,
    /// Last port (inclusive), host byte order.
    pub last: u16,
}
const _: () = assert!(core::mem::size_of::<PortRange>() == 6);

/// `RULE_SETS` value (hash keyed by rule-set id): the union of port rules allowed at a prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleSet {
    /// Number of valid entries in `ranges`.
    pub count: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}
const _: () = assert!(core::mem::size_of::<RuleSet>() == 4 + 6 * MAX_PORT_RANGES);

/// `CONFIG` value (array, one entry): what the loader tells the program globally.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// Active generation parity (0 or 1); switching it is the atomic policy update.
    pub generation: u32,
    /// `CONFIG_FLAG_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 8);

/// Forward allowed packets in XDP (`bpf_fib_lookup` + redirect) instead of passing them to the stack.
pub const CONFIG_FLAG_XDP_FORWARD: u32 = 1 << 0;
/// Re-check established flows against the active generation (`--revalidate`).
pub const CONFIG_FLAG_REVALIDATE: u32 = 1 << 1;
/// Gateway `--datapath afxdp`: every routable IP packet of a leg goes to the AF_XDP socket of its
/// queue (`XSKS`), whose engine judges and forwards it.
pub const CONFIG_FLAG_AFXDP: u32 = 1 << 2;
/// Gateway `--datapath hybrid`: packets of known flows stay in XDP; a routable packet no flow
/// vouches for goes to the AF_XDP engine, which judges it and writes its flow.
pub const CONFIG_FLAG_HYBRID: u32 = 1 << 3;
/// Gateway: source NAT is in force (some pod has an SNAT class, or translations remain): the
/// program looks up `SNAT_*` maps. Clear, SNAT costs nothing per packet.
pub const CONFIG_FLAG_SNAT: u32 = 1 << 4;

/// `XSKS` index of the socket of `queue` on the leg with `role` (`ROLE_CLUSTER` or
/// `ROLE_EXTERNAL`): the cluster leg's queues first, then the external leg's.
#[inline(always)]
pub const fn xsk_slot(role: u32, queue: u32) -> u32 {
    if role == ROLE_CLUSTER {
        queue
    } else {
        MAX_XSK_QUEUES + queue
    }
}

/// `FLOWS` key (LRU hash): one normalised entry per connection, the same for both directions.
/// `(addr_lo, port_lo)` is the smaller endpoint in byte order. 8-byte aligned (no padding: the
/// size is a multiple of 8) so the programs copy its addresses as words, not byte by byte.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    /// Network byte order (as on the wire); ICMP echo uses the identifier in both.
    pub port_lo: u16,
    pub port_hi: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Bits of [`FlowValue::checked`] and of a policy query: which policies judge a packet or admitted
/// a flow. The gateway checks one side (its leg says which), the node hook both.
/// The egress policy of the packet's source (of a flow: its initiator).
pub const CHECK_EGRESS_OF_SRC: u8 = 1 << 0;
/// The ingress policy of the packet's destination (of a flow: its responder).
pub const CHECK_INGRESS_OF_DST: u8 = 1 << 1;

/// TCP header flags the flow tracking reads.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// TCP connection states tracked from flags, each with its own timeout.
pub const TCP_STATE_SYN_SENT: u8 = 1;
pub const TCP_STATE_ESTABLISHED: u8 = 2;
pub const TCP_STATE_CLOSING: u8 = 3;
/// Non-TCP flows (UDP, SCTP, ICMP) use one idle state.
pub const FLOW_STATE_ACTIVE: u8 = 4;

/// `EMBRYONIC_FLOWS` value, and the first part of a `FLOWS` value ([`ConfirmedFlow`]): the state
/// of one connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
    /// Group that allowed the flow (0 when the pod was not selected).
    pub group: u32,
    /// One of the `*_STATE_*` constants.
    pub state: u8,
    /// 1 when the `lo` endpoint opened the flow.
    pub initiator_is_lo: u8,
    /// `CHECK_*` bits: the policies that admitted the flow (0: a node origin flow, recorded where
    /// the initiating pod sent it and not checked by this node's policy).
    pub checked: u8,
    /// Generation parity that allowed it (for `--revalidate`).
    pub generation: u8,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 16);

/// `FLOWS` value: a confirmed connection and the next hops its packets are forwarded with. Only
/// confirmed flows carry next hops: an embryonic entry stays 16 bytes, so a flood of new flows
/// writes small entries (a cold 64-byte value cost new flows ~20 % of their rate).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConfirmedFlow {
    pub flow: FlowValue,
    /// Gateway: `NEXT_HOP_EPOCH` when [`ConfirmedFlow::hops`] were cached (see [`hop_fresh`]).
    pub hop_epoch: u32,
    /// Gateway: [`hop_stamp`] of the time they were cached.
    pub hop_stamp: u32,
    /// Gateway: the next hop of the packets from the `lo` endpoint (index 0) and from the `hi`
    /// endpoint (index 1), cached by the first packet forwarded that way. The node hook leaves them
    /// empty.
    pub hops: [NextHop; 2],
}
const _: () = assert!(core::mem::size_of::<ConfirmedFlow>() == 64);

/// What XDP forwarding of one direction of a flow needs, as `bpf_fib_lookup` returned it: the
/// established fast path forwards with it without a FIB lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// Egress interface.
    pub ifindex: u32,
    /// Egress MTU (`mtu_result`): a larger packet goes to the kernel (fragmentation or ICMP).
    pub mtu: u16,
    /// 1 when cached.
    pub valid: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 20);

/// Idle flows are refreshed at most this often (`last_seen_ns` is written when it is older than
/// this): a busy flow does not write its shared cache line on every packet. Far below every
/// timeout, so expiry is exact to within it.
pub const FLOW_REFRESH_NS: u64 = 1 << 30;

/// The coarse clock of [`ConfirmedFlow::hop_stamp`]: units of 2^30 ns (~1.07 s).
#[inline(always)]
pub const fn hop_stamp(now_ns: u64) -> u32 {
    (now_ns >> 30) as u32
}

/// Whether next hops cached at `epoch` / `stamp` may still be used at `current_epoch` / `now_ns`:
/// the same epoch (the gateway daemon bumps `NEXT_HOP_EPOCH` on every route, neighbour, link and
/// address change) and at most 1–2 stamp units old, so a change the daemon did not see (it was
/// down) is followed within ~2 s.
#[inline(always)]
pub const fn hop_fresh(epoch: u32, stamp: u32, current_epoch: u32, now_ns: u64) -> bool {
    epoch == current_epoch && hop_stamp(now_ns).wrapping_sub(stamp) <= 1
}

/// Idle timeouts (ns) per state; the flow GC in user space and the program agree on them.
pub const TIMEOUT_TCP_SYN_NS: u64 = 60 * 1_000_000_000;
pub const TIMEOUT_TCP_ESTABLISHED_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const TIMEOUT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const TIMEOUT_UDP_NS: u64 = 60 * 1_000_000_000;

/// Idle timeout of a flow in `state` (a `TCP_STATE_*` or [`FLOW_STATE_ACTIVE`]): the programs
/// expire flows by it, the loaders' flow GC deletes by it.
#[inline(always)]
pub const fn flow_timeout_ns(state: u8) -> u64 {
    match state {
        TCP_STATE_SYN_SENT => TIMEOUT_TCP_SYN_NS,
        TCP_STATE_ESTABLISHED => TIMEOUT_TCP_ESTABLISHED_NS,
        TCP_STATE_CLOSING => TIMEOUT_TCP_CLOSING_NS,
        _ => TIMEOUT_UDP_NS,
    }
}

/// Indexes of the `COUNTERS` per-CPU array (one index space for both programs; each counts what
/// applies to it).
pub const COUNTER_PASS_FLOW: u32 = 0;
pub const COUNTER_PASS_POLICY: u32 = 1;
pub const COUNTER_PASS_UNSELECTED: u32 = 2;
pub const COUNTER_PASS_NON_IP: u32 = 3;
pub const COUNTER_DROP_POLICY: u32 = 4;
pub const COUNTER_DROP_MALFORMED: u32 = 5;
pub const COUNTER_DROP_FRAGMENT: u32 = 6;
/// Gateway: allowed packets forwarded in XDP.
pub const COUNTER_FORWARD_XDP: u32 = 7;
/// Gateway: allowed packets handed to the kernel's stack.
pub const COUNTER_PASS_STACK: u32 = 8;
/// Node: flows recorded at a pod's veth as it sent them (origin flows).
pub const COUNTER_ORIGIN: u32 = 9;
/// Node: packets dropped with [`DROP_REASON_UNKNOWN_POD`].
pub const COUNTER_DROP_UNKNOWN_POD: u32 = 10;
/// Node: packets from the node itself to a local pod (always allowed).
pub const COUNTER_PASS_HOST: u32 = 11;
/// New flows recorded in `EMBRYONIC_FLOWS` (including those written over a stale embryonic
/// entry of the same connection: [`COUNTER_EMBRYONIC_REUSED`]).
pub const COUNTER_FLOW_NEW: u32 = 12;
/// Flows confirmed by their responder and moved to `FLOWS`.
pub const COUNTER_FLOW_CONFIRMED: u32 = 13;
/// Gateway: packets of [`COUNTER_FORWARD_XDP`] forwarded with their flow's cached next hop (no
/// FIB lookup).
pub const COUNTER_FORWARD_CACHED: u32 = 14;
/// New flows written over a stale embryonic entry of the same key (no new element).
pub const COUNTER_EMBRYONIC_REUSED: u32 = 15;
/// Flows deleted by `--revalidate` (the new policy denies them), per table.
pub const COUNTER_REVOKED_EMBRYONIC: u32 = 16;
pub const COUNTER_REVOKED_CONFIRMED: u32 = 17;
/// Expired flows deleted by the loaders' flow GC (and flows cleared), per table. Written by the
/// loader (CPU 0's slot), never by the programs. With the others they give each LRU table's
/// evictions: inserted − promoted − deleted − present (`portcullis_bpf::FlowCounts`).
pub const COUNTER_GC_EMBRYONIC: u32 = 18;
pub const COUNTER_GC_CONFIRMED: u32 = 19;
/// Gateway (`--datapath afxdp|hybrid`): packets handed to the AF_XDP engine (`XSKS`); the
/// engine counts what it decides in the same index space, in its own memory.
pub const COUNTER_TO_ENGINE: u32 = 20;
/// Size of the `COUNTERS` array. Fixed: `COUNTERS` is pinned, and a daemon upgraded in place
/// must adopt the running one's pins (`check_pins` refuses a pin of another size). Counters added
/// later go into maps of their own (`SNAT_COUNTERS`, `FLOW_RECORD_COUNTERS`).
pub const COUNTER_COUNT: u32 = 21;

// ---- Node hook (`portcullis-node-ebpf`): types of its own maps. The node program also uses
// `EndpointKey`/`EndpointValue`, `PrefixKey`/`PrefixValue`, `PrefixLengths`, `RuleSet`, `Config`, `FlowKey`/
// `FlowValue`, `DropEvent` and the `COUNTER_*` indexes above, with the same meaning.

/// `IDENTITIES` key (hash): a pod address of the cluster in one generation.
/// Written by the node loader for every pod address (all nodes' pods, not only local ones).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    /// Pod address, network byte order, IPv4 mapped.
    pub addr: [u8; 16],
    /// Generation parity (0 or 1).
    pub generation: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<IdentityKey>() == 20);

/// `IDENTITIES` value: the numeric identity of the pod (namespace, labels, named ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityValue {
    /// Identity (host byte order), stable across recompiles while the pod's labels stay.
    pub identity: u32,
}
const _: () = assert!(core::mem::size_of::<IdentityValue>() == 4);

/// `PEERS` key (hash): (policy group, peer identity). The value is a [`PeerValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Group id (host byte order), generation parity in [`GENERATION_ID_BIT`].
    pub group: u32,
    /// Peer identity (host byte order).
    pub identity: u32,
}
const _: () = assert!(core::mem::size_of::<PeerKey>() == 8);

/// `PEERS` value: the rule set that selector rules of the key's group allow towards / from that
/// identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerValue {
    /// Key into `RULE_SETS` (host byte order).
    pub rule_set: u32,
}
const _: () = assert!(core::mem::size_of::<PeerValue>() == 4);

/// The one IPv4-mapped rule of every key: an IPv4 address is stored as `::ffff:a.b.c.d`, so one
/// 16-byte key type serves both families.
#[inline(always)]
pub const fn ipv4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Bits an IPv4 prefix length gains in the mapped form (`::ffff:0:0/96`).
pub const IPV4_MAPPED_PREFIX_BITS: u8 = 96;

/// Whether `addr` (16 bytes, IPv4 mapped) can be a pod's own unicast address: not unspecified,
/// multicast, broadcast or link-local. Only such addresses must belong to a known pod on a pod
/// interface; the others (neighbour discovery, DHCP, mDNS) never carry policy-relevant traffic
/// and are left to the kernel as on an interface without the hook.
#[inline(always)]
pub fn is_pod_unicast(addr: &[u8; 16]) -> bool {
    let v4_mapped = addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff;
    if v4_mapped {
        let a = [addr[12], addr[13], addr[14], addr[15]];
        return a != [0, 0, 0, 0]
            && a != [255, 255, 255, 255]
            && a[0] & 0xf0 != 0xe0
            && !(a[0] == 169 && a[1] == 254);
    }
    addr.iter().any(|b| *b != 0) && addr[0] != 0xff && !(addr[0] == 0xfe && addr[1] & 0xc0 == 0x80)
}

pub mod actions;
pub mod events;
pub mod maps;
pub mod snat;
pub use events::*;
pub use maps::*;
pub use snat::*;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, with explicit padding fields and no pointers.
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for EndpointValue {}
    unsafe impl aya::Pod for PrefixKey {}
    unsafe impl aya::Pod for PrefixLengths {}
    unsafe impl aya::Pod for PrefixValue {}
    unsafe impl aya::Pod for PortRange {}
    unsafe impl aya::Pod for RuleSet {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for ConfirmedFlow {}
    unsafe impl aya::Pod for Legs {}
    unsafe impl aya::Pod for DropEvent {}
    unsafe impl aya::Pod for IdentityKey {}
    unsafe impl aya::Pod for IdentityValue {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for PeerValue {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatValue {}
    unsafe impl aya::Pod for SnatEntryKey {}
    unsafe impl aya::Pod for SnatTarget {}
    unsafe impl aya::Pod for EgressIp {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::is_pod_unicast;
    use std::net::IpAddr;

    fn mapped(ip: &str) -> [u8; 16] {
        match ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            IpAddr::V6(a) => a.octets(),
        }
    }

    #[test]
    fn pod_unicast_addresses() {
        for ip in [
            "10.88.0.5",
            "192.0.2.1",
            "fd00::5",
            "2001:db8::1",
            "::ffff:0:1",
        ] {
            assert!(is_pod_unicast(&mapped(ip)), "{ip}");
        }
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.251",
            "239.1.2.3",
            "169.254.1.1",
            "::",
            "ff02::1",
            "ff02::1:ff00:5",
            "fe80::1",
            "febf::1",
        ] {
            assert!(!is_pod_unicast(&mapped(ip)), "{ip}");
        }
    }
}
