//! Change latency: a probe stream runs while the changes flip its verdict; each change's
//! latency is read from the sink's first-seen (allow) or last-seen (deny) time of the probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::change::{monotonic_ns, ChangeRig, PROBE_PORT};
use crate::harness::{check, Harness};
use crate::sender::Stream;
use crate::sink::{watch_key, TupleKey, Watch, SINK_WATCH};

/// Time between two probe frames (the latency's resolution).
const PROBE_INTERVAL: Duration = Duration::from_micros(50);
/// How long a change may take to show on the data plane before the run fails.
const ENFORCE_TIMEOUT: Duration = Duration::from_secs(2);
/// A denied probe is enforced once it has been silent this long (≫ its interval).
const DENY_QUIET: Duration = Duration::from_millis(30);

/// One change: which way it went and how long its parts took.
pub struct Timing {
    pub allow: bool,
    pub compile_ms: f64,
    pub apply_ms: f64,
    pub latency_ms: f64,
}

impl Harness<'_> {
    /// Runs `n` changes (allow, deny, allow, ...) with the probe running; the timings.
    pub fn latency(&mut self, rig: &mut ChangeRig, n: usize) -> Result<Vec<Timing>> {
        let key = watch_key(rig.pod, rig.probe_dst, PROBE_PORT);
        self.watch.insert(key, Watch::default(), 0)?;
        self.set_sink_flags(SINK_WATCH)?;
        let stream = Stream {
            src: rig.pod,
            dst: rig.probe_dst,
            sport: 1024,
            dport: PROBE_PORT,
            fresh_sport: true,
        };
        let stop_sender = AtomicBool::new(false);
        let site = self.sender_site();
        std::thread::scope(|sc| {
            let sender = sc.spawn(|| site.run(&[stream], PROBE_INTERVAL, &stop_sender));
            let timed = (|| -> Result<Vec<Timing>> {
                std::thread::sleep(Duration::from_millis(100));
                let w = self.watch.get(&key, 0)?;
                if w.frames > 0 {
                    bail!("the probe passed before any change allowed it");
                }
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    check(self.stop)?;
                    let allow = i % 2 == 0;
                    self.watch.insert(key, Watch::default(), 0)?;
                    let t0 = monotonic_ns();
                    let times = rig.change(allow)?;
                    let latency_ns = if allow {
                        self.first_pass(&key, t0, i)?
                    } else {
                        self.last_pass(&key, t0, i)?
                    };
                    out.push(Timing {
                        allow,
                        compile_ms: times.compile.as_secs_f64() * 1e3,
                        apply_ms: times.apply.as_secs_f64() * 1e3,
                        latency_ms: latency_ns as f64 / 1e6,
                    });
                }
                Ok(out)
            })();
            stop_sender.store(true, Ordering::Relaxed);
            let sent = sender
                .join()
                .map_err(|_| anyhow!("probe sender panicked"))?;
            let timed = timed?;
            let sent = sent?;
            println!(
                "   probe: {} frames, one every {:.0} µs",
                sent.frames[0],
                sent.interval.as_secs_f64() * 1e6
            );
            Ok(timed)
        })
    }

    /// After allowing change `i` (started at `t0`): ns until the probe's first frame passed.
    fn first_pass(&self, key: &TupleKey, t0: u64, i: usize) -> Result<u64> {
        let deadline = Instant::now() + ENFORCE_TIMEOUT;
        loop {
            let w = self.watch.get(key, 0)?;
            if w.frames > 0 {
                return Ok(w.first_ns.saturating_sub(t0));
            }
            if Instant::now() > deadline {
                bail!("change {i}: the probe did not pass within 2 s of allowing it");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// After denying change `i` (started at `t0`): ns until the last frame that passed (0 if
    /// none did), once the probe has been silent for `DENY_QUIET`.
    fn last_pass(&self, key: &TupleKey, t0: u64, i: usize) -> Result<u64> {
        let deadline = Instant::now() + ENFORCE_TIMEOUT;
        let mut last = self.watch.get(key, 0)?;
        let mut quiet = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let w = self.watch.get(key, 0)?;
            if w.frames != last.frames {
                last = w;
                quiet = Instant::now();
            } else if quiet.elapsed() >= DENY_QUIET {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "change {i}: the probe still passes 2 s after the apply that denies it returned ({} frames since the change started)",
                    w.frames
                );
            }
        }
        Ok(if last.frames > 0 {
            last.last_ns.saturating_sub(t0)
        } else {
            0
        })
    }
}
