//! The traffic generator: `perf_gen` run through `BPF_PROG_TEST_RUN` with live frames in the
//! generator namespace, and the maps that steer it (tuple table, mode, frame header).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use aya::maps::Array;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::Ebpf;

pub use portcullis_perf_common::{GenConfig, Target, GEN_PROBE, GEN_RANDOM_SPORT};

use crate::frame::udp_frame;
use crate::harness::{map_mut, program_mut, Harness};
use crate::lab::{self, in_ns};

/// Words of the Ethernet/IPv4/UDP header the generator rewrites.
const HEADER_WORDS: usize = 11;

/// Where and how `perf_gen` runs; fixed for the run.
#[derive(Clone, Debug)]
pub struct GenSetup {
    pub ns: String,
    pub cpu: usize,
    /// The generator's veth.
    pub ifindex: u32,
    /// Frames per live-frames batch.
    pub batch: u32,
    /// Frames per call (0: sized to the time left).
    pub repeat: u32,
}

/// `perf_gen` ready to run, borrowing only the program (so the harness's taken maps can be read
/// while it runs on another thread).
pub struct Generator<'p> {
    prog: &'p mut Xdp,
    setup: GenSetup,
    template: Vec<u8>,
}

impl<'p> Generator<'p> {
    pub fn new(ebpf: &'p mut Ebpf, setup: &GenSetup, template: &[u8]) -> Result<Generator<'p>> {
        Ok(Generator {
            prog: program_mut(ebpf, "perf_gen")?,
            setup: setup.clone(),
            template: template.to_vec(),
        })
    }

    /// Runs for `secs` (one call of `repeat` frames when `secs` is 0) on its CPU, or until `stop`.
    ///
    /// Every test-run call waits for two RCU grace periods (the kernel swaps the XDP dispatcher
    /// in and out around the run: about 10 ms each on this VM, measured with `perf`), so with a
    /// fixed 64k-frame call a third of the generator's time was spent asleep. Calls are sized
    /// from the rate of the previous one to last until the deadline (at most 1 s, so a stop
    /// request is seen in time).
    pub fn run(&mut self, secs: f64, stop: &AtomicBool) -> Result<()> {
        let prog = &mut *self.prog;
        let (template, s) = (&self.template, &self.setup);
        in_ns(&s.ns, || {
            lab::pin_current_thread(s.cpu);
            let mut ctx = [0u8; 24];
            ctx[4..8].copy_from_slice(&(template.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&s.ifindex.to_ne_bytes());
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut repeat = if s.repeat > 0 { s.repeat } else { 1 << 16 };
            loop {
                let t = Instant::now();
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(template),
                    ctx_in: Some(&ctx),
                    repeat,
                    attrs: TestRunAttrs::new().xdp_live_frames(s.batch),
                    ..Default::default()
                });
                match r {
                    Ok(_) => {}
                    Err(e) if stop.load(Ordering::Relaxed) => {
                        return Err(anyhow!("interrupted ({e})"))
                    }
                    Err(e) => return Err(anyhow!("live-frames test run: {e}")),
                }
                let now = Instant::now();
                if secs <= 0.0 || stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let left = deadline.saturating_duration_since(now).as_secs_f64();
                if left < 0.005 {
                    return Ok(());
                }
                if s.repeat == 0 {
                    let rate = repeat as f64 / (now - t).as_secs_f64().max(1e-6);
                    repeat = (rate * left.min(1.0)).clamp(4096.0, u32::MAX as f64) as u32;
                }
            }
        })
    }
}

impl Harness<'_> {
    pub fn load_targets(&mut self, targets: &[Target]) -> Result<()> {
        let mut map = Array::<_, Target>::try_from(map_mut(&mut self.ebpf, "TARGETS")?)?;
        for (i, t) in targets.iter().enumerate() {
            map.set(i as u32, *t, 0)?;
        }
        Ok(())
    }

    pub fn set_gen(&mut self, cfg: GenConfig) -> Result<()> {
        Array::<_, GenConfig>::try_from(map_mut(&mut self.ebpf, "GEN_CFG")?)?.set(0, cfg, 0)?;
        Ok(())
    }

    /// A generator setting over the first `mask + 1` targets, new flows or not, paced or not.
    pub fn flood_config(&self, mask: u32, new_flows: bool, gap_ns: u32) -> GenConfig {
        GenConfig {
            ifindex: self.gen.ifindex,
            mask,
            flags: if new_flows { GEN_RANDOM_SPORT } else { 0 },
            index: 0,
            gap_ns,
            _pad: 0,
        }
    }

    /// Sends `count` probe targets from `first` on, once each, as one call.
    pub fn send_probes(&mut self, first: usize, count: usize) -> Result<()> {
        Array::<_, u32>::try_from(map_mut(&mut self.ebpf, "GEN_SEQ")?)?.set(0, 0, 0)?;
        self.set_gen(GenConfig {
            ifindex: self.gen.ifindex,
            mask: 0,
            flags: GEN_PROBE,
            index: first as u32,
            gap_ns: 0,
            _pad: 0,
        })?;
        let setup = GenSetup {
            batch: count as u32,
            repeat: count as u32,
            ..self.gen.clone()
        };
        let stop = self.stop;
        Generator::new(&mut self.ebpf, &setup, &self.template)?.run(0.0, stop)
    }

    /// Switches the generator to `len`-byte frames: the template and the header it rewrites.
    pub fn set_frame(&mut self, len: usize) -> Result<()> {
        self.template = udp_frame(
            self.lab.gen_mac,
            self.lab.cluster_mac,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            0,
            0,
            len,
        );
        let mut hdr = [0u32; HEADER_WORDS];
        for (i, w) in hdr.iter_mut().enumerate() {
            *w = u32::from_ne_bytes(self.template[i * 4..i * 4 + 4].try_into().unwrap());
        }
        Array::<_, [u32; HEADER_WORDS]>::try_from(map_mut(&mut self.ebpf, "GEN_HDR")?)?
            .set(0, hdr, 0)?;
        Ok(())
    }

    /// Frames the generator has sent so far.
    pub fn gen_sent(&self) -> Result<u64> {
        Ok(self.gen_sent.get(&0, 0)?.iter().sum())
    }

    /// The generator with the current frame and the run's settings.
    pub fn generator(&mut self) -> Result<Generator<'_>> {
        Generator::new(&mut self.ebpf, &self.gen, &self.template)
    }

    /// Runs the generator for `secs` on its CPU.
    pub fn generate(&mut self, secs: f64) -> Result<()> {
        let stop = self.stop;
        self.generator()?.run(secs, stop)
    }
}
