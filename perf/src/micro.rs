//! Micro figures: `BPF_PROG_TEST_RUN` ns/packet of the gateway's program against its bare
//! `xdp_pass`, per path a packet can take (median of `ROUNDS` runs each; `portcullis-xdp`, every
//! size, 64-byte frames), and the node hook's against its bare `TC_ACT_OK` program (`node`, once
//! per run).

mod node;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use portcullis_gateway::{Gateway, TestProgram, TestRunOutcome, XDP_DROP};
use portcullis_policy::compile::{GatewayTables, PortRule};
use portcullis_policy::model::Direction;

use crate::frame::{icmp_timestamp_frame, udp_frame};
use crate::harness::Harness;
use crate::lab::in_ns;
use crate::plan::FRAME_LEN;
use crate::report::{self, Report, Subject};
use crate::workload::Workload;

/// Runs per figure; the median is reported.
const ROUNDS: u16 = 5;
/// Repeats of one test-run call for the hot-path figures.
const REPEAT: u32 = 200_000;
/// Repeat-1 calls per round for the figures that need a fresh packet (or the same conditions).
const CALLS: u16 = 2000;
const SPORT: u16 = 40_000;
/// Where the untracked probe goes: RFC 2544's benchmark range, outside every synthetic ipBlock.
const UNTRACKED_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

/// The figures, in the order they are reported (`test_run_<name>`).
const FIGURES: [&str; 9] = [
    "bare_xdp_pass",
    "established_flow",
    "established_flow_one_way",
    "new_flow_allowed",
    "new_flow_denied",
    "bare_xdp_pass_repeat1",
    "established_flow_repeat1",
    "new_flow_denied_repeat1",
    "policy_allowed_untracked",
];

fn ns(o: TestRunOutcome) -> f64 {
    o.duration.as_nanos() as f64
}

impl Harness<'_> {
    /// The gateway (loaded with the workload's tables) on an established flow, a new allowed
    /// flow, a denied packet and a packet allowed by policy that never becomes a flow; at the
    /// run's first call, the node hook's figures too.
    pub fn micro(&mut self, gw: &mut Gateway, w: &Workload, report: &mut Report) -> Result<()> {
        node::once(&self.lab.gw_ns, report);
        let allowed = w.probes.iter().find(|p| p.allowed);
        let denied = w.probes.iter().find(|p| !p.allowed);
        let (Some(a), Some(d)) = (allowed, denied) else {
            report.note(format!(
                "micro at {}: no allowed or no denied probe",
                w.ip_blocks
            ));
            return Ok(());
        };
        let (a, d) = (a.tuple, d.tuple);
        let untracked_tables = with_untracked_allow(&w.tables, a.src)?;
        let (gm, cm) = (self.lab.gen_mac, self.lab.cluster_mac);
        let (c, e) = (self.cluster_ifindex, self.external_ifindex);
        let (em, sm) = (self.lab.external_mac, self.lab.sink_mac);
        let runs = in_ns(&self.lab.gw_ns, || -> Result<HashMap<&str, Vec<f64>>> {
            let pkt_a = udp_frame(gm, cm, a.src, a.dst, SPORT, a.port, FRAME_LEN);
            let pkt_d = udp_frame(gm, cm, d.src, d.dst, SPORT, d.port, FRAME_LEN);
            // The established flow is confirmed by a reply from the sink's side (one flow-table
            // lookup per packet); the one-way flow stays embryonic (two lookups).
            let reply_a = udp_frame(sm, em, a.dst, a.src, a.port, SPORT, FRAME_LEN);
            let pkt_one_way = udp_frame(gm, cm, a.src, a.dst, SPORT + 1, a.port, FRAME_LEN);
            let mut runs: HashMap<&str, Vec<f64>> = HashMap::new();
            let mut record = |name, value| runs.entry(name).or_default().push(value);
            for round in 0..ROUNDS {
                record(
                    "bare_xdp_pass",
                    ns(gw.test_run(TestProgram::Pass, c, &pkt_a, REPEAT)?),
                );
                gw.test_run(TestProgram::Gateway, c, &pkt_a, 1)?;
                gw.test_run(TestProgram::Gateway, e, &reply_a, 1)?;
                record(
                    "established_flow",
                    ns(gw.test_run(TestProgram::Gateway, c, &pkt_a, REPEAT)?),
                );
                gw.test_run(TestProgram::Gateway, c, &pkt_one_way, 1)?;
                record(
                    "established_flow_one_way",
                    ns(gw.test_run(TestProgram::Gateway, c, &pkt_one_way, REPEAT)?),
                );
                record(
                    "new_flow_denied",
                    ns(gw.test_run(TestProgram::Gateway, c, &pkt_d, REPEAT)?),
                );
                // A new flow per run: repeat 1 with a fresh source port each time (so the
                // kernel's per-call timer overhead is included; `bare_xdp_pass_repeat1` shows it).
                // The established and denied packets are measured the same way in between, so
                // the three repeat-1 figures differ only in the path taken, not in how warm the
                // caches are: their difference is what creating a flow costs.
                let mut sums = [
                    ("new_flow_allowed", 0.0),
                    ("bare_xdp_pass_repeat1", 0.0),
                    ("established_flow_repeat1", 0.0),
                    ("new_flow_denied_repeat1", 0.0),
                ];
                for i in 0..CALLS {
                    let sport = 1024 + round * CALLS + i;
                    let p = udp_frame(gm, cm, a.src, a.dst, sport, a.port, FRAME_LEN);
                    let calls = [
                        (TestProgram::Gateway, &p),
                        (TestProgram::Pass, &p),
                        (TestProgram::Gateway, &pkt_a),
                        (TestProgram::Gateway, &pkt_d),
                    ];
                    for ((_, sum), (program, pkt)) in sums.iter_mut().zip(calls) {
                        *sum += ns(gw.test_run(program, c, pkt, 1)?);
                    }
                }
                for (name, sum) in sums {
                    record(name, sum / CALLS as f64);
                }
            }
            // Last, so the figures above are measured on the workload's tables alone: the
            // policy path of an allowed packet without the flow insert.
            gw.apply(&untracked_tables)?;
            let dst = Ipv4Addr::from(u32::from(UNTRACKED_NET) | 1);
            let pkt_u = icmp_timestamp_frame(gm, cm, a.src, dst, FRAME_LEN);
            for _ in 0..ROUNDS {
                let out = gw.test_run(TestProgram::Gateway, c, &pkt_u, REPEAT)?;
                if out.action == XDP_DROP {
                    bail!("the untracked ICMP packet was dropped: the rule allowing it is not in force");
                }
                record("policy_allowed_untracked", ns(out));
            }
            gw.apply(&w.tables)?;
            Ok(runs)
        })?;
        let s = Subject::new("portcullis", w.ip_blocks, w.prefixes);
        let bare = Subject::new("bare", w.ip_blocks, w.prefixes);
        let mut line = format!("   micro ns/packet at {}:", w.ip_blocks);
        for name in FIGURES {
            let v = report::median(&runs[name]);
            line.push_str(&format!(" {name} {v:.1} |"));
            let whose = if name.starts_with("bare") { &bare } else { &s };
            let figure = whose.figure(format!("test_run_{name}"), v, "ns/packet");
            report.push(figure.frame(FRAME_LEN));
        }
        println!("{line}");
        Ok(())
    }
}

/// `tables` with one more prefix in `pod`'s egress group, 198.18.0.0/15, allowing every
/// protocol: an ICMP timestamp request there is judged by policy on every packet, allowed, and
/// never becomes a flow.
fn with_untracked_allow(tables: &GatewayTables, pod: Ipv4Addr) -> Result<GatewayTables> {
    let mut t = tables.clone();
    let group = *t
        .endpoints
        .get(&(Direction::Egress, IpAddr::V4(pod)))
        .context("the allowed probe's pod has no egress group")?;
    t.rule_sets.push(vec![PortRule::ANY]);
    let any = (t.rule_sets.len() - 1) as u32;
    let net = IpNet::new(IpAddr::V4(UNTRACKED_NET), 15)?;
    t.groups[group as usize].prefixes.push((net, any));
    Ok(t)
}
