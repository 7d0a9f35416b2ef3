//! The differential test of the node hook's delivery program: the same random snapshots as the
//! gateway's ([`Traffic::snapshot`], compiled by one long-lived `NodeCompiler` so later ones go
//! in as deltas), random new-flow packets from a pod to a pod (TCP SYN, UDP, SCTP, ICMP echo;
//! IPv4 and IPv6; numbered ports around the named one), each with a source port of its own so no
//! flow entry decides it, and every decision compared with the policy evaluator (egress of the
//! source and ingress of the destination).

use std::net::IpAddr;

use portcullis_policy::compile::node::{NodeCompiler, NodeTables};
use portcullis_policy::eval::{Flow, Side};
use rand::Rng;

use super::{Disagreement, Settings, Summary, Traffic, PACKETS_PER_SNAPSHOT};
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
    let mut summary = Summary::default();
    while summary.packets < settings.packets {
        if summary.packets > 0 {
            snapshot = traffic.snapshot(Some(snapshot));
        }
        let tables = compiler.compile(&snapshot).expect("small rule sets fit");
        datapath.apply(&tables);
        summary.updates += 1;
        for sport in (1024..).take(PACKETS_PER_SNAPSHOT.min(settings.packets - summary.packets)) {
            let rng = &mut traffic.rng;
            let pods = &snapshot.pods;
            let (src, dst) = (
                rng.random_range(0..pods.len()),
                rng.random_range(0..pods.len()),
            );
            let (src, dst) = (&pods[src], &pods[dst]);
            let v4 = rng.random_bool(0.6);
            let ip = |pod: &portcullis_policy::model::Pod| -> IpAddr {
                *pod.ips.iter().find(|ip| ip.is_ipv4() == v4).unwrap()
            };
            let (src_ip, dst_ip) = (ip(src), ip(dst));
            let icmp_proto = if v4 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 };
            let (protocol, port, l4) = match rng.random_range(0..4) {
                0 => {
                    let port = rng.random_range(1..12);
                    (IPPROTO_TCP, port, tcp(sport, port, TCP_SYN))
                }
                1 => {
                    let port = rng.random_range(1..12);
                    (IPPROTO_UDP, port, udp(sport, port))
                }
                2 => {
                    let port = rng.random_range(1..12);
                    (IPPROTO_SCTP, port, sctp(sport, port))
                }
                _ => (icmp_proto, 0, icmp(if v4 { 8 } else { 128 }, sport, &[])),
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
            let want = snapshot.evaluate(&flow).allowed();
            let got = datapath.delivers(&bytes);
            if got != want {
                summary.disagreements += 1;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                report(Disagreement {
                    seed: settings.seed,
                    packet: summary.packets,
                    update: summary.updates - 1,
                    detail: format!(
                        "want delivered={want} got {got}: {}/{} {src_ip}:{sport} -> {}/{} \
                         {dst_ip}:{port} proto {protocol}, frame {hex}",
                        src.namespace, src.name, dst.namespace, dst.name
                    ),
                    policies: format!("{:?}", snapshot.policies),
                });
            }
            summary.packets += 1;
        }
    }
    summary
}
