//! `portcullis-differential` (run through `perf/differential`, as root): the differential test of
//! each datapath at scale, `portcullis_testkit::differential`'s random snapshots and packets
//! against the policy evaluator: the gateway's XDP program and the node hook's delivery program
//! through `BPF_PROG_TEST_RUN`, the AF_XDP engine's user-space pipeline. Prints every
//! disagreement with its reproducer and ends with one line per datapath,
//! `differential: <datapath> <N> packets, <M> updates, <D> disagreements`; exits 1 when any D > 0.
//! The process works in a network namespace of its own (the gateway's two veth legs), which goes
//! away with it.

mod datapaths;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use portcullis_testkit::differential::{self, node, Settings, Summary};

#[derive(Parser, Debug)]
#[command(about = "Differential test of each datapath at scale (run through perf/differential)")]
struct Args {
    /// The datapath(s) to test.
    #[arg(long, value_enum, default_value_t = Which::All)]
    datapath: Which,
    /// Packets per datapath.
    #[arg(long, default_value_t = 100_000)]
    packets: usize,
    /// Seed of the random snapshots and packets (a disagreement names the one to rerun with).
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Judge only the packets of this update (a disagreement's `--update`): the run up to it is
    /// generated and applied as before, so the case is the same, found again quickly.
    #[arg(long)]
    update: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Gateway,
    Node,
    Afxdp,
    All,
}

const DATAPATHS: [Which; 3] = [Which::Gateway, Which::Node, Which::Afxdp];

fn name(which: Which) -> &'static str {
    match which {
        Which::Gateway => "gateway",
        Which::Node => "node",
        Which::Afxdp => "afxdp",
        Which::All => "all",
    }
}

fn run(which: Which, settings: Settings) -> Result<Summary> {
    let label = name(which);
    let mut report = |d| println!("disagreement: {label} {d}");
    Ok(match which {
        Which::Gateway => differential::check(&mut datapaths::xdp()?, settings, &mut report),
        Which::Node => node::check(&mut datapaths::node()?, settings, &mut report),
        Which::Afxdp => differential::check(&mut datapaths::engine(), settings, &mut report),
        Which::All => unreachable!("expanded by main"),
    })
}

fn main() -> Result<ExitCode> {
    let args = Args::parse();
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF, a network namespace): run it through perf/differential");
    }
    // SAFETY: called before any thread starts; the process's own network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    let chosen: Vec<Which> = match args.datapath {
        Which::All => DATAPATHS.to_vec(),
        one => vec![one],
    };
    let settings = Settings {
        packets: args.packets,
        seed: args.seed,
        update: args.update,
    };
    let mut lines = Vec::new();
    let mut failed = false;
    for which in chosen {
        let started = Instant::now();
        let s = run(which, settings).with_context(|| format!("{} datapath", name(which)))?;
        eprintln!(
            "{}: {} packets in {:.1} s (seed {})",
            name(which),
            s.packets,
            started.elapsed().as_secs_f64(),
            args.seed
        );
        failed |= s.disagreements > 0;
        lines.push(format!(
            "differential: {} {} packets, {} updates, {} disagreements",
            name(which),
            s.packets,
            s.updates,
            s.disagreements
        ));
    }
    for line in lines {
        println!("{line}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
