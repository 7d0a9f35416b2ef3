//! Verdict agreement: every probe sent once through a contender, arrival at the sink compared
//! with `GatewayTables::allows`.

use std::time::Duration;

use anyhow::Result;

use crate::contender::Contender;
use crate::generator::Target;
use crate::harness::Harness;
use crate::plan::FRAME_LEN;
use crate::report::Report;
use crate::sink::{TupleKey, SINK_RECORD};
use crate::workload::Workload;

/// Probes per generator call: few enough that the veth rings never overflow.
const PROBE_RUN: usize = 64;
/// First source port of the probes (one each).
const PROBE_SPORT: u16 = 61_000;

impl Harness<'_> {
    /// Sends the workload's probes through contender `c` and reports how many verdicts agree.
    pub fn check_verdicts(
        &mut self,
        c: Contender,
        w: &Workload,
        report: &mut Report,
    ) -> Result<()> {
        let arrived = self.probe(w)?;
        let agree = arrived
            .iter()
            .zip(&w.probes)
            .filter(|(a, p)| **a == p.allowed)
            .count();
        let s = c.subject(w);
        let probes = arrived.len() as f64;
        report.push(s.figure("verdict_agreement", agree as f64 / probes, "fraction"));
        report.push(s.figure("verdict_probes", probes, "probes"));
        println!("   {}: verdicts agree {agree}/{}", c.name(), arrived.len());
        Ok(())
    }

    /// Sends every probe once (fixed source port, 64-byte frames, in runs of `PROBE_RUN`) and
    /// reports which reached the sink; the generator's tuples are restored after.
    fn probe(&mut self, w: &Workload) -> Result<Vec<bool>> {
        let n = w.probes.len().min(w.targets.len());
        let probe_targets: Vec<Target> = w.probes[..n]
            .iter()
            .enumerate()
            .map(|(i, p)| Target {
                src: u32::from_ne_bytes(p.tuple.src.octets()),
                dst: u32::from_ne_bytes(p.tuple.dst.octets()),
                dst_random: 0,
                sport: (PROBE_SPORT + i as u16).to_be(),
                dport: p.tuple.port.to_be(),
            })
            .collect();
        self.load_targets(&probe_targets)?;
        self.clear_seen()?;
        let frame = self.template.len();
        self.set_frame(FRAME_LEN)?;
        self.set_sink_flags(SINK_RECORD)?;
        for first in (0..n).step_by(PROBE_RUN) {
            self.send_probes(first, PROBE_RUN.min(n - first))?;
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.set_sink_flags(0)?;
        self.set_frame(frame)?;
        let keys: Vec<TupleKey> = probe_targets
            .iter()
            .map(|t| [t.src, t.dst, t.dport as u32])
            .collect();
        let arrived = self.seen(&keys)?;
        self.load_targets(&w.targets[..n])?;
        Ok(arrived)
    }
}
