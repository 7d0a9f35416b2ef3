//! Prints compile time, table size and peak memory for a synthetic cluster:
//! `cargo run --release -p portcullis-policy --example compile_scale -- [ipblocks] [policies] [apps]`.

use std::time::Instant;

use portcullis_policy::compile::compile_gateway;
use portcullis_policy::synth::{ipblock_snapshot, IpBlockScale};

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let ip_blocks = args.first().copied().unwrap_or(100_000);
    let policies = args.get(1).copied().unwrap_or(1000);
    let apps = args.get(2).copied().unwrap_or(10);
    let before = peak_rss_kib().unwrap_or(0);
    let snapshot = ipblock_snapshot(IpBlockScale {
        policies,
        ip_blocks,
        pods: 100,
        apps,
        seed: 7,
    });
    let generated = peak_rss_kib().unwrap_or(0);
    let start = Instant::now();
    let tables = compile_gateway(&snapshot).expect("compiles");
    let elapsed = start.elapsed();
    let after = peak_rss_kib().unwrap_or(0);
    println!(
        "ipblocks={ip_blocks} policies={policies} groups={} prefixes={} rule_sets={} compile_ms={:.1} peak_rss_mib={:.1} (input {:.1}, compile added {:.1})",
        tables.groups.len(),
        tables.prefix_count(),
        tables.rule_sets.len(),
        elapsed.as_secs_f64() * 1e3,
        after as f64 / 1024.0,
        (generated - before) as f64 / 1024.0,
        (after - generated) as f64 / 1024.0,
    );
}
