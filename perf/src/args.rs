//! The command line (`portcullis-perf --help`); [`crate::plan::Plan`] resolves and checks it.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "Portcullis benchmark harness (run through perf/run, as root)")]
pub struct Args {
    /// The short run: prefix counts 10, 10k, 100k; 2 s per contender, one repeat.
    #[arg(long)]
    pub quick: bool,
    /// ipBlock counts (overrides the run's default).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<usize>>,
    /// Seconds of traffic per measurement.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Measurements per contender and size (the median is reported).
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Contenders (default: all).
    #[arg(long, value_delimiter = ',')]
    pub contenders: Option<Vec<String>>,
    /// Largest ipBlock count for linear iptables.
    #[arg(long, default_value_t = 10_000)]
    pub linear_max: usize,
    /// Skip the BPF_PROG_TEST_RUN micro figures.
    #[arg(long)]
    pub no_micro: bool,
    /// Verdict-agreement probes per contender and size.
    #[arg(long, default_value_t = 200)]
    pub probes: usize,
    /// Output directory.
    #[arg(long, default_value = "perf/results")]
    pub out: PathBuf,
    /// log2 of the number of precomputed packet tuples the generator draws from.
    #[arg(long)]
    pub targets_log2: Option<u32>,
    /// Frame sizes in bytes (Ethernet header included, no FCS), 60..=1514 (default: full 64,1500;
    /// quick 64).
    #[arg(long, value_delimiter = ',')]
    pub frame_sizes: Option<Vec<usize>>,
    /// Frames per live-frames batch of the generator (1..=256).
    #[arg(long, default_value_t = 256)]
    pub gen_batch: u32,
    /// Frames per generator test-run call; 0 sizes each call to the time left (at most 1 s),
    /// which keeps the two `synchronize_rcu` waits of every call out of the way.
    #[arg(long, default_value_t = 0)]
    pub gen_repeat: u32,
    /// ipBlock counts at which policy-change latency and established-flow survival are measured
    /// (default: full 10k,100k; quick 10k); each must also be in --sizes.
    #[arg(long, value_delimiter = ',')]
    pub change_sizes: Option<Vec<usize>>,
    /// Policy changes timed for the change-latency figures (0: skip).
    #[arg(long)]
    pub latency_changes: Option<usize>,
    /// Policy changes applied during the survival test, per load phase (0: skip); at the first
    /// of --change-sizes.
    #[arg(long)]
    pub survival_changes: Option<usize>,
    /// Idle established flows, half TCP and half UDP, opened through `portcullis-xdp`'s gateway
    /// at the first size, kept silent through a new-flow flood, then probed (0: skip).
    #[arg(long, default_value_t = 2000)]
    pub idle_flows: usize,
    /// Size of the idle-flow measurement's flood: new flows per entry of the gateway's flow
    /// table (its capacity read from the loaded map).
    #[arg(long, default_value_t = 10.0)]
    pub idle_flood: f64,
    /// CPUs of the generator, the gateway and the sink, `G,W,S` (default: 0,1,2 with three or
    /// more CPUs, else 0,1,0: the sink shares the generator's).
    #[arg(long)]
    pub cpus: Option<String>,
}
