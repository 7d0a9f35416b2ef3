//! The one policy check of both programs: for each side a packet is judged on (`CHECK_*` bits of
//! [`Query::sides`]), the subject pod's group in that direction, then the rule set of the peer
//! (the group's selector rules for the peer's identity, else the longest ipBlock prefix of the
//! group containing the peer), then the bounded port scan of that rule set. The gateway judges
//! one side (its leg says which), the node hook both: a packet passes iff every selected side
//! allows it (an unselected side allows).

use portcullis_common::*;

use crate::maps::Maps;
use crate::prefix::longest_prefix;

/// Input of a policy check (in the per-CPU work area; passed by reference: a BPF call takes at
/// most five arguments). 8-byte aligned: addresses are copied as words.
#[repr(C, align(8))]
pub struct Query {
    /// Source and destination of the packet (of a flow: its initiator and responder).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Generation parity.
    pub g: u32,
    /// Destination port, host byte order (0 for ICMP errors: only "any protocol" rules match).
    pub port: u16,
    pub proto: u8,
    /// `CHECK_*` bits.
    pub sides: u8,
}

/// Result of a policy check, one scalar (a BPF function returns one register): the group in the
/// low 32 bits, the kind in bits 32-33, the deciding direction in bit 34.
#[derive(Clone, Copy)]
pub struct Verdict(u64);

const KIND_UNSELECTED: u64 = 0;
/// Kinds of [`Verdict::new`] (the AF_XDP engine builds verdicts from its own tables).
pub const KIND_ALLOW: u64 = 1 << 32;
pub const KIND_DENY: u64 = 2 << 32;
const KIND_MASK: u64 = 3 << 32;
const BY_EGRESS: u64 = 1 << 34;

impl Verdict {
    /// No judged side is selected by any policy.
    pub const UNSELECTED: Verdict = Verdict(KIND_UNSELECTED);

    /// A verdict of `kind` (`KIND_ALLOW` or `KIND_DENY`) by `group` in `direction`.
    #[inline(always)]
    pub fn new(kind: u64, group: u32, direction: u32) -> Verdict {
        let by = if direction == DIRECTION_EGRESS as u32 {
            BY_EGRESS
        } else {
            0
        };
        Verdict(kind | by | group as u64)
    }

    #[inline(always)]
    pub fn is_unselected(self) -> bool {
        self.0 & KIND_MASK == KIND_UNSELECTED
    }

    #[inline(always)]
    pub fn is_deny(self) -> bool {
        self.0 & KIND_MASK == KIND_DENY
    }

    /// The deciding group: the denying one, else the destination's ingress group when selected,
    /// else the source's egress group (0 when unselected).
    #[inline(always)]
    pub fn group(self) -> u32 {
        self.0 as u32
    }

    /// `DIRECTION_*` of [`Verdict::group`].
    #[inline(always)]
    pub fn direction(self) -> u8 {
        if self.0 & BY_EGRESS != 0 {
            DIRECTION_EGRESS
        } else {
            DIRECTION_INGRESS
        }
    }
}

/// Judges `q` on every side in `q.sides`, egress of the source first.
#[inline(never)]
pub fn check<M: Maps>(q: &Query) -> Verdict {
    let mut egress = Verdict::UNSELECTED;
    if q.sides & CHECK_EGRESS_OF_SRC != 0 {
        egress = side::<M>(q, DIRECTION_EGRESS as u32);
        if egress.is_deny() {
            return egress;
        }
    }
    if q.sides & CHECK_INGRESS_OF_DST != 0 {
        let ingress = side::<M>(q, DIRECTION_INGRESS as u32);
        if !ingress.is_unselected() {
            return ingress;
        }
    }
    egress
}

/// One side: the subject pod (source for egress, destination for ingress) and its peer.
#[inline(always)]
fn side<M: Maps>(q: &Query, direction: u32) -> Verdict {
    let (pod, peer) = if direction == DIRECTION_EGRESS as u32 {
        (&q.src, &q.dst)
    } else {
        (&q.dst, &q.src)
    };
    let ek = EndpointKey {
        addr: *pod,
        direction: direction as u8,
        generation: q.g as u8,
        _pad: [0; 2],
    };
    let group = match M::endpoints().get_ptr(&ek) {
        // SAFETY: value pointer from a successful lookup.
        Some(v) => unsafe { (*v).group },
        None => return Verdict::UNSELECTED,
    };
    if let Some(rule_set) = M::selector_rule_set(group, peer, q.g) {
        if rule_set_allows::<M>(rule_set, q.proto, q.port) {
            return Verdict::new(KIND_ALLOW, group, direction);
        }
    }
    let rule_set = longest_prefix::<M>(group, peer);
    if rule_set != 0 && rule_set_allows::<M>(rule_set, q.proto, q.port) {
        return Verdict::new(KIND_ALLOW, group, direction);
    }
    Verdict::new(KIND_DENY, group, direction)
}

/// Bounded scan of one rule set: any protocol, or the protocol with the port in range (ICMP has
/// no ports: only "any protocol" rules allow it). A missing rule set allows nothing.
#[inline(always)]
fn rule_set_allows<M: Maps>(rule_set: u32, proto: u8, port: u16) -> bool {
    let rs = match M::rule_sets().get_ptr(rule_set) {
        // SAFETY: value pointer from a successful lookup; read only.
        Some(rs) => unsafe { &*rs },
        None => return false,
    };
    let icmp = proto == PROTO_ICMP || proto == PROTO_ICMPV6;
    for i in 0..MAX_PORT_RANGES {
        if i as u32 >= rs.count {
            break;
        }
        let r = rs.ranges[i];
        if r.protocol == PROTO_ANY {
            return true;
        }
        if !icmp && r.protocol == proto && port >= r.first && port <= r.last {
            return true;
        }
    }
    false
}
