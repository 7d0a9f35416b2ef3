//! The differential test of a gateway datapath (the XDP program, the AF_XDP engine): random
//! policies compiled by one long-lived `GatewayCompiler` (later snapshots redraw one policy, so
//! the tables change as deltas), random frames (malformed, later fragments, IPv6 extension
//! headers, VLAN tags, non-IP, ICMP errors and untracked ICMP, both legs, TCP flag mixes, replies
//! and repeats of earlier packets), and every decision compared with the policy evaluator plus a
//! model of the flow table ([`FlowModel`]). [`check`] drives a [`DiffDatapath`] and reports each
//! disagreement with the seed, the update's and packet's numbers, the frame and the policies: a
//! reproducer (`Settings::update` judges that update alone); [`run`] is the tests' form of it (`PORTCULLIS_DIFF_PACKETS`, default 100k, and
//! `PORTCULLIS_DIFF_SEED`). [`node`] is the same for the node hook's pod-to-pod delivery.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portcullis_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use portcullis_policy::compile::{GatewayCompiler, GatewayTables};
use portcullis_policy::eval::{Flow, Side};
use portcullis_policy::model::{Direction, Policy, Snapshot};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::packet::*;
use snapshots::random_snapshot;

pub mod node;
mod schedule;
mod snapshots;

use schedule::Schedule;
pub use schedule::{Disagreement, Settings, Summary};

/// Packets judged under one snapshot (the flow table starts empty with each).
const PACKETS_PER_SNAPSHOT: usize = 2000;
/// Earlier packets kept for replies, repeats and ICMP errors.
const RECENT: usize = 64;

/// What a datapath did with a frame, or must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Pass,
    Drop,
    /// Not an IP packet the gateway judges (passed untouched).
    NotIp,
}

/// A datapath under test.
pub trait DiffDatapath {
    /// Puts `tables` in force as the next generation, with an empty flow table.
    fn apply(&mut self, tables: &GatewayTables);
    /// Judges `p` on its leg.
    fn judge(&mut self, p: &DiffPacket) -> Decision;
}

/// What the generated frame is, for the model.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shape {
    /// A packet of a flow (TCP, UDP, SCTP, ICMP echo, GRE).
    Flow,
    /// An ICMP error quoting a packet of this flow.
    IcmpError(FlowId),
    /// ICMP judged every time, never tracked (timestamp, node information).
    IcmpUntracked,
    NotIp,
    Malformed,
    LaterFragment,
}

#[derive(Clone)]
pub struct DiffPacket {
    pub bytes: Vec<u8>,
    pub cluster_leg: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub shape: Shape,
}

impl fmt::Debug for DiffPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        write!(
            f,
            "{:?} {} leg, {}:{} -> {}:{} proto {} flags {:#04x}, frame {hex}",
            self.shape,
            if self.cluster_leg {
                "cluster"
            } else {
                "external"
            },
            self.src,
            self.sport,
            self.dst,
            self.dport,
            self.protocol,
            self.tcp_flags
        )
    }
}

/// A connection, normalised: (lo addr, lo port, hi addr, hi port, protocol).
pub type FlowId = (IpAddr, u16, IpAddr, u16, u8);

fn flow_id(src: (IpAddr, u16), dst: (IpAddr, u16), protocol: u8) -> FlowId {
    let (lo, hi) = if src <= dst { (src, dst) } else { (dst, src) };
    (lo.0, lo.1, hi.0, hi.1, protocol)
}

/// Runs the differential test on `datapath` for `settings.packets` packets, a new snapshot (a
/// delta of the previous one half the time) every `PACKETS_PER_SNAPSHOT`; hands every
/// disagreement to `report`.
pub fn check(
    datapath: &mut impl DiffDatapath,
    settings: Settings,
    report: &mut dyn FnMut(Disagreement),
) -> Summary {
    let mut traffic = Traffic::new(settings.seed);
    let mut compiler = GatewayCompiler::default();
    let mut snapshot = traffic.snapshot(None);
    let mut schedule = Schedule::new(settings);
    while let Some(packets) = schedule.next_update() {
        if schedule.update() > 0 {
            snapshot = traffic.snapshot(Some(snapshot));
        }
        let tables = compiler.compile(&snapshot).expect("small rule sets fit");
        datapath.apply(&tables);
        let selected = |d: Direction, ip: IpAddr| tables.endpoints.contains_key(&(d, ip));
        let mut model = FlowModel::default();
        let judged = schedule.judged();
        for _ in 0..packets {
            let p = traffic.packet(&snapshot);
            let mut disagreement = None;
            if judged {
                let want = model.expected(&snapshot, &p, &selected);
                let got = datapath.judge(&p);
                if got != want {
                    disagreement = Some(format!("want {want:?} got {got:?}: {p:?}"));
                }
            }
            schedule.count(judged, disagreement, &snapshot, report);
        }
    }
    schedule.summary()
}

/// [`check`] as a test runs it: [`Settings::from_env`], a panic with the first ten reproducers
/// on any disagreement; returns the number of packets checked.
pub fn run(datapath: &mut impl DiffDatapath) -> usize {
    let mut first = Vec::new();
    let summary = check(datapath, Settings::from_env(), &mut |d| {
        if first.len() < 10 {
            first.push(d.to_string());
        }
    });
    assert!(
        summary.disagreements == 0,
        "{} disagreements, first:\n{}",
        summary.disagreements,
        first.join("\n\n")
    );
    println!(
        "{} packets over {} updates, 0 disagreements",
        summary.packets, summary.updates
    );
    summary.packets
}

/// The flow table as the datapath must keep it: who opened each flow and whether it is closing
/// (a SYN from the former responder of a closing TCP flow is judged as new).
#[derive(Default)]
pub struct FlowModel {
    flows: HashMap<FlowId, ModelFlow>,
}

struct ModelFlow {
    initiator: (IpAddr, u16),
    closing: bool,
}

impl FlowModel {
    /// The decision for `p`, updating the model. `selected`: whether a pod address has a group in
    /// that direction.
    pub fn expected(
        &mut self,
        snapshot: &Snapshot,
        p: &DiffPacket,
        selected: &dyn Fn(Direction, IpAddr) -> bool,
    ) -> Decision {
        let policy_allows = |port: u16| {
            let side = |ip: IpAddr| match snapshot.pods.iter().find(|pod| pod.ips.contains(&ip)) {
                Some(pod) => Side::Pod(pod),
                None => Side::External,
            };
            let (src, dst) = if p.cluster_leg {
                (side(p.src), Side::External)
            } else {
                (Side::External, side(p.dst))
            };
            let flow = Flow {
                src,
                src_ip: p.src,
                dst,
                dst_ip: p.dst,
                protocol: p.protocol,
                port,
            };
            snapshot.evaluate(&flow).allowed()
        };
        let allowed = |yes: bool| if yes { Decision::Pass } else { Decision::Drop };
        match p.shape {
            Shape::NotIp => return Decision::NotIp,
            Shape::Malformed | Shape::LaterFragment => return Decision::Drop,
            Shape::IcmpError(related) if self.flows.contains_key(&related) => {
                return Decision::Pass
            }
            Shape::IcmpError(_) | Shape::IcmpUntracked => return allowed(policy_allows(0)),
            Shape::Flow => {}
        }
        let id = flow_id((p.src, p.sport), (p.dst, p.dport), p.protocol);
        let tcp = p.protocol == IPPROTO_TCP;
        let syn_only = tcp && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if let Some(f) = self.flows.get_mut(&id) {
            let from_initiator = f.initiator == (p.src, p.sport);
            if !(f.closing && syn_only && !from_initiator) {
                if tcp && p.tcp_flags & (TCP_RST | TCP_FIN) != 0 {
                    f.closing = true;
                } else if syn_only {
                    f.closing = false;
                }
                return Decision::Pass;
            }
        }
        if !policy_allows(p.dport) {
            return Decision::Drop;
        }
        let (direction, pod) = if p.cluster_leg {
            (Direction::Egress, p.src)
        } else {
            (Direction::Ingress, p.dst)
        };
        if tcp && !syn_only {
            return allowed(!selected(direction, pod));
        }
        let initiator = (p.src, p.sport);
        let flow = ModelFlow {
            initiator,
            closing: false,
        };
        self.flows.insert(id, flow);
        Decision::Pass
    }
}

/// The random policies and packets of one run.
pub struct Traffic {
    rng: SmallRng,
    /// Recent flow packets, for replies, repeats and ICMP errors.
    recent: Vec<DiffPacket>,
}

impl Traffic {
    pub fn new(seed: u64) -> Traffic {
        Traffic {
            rng: SmallRng::seed_from_u64(seed),
            recent: Vec::new(),
        }
    }

    /// A fresh random snapshot, or half the time `previous` with one policy redrawn under the
    /// same name, so groups of the other policies are reused and only part of the tables changes.
    pub fn snapshot(&mut self, previous: Option<Snapshot>) -> Snapshot {
        self.recent.clear();
        let rng = &mut self.rng;
        let fresh = random_snapshot(rng);
        let Some(mut previous) = previous else {
            return fresh;
        };
        if previous.policies.is_empty() || fresh.policies.is_empty() || rng.random_bool(0.5) {
            return fresh;
        }
        let i = rng.random_range(0..previous.policies.len());
        let name = previous.policies[i].name.clone();
        previous.policies[i] = Policy {
            name,
            ..fresh.policies[0].clone()
        };
        previous
    }

    pub fn packet(&mut self, snapshot: &Snapshot) -> DiffPacket {
        let roll = self.rng.random_range(0..100);
        let p = if self.recent.is_empty() || roll < 55 {
            self.new_packet(snapshot)
        } else {
            let earlier = self.recent[self.rng.random_range(0..self.recent.len())].clone();
            match roll {
                55..80 => self.reply(&earlier),
                80..92 => self.repeat(&earlier),
                _ => self.icmp_error(&earlier),
            }
        };
        if p.shape == Shape::Flow {
            if self.recent.len() == RECENT {
                self.recent.swap_remove(self.rng.random_range(0..RECENT));
            }
            self.recent.push(p.clone());
        }
        p
    }

    fn tcp_flags(&mut self) -> u8 {
        const MIXES: [u8; 8] = [
            TCP_SYN,
            TCP_SYN,
            TCP_SYN,
            TCP_ACK,
            TCP_SYN | TCP_ACK,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            0x18, // PSH | ACK
        ];
        MIXES[self.rng.random_range(0..MIXES.len())]
    }

    fn new_packet(&mut self, snapshot: &Snapshot) -> DiffPacket {
        let rng = &mut self.rng;
        let v4 = rng.random_bool(0.7);
        let pod_ip = if rng.random_bool(0.95) {
            let pod = &snapshot.pods[rng.random_range(0..snapshot.pods.len())];
            *pod.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap()
        } else if v4 {
            IpAddr::V4(Ipv4Addr::new(10, 244, 9, 9))
        } else {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 9, 9))
        };
        let external = external_ip(rng, v4);
        let protocol = match rng.random_range(0..20) {
            0..8 => IPPROTO_TCP,
            8..13 => IPPROTO_UDP,
            13..16 => IPPROTO_SCTP,
            16..19 if v4 => IPPROTO_ICMP,
            16..19 => IPPROTO_ICMPV6,
            _ => 47,
        };
        let (mut sport, mut dport) = (rng.random_range(1024..=65535), rng.random_range(1..12));
        if matches!(protocol, IPPROTO_ICMP | IPPROTO_ICMPV6) {
            dport = sport; // the echo identifier stands for both ports
        }
        if protocol == 47 {
            (sport, dport) = (0, 0);
        }
        let cluster_leg = rng.random_bool(0.5);
        let (src, dst) = if cluster_leg {
            (pod_ip, external)
        } else {
            (external, pod_ip)
        };
        let mut p = DiffPacket {
            bytes: Vec::new(),
            cluster_leg,
            src,
            dst,
            protocol,
            sport,
            dport,
            tcp_flags: 0,
            shape: Shape::Flow,
        };
        p.tcp_flags = self.tcp_flags();
        let rng = &mut self.rng;
        p.shape = match rng.random_range(0..40) {
            0 | 1 => Shape::Malformed,
            2 | 3 => Shape::LaterFragment,
            4 => Shape::NotIp,
            5 => Shape::IcmpUntracked,
            _ => Shape::Flow,
        };
        if p.shape == Shape::Malformed && p.protocol == 47 {
            p.shape = Shape::Flow; // no L4 header to cut short
        }
        if p.shape == Shape::IcmpUntracked {
            (p.protocol, p.sport, p.dport) = (if v4 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 }, 0, 0);
        }
        self.framed(p)
    }

    /// The other end's answer to `earlier`, on the other leg.
    fn reply(&mut self, earlier: &DiffPacket) -> DiffPacket {
        let tcp_flags = if earlier.tcp_flags == TCP_SYN {
            TCP_SYN | TCP_ACK
        } else {
            self.tcp_flags()
        };
        let reply = DiffPacket {
            cluster_leg: !earlier.cluster_leg,
            src: earlier.dst,
            dst: earlier.src,
            sport: earlier.dport,
            dport: earlier.sport,
            tcp_flags,
            ..earlier.clone()
        };
        self.framed(reply)
    }

    /// Another packet of `earlier`'s sender (a retransmission, the handshake's ACK, a close, a
    /// reopen).
    fn repeat(&mut self, earlier: &DiffPacket) -> DiffPacket {
        let again = DiffPacket {
            tcp_flags: self.tcp_flags(),
            ..earlier.clone()
        };
        self.framed(again)
    }

    /// An ICMP error about `earlier`, sent back towards its source from a router on the way.
    fn icmp_error(&mut self, earlier: &DiffPacket) -> DiffPacket {
        let v4 = earlier.src.is_ipv4();
        let router = external_ip(&mut self.rng, v4);
        let pod_side = if earlier.cluster_leg {
            earlier.src
        } else {
            earlier.dst
        };
        let (src, dst) = if earlier.cluster_leg {
            (router, pod_side)
        } else {
            (pod_side, router)
        };
        let protocol = if v4 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 };
        let related = flow_id(
            (earlier.src, earlier.sport),
            (earlier.dst, earlier.dport),
            earlier.protocol,
        );
        let error = DiffPacket {
            cluster_leg: !earlier.cluster_leg,
            src,
            dst,
            protocol,
            sport: 0,
            dport: 0,
            tcp_flags: 0,
            shape: Shape::IcmpError(related),
            bytes: Vec::new(),
        };
        let quoted = ip_packet(earlier, &l4(earlier, v4), &[]);
        let quoted = &quoted[..(if v4 { 28 } else { 48 }).min(quoted.len())];
        let payload = icmp_error(if v4 { 3 } else { 1 }, 3, quoted);
        self.frame(error, payload)
    }

    /// `p` with its frame built from its fields and shape.
    fn framed(&mut self, p: DiffPacket) -> DiffPacket {
        let v4 = p.src.is_ipv4();
        let mut payload = match p.shape {
            Shape::IcmpUntracked => icmp(if v4 { 13 } else { 139 }, 7, &[0; 12]),
            _ => l4(&p, v4),
        };
        if p.shape == Shape::Malformed {
            payload.truncate(2);
        }
        self.frame(p, payload)
    }

    /// Puts `payload` in an IP packet and frame as `p` says: VLAN tags and IPv6 extension
    /// headers now and then.
    fn frame(&mut self, mut p: DiffPacket, payload: Vec<u8>) -> DiffPacket {
        let rng = &mut self.rng;
        let vlans: &[u16] = match rng.random_range(0..20) {
            0 => &[100],
            1 => &[100, 200],
            _ => &[],
        };
        let ext: Vec<u8> = match (p.shape, rng.random_range(0..8)) {
            (Shape::LaterFragment, _) => ext_frag(p.protocol, 2, false),
            (_, 0) => ext_opts(p.protocol),
            (_, 1) => [ext_opts(IPPROTO_FRAGMENT), ext_frag(p.protocol, 0, true)].concat(),
            _ => Vec::new(),
        };
        let ethertype = match (p.shape, p.src.is_ipv4()) {
            (Shape::NotIp, _) => 0x0806,
            (_, true) => 0x0800,
            (_, false) => 0x86dd,
        };
        p.bytes = eth(ethertype, vlans);
        p.bytes.extend(ip_packet(&p, &payload, &ext));
        p
    }
}

/// The IP packet of `p` carrying `payload`: IPv6 with the extension headers `ext` (whose last
/// one names `p.protocol`), IPv4 a later fragment when `p` is one.
fn ip_packet(p: &DiffPacket, payload: &[u8], ext: &[u8]) -> Vec<u8> {
    let (src, dst) = (p.src.to_string(), p.dst.to_string());
    if p.src.is_ipv4() {
        let frag = if p.shape == Shape::LaterFragment {
            0x0010
        } else {
            0
        };
        return ipv4(&src, &dst, p.protocol, &[], frag, payload);
    }
    let next = match ext.first() {
        None => p.protocol,
        Some(_) if p.shape == Shape::LaterFragment => IPPROTO_FRAGMENT,
        Some(_) if ext.len() == 8 => IPPROTO_DSTOPTS,
        Some(_) => IPPROTO_HOPOPTS,
    };
    ipv6(&src, &dst, next, &[ext, payload].concat())
}

/// The L4 header of a flow packet.
fn l4(p: &DiffPacket, v4: bool) -> Vec<u8> {
    match p.protocol {
        IPPROTO_TCP => tcp(p.sport, p.dport, p.tcp_flags),
        IPPROTO_UDP => udp(p.sport, p.dport),
        IPPROTO_SCTP => sctp(p.sport, p.dport),
        // Echo request and reply are one flow (the identifier): requests stand for both.
        IPPROTO_ICMP | IPPROTO_ICMPV6 => icmp(if v4 { 8 } else { 128 }, p.sport, &[]),
        _ => vec![0; 8],
    }
}

fn external_ip(rng: &mut SmallRng, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(
            0xc0a8_0000u32 | rng.random_range(0..=0xffffu32),
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8u128 << 96) | rng.random_range(0..=0xffffu128),
        ))
    }
}
