//! What a run measures: the command line with the quick or full defaults filled in, every value
//! checked before anything is set up, and the constants of the synthetic workload.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::args::Args;
use crate::contender::Contender;
use crate::lab::Cpus;

/// Policies, selected pods and the seed of the synthetic cluster.
pub const POLICIES: usize = 10;
pub const PODS: usize = 1000;
pub const SEED: u64 = 6;
/// Frame size of the probes and micro figures (and the plots' and ratios' default).
pub const FRAME_LEN: usize = 64;
/// The Ethernet minimum without FCS.
const MIN_FRAME: usize = 60;
/// An MTU-sized (1500-byte IP packet) frame.
const MAX_FRAME: usize = 1514;
/// Most idle flows: each has its own destination in the /15 they are sent to.
pub const MAX_IDLE_FLOWS: usize = 100_000;

pub struct Plan {
    pub quick: bool,
    pub sizes: Vec<usize>,
    pub duration: f64,
    pub repeats: usize,
    pub contenders: Vec<Contender>,
    pub targets_log2: u32,
    pub frame_sizes: Vec<usize>,
    pub change_sizes: Vec<usize>,
    pub latency_changes: usize,
    pub survival_changes: usize,
    /// Idle flows kept silent through a flood (0: not measured).
    pub idle_flows: usize,
    /// The idle-flow flood in new flows per flow-table entry.
    pub idle_flood: f64,
    pub cpus: Cpus,
    pub probes: usize,
    pub linear_max: usize,
    pub micro: bool,
    /// Frames per live-frames batch of the generator.
    pub gen_batch: u32,
    /// Frames per generator call (0: sized to the time left).
    pub gen_repeat: u32,
    pub out: PathBuf,
}

/// The quick run's value or the full run's.
fn pick<T>(quick: bool, quick_value: T, full_value: T) -> T {
    if quick {
        quick_value
    } else {
        full_value
    }
}

impl Plan {
    /// The plan of `args` on a machine with `online` CPUs, or why the arguments are refused.
    pub fn new(args: &Args, online: usize) -> Result<Plan> {
        let quick = args.quick;
        let sizes = args.sizes.clone().unwrap_or_else(|| {
            pick(
                quick,
                vec![10, 10_000, 100_000],
                vec![10, 1_000, 10_000, 100_000, 1_000_000],
            )
        });
        let cpus = match &args.cpus {
            Some(s) => Cpus::parse(s, online)?,
            None => Cpus::for_machine(online),
        };
        let frame_sizes =
            (args.frame_sizes.clone()).unwrap_or_else(|| pick(quick, vec![64], vec![64, 1500]));
        for &f in &frame_sizes {
            if !(MIN_FRAME..=MAX_FRAME).contains(&f) {
                bail!("frame size {f} out of range {MIN_FRAME}..={MAX_FRAME}");
            }
        }
        if !(1..=256).contains(&args.gen_batch) {
            bail!("--gen-batch {} out of range 1..=256", args.gen_batch);
        }
        if sizes.is_empty() || sizes.contains(&0) {
            bail!("--sizes needs at least one ipBlock count, each above 0");
        }
        let duration = args.duration.unwrap_or(pick(quick, 2.0, 5.0));
        let repeats = args.repeats.unwrap_or(pick(quick, 1, 3));
        if !(duration > 0.0 && duration.is_finite()) || repeats == 0 {
            bail!("--duration must be above 0 and --repeats at least 1");
        }
        let change_sizes = match &args.change_sizes {
            Some(c) => {
                if let Some(c) = c.iter().find(|c| !sizes.contains(c)) {
                    bail!("--change-sizes {c} is not one of --sizes");
                }
                c.clone()
            }
            // The defaults that this run measures anyway.
            None => pick(quick, vec![10_000], vec![10_000, 100_000])
                .into_iter()
                .filter(|c| sizes.contains(c))
                .collect(),
        };
        let targets_log2 = args.targets_log2.unwrap_or(14);
        if !(8..=20).contains(&targets_log2) {
            bail!("--targets-log2 {targets_log2} out of range 8..=20");
        }
        if args.idle_flows == 1 || args.idle_flows > MAX_IDLE_FLOWS {
            bail!(
                "--idle-flows {} out of range: 0 (skip) or 2..={MAX_IDLE_FLOWS} (half TCP, half UDP)",
                args.idle_flows
            );
        }
        if !(args.idle_flood > 0.0 && args.idle_flood <= 100.0) {
            bail!("--idle-flood {} out of range (0, 100]", args.idle_flood);
        }
        let contenders = match &args.contenders {
            Some(names) => names
                .iter()
                .map(|c| c.parse())
                .collect::<Result<Vec<Contender>>>()?,
            None => Contender::ALL.to_vec(),
        };
        Ok(Plan {
            quick,
            sizes,
            duration,
            repeats,
            contenders,
            targets_log2,
            frame_sizes,
            change_sizes,
            latency_changes: args.latency_changes.unwrap_or(100),
            survival_changes: args.survival_changes.unwrap_or(pick(quick, 200, 1000)),
            idle_flows: args.idle_flows,
            idle_flood: args.idle_flood,
            cpus,
            probes: args.probes,
            linear_max: args.linear_max,
            micro: !args.no_micro,
            gen_batch: args.gen_batch,
            gen_repeat: args.gen_repeat,
            out: args.out.clone(),
        })
    }

    /// Whether policy changes are measured at `size`.
    pub fn changes_at(&self, size: usize) -> bool {
        self.change_sizes.contains(&size) && (self.latency_changes > 0 || self.survival_changes > 0)
    }

    /// The result file's `config`.
    pub fn json(&self) -> serde_json::Value {
        let contenders: Vec<&str> = self.contenders.iter().map(|c| c.name()).collect();
        serde_json::json!({
            "quick": self.quick,
            "sizes": self.sizes,
            "duration_s": self.duration,
            "repeats": self.repeats,
            "contenders": contenders,
            "targets": 1u64 << self.targets_log2,
            "probes": self.probes,
            "linear_max": self.linear_max,
            "frame_sizes": self.frame_sizes,
            "gen_batch": self.gen_batch,
            "gen_repeat": self.gen_repeat,
            "change_sizes": self.change_sizes,
            "latency_changes": self.latency_changes,
            "survival_changes": self.survival_changes,
            "idle_flows": self.idle_flows,
            "idle_flood": self.idle_flood,
            "cpus": {
                "generator": self.cpus.generator,
                "gateway": self.cpus.gateway,
                "sink": self.cpus.sink,
            },
            "policies": POLICIES,
            "pods": PODS,
            "seed": SEED,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn plan(args: &[&str]) -> Result<Plan> {
        Plan::new(&Args::parse_from([&["portcullis-perf"], args].concat()), 2)
    }

    #[test]
    fn quick_and_full_defaults() {
        let quick = plan(&["--quick"]).unwrap();
        assert_eq!(quick.sizes, [10, 10_000, 100_000]);
        assert_eq!((quick.duration, quick.repeats), (2.0, 1));
        assert_eq!(
            (quick.frame_sizes.clone(), quick.change_sizes.clone()),
            (vec![64], vec![10_000])
        );
        assert_eq!(quick.contenders, Contender::ALL);
        let full = plan(&[]).unwrap();
        assert_eq!(full.change_sizes, [10_000, 100_000]);
        assert_eq!((full.survival_changes, full.cpus.sink), (1000, 0));
        assert_eq!(full.json()["contenders"][3], "portcullis-xdp");
        // The idle-flow measurement is on in both runs.
        assert_eq!((quick.idle_flows, full.idle_flows), (2000, 2000));
        assert_eq!(full.idle_flood, 10.0);
    }

    #[test]
    fn bad_values_are_refused() {
        for (args, why) in [
            (
                &["--contenders", "bare-pass,pf"][..],
                "unknown contender pf",
            ),
            (
                &["--sizes", "10", "--change-sizes", "20"],
                "not one of --sizes",
            ),
            (&["--frame-sizes", "59"], "out of range 60..=1514"),
            (&["--gen-batch", "0"], "--gen-batch 0"),
            (&["--sizes", "0"], "--sizes needs"),
            (&["--repeats", "0"], "--repeats at least 1"),
            (&["--targets-log2", "7"], "--targets-log2 7"),
            (&["--cpus", "0,0,1"], "a CPU of its own"),
            (&["--idle-flows", "1"], "--idle-flows 1 out of range"),
            (&["--idle-flows", "100001"], "--idle-flows 100001"),
            (&["--idle-flood", "0"], "--idle-flood 0 out of range"),
        ] {
            let e = plan(args).err().expect(why).to_string();
            assert!(e.contains(why), "{args:?}: {e}");
        }
    }
}
