//! The one flow pipeline of both programs ([`classify`]): parse result, flow-table hit (with
//! revalidation against a new generation), ICMP errors related to a known flow, the program's
//! admission rule, the policy check, flow creation, counters and drop reports. The programs add
//! only what is theirs: which sides a packet is judged on, the admission rule and what an allowed
//! packet becomes (XDP forward or pass; tc OK).
//!
//! Flow records: every packet that opens a flow here (a new flow, allowed) gets a rate-limited
//! allow record in the event ring (`report::report_flow`), after the flow is written; denied
//! first packets are the drop events. Packets of known flows never reach that code.
//!
//! TCP: only a SYN without ACK creates a flow. A TCP segment of a connection the flow table does
//! not know is dropped when a judged side is selected, even if the policy would allow a new
//! connection (the peers must reconnect); when no side is selected it passes untracked.
//!
//! Two flow tables: every new flow starts in `EMBRYONIC_FLOWS` and moves to `FLOWS` when its
//! responder has answered (UDP and the others: the first reply; TCP: the initiator's first packet
//! after the responder's SYN-ACK). A flood of new flows (SYN flood, random ports) fills only the
//! embryonic table, whose LRU evicts the least recently used unconfirmed flow; confirmed flows are
//! evicted only by other confirmed flows, when `FLOWS` is full. Nothing is dropped for lack of
//! room: a flow evicted before its reply is judged again as new.
//!
//! TCP reopen rule: a SYN (without ACK) on a flow in `TCP_STATE_CLOSING` from the flow's
//! initiator reopens it in the same direction (port reuse after a close: the policies that admitted
//! the flow judged exactly that connection) and the entry goes back to `TCP_STATE_SYN_SENT`. The
//! same SYN from the former responder opens a connection the other way round: the entry vouches
//! for nothing, the packet is judged as a new flow and its verdict replaces the entry. Reusing the
//! entry there would let the peer of a closed egress connection connect back to the pod on the
//! same ports without the pod's ingress policy being consulted.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use portcullis_common::*;

use crate::maps::{config, count, Maps, Work};
use crate::parse::{flow_key, Kind, Packet, PARSE_FRAGMENT, PARSE_PASS};
use crate::policy::{check, Query, Verdict};
use crate::report::{report_drop, report_flow};
use crate::words::{copy_addr, zero};

/// What the pipeline decided for one packet (counted and, for drops, reported already).
pub enum Outcome {
    /// Allowed: the program delivers or forwards it.
    Allowed,
    /// Allowed by this live confirmed flow (still in `FLOWS`), the packet coming from the flow's
    /// `lo` endpoint when the flag is true: the program may use and fill the entry's next-hop
    /// cache for that direction.
    Flow(&'static mut ConfirmedFlow, bool),
    /// Not an IP packet we judge (non-IP, neighbour discovery): the program passes it untouched.
    NotIp,
    Dropped,
    /// No flow vouches for it and the admission rule handed it on ([`Admit::Divert`]): nothing
    /// was counted or written.
    Diverted,
}

/// A program's rule for a packet no flow vouches for, before the policy check.
#[derive(Clone, Copy)]
pub enum Admit {
    /// Judge it by policy.
    Check,
    /// From a source the program always lets through (the node's own addresses): allowed and
    /// tracked without a policy check, counted as `COUNTER_PASS_HOST`.
    Trusted,
    /// Dropped with this `DROP_REASON_*`, reported in this `DIRECTION_*`.
    Drop(u8, u8),
    /// Judged elsewhere (the gateway's hybrid mode: by the AF_XDP engine, which writes its flow).
    Divert,
}

/// The flows' clock: `CLOCK_MONOTONIC_COARSE` (the tick, at most a few ms behind the
/// `CLOCK_MONOTONIC` the loaders' flow GC reads; timeouts are seconds). Reading the TSC for
/// `bpf_ktime_get_ns` was a visible part of an established packet's cost.
#[inline(always)]
pub fn flow_clock() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The entry a new flow's key already has (found by [`find_flow`] and not vouching for the
/// packet): where the new flow is written, and whether that adds an element (eviction counts).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    None,
    Embryonic,
    Confirmed,
}

/// Whether a flow entry vouches for a packet of its connection: not expired, and not a SYN from
/// the former responder of a closing TCP connection (see the module's reopen rule).
#[inline(always)]
pub fn flow_live(f: &FlowValue, now: u64, syn_only: bool, from_initiator: bool) -> bool {
    now.wrapping_sub(f.last_seen_ns) <= flow_timeout_ns(f.state)
        && !(f.state == TCP_STATE_CLOSING && syn_only && !from_initiator)
}

/// TCP state tracking and refresh of a live flow hit by a packet. A TCP flow is established by
/// the responder's acknowledgement (its SYN-ACK), never by the initiator alone. The entry is
/// written only when its state changes or its timestamp is older than `FLOW_REFRESH_NS`: the
/// packets of a busy flow leave its cache line clean (other CPUs forwarding the same flow keep
/// their copy).
#[inline(always)]
pub fn touch(f: &mut FlowValue, pkt: &Packet, from_initiator: bool, now: u64) {
    let mut state = f.state;
    if pkt.proto == PROTO_TCP {
        let fl = pkt.tcp_flags;
        if fl & (TCP_RST | TCP_FIN) != 0 {
            state = TCP_STATE_CLOSING;
        } else if state == TCP_STATE_SYN_SENT && fl & TCP_ACK != 0 && !from_initiator {
            state = TCP_STATE_ESTABLISHED;
        } else if state == TCP_STATE_CLOSING && fl & (TCP_SYN | TCP_ACK) == TCP_SYN {
            state = TCP_STATE_SYN_SENT;
        }
    }
    if state != f.state || now.wrapping_sub(f.last_seen_ns) > FLOW_REFRESH_NS {
        f.state = state;
        f.last_seen_ns = now;
    }
}

/// Records the flow `pkt` opens (a TCP one starts in `TCP_STATE_SYN_SENT`), built in `entry` (the
/// per-CPU work area: no 64-byte value on the stack): in `EMBRYONIC_FLOWS`, or in place of the
/// confirmed entry it replaces (`existing`; its next hops are forgotten). `admitted`: (group, `CHECK_*` bits) that admitted it; `at`:
/// (clock, generation parity).
#[inline(always)]
pub fn open_flow<M: Maps>(
    key: &FlowKey,
    entry: &mut ConfirmedFlow,
    existing: Existing,
    pkt: &Packet,
    src_is_lo: bool,
    admitted: (u32, u8),
    at: (u64, u32),
) {
    let (group, checked) = admitted;
    let (now, g) = at;
    // SAFETY: all-zero is a valid ConfirmedFlow (no next hop cached).
    unsafe { zero(entry as *mut ConfirmedFlow) };
    let f = &mut entry.flow;
    f.last_seen_ns = now;
    f.group = group;
    f.state = if pkt.proto == PROTO_TCP {
        TCP_STATE_SYN_SENT
    } else {
        FLOW_STATE_ACTIVE
    };
    f.initiator_is_lo = src_is_lo as u8;
    f.checked = checked;
    f.generation = g as u8;
    if existing == Existing::Confirmed {
        let _ = M::flows().insert(key, &*entry, 0);
    } else {
        let _ = M::embryonic_flows().insert(key, &entry.flow, 0);
        count::<M>(COUNTER_FLOW_NEW);
        if existing == Existing::Embryonic {
            count::<M>(COUNTER_EMBRYONIC_REUSED);
        }
    }
}

/// A flow-table hit: the flow's state, and its `FLOWS` entry when it is confirmed (null when it
/// is embryonic). `flow` lies inside `*confirmed`: use `confirmed` only after the last use of
/// `flow`.
pub struct Hit {
    pub flow: &'static mut FlowValue,
    pub confirmed: *mut ConfirmedFlow,
}

impl Hit {
    #[inline(always)]
    pub fn embryonic(&self) -> bool {
        self.confirmed.is_null()
    }
}

/// The entry of `key`: `FLOWS` first (the established packets' one lookup), then
/// `EMBRYONIC_FLOWS`.
#[inline(always)]
pub fn find_flow<M: Maps>(key: &FlowKey) -> Option<Hit> {
    if let Some(c) = M::flows().get_ptr_mut(key) {
        // SAFETY: value pointer from a successful lookup; concurrent updates of the same flow
        // from two CPUs may interleave, which only affects last_seen/state freshness.
        let flow = unsafe { &mut (*c).flow };
        return Some(Hit { flow, confirmed: c });
    }
    let f = M::embryonic_flows().get_ptr_mut(key)?;
    Some(Hit {
        // SAFETY: as above.
        flow: unsafe { &mut *f },
        confirmed: core::ptr::null_mut(),
    })
}

/// Whether a live flow's table entry is still young enough for `related` ICMP errors.
#[inline(always)]
fn related_live<M: Maps>(key: &FlowKey, now: u64) -> bool {
    let f = match M::flows().get_ptr(key) {
        // SAFETY: value pointer from a successful lookup; the flow is its first field.
        Some(c) => unsafe { &(*c).flow as *const FlowValue },
        None => match M::embryonic_flows().get_ptr(key) {
            Some(f) => f,
            None => return false,
        },
    };
    // SAFETY: value pointer from a successful lookup; read only.
    let f = unsafe { &*f };
    now.wrapping_sub(f.last_seen_ns) <= flow_timeout_ns(f.state)
}

/// Moves an embryonic flow its responder has answered (after [`touch`]) to `FLOWS` (built in
/// `entry`, the per-CPU work area, with no next hop yet); true when it did (the embryonic entry
/// is gone).
#[inline(always)]
pub fn confirm_if_answered<M: Maps>(
    key: &FlowKey,
    f: &FlowValue,
    pkt: &Packet,
    from_initiator: bool,
    entry: &mut ConfirmedFlow,
) -> bool {
    let answered = if pkt.proto == PROTO_TCP {
        from_initiator && f.state == TCP_STATE_ESTABLISHED
    } else {
        !from_initiator
    };
    if answered {
        // SAFETY: all-zero is a valid ConfirmedFlow (no next hop cached).
        unsafe { zero(entry as *mut ConfirmedFlow) };
        entry.flow = *f;
        if M::flows().insert(key, &*entry, 0).is_ok() {
            let _ = M::embryonic_flows().remove(key);
            count::<M>(COUNTER_FLOW_CONFIRMED);
            return true;
        }
    }
    false
}

/// Whether this packet may open a flow: a tracked kind, and for TCP a SYN without ACK.
#[inline(always)]
pub fn opens_flow(pkt: &Packet) -> bool {
    pkt.kind == Kind::Flow && (pkt.proto != PROTO_TCP || syn_only(pkt))
}

#[inline(always)]
pub fn syn_only(pkt: &Packet) -> bool {
    pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
fn dropped<M: Maps>(ifindex: u32, pkt: Option<&Packet>, reason: u8, v: Verdict) -> Outcome {
    report_drop::<M>(ifindex, pkt, reason, v.group(), v.direction());
    Outcome::Dropped
}

/// Judges the packet in `w.pkt` (`parsed`: the `parse` return code), seen on `ifindex`, on the
/// policies `sides` (`CHECK_*`). Reads the configuration into `w.query.g` and `w.flags`, the
/// clock into `w.now`.
#[inline(always)]
pub fn classify<M: Maps>(
    w: &mut Work,
    parsed: u32,
    sides: u8,
    ifindex: u32,
    admit: impl Fn(&Packet, u32) -> Admit,
) -> Outcome {
    let Work {
        pkt,
        key,
        query,
        flags,
        now,
        entry,
    } = w;
    match parsed {
        0 => {}
        PARSE_PASS => {
            count::<M>(COUNTER_PASS_NON_IP);
            return Outcome::NotIp;
        }
        PARSE_FRAGMENT => {
            return dropped::<M>(ifindex, None, DROP_REASON_FRAGMENT, Verdict::UNSELECTED)
        }
        _ => return dropped::<M>(ifindex, None, DROP_REASON_MALFORMED, Verdict::UNSELECTED),
    }
    let (g, config_flags) = config::<M>();
    *flags = config_flags;
    // SAFETY: Query and Packet address fields (see `words`).
    unsafe {
        copy_addr(&mut query.src, &pkt.src);
        copy_addr(&mut query.dst, &pkt.dst);
    }
    query.g = g;
    query.port = u16::from_be(pkt.dport);
    query.proto = pkt.proto;
    query.sides = sides;
    *now = flow_clock();
    let now = *now;

    if pkt.kind == Kind::IcmpError {
        if related_live::<M>(&pkt.related, now) {
            count::<M>(COUNTER_PASS_FLOW);
            return Outcome::Allowed;
        }
        query.port = 0;
    }

    let src_is_lo = flow_key(key, &pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto);
    // An entry that does not vouch for this packet (expired, reopened the other way, an origin
    // flow and the initiator's packet) is replaced in place by the new verdict's flow.
    let mut existing = Existing::None;
    if pkt.kind == Kind::Flow {
        if let Some(hit) = find_flow::<M>(key) {
            let embryonic = hit.embryonic();
            let f = hit.flow;
            existing = if embryonic {
                Existing::Embryonic
            } else {
                Existing::Confirmed
            };
            let from_initiator = (f.initiator_is_lo != 0) == src_is_lo;
            // A flow no policy of this program checked (a node origin flow) vouches only for the
            // responder's packets; the initiator's are judged below, and the verdict replaces it.
            if flow_live(f, now, syn_only(pkt), from_initiator)
                && !(f.checked == 0 && from_initiator)
            {
                if *flags & CONFIG_FLAG_REVALIDATE != 0
                    && f.checked != 0
                    && f.generation as u32 != g
                {
                    let v = revalidate::<M>(query, key, f);
                    if v.is_deny() {
                        let (removed, counter) = if embryonic {
                            (
                                M::embryonic_flows().remove(&*key),
                                COUNTER_REVOKED_EMBRYONIC,
                            )
                        } else {
                            (M::flows().remove(&*key), COUNTER_REVOKED_CONFIRMED)
                        };
                        if removed.is_ok() {
                            count::<M>(counter);
                        }
                        return dropped::<M>(ifindex, Some(&*pkt), DROP_REASON_POLICY, v);
                    }
                }
                touch(f, pkt, from_initiator, now);
                count::<M>(COUNTER_PASS_FLOW);
                if embryonic {
                    confirm_if_answered::<M>(key, f, pkt, from_initiator, entry);
                    return Outcome::Allowed;
                }
                // SAFETY: `f` (inside this entry) is not used any more.
                return Outcome::Flow(unsafe { &mut *hit.confirmed }, src_is_lo);
            }
        }
    }

    // The verdict and the sides it judged (0: trusted, not judged).
    let (v, judged) = match admit(pkt, g) {
        Admit::Divert => return Outcome::Diverted,
        Admit::Drop(reason, direction) => {
            report_drop::<M>(ifindex, Some(&*pkt), reason, 0, direction);
            return Outcome::Dropped;
        }
        Admit::Trusted => {
            count::<M>(COUNTER_PASS_HOST);
            (Verdict::UNSELECTED, 0)
        }
        Admit::Check => {
            let v = check::<M>(query);
            if v.is_deny() {
                return dropped::<M>(ifindex, Some(&*pkt), DROP_REASON_POLICY, v);
            }
            if v.is_unselected() {
                count::<M>(COUNTER_PASS_UNSELECTED);
            } else {
                if pkt.kind == Kind::Flow && pkt.proto == PROTO_TCP && !syn_only(pkt) {
                    return dropped::<M>(ifindex, Some(&*pkt), DROP_REASON_POLICY, v);
                }
                count::<M>(COUNTER_PASS_POLICY);
            }
            (v, sides)
        }
    };
    if opens_flow(pkt) {
        let admitted = (v.group(), sides);
        open_flow::<M>(key, entry, existing, pkt, src_is_lo, admitted, (now, g));
        report_flow::<M>(ifindex, pkt, v, judged);
    }
    Outcome::Allowed
}

/// Re-checks a flow against generation `query.g` on the sides that admitted it, from the
/// initiator's point of view. A flow still allowed is marked current with its new group.
#[inline(always)]
fn revalidate<M: Maps>(query: &mut Query, key: &FlowKey, f: &mut FlowValue) -> Verdict {
    let (init, resp, resp_port) = if f.initiator_is_lo != 0 {
        (&key.addr_lo, &key.addr_hi, key.port_hi)
    } else {
        (&key.addr_hi, &key.addr_lo, key.port_lo)
    };
    // SAFETY: Query and FlowKey address fields (see `words`).
    unsafe {
        copy_addr(&mut query.src, init);
        copy_addr(&mut query.dst, resp);
    }
    query.port = u16::from_be(resp_port);
    query.proto = key.protocol;
    query.sides = f.checked;
    let v = check::<M>(query);
    if !v.is_deny() {
        f.group = v.group();
        f.generation = query.g as u8;
    }
    v
}
