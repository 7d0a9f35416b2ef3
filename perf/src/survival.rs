//! Established-flow survival: sequence-numbered established flows keep flowing while the
//! changes are applied back to back under a flood of new flows, first paced below the
//! gateway's capacity, then saturating; lost frames and the window of sequence gaps per phase.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray};
use portcullis_policy::model::Direction;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::change::{monotonic_ns, ChangeRig};
use crate::generator::Generator;
use crate::harness::{check, Harness};
use crate::lab;
use crate::plan::{Plan, SEED};
use crate::report::{Report, Subject};
use crate::sampler::Sampler;
use crate::sender::{Sent, Stream};
use crate::sink::{watch_key, TupleKey, Watch, SINK_WATCH};
use crate::workload::Workload;

/// Established flows, and the time between two frames of each.
const ESTABLISHED: usize = 16;
const ESTABLISHED_INTERVAL: Duration = Duration::from_millis(1);
/// Tuples sampled at most while looking for the established flows.
const SAMPLE_TRIES: usize = 200_000;

/// What the changes of one phase saw.
struct Phase {
    changes: usize,
    /// CLOCK_MONOTONIC at the first change and after the last.
    start_ns: u64,
    end_ns: u64,
    secs: f64,
    /// Frames of the established flows lost while the changes ran (sequence gaps).
    lost_during: u64,
    /// The flood's rates while the changes ran.
    offered: f64,
    forwarded: f64,
}

/// The counters the change thread reads while the generator and the sender run.
struct Counters<'h> {
    watch: &'h HashMap<MapData, TupleKey, Watch>,
    sink_count: &'h PerCpuArray<MapData, u64>,
    gen_sent: &'h PerCpuArray<MapData, u64>,
}

impl Counters<'_> {
    fn lost(&self, keys: &[TupleKey]) -> Result<u64> {
        Ok(keys
            .iter()
            .map(|k| self.watch.get(k, 0).map(|w| w.lost))
            .sum::<Result<u64, _>>()?)
    }

    /// (frames received by the sink, frames sent by the generator).
    fn frames(&self) -> Result<(u64, u64)> {
        Ok((
            self.sink_count.get(&0, 0)?.iter().sum::<u64>(),
            self.gen_sent.get(&0, 0)?.iter().sum::<u64>(),
        ))
    }
}

/// `ESTABLISHED` allowed UDP tuples of the probe pod's group (the group the changes edit), one
/// per watch key, as fixed-port streams.
fn established_streams(w: &Workload, pod: std::net::Ipv4Addr) -> Result<Vec<Stream>> {
    let group_of = |ip| w.tables.endpoints.get(&(Direction::Egress, IpAddr::V4(ip)));
    let group = group_of(pod).context("the probe pod has no egress group")?;
    let sampler = Sampler::new(&w.tables, &w.flat);
    let mut rng = SmallRng::seed_from_u64(SEED ^ 0xe57);
    let mut streams: Vec<Stream> = Vec::new();
    let mut keys: Vec<TupleKey> = Vec::new();
    for _ in 0..SAMPLE_TRIES {
        if streams.len() == ESTABLISHED {
            break;
        }
        let t = sampler.sample(&mut rng, 1.0);
        let key = watch_key(t.src, t.dst, t.port);
        if group_of(t.src) == Some(group) && !keys.contains(&key) && t.allowed_by(&w.tables) {
            keys.push(key);
            streams.push(Stream {
                src: t.src,
                dst: t.dst,
                sport: 30_000 + streams.len() as u16,
                dport: t.port,
                fresh_sport: false,
            });
        }
    }
    if streams.len() < ESTABLISHED {
        bail!(
            "only {} allowed established-flow tuples found in the probe pod's group",
            streams.len()
        );
    }
    Ok(streams)
}

impl Harness<'_> {
    /// Established flows during `plan.survival_changes` changes under a paced, then a
    /// saturating flood of new flows.
    pub fn survival(
        &mut self,
        rig: &mut ChangeRig,
        w: &Workload,
        plan: &Plan,
        report: &mut Report,
    ) -> Result<()> {
        let streams = established_streams(w, rig.pod)?;
        let keys: Vec<TupleKey> = streams
            .iter()
            .map(|s| watch_key(s.src, s.dst, s.dport))
            .collect();
        // The gateway's capacity for the flood (new flows), unpaced, without watching.
        let flood_mask = (w.targets.len() - 1) as u32;
        let cfg = self.flood_config(flood_mask, true, 0);
        self.set_gen(cfg)?;
        let capacity = self.measure(1.0, rig.napi.as_slice())?.forwarded;
        let paced_gap = (2e9 / capacity.max(1.0)).min(u32::MAX as f64) as u32;
        for (name, gap_ns) in [("paced", paced_gap), ("saturating", 0)] {
            check(self.stop)?;
            for k in &keys {
                self.watch.insert(*k, Watch::default(), 0)?;
            }
            self.set_sink_flags(SINK_WATCH)?;
            let cfg = self.flood_config(flood_mask, true, gap_ns);
            self.set_gen(cfg)?;
            let (phase, sent) = self.phase(rig, &streams, &keys, plan.survival_changes)?;
            std::thread::sleep(Duration::from_millis(100));
            self.push_phase(&rig.subject, name, &phase, &sent, &keys, report)?;
            self.set_sink_flags(0)?;
        }
        Ok(())
    }

    /// Runs the streams, the flood and `changes` changes at once; what the changes saw and
    /// what the streams sent.
    fn phase(
        &mut self,
        rig: &mut ChangeRig,
        streams: &[Stream],
        keys: &[TupleKey],
        changes: usize,
    ) -> Result<(Phase, Sent)> {
        let stop_sender = AtomicBool::new(false);
        let stop_flood = AtomicBool::new(false);
        let site = self.sender_site();
        let cpu = site.cpu;
        let mut gen = Generator::new(&mut self.ebpf, &self.gen, &self.template)?;
        let counters = Counters {
            watch: &self.watch,
            sink_count: &self.sink_count,
            gen_sent: &self.gen_sent,
        };
        let stop = self.stop;
        std::thread::scope(|sc| {
            let sender = sc.spawn(|| site.run(streams, ESTABLISHED_INTERVAL, &stop_sender));
            // The flows are established before the flood and the changes start.
            std::thread::sleep(Duration::from_millis(300));
            let flood = sc.spawn(|| gen.run(24.0 * 3600.0, &stop_flood));
            std::thread::sleep(Duration::from_millis(300));
            // The changes run on the generator's core at the generator's priority: on the
            // gateway's core the real-time NAPI thread would starve them.
            let counters = &counters;
            let changed = sc.spawn(move || -> Result<Phase> {
                lab::pin_current_thread(cpu);
                let lost_before = counters.lost(keys)?;
                let (c0, s0) = counters.frames()?;
                let start_ns = monotonic_ns();
                let t = Instant::now();
                for i in 0..changes {
                    if stop.load(Ordering::Relaxed) {
                        bail!("interrupted");
                    }
                    rig.change(i % 2 == 0)?;
                }
                let secs = t.elapsed().as_secs_f64();
                let end_ns = monotonic_ns();
                let (c1, s1) = counters.frames()?;
                std::thread::sleep(Duration::from_millis(50));
                let lost_after = counters.lost(keys)?;
                Ok(Phase {
                    changes,
                    start_ns,
                    end_ns,
                    secs,
                    lost_during: lost_after - lost_before,
                    offered: (s1 - s0) as f64 / secs,
                    forwarded: (c1 - c0) as f64 / secs,
                })
            });
            let changed = changed
                .join()
                .map_err(|_| anyhow!("policy changes panicked"))
                .and_then(|r| r);
            stop_flood.store(true, Ordering::Relaxed);
            let flood = flood
                .join()
                .map_err(|_| anyhow!("flood generator panicked"));
            std::thread::sleep(Duration::from_millis(100));
            stop_sender.store(true, Ordering::Relaxed);
            let sent = sender.join().map_err(|_| anyhow!("sender panicked"))?;
            let changed = changed?;
            flood??;
            Ok((changed, sent?))
        })
    }

    /// The figures and summary line of phase `name`.
    fn push_phase(
        &self,
        s: &Subject,
        name: &str,
        phase: &Phase,
        sent: &Sent,
        keys: &[TupleKey],
        report: &mut Report,
    ) -> Result<()> {
        let seen: Vec<Watch> = keys
            .iter()
            .map(|k| self.watch.get(k, 0))
            .collect::<Result<_, _>>()?;
        let sent_total: u64 = sent.frames.iter().sum();
        let received: u64 = seen.iter().map(|w| w.frames).sum();
        let lost = sent_total.saturating_sub(received);
        let m = |k: &str| format!("survival_{name}_{k}");
        let changes = phase.changes as f64;
        for (metric, value, unit) in [
            ("changes", changes, "changes"),
            ("change_rate", changes / phase.secs, "changes/s"),
            ("flows", keys.len() as f64, "flows"),
            ("sent", sent_total as f64, "frames"),
            ("lost", lost as f64, "frames"),
            ("lost_during_changes", phase.lost_during as f64, "frames"),
            ("flood_offered_pps", phase.offered, "packets/s"),
            ("flood_forwarded_pps", phase.forwarded, "packets/s"),
        ] {
            report.push(s.figure(m(metric), value, unit));
        }
        let gaps = seen.iter().filter(|w| w.gap_first_ns != 0);
        let first = gaps.clone().map(|w| w.gap_first_ns).min();
        let last = gaps.map(|w| w.gap_last_ns).max();
        let window = if let (Some(first), Some(last)) = (first, last) {
            // Relative to the first change; negative: before the changes started.
            let rel = |t: u64| (t as f64 - phase.start_ns as f64) / 1e6;
            report.push(s.figure(m("gap_first"), rel(first), "ms"));
            report.push(s.figure(m("gap_last"), rel(last), "ms"));
            format!(
                "sequence gaps seen from {:.1} to {:.1} ms after the first change (changes ended at {:.1} ms)",
                rel(first),
                rel(last),
                (phase.end_ns - phase.start_ns) as f64 / 1e6
            )
        } else {
            "no sequence gap".into()
        };
        println!(
            "   survival ({name} flood {:.2} Mpps offered, {:.2} forwarded): {} changes in {:.1} s; {} established flows sent {sent_total}, lost {lost} ({} during the changes); {window}",
            phase.offered / 1e6,
            phase.forwarded / 1e6,
            phase.changes,
            phase.secs,
            keys.len(),
            phase.lost_during,
        );
        Ok(())
    }
}
