//! The event ring's records (`DROP_EVENTS`): drops and the allow records of new flows, their
//! kinds, drop reasons and rate limits.

/// Why a packet was dropped, in [`DropEvent::reason`].
pub const DROP_REASON_POLICY: u8 = 1;
pub const DROP_REASON_MALFORMED: u8 = 2;
pub const DROP_REASON_FRAGMENT: u8 = 3;
/// Node hook: the address on the pod's side of a pod interface (the source of what the pod sends,
/// the destination of what it is sent) is no pod of the generation in force — a pod whose
/// identity and policy are not in force yet (fail closed from its first packet), or a spoofed
/// address.
pub const DROP_REASON_UNKNOWN_POD: u8 = 4;
/// Gateway: a new translation found no free port of its egress address's pool
/// (`SNAT_COUNTER_EXHAUSTED`); reported with the pod's egress group.
pub const DROP_REASON_SNAT_EXHAUSTED: u8 = 5;
/// Gateway: a packet to an egress address that no translation knows (`SNAT_COUNTER_NO_MAPPING`):
/// the kernel does not own egress addresses, so passing it would loop it back out.
pub const DROP_REASON_SNAT_NO_MAPPING: u8 = 6;
/// Gateway: `SNAT_TRANSLATIONS` is full (`SNAT_COUNTER_TABLE_FULL`); never an LRU eviction,
/// which could let two connections share a translated tuple.
pub const DROP_REASON_SNAT_TABLE_FULL: u8 = 7;

/// Drop events the program reports per second and per CPU (window: `DROP_EVENT_WINDOW`); further
/// drops in the same second are only counted (`COUNTERS`, `DROPS_BY_GROUP`).
pub const DROP_EVENTS_PER_SECOND: u64 = 100;
/// Allow records (the `EVENT_KIND_ALLOW_*` kinds) the program writes per second and per CPU;
/// further new flows in the same second are only counted ([`FLOW_RECORD_COUNTER_LOST`]). Its own
/// window (`FLOW_RECORD_WINDOW`): a burst of new flows never silences the drop events.
pub const FLOW_RECORDS_PER_SECOND: u64 = 1000;

/// Indexes of the `FLOW_RECORD_COUNTERS` per-CPU array (the AF_XDP engine counts its own records
/// in the same index space, in its own memory). A map of their own rather than new `COUNTER_*`
/// indexes: `COUNTERS` is pinned and keeps its size (see `COUNTER_COUNT`).
/// Allow records written to the event ring.
pub const FLOW_RECORD_COUNTER_WRITTEN: u32 = 0;
/// Allow records not written: over [`FLOW_RECORDS_PER_SECOND`] on that CPU, or the ring full.
pub const FLOW_RECORD_COUNTER_LOST: u32 = 1;
/// Size of the `FLOW_RECORD_COUNTERS` array.
pub const FLOW_RECORD_COUNTER_COUNT: u32 = 2;

/// [`DropEvent::kind`]: a dropped packet (`reason` says why).
pub const EVENT_KIND_DROP: u8 = 0;
/// [`DropEvent::kind`]: the first packet of a new flow, allowed by the policy of `group` (in
/// `direction`; when both sides are selected, the destination's ingress group).
pub const EVENT_KIND_ALLOW_POLICY: u8 = 1;
/// [`DropEvent::kind`]: the first packet of a new flow, allowed because no policy selects a
/// judged side (`group` 0).
pub const EVENT_KIND_ALLOW_UNSELECTED: u8 = 2;
/// [`DropEvent::kind`]: the first packet of a new flow from the node itself (node hook: always
/// allowed, no policy checked; `group` 0).
pub const EVENT_KIND_ALLOW_HOST: u8 = 3;

/// `DROP_EVENTS` ring-buffer record. The ring is the programs' event ring: despite its name it
/// carries both kinds of record. [`EVENT_KIND_DROP`]: one per reported drop, at most
/// [`DROP_EVENTS_PER_SECOND`] per CPU. `EVENT_KIND_ALLOW_*`: one per new flow the pipeline admits
/// (the packet that opens it), at most [`FLOW_RECORDS_PER_SECOND`] per CPU. The AF_XDP engine
/// writes the same records to its event file.
///
/// Records are variable-size and the ring is defined by its bytes (`DROP_EVENTS_BYTES`), so the
/// record growing from 56 bytes (before flow records) to 64 left the pinned ring as it was. The
/// older record is this one's first [`DROP_EVENT_V1_BYTES`] bytes, its last byte (`_pad`, 0)
/// where `kind` is now: a reader takes it as a drop ([`DropEvent::from_record`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropEvent {
    pub timestamp_ns: u64,
    pub ifindex: u32,
    /// Drop: group whose policy denied it (0 when not a policy drop). Allow: group whose policy
    /// admitted the flow (0 when unselected or from the host).
    pub group: u32,
    /// Network byte order, IPv4 mapped.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order.
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// `DIRECTION_*` of `group`'s policy.
    pub direction: u8,
    /// Drop: a `DROP_REASON_*`. Allow: 0.
    pub reason: u8,
    /// `EVENT_KIND_*`.
    pub kind: u8,
    /// `CHECK_*` bits: the sides the packet was judged on (0: none, e.g. a malformed packet or a
    /// flow from the host).
    pub sides: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<DropEvent>() == 64);

/// Size of a `DropEvent` written by a version before flow records (no `kind`, `sides`): a ring
/// adopted from one, or an older program still attached during an upgrade, may hold them.
pub const DROP_EVENT_V1_BYTES: usize = 56;

impl DropEvent {
    /// The record in `bytes` (a ring or event-file record): a whole `DropEvent`, or the
    /// [`DROP_EVENT_V1_BYTES`] of an older version's drop event (read as a drop, no sides);
    /// `None` when shorter.
    pub fn from_record(bytes: &[u8]) -> Option<DropEvent> {
        let n = bytes.len().min(core::mem::size_of::<DropEvent>());
        if n < DROP_EVENT_V1_BYTES {
            return None;
        }
        let mut event = DropEvent::default();
        // SAFETY: DropEvent is plain old data (repr(C), every byte pattern valid); `n` bytes fit
        // both the source and the destination.
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                &mut event as *mut DropEvent as *mut u8,
                n,
            )
        };
        Some(event)
    }

    /// Whether the record is a drop (else the allow record of a new flow).
    pub fn is_drop(&self) -> bool {
        self.kind == EVENT_KIND_DROP
    }
}
