//! The event ring's records: dropping a packet (its counter, its group's drop count and the
//! rate-limited drop report) and the rate-limited allow record of a new flow ([`report_flow`]).
//! Each kind has its own per-CPU one-second window (`DROP_EVENT_WINDOW`, `FLOW_RECORD_WINDOW`).

use portcullis_common::*;

use crate::maps::{count, count_flow_record, Maps, RateWindowMap};
use crate::parse::Packet;
use crate::policy::Verdict;
use crate::words::copy_addr;

const NS_PER_SEC: u64 = 1_000_000_000;

/// The `COUNTER_*` of a `DROP_REASON_*`.
#[inline(always)]
fn drop_counter(reason: u8) -> u32 {
    match reason {
        DROP_REASON_POLICY => COUNTER_DROP_POLICY,
        DROP_REASON_FRAGMENT => COUNTER_DROP_FRAGMENT,
        DROP_REASON_UNKNOWN_POD => COUNTER_DROP_UNKNOWN_POD,
        _ => COUNTER_DROP_MALFORMED,
    }
}

/// Counts a drop, charges it to `group` (0: none) and reports it ([`report_event`]). `ifindex`
/// is the interface the packet was seen on. The caller then drops the packet.
#[inline(never)]
pub fn report_drop<M: Maps>(
    ifindex: u32,
    pkt: Option<&Packet>,
    reason: u8,
    group: u32,
    direction: u8,
) {
    count::<M>(drop_counter(reason));
    if group != 0 {
        match M::drops_by_group().get_ptr_mut(group) {
            // SAFETY: per-CPU slot.
            Some(c) => unsafe { *c += 1 },
            None => {
                let _ = M::drops_by_group().insert(group, 1u64, 0);
            }
        }
    }
    report_event::<M>(ifindex, pkt, reason, group, direction);
}

/// Within `DROP_EVENTS_PER_SECOND` per CPU, reports a drop with the packet's addresses (`pkt`,
/// when parsed) and `group` (for `monitor`), without counting it: a drop that is no policy's
/// (SNAT) is counted by its own counters, not charged to the group.
#[inline(never)]
pub fn report_event<M: Maps>(
    ifindex: u32,
    pkt: Option<&Packet>,
    reason: u8,
    group: u32,
    direction: u8,
) {
    // SAFETY: helper without preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if !within_rate(M::drop_event_window(), DROP_EVENTS_PER_SECOND, now) {
        return;
    }
    if let Some(mut e) = M::drop_events().reserve(0) {
        let mut ev = DropEvent {
            timestamp_ns: now,
            ifindex,
            group,
            direction,
            reason,
            ..DropEvent::default()
        };
        if let Some(p) = pkt {
            // SAFETY: DropEvent and Packet address fields (see `words`).
            unsafe {
                copy_addr(&mut ev.src, &p.src);
                copy_addr(&mut ev.dst, &p.dst);
            }
            ev.src_port = u16::from_be(p.sport);
            ev.dst_port = u16::from_be(p.dport);
            ev.protocol = p.proto;
        }
        e.write(ev);
        e.submit(0);
    }
}

/// Whether one more record fits in this CPU's current one-second `window` of at most `limit`
/// records (and takes its place).
#[inline(always)]
fn within_rate(window: &RateWindowMap, limit: u64, now: u64) -> bool {
    let Some(w) = window.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot.
    let w = unsafe { &mut *w };
    if now.wrapping_sub(w[0]) >= NS_PER_SEC {
        w[0] = now;
        w[1] = 0;
    }
    if w[1] >= limit {
        return false;
    }
    w[1] += 1;
    true
}

/// The allow record of the new flow `pkt` opens, seen on `ifindex`, admitted by verdict `v` on
/// the sides `sides` (`CHECK_*`; 0: not judged, a flow from the node itself). Within
/// `FLOW_RECORDS_PER_SECOND` per CPU, counted in `FLOW_RECORD_COUNTER_WRITTEN`; a record over the
/// limit or that finds the ring full is counted in `FLOW_RECORD_COUNTER_LOST`. Called only for a
/// packet that opens a flow: an established packet never gets here.
#[inline(never)]
pub fn report_flow<M: Maps>(ifindex: u32, pkt: &Packet, v: Verdict, sides: u8) {
    // SAFETY: helper without preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if !within_rate(M::flow_record_window(), FLOW_RECORDS_PER_SECOND, now) {
        count_flow_record::<M>(FLOW_RECORD_COUNTER_LOST);
        return;
    }
    let Some(mut e) = M::drop_events().reserve(0) else {
        count_flow_record::<M>(FLOW_RECORD_COUNTER_LOST);
        return;
    };
    let kind = if sides == 0 {
        EVENT_KIND_ALLOW_HOST
    } else if v.is_unselected() {
        EVENT_KIND_ALLOW_UNSELECTED
    } else {
        EVENT_KIND_ALLOW_POLICY
    };
    let mut ev = DropEvent {
        timestamp_ns: now,
        ifindex,
        group: v.group(),
        src_port: u16::from_be(pkt.sport),
        dst_port: u16::from_be(pkt.dport),
        protocol: pkt.proto,
        direction: v.direction(),
        kind,
        sides,
        ..DropEvent::default()
    };
    // SAFETY: DropEvent and Packet address fields (see `words`).
    unsafe {
        copy_addr(&mut ev.src, &pkt.src);
        copy_addr(&mut ev.dst, &pkt.dst);
    }
    e.write(ev);
    e.submit(0);
    count_flow_record::<M>(FLOW_RECORD_COUNTER_WRITTEN);
}
