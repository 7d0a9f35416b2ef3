//! One contender at one size: set up, verdicts checked against the reference, flooded at every
//! frame size (then, once per run on `portcullis-xdp`, the idle-flow measurement), torn down;
//! the throughput figures of its samples.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Result;
use portcullis_gateway::{DatapathMode, Gateway, TestProgram, XDP_DROP};

use crate::contender::{Contender, Setup};
use crate::frame::udp_frame;
use crate::harness::{check, Harness, Sample};
use crate::lab::in_ns;
use crate::plan::{Plan, FRAME_LEN};
use crate::report::{self, Report, Subject};
use crate::workload::Workload;

/// Flow-table entries the established flood stays within (so every flow stays in the table).
const ESTABLISHED_TARGETS: usize = 1 << 16;

impl Harness<'_> {
    /// Measures contender `c` on workload `w`.
    pub fn contender(
        &mut self,
        c: Contender,
        w: &Workload,
        plan: &Plan,
        report: &mut Report,
    ) -> Result<()> {
        let subject = c.subject(w);
        let t = Instant::now();
        let mut setup = self.set_up(c, w, plan, report)?;
        let setup_ms = t.elapsed().as_secs_f64() * 1e3;
        let result = (|| -> Result<()> {
            // The gateway's threads: its NAPI thread, and the AF_XDP engine's.
            let mut threads: Vec<i32> = self.gateway_napi()?.into_iter().collect();
            if let Setup::Portcullis(p) = &setup {
                threads.extend(&p.engine_threads);
            }
            // Verdict agreement with the reference (bare contenders enforce nothing: skipped).
            if !c.is_bare() && !w.probes.is_empty() {
                self.check_verdicts(c, w, report)?;
            }
            let established = c.established();
            let targets = if established {
                w.targets.len().min(ESTABLISHED_TARGETS)
            } else {
                w.targets.len()
            };
            let cfg = self.flood_config((targets - 1) as u32, !established, 0);
            self.set_gen(cfg)?;
            for (i, &frame) in plan.frame_sizes.iter().enumerate() {
                self.set_frame(frame)?;
                // Warm-up (fills the flow table for the established case).
                self.measure(if established { 1.0 } else { 0.3 }, &threads)?;
                if let (true, 0, Setup::Portcullis(p)) = (established, i, &mut setup) {
                    match (&p.engine, c.datapath()) {
                        (Some(engine), DatapathMode::Afxdp) => {
                            let n = self.confirm_engine_flows(engine, w, targets)?;
                            println!("   {}: {n} flows confirmed in the engine", c.name());
                        }
                        _ => self.confirm_flows(&mut p.gw, w, targets)?,
                    }
                }
                let mut samples = Vec::new();
                for _ in 0..plan.repeats {
                    check(self.stop)?;
                    samples.push(self.measure(plan.duration, &threads)?);
                }
                push_throughput(&subject, frame, &samples, report);
            }
            self.set_frame(FRAME_LEN)?;
            Ok(())
        })();
        // The idle-flow measurement: once per run, on the first `portcullis-xdp` gateway.
        if let (Ok(()), Setup::Portcullis(p)) = (&result, &mut setup) {
            if c == Contender::PortcullisXdp && plan.idle_flows > 0 && !self.idle_flows_done {
                self.idle_flows_done = true;
                if let Err(e) = self.idle_flows(&mut p.gw, w, plan, report) {
                    println!("   idle flows: FAILED: {e:#}");
                    let size = w.ip_blocks;
                    report.note(format!("idle flows at {size} ipBlocks failed: {e:#}"));
                }
            }
        }
        report.push(subject.figure("setup_time", setup_ms, "ms"));
        self.tear_down(setup)?;
        result
    }
}

impl Harness<'_> {
    /// Answers the warmed-up established flows of the first `targets` targets from the sink's
    /// side, so they are confirmed (`FLOWS`) as established connections are, and each measured
    /// packet takes one flow-table lookup. Injected with BPF_PROG_TEST_RUN on the external leg;
    /// a target the gateway denies (its outbound packet is dropped, no flow) gets no reply.
    fn confirm_flows(&mut self, gw: &mut Gateway, w: &Workload, targets: usize) -> Result<()> {
        let (c, e) = (self.cluster_ifindex, self.external_ifindex);
        let lab = &self.lab;
        let (gm, cm, em, sm) = (lab.gen_mac, lab.cluster_mac, lab.external_mac, lab.sink_mac);
        in_ns(&lab.gw_ns, || -> Result<()> {
            for t in &w.targets[..targets] {
                let src = Ipv4Addr::from(u32::from_be(t.src));
                let dst = Ipv4Addr::from(u32::from_be(t.dst));
                let (sport, dport) = (u16::from_be(t.sport), u16::from_be(t.dport));
                let out = udp_frame(gm, cm, src, dst, sport, dport, FRAME_LEN);
                if gw.test_run(TestProgram::Gateway, c, &out, 1)?.action == XDP_DROP {
                    continue;
                }
                let reply = udp_frame(sm, em, dst, src, dport, sport, FRAME_LEN);
                gw.test_run(TestProgram::Gateway, e, &reply, 1)?;
            }
            Ok(())
        })
    }
}

/// The throughput figures of one contender, size and frame size from its samples.
fn push_throughput(subject: &Subject, frame: usize, samples: &[Sample], report: &mut Report) {
    let fwd: Vec<f64> = samples.iter().map(|s| s.forwarded).collect();
    let off: Vec<f64> = samples.iter().map(|s| s.offered).collect();
    let before: Vec<f64> = samples.iter().map(|s| s.lost_before).collect();
    let after: Vec<f64> = samples.iter().map(|s| s.lost_after).collect();
    let bps: Vec<f64> = fwd.iter().map(|f| f * frame as f64 * 8.0).collect();
    // What reached the gateway and went neither to the sink nor into a full ring after it:
    // the gateway's drops (policy, or anything else it refused), from the same counters.
    let dropped: Vec<f64> = samples
        .iter()
        .map(|s| (s.offered - s.lost_before - s.forwarded - s.lost_after).max(0.0))
        .collect();
    let dropped_fraction: Vec<f64> = samples
        .iter()
        .zip(&dropped)
        .filter(|(s, _)| s.offered - s.lost_before > 0.0)
        .map(|(s, d)| d / (s.offered - s.lost_before))
        .collect();
    let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu).collect();
    // Forwarded packets per second of gateway CPU: the efficiency figure, less sensitive
    // than the rate to a generator starved by a shared machine.
    let per_core: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.cpu.filter(|c| *c > 0.0).map(|c| s.forwarded / c))
        .collect();
    for (metric, unit, values) in [
        ("forwarded_pps", "packets/s", &fwd),
        ("forwarded_bps", "bits/s", &bps),
        ("offered_pps", "packets/s", &off),
        ("lost_before_gateway_pps", "packets/s", &before),
        ("lost_after_gateway_pps", "packets/s", &after),
        ("dropped_pps", "packets/s", &dropped),
        ("dropped_fraction", "fraction", &dropped_fraction),
        ("gateway_cpu", "cores", &cpu),
        ("forwarded_per_core", "packets/cpu-s", &per_core),
    ] {
        // No value (no CPU figure for this contender, nothing received): no figure.
        // Otherwise the median of the per-repeat values, which the JSON keeps beside it.
        if !values.is_empty() {
            let figure = subject.figure(metric, report::median(values), unit);
            report.push(figure.frame(frame).samples(values.to_vec()));
        }
    }
    println!(
        "   {} {frame} B: forwarded {:.3} Mpps (samples {:?}), offered {:.2} Mpps (lost before the gateway {:.2}, after it {:.2}), dropped by the gateway {:.2} Mpps ({:.1}% of what it received), gateway CPU {}",
        subject.contender,
        report::median(&fwd) / 1e6,
        fwd.iter().map(|v| (v / 1e4).round() / 100.0).collect::<Vec<_>>(),
        report::median(&off) / 1e6,
        report::median(&before) / 1e6,
        report::median(&after) / 1e6,
        report::median(&dropped) / 1e6,
        report::median(&dropped_fraction) * 100.0,
        if cpu.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.2} cores", report::median(&cpu))
        }
    );
}
