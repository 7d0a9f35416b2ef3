//! The kernel's flow pipeline (`portcullis_ebpf_common::flow::classify`) in user space, step for
//! step and with the kernel's own parse, flow-key, liveness, TCP-state and flow-opening rules
//! (`parse::{parse, flow_key}`, `flow::{touch, flow_live, opens_flow, syn_only}`): flow-table hit
//! with revalidation against a new generation, ICMP errors related to a known flow, the policy
//! check (the gateway's admission: always checked), flow creation and confirmation, the same
//! `COUNTER_*` counters and per-group drop counts, a drop event for every drop (rate limiting is
//! the caller's) and an allow record for every new flow, at most `FLOW_RECORDS_PER_SECOND` for
//! the whole engine (the kernel's limit is per CPU), counted as the kernel's
//! `FLOW_RECORD_COUNTERS` (those over the limit in `FLOW_RECORD_COUNTER_LOST`). See `flow.rs` for
//! the rules themselves.

use ahash::AHashMap;
use portcullis_common::*;
use portcullis_ebpf_common::flow::{flow_live, opens_flow, syn_only, touch, Existing};
use portcullis_ebpf_common::parse::{
    flow_key, parse, Frame, Kind, Packet, Stop, PARSE_FRAGMENT, PARSE_PASS,
};
use portcullis_ebpf_common::policy::{Query, Verdict};

use crate::flows::FlowStore;
use crate::tables::PolicyTables;

const NS_PER_SEC: u64 = 1_000_000_000;

/// What the pipeline decided for one frame (counted already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed: the engine forwards it.
    Allowed,
    /// Allowed, and it opened a new flow: the engine forwards it and reports the flow's allow
    /// record (the kernel's `report_flow`; timestamp: the pipeline's clock).
    Opened(DropEvent),
    /// Not an IP packet the gateway judges (non-IP, neighbour discovery): for the kernel.
    NotIp,
    /// Dropped, with the event the kernel would report (timestamp: the pipeline's clock).
    Dropped(DropEvent),
}

/// A parse result area for [`Pipeline::classify`] (every field is written before it is read).
pub fn new_packet() -> Packet {
    let zero_key = FlowKey {
        addr_lo: [0; 16],
        addr_hi: [0; 16],
        port_lo: 0,
        port_hi: 0,
        protocol: 0,
        _pad: [0; 3],
    };
    Packet {
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        proto: 0,
        tcp_flags: 0,
        kind: Kind::Flow,
        l3_off: 0,
        l4_off: 0,
        is_v6: false,
        vlan: false,
        related: zero_key,
    }
}

/// The engine's pipeline state: its flow table and its counters.
pub struct Pipeline<F: FlowStore> {
    pub flows: F,
    /// Indexed by `COUNTER_*`, as the kernel's `COUNTERS`.
    pub counters: [u64; COUNTER_COUNT as usize],
    /// Drops charged to each group id, as the kernel's `DROPS_BY_GROUP`.
    pub drops_by_group: AHashMap<u32, u64>,
    /// Indexed by `FLOW_RECORD_COUNTER_*`, as the kernel's `FLOW_RECORD_COUNTERS`.
    pub flow_record_counters: [u64; FLOW_RECORD_COUNTER_COUNT as usize],
    /// `[window start ns, records sent]` of the allow records' rate limit
    /// (`FLOW_RECORDS_PER_SECOND` for the whole engine: one pipeline serves every queue).
    record_window: [u64; 2],
}

impl<F: FlowStore> Pipeline<F> {
    pub fn new(flows: F) -> Pipeline<F> {
        Pipeline {
            flows,
            counters: [0; COUNTER_COUNT as usize],
            drops_by_group: AHashMap::new(),
            flow_record_counters: [0; FLOW_RECORD_COUNTER_COUNT as usize],
            record_window: [0; 2],
        }
    }

    fn count(&mut self, counter: u32) {
        self.counters[counter as usize] += 1;
    }

    /// Counts a drop, charges it to its group and builds its event (`report_drop`).
    fn dropped(&mut self, ifindex: u32, pkt: Option<&Packet>, reason: u8, v: Verdict) -> Outcome {
        self.count(match reason {
            DROP_REASON_POLICY => COUNTER_DROP_POLICY,
            DROP_REASON_FRAGMENT => COUNTER_DROP_FRAGMENT,
            DROP_REASON_UNKNOWN_POD => COUNTER_DROP_UNKNOWN_POD,
            _ => COUNTER_DROP_MALFORMED,
        });
        let group = v.group();
        if group != 0 {
            *self.drops_by_group.entry(group).or_default() += 1;
        }
        let mut event = DropEvent {
            ifindex,
            group,
            direction: v.direction(),
            reason,
            ..DropEvent::default()
        };
        if let Some(p) = pkt {
            event.src = p.src;
            event.dst = p.dst;
            event.src_port = u16::from_be(p.sport);
            event.dst_port = u16::from_be(p.dport);
            event.protocol = p.proto;
        }
        Outcome::Dropped(event)
    }

    /// Judges `frame`, seen on `ifindex`, on the policies `sides` (`CHECK_*`) of `tables`, at
    /// `now_ns` (CLOCK_MONOTONIC, the kernel's flow clock); `revalidate`: re-check flows admitted
    /// under another generation (`--revalidate`). `pkt` receives the parsed packet.
    #[allow(clippy::too_many_arguments)]
    pub fn classify(
        &mut self,
        tables: &PolicyTables,
        frame: &[u8],
        sides: u8,
        ifindex: u32,
        now_ns: u64,
        revalidate: bool,
        pkt: &mut Packet,
    ) -> Outcome {
        let outcome = self.judge(tables, frame, sides, ifindex, now_ns, revalidate, pkt);
        match outcome {
            Outcome::Dropped(mut event) => {
                event.timestamp_ns = now_ns;
                Outcome::Dropped(event)
            }
            Outcome::Opened(mut record) => {
                record.timestamp_ns = now_ns;
                Outcome::Opened(record)
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn judge(
        &mut self,
        tables: &PolicyTables,
        frame: &[u8],
        sides: u8,
        ifindex: u32,
        now: u64,
        revalidate: bool,
        pkt: &mut Packet,
    ) -> Outcome {
        let start = frame.as_ptr() as usize;
        match parse(
            &Frame::new(start, start + frame.len()),
            pkt,
            Stop::Malformed,
        ) {
            0 => {}
            PARSE_PASS => {
                self.count(COUNTER_PASS_NON_IP);
                return Outcome::NotIp;
            }
            PARSE_FRAGMENT => {
                return self.dropped(ifindex, None, DROP_REASON_FRAGMENT, Verdict::UNSELECTED)
            }
            _ => return self.dropped(ifindex, None, DROP_REASON_MALFORMED, Verdict::UNSELECTED),
        }
        let g = tables.parity();
        let mut query = Query {
            src: pkt.src,
            dst: pkt.dst,
            g,
            port: u16::from_be(pkt.dport),
            proto: pkt.proto,
            sides,
        };
        if pkt.kind == Kind::IcmpError {
            if self.flows.related_live(&pkt.related, now) {
                self.count(COUNTER_PASS_FLOW);
                return Outcome::Allowed;
            }
            query.port = 0;
        }

        let mut key = new_packet().related;
        // An entry that does not vouch for this packet is replaced by the new verdict's flow.
        let mut existing = Existing::None;
        let src_is_lo = flow_key(
            &mut key, &pkt.src, pkt.sport, &pkt.dst, pkt.dport, pkt.proto,
        );
        if pkt.kind == Kind::Flow {
            if let Some(hit) = self.flows.find(&key) {
                let (f, embryonic) = (hit.flow, hit.embryonic);
                existing = if embryonic {
                    Existing::Embryonic
                } else {
                    Existing::Confirmed
                };
                let from_initiator = (f.initiator_is_lo != 0) == src_is_lo;
                // A flow no policy checked vouches only for the responder's packets.
                if flow_live(f, now, syn_only(pkt), from_initiator)
                    && !(f.checked == 0 && from_initiator)
                {
                    if revalidate && f.checked != 0 && u32::from(f.generation) != g {
                        let v = revalidated(tables, &key, f);
                        if v.is_deny() {
                            if self.flows.remove(&key, embryonic) {
                                self.count(if embryonic {
                                    COUNTER_REVOKED_EMBRYONIC
                                } else {
                                    COUNTER_REVOKED_CONFIRMED
                                });
                            }
                            return self.dropped(ifindex, Some(&*pkt), DROP_REASON_POLICY, v);
                        }
                    }
                    touch(f, pkt, from_initiator, now);
                    let answered = if pkt.proto == PROTO_TCP {
                        from_initiator && f.state == TCP_STATE_ESTABLISHED
                    } else {
                        !from_initiator
                    };
                    self.count(COUNTER_PASS_FLOW);
                    if embryonic && answered && self.flows.confirm(&key) {
                        self.count(COUNTER_FLOW_CONFIRMED);
                    }
                    return Outcome::Allowed;
                }
            }
        }

        let v = tables.check(&query);
        if v.is_deny() {
            return self.dropped(ifindex, Some(&*pkt), DROP_REASON_POLICY, v);
        }
        if v.is_unselected() {
            self.count(COUNTER_PASS_UNSELECTED);
        } else {
            if pkt.kind == Kind::Flow && pkt.proto == PROTO_TCP && !syn_only(pkt) {
                return self.dropped(ifindex, Some(&*pkt), DROP_REASON_POLICY, v);
            }
            self.count(COUNTER_PASS_POLICY);
        }
        if opens_flow(pkt) {
            let flow = FlowValue {
                last_seen_ns: now,
                group: v.group(),
                state: if pkt.proto == PROTO_TCP {
                    TCP_STATE_SYN_SENT
                } else {
                    FLOW_STATE_ACTIVE
                },
                initiator_is_lo: src_is_lo as u8,
                checked: sides,
                generation: g as u8,
            };
            self.flows.open(&key, &flow);
            if existing != Existing::Confirmed {
                self.count(COUNTER_FLOW_NEW);
                if existing == Existing::Embryonic {
                    self.count(COUNTER_EMBRYONIC_REUSED);
                }
            }
            if now.wrapping_sub(self.record_window[0]) >= NS_PER_SEC {
                self.record_window = [now, 0];
            }
            if self.record_window[1] >= FLOW_RECORDS_PER_SECOND {
                self.flow_record_counters[FLOW_RECORD_COUNTER_LOST as usize] += 1;
                return Outcome::Allowed;
            }
            self.record_window[1] += 1;
            self.flow_record_counters[FLOW_RECORD_COUNTER_WRITTEN as usize] += 1;
            return Outcome::Opened(DropEvent {
                ifindex,
                group: v.group(),
                src: pkt.src,
                dst: pkt.dst,
                src_port: u16::from_be(pkt.sport),
                dst_port: u16::from_be(pkt.dport),
                protocol: pkt.proto,
                direction: v.direction(),
                kind: if v.is_unselected() {
                    EVENT_KIND_ALLOW_UNSELECTED
                } else {
                    EVENT_KIND_ALLOW_POLICY
                },
                sides,
                ..DropEvent::default()
            });
        }
        Outcome::Allowed
    }
}

/// Re-checks a flow against `tables` on the sides that admitted it, from the initiator's point
/// of view (`flow.rs`'s `revalidate`). A flow still allowed is marked current with its new group.
fn revalidated(tables: &PolicyTables, key: &FlowKey, f: &mut FlowValue) -> Verdict {
    let (initiator, responder, responder_port) = if f.initiator_is_lo != 0 {
        (key.addr_lo, key.addr_hi, key.port_hi)
    } else {
        (key.addr_hi, key.addr_lo, key.port_lo)
    };
    let v = tables.check(&Query {
        src: initiator,
        dst: responder,
        g: tables.parity(),
        port: u16::from_be(responder_port),
        proto: key.protocol,
        sides: f.checked,
    });
    if !v.is_deny() {
        f.group = v.group();
        f.generation = tables.parity() as u8;
    }
    v
}
