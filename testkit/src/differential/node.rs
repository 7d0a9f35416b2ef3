//! The differential test of the node hook's delivery program: the same random snapshots as the
//! gateway's ([`Traffic::snapshot`], compiled by one long-lived `NodeCompiler` so later ones go
//! in as deltas), random new-flow packets from a pod to a pod (TCP SYN, UDP, SCTP, ICMP echo;
//! IPv4 and IPv6; numbered ports around the named one), each with a source port of its own so no
//! flow entry decides it, and every decision compared with the policy evaluator (egress of the
//! source and ingress of the destination).

use std::net::IpAddr;

use portcullis_policy::compile::node::{NodeCompiler, NodeTables};
use portcullis_policy::eval::{Flow, Side};
use portcullis_policy::model::Pod;
use rand::rngs::SmallRng;
use rand::Rng;

use super::{Disagreement, Schedule, Settings, Summary, Traffic};
use crate::packet::*;

/// The node hook under test.
pub trait NodeDiffDatapath {
    /// Puts `tables` in force as the next generation, with an empty flow table.
    fn apply(&mut self, tables: &NodeTables);
    /// Whether the frame `bytes` is delivered to its destination pod.
    fn delivers(&mut self, bytes: &[u8]) -> bool;
}

/// [`super::check`] for the node hook.
pub fn check(
    datapath: &mut impl NodeDiffDatapath,
    settings: Settings,
    report: &mut dyn FnMut(Disagreement),
) -> Summary {
    let mut traffic = Traffic::new(settings.seed);
    let mut compiler = NodeCompiler::default();
    let mut snapshot = traffic.snapshot(None);
    let mut schedule = Schedule::new(settings);
    while let Some(packets) = schedule.next_update() {
        if schedule.update() > 0 {
            snapshot = traffic.snapshot(Some(snapshot));
        }
        let tables = compiler.compile(&snapshot).expect("small rule sets fit");
        datapath.apply(&tables);
        let judged = schedule.judged();
        for sport in (1024..).take(packets) {
            let (src, dst, bytes, flow) = new_flow(&mut traffic.rng, &snapshot.pods, sport);
            let mut disagreement = None;
            if judged {
                let want = snapshot.evaluate(&flow).allowed();
                let got = datapath.delivers(&bytes);
                if got != want {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    disagreement = Some(format!(
                        "want delivered={want} got {got}: {}/{} {}:{sport} -> {}/{} {}:{} \
                         proto {}, frame {hex}",
                        src.namespace,
                        src.name,
                        flow.src_ip,
                        dst.namespace,
                        dst.name,
                        flow.dst_ip,
                        flow.port,
                        flow.protocol
                    ));
                }
            }
            schedule.count(judged, disagreement, &snapshot, report);
        }
    }
    schedule.summary()
}

/// A new flow from a random pod to a random pod (itself now and then) from `sport`: the two
/// pods, the frame and the flow the evaluator judges.
fn new_flow<'a>(
    rng: &mut SmallRng,
    pods: &'a [Pod],
    sport: u16,
) -> (&'a Pod, &'a Pod, Vec<u8>, Flow<'a>) {
    let (src, dst) = (
        rng.random_range(0..pods.len()),
        rng.random_range(0..pods.len()),
    );
    let (src, dst) = (&pods[src], &pods[dst]);
    let v4 = rng.random_bool(0.6);
    let ip = |pod: &Pod| -> IpAddr { *pod.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap() };
    let (src_ip, dst_ip) = (ip(src), ip(dst));
    let port = rng.random_range(1..12);
    let (protocol, port, l4) = match rng.random_range(0..4) {
        0 => (IPPROTO_TCP, port, tcp(sport, port, TCP_SYN)),
        1 => (IPPROTO_UDP, port, udp(sport, port)),
        2 => (IPPROTO_SCTP, port, sctp(sport, port)),
        _ if v4 => (IPPROTO_ICMP, 0, icmp(8, sport, &[])),
        _ => (IPPROTO_ICMPV6, 0, icmp(128, sport, &[])),
    };
    let bytes = frame(&src_ip.to_string(), &dst_ip.to_string(), protocol, l4);
    let flow = Flow {
        src: Side::Pod(src),
        src_ip,
        dst: Side::Pod(dst),
        dst_ip,
        protocol,
        port,
    };
    (src, dst, bytes, flow)
}
