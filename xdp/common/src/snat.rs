//! Kernel/user ABI of the gateway's source NAT (EgressGateway): the translation table, the
//! tables the loader writes from a `SnatConfig`, the egress addresses the gateway answers ARP/ND
//! for, and the SNAT counters. The maps themselves are listed in `crate::maps`.
//!
//! SNAT has its own per-CPU counter array (`SNAT_COUNTERS`, indexed by `SNAT_COUNTER_*`) rather
//! than new `COUNTER_*` indexes: growing `COUNTERS` would change a pinned map's size, and a
//! gateway upgraded in place refuses pins of another size (`check_pins`), so it could not adopt
//! the running one's maps.

/// Ports probed from the hash of the original tuple before a new translation gives up (a drop
/// with [`crate::DROP_REASON_SNAT_EXHAUSTED`]). Exhaustion is exact when the pool has at most this
/// many ports (every port is tried) and probabilistic beyond (32 consecutive taken ports).
pub const SNAT_RETRIES: u32 = 32;

/// [`NatKey::direction`]: the pod's packets (pod, pod port → remote, remote port).
pub const NAT_OUTBOUND: u8 = 0;
/// [`NatKey::direction`]: the replies (remote, remote port → egress address, translated port).
pub const NAT_INBOUND: u8 = 1;

/// `SNAT_TRANSLATIONS` key (hash): one direction of one translated connection, as the packets of
/// that direction carry it on the side where it is looked up. ICMP echo uses the identifier as
/// both ports. 8-byte aligned (no padding: 40 bytes) so the program writes its addresses as words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatKey {
    /// Source address, network byte order, IPv4 mapped.
    pub src: [u8; 16],
    /// Destination address, network byte order, IPv4 mapped.
    pub dst: [u8; 16],
    /// Network byte order (as on the wire).
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    /// [`NAT_OUTBOUND`] or [`NAT_INBOUND`].
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<NatKey>() == 40);

/// `SNAT_TRANSLATIONS` value: what the key's endpoint becomes. For an outbound key the egress
/// address and the translated port (the new source); for an inbound key the pod and its port
/// (the new destination).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatValue {
    /// Network byte order, IPv4 mapped.
    pub addr: [u8; 16],
    /// Flow clock (`CLOCK_MONOTONIC_COARSE`, ns) when the translation was made: the loader's GC
    /// leaves young translations alone (their flow may not be visible yet to its iteration).
    pub created_ns: u64,
    /// Network byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<NatValue>() == 32);

/// `SNAT_CLASSES` value (hash keyed by the pod address, 16 bytes, IPv4 mapped): the pod's SNAT
/// class, host byte order. Pods without a class are never translated.
pub type SnatClass = u32;

/// The class of a pod no configuration selects any more whose translations remain: no entry has
/// it (new connections leave untranslated), but the program still knows the pod as one whose
/// packets it translates (the AF_XDP engine must not take them). The loader's GC removes it with
/// the pod's last translation. Not a class a configuration may use.
pub const SNAT_CLASS_RETIRED: SnatClass = u32::MAX;

/// `SNAT_ENTRIES` key data (LPM trie, after the kernel's 32-bit prefix length): a destination
/// prefix of one class. The prefix length counts `class` and `family` (64 bits) before the
/// address bits, so an entry only matches its own class and family (an IPv6 `::/0` does not
/// contain the IPv4-mapped addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatEntryKey {
    /// Class, big endian (the trie compares bytes in order).
    pub class: [u8; 4],
    /// 4 or 6, big endian.
    pub family: [u8; 4],
    /// Network byte order, IPv4 mapped; bits past the prefix are zero.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SnatEntryKey>() == 24);

/// Bits of [`SnatEntryKey`] before the address: a prefix of length `n` over the address is
/// `SNAT_KEY_BITS_BEFORE_ADDR + n` bits long (IPv4 `/n`: `+ 96 + n`).
pub const SNAT_KEY_BITS_BEFORE_ADDR: u32 = 64;

/// [`SnatTarget::flags`]: translate to [`SnatTarget::egress`]; without it the entry exempts.
pub const SNAT_TARGET_TRANSLATE: u32 = 1;

/// `SNAT_ENTRIES` value: what the longest entry of a class containing the destination says.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SnatTarget {
    /// Egress address, network byte order, IPv4 mapped (zero for an exemption).
    pub egress: [u8; 16],
    /// `SNAT_TARGET_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<SnatTarget>() == 20);

/// `SNAT_EGRESS_IPS` value (hash keyed by the egress address, 16 bytes, IPv4 mapped): the pool
/// of ports its translations use, and whether and with which MAC the gateway answers ARP/ND for
/// it (only where this gateway carries its traffic; another gateway may answer for it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EgressIp {
    /// MAC of the external leg.
    pub mac: [u8; 6],
    /// First and last port of the pool (inclusive), host byte order.
    pub port_first: u16,
    pub port_last: u16,
    /// 1 while the configuration names it; 0 for an address dropped from the configuration
    /// that translations still use (answered for until the loader's GC removes the last one).
    pub configured: u8,
    /// 1: answer ARP requests / Neighbor Solicitations for it on the external leg, while the
    /// lease of `SNAT_LEASE` holds ([`lease_holds`]).
    pub answer: u8,
}
const _: () = assert!(core::mem::size_of::<EgressIp>() == 12);

/// `SNAT_LEASE` value (array, one entry): the flow-clock time (`CLOCK_MONOTONIC_COARSE`, ns)
/// until which the ARP/ND answers for the egress addresses stand, or [`SNAT_NO_LEASE`].
pub type SnatLease = u64;

/// No lease: the answers stand as [`EgressIp::answer`] says, with no end (a gateway without HA;
/// the map's initial value).
pub const SNAT_NO_LEASE: SnatLease = 0;

/// Whether the ARP/ND answers stand at flow-clock time `now` under `lease`: no lease, or not
/// expired. A highly available gateway's daemon renews its lease while it lives; killed, its
/// pinned program keeps running but stops answering once the lease ends, so it no longer draws
/// the egress addresses' traffic from the gateway that took them over.
#[inline(always)]
pub const fn lease_holds(lease: SnatLease, now: u64) -> bool {
    lease == SNAT_NO_LEASE || now < lease
}

/// Indexes of the `SNAT_COUNTERS` per-CPU array.
/// New translations (one per connection: its outbound and inbound entries).
pub const SNAT_COUNTER_NEW: u32 = 0;
/// Packets of a pod translated to an egress address.
pub const SNAT_COUNTER_OUTBOUND: u32 = 1;
/// Packets to an egress address translated back to the pod.
pub const SNAT_COUNTER_INBOUND: u32 = 2;
/// Dropped: no free port in [`SNAT_RETRIES`] probes ([`crate::DROP_REASON_SNAT_EXHAUSTED`]).
pub const SNAT_COUNTER_EXHAUSTED: u32 = 3;
/// Dropped: to an egress address without translation ([`crate::DROP_REASON_SNAT_NO_MAPPING`]).
pub const SNAT_COUNTER_NO_MAPPING: u32 = 4;
/// Dropped: the translation table is full ([`crate::DROP_REASON_SNAT_TABLE_FULL`]).
pub const SNAT_COUNTER_TABLE_FULL: u32 = 5;
/// ARP requests for an egress address answered.
pub const SNAT_COUNTER_ARP_REPLY: u32 = 6;
/// Neighbor Solicitations for an egress address answered.
pub const SNAT_COUNTER_ND_REPLY: u32 = 7;
/// ICMP errors about a translated connection translated back (embedded packet included).
pub const SNAT_COUNTER_ICMP_ERROR: u32 = 8;
/// Size of the `SNAT_COUNTERS` array.
pub const SNAT_COUNTER_COUNT: u32 = 9;
