//! `portcullis-perf`: the benchmark harness behind `perf/run` (see perf/README.md).
//!
//! Topology: generator netns → gateway netns (cluster leg, external leg) → sink netns, made and
//! torn down by [`lab::Lab`]. Traffic: 64- or 1500-byte IPv4/UDP frames produced by `perf_gen` run through
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (redirected out of the generator's veth),
//! random pod sources and destinations drawn from the policies' allowed ranges (mostly) or the
//! whole external range. Counted by `perf_sink` (XDP) on the sink. The gateway's cluster leg runs
//! threaded NAPI pinned to a CPU of its own (`--cpus`; default CPU 1), so the gateway's work is one
//! core and its CPU time is that kthread's; the generator runs on CPU 0 and the sink's NAPI thread
//! on CPU 2, or on CPU 0 too when the machine has two.
mod args;
mod change;
mod contender;
mod engine;
mod frame;
mod generator;
mod harness;
mod idle_flows;
mod lab;
mod latency;
mod memory;
mod micro;
mod netfilter;
mod plan;
mod report;
mod rules;
mod sampler;
mod sender;
mod sink;
mod survival;
mod svg;
mod throughput;
mod verdicts;
mod workload;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Parser;

use args::Args;
use contender::Contender;
use harness::{check, Harness};
use lab::sh;
use plan::Plan;
use report::Report;
use workload::Workload;

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, XDP, nftables): use perf/run");
    }
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    if online < 2 {
        bail!("needs at least 2 CPUs (one for the gateway alone), found {online}");
    }
    let plan = Plan::new(&args, online)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let mut report = Report::new(std::env::args().collect(), &plan.json());
    let result = run(&plan, &stop, &mut report);
    if let Err(e) = &result {
        report.note(format!("run ended early: {e:#}"));
    }
    let path = report.write(&plan.out)?;
    report.print_summary();
    println!("results: {}", path.display());
    result
}

/// Every size of the plan: its contenders, then its policy changes. A failing contender or
/// change test is noted and the run goes on.
fn run(plan: &Plan, stop: &AtomicBool, report: &mut Report) -> Result<()> {
    let mut h = Harness::new(plan, stop)?;
    report.machine_extra("iptables", sh("iptables -V").unwrap_or_default().trim());
    report.machine_extra("nft", sh("nft -v").unwrap_or_default().trim());
    report.machine_extra("ipset", sh("ipset -v").unwrap_or_default().trim());
    let mut bare_done = false;
    for &size in &plan.sizes {
        check(stop)?;
        println!("== {size} ipBlocks");
        let w = Workload::new(size, plan, report)?;
        h.load_targets(&w.targets)?;
        for &c in &plan.contenders {
            check(stop)?;
            if (c.is_bare() && bare_done)
                || (c == Contender::IptablesLinear && size > plan.linear_max)
            {
                continue;
            }
            if let Err(e) = h.contender(c, &w, plan, report) {
                let c = c.name();
                println!("   {c}: FAILED: {e:#}");
                report.note(format!("{c} at {size} ipBlocks failed: {e:#}"));
                h.reset_gateway_ns();
                check(stop)?;
            }
        }
        bare_done = true;
        if plan.changes_at(size) {
            check(stop)?;
            if let Err(e) = h.changes(&w, plan, report) {
                println!("   policy changes: FAILED: {e:#}");
                report.note(format!("policy changes at {size} ipBlocks failed: {e:#}"));
                h.reset_gateway_ns();
                check(stop)?;
            }
        }
    }
    Ok(())
}
