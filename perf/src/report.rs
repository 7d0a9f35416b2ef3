//! Results: the JSON file (keys documented in perf/README.md), the two SVG plots (`svg`) and the
//! printed summary table; the ratios between contenders are in `ratios`.

mod ratios;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::contender::Contender;
use crate::idle_flows::IdleFlows;
use crate::plan::FRAME_LEN;
use crate::svg;

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub contender: String,
    /// ipBlocks in the synthetic policies (0: the contender has no rules).
    pub ip_blocks: usize,
    /// Prefixes after compilation (excepts become carve-out prefixes).
    pub prefixes: usize,
    /// Frame size of a traffic or test-run figure (0: not about packets).
    pub frame_bytes: usize,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
}

impl Figure {
    /// The figure's frame size (traffic and test-run figures).
    pub fn frame(mut self, frame_bytes: usize) -> Figure {
        self.frame_bytes = frame_bytes;
        self
    }

    /// The values the figure summarises (per repeat, or every change).
    pub fn samples(mut self, samples: Vec<f64>) -> Figure {
        self.samples = samples;
        self
    }
}

/// Whose figures and at which rule-set size: what a run of figures has in common.
#[derive(Clone, Debug)]
pub struct Subject {
    pub contender: String,
    pub ip_blocks: usize,
    pub prefixes: usize,
}

impl Subject {
    pub fn new(contender: &str, ip_blocks: usize, prefixes: usize) -> Subject {
        Subject {
            contender: contender.into(),
            ip_blocks,
            prefixes,
        }
    }

    /// A figure of this subject, not about packets (frame size 0) and without samples.
    pub fn figure(&self, metric: impl Into<String>, value: f64, unit: &str) -> Figure {
        Figure {
            contender: self.contender.clone(),
            ip_blocks: self.ip_blocks,
            prefixes: self.prefixes,
            frame_bytes: 0,
            metric: metric.into(),
            value,
            unit: unit.into(),
            samples: Vec::new(),
        }
    }
}

pub struct Report {
    command: Vec<String>,
    config: serde_json::Value,
    machine: BTreeMap<String, String>,
    figures: Vec<Figure>,
    notes: Vec<String>,
    started: u64,
    load_before: Vec<f64>,
    /// The idle-flow measurement (once per run).
    idle: Option<IdleFlows>,
}

/// The 1, 5 and 15 minute load averages (the machine may be shared with compilers).
fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// UTC `YYYYMMDDTHHMMSSZ` (civil-from-days, no date crate).
fn stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    m.insert("cpu_model".into(), model);
    m.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
            .to_string(),
    );
    m.insert(
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(l) = mem.lines().next() {
        m.insert(
            "memory".into(),
            l.trim_start_matches("MemTotal:").trim().into(),
        );
    }
    m
}

impl Report {
    pub fn new(command: Vec<String>, config: &serde_json::Value) -> Report {
        Report {
            command,
            config: config.clone(),
            machine: machine(),
            figures: Vec::new(),
            notes: Vec::new(),
            started: now(),
            load_before: loadavg(),
            idle: None,
        }
    }

    pub fn machine_extra(&mut self, key: &str, value: &str) {
        self.machine.insert(key.into(), value.into());
    }

    pub fn push(&mut self, f: Figure) {
        self.figures.push(f);
    }

    pub fn note(&mut self, n: String) {
        self.notes.push(n);
    }

    pub fn set_idle_flows(&mut self, idle: IdleFlows) {
        self.idle = Some(idle);
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "schema": 1,
            "started_unix": self.started,
            "finished_unix": now(),
            "command": self.command,
            "machine": self.machine,
            "load": {"before": self.load_before, "after": loadavg()},
            "config": self.config,
            "figures": self.figures,
            "ratios": self.ratios(),
            "ratios_per_core": self.ratios_per_core(),
            "idle_flows": self.idle.as_ref().map(|i| i.flows),
            "idle_flows_survived": self.idle.as_ref().map(|i| i.survived),
            "idle_flows_detail": self.idle,
            "notes": self.notes,
        })
    }

    /// Writes `<dir>/<timestamp>.json`, `<timestamp>-throughput.svg`, `<timestamp>-ns.svg`.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let base = stamp(self.started);
        let path = dir.join(format!("{base}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&self.json())?)?;
        let tp = self.series("forwarded_pps", 1e-6);
        let frames: Vec<String> = self.frames().iter().map(|f| format!("{f} B")).collect();
        std::fs::write(
            dir.join(format!("{base}-throughput.svg")),
            svg::plot(
                &format!(
                    "Forwarded packets/s at the sink ({} UDP, one gateway core)",
                    frames.join(", ")
                ),
                "Mpps",
                &tp,
            ),
        )?;
        let mut ns = BTreeMap::new();
        for f in &self.figures {
            if let Some(k) = f.metric.strip_prefix("test_run_") {
                ns.entry(k.to_string())
                    .or_insert_with(Vec::new)
                    .push((f.ip_blocks as f64, f.value));
            }
        }
        std::fs::write(
            dir.join(format!("{base}-ns.svg")),
            svg::plot("BPF_PROG_TEST_RUN ns/packet vs ipBlocks", "ns/packet", &ns),
        )?;
        Ok(path)
    }

    /// contender (with its frame size unless 64 B) → [(ip_blocks, value * scale)]; rule-less
    /// contenders are drawn flat across.
    fn series(&self, metric: &str, scale: f64) -> BTreeMap<String, Vec<(f64, f64)>> {
        let sizes: BTreeSet<usize> = self
            .figures
            .iter()
            .filter(|f| f.ip_blocks > 0)
            .map(|f| f.ip_blocks)
            .collect();
        let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for f in self.figures.iter().filter(|f| f.metric == metric) {
            let name = if f.frame_bytes == FRAME_LEN {
                f.contender.clone()
            } else {
                format!("{} ({} B)", f.contender, f.frame_bytes)
            };
            let e = out.entry(name).or_default();
            if f.ip_blocks == 0 {
                for s in &sizes {
                    e.push((*s as f64, f.value * scale));
                }
            } else {
                e.push((f.ip_blocks as f64, f.value * scale));
            }
        }
        out
    }

    fn value(&self, contender: &str, size: usize, frame: usize, metric: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| {
                f.contender == contender
                    && f.metric == metric
                    && f.frame_bytes == frame
                    && (f.ip_blocks == size || f.ip_blocks == 0)
            })
            .map(|f| f.value)
    }

    /// Frame sizes of the throughput figures.
    fn frames(&self) -> Vec<usize> {
        self.throughput_keys(|f| Some(f.frame_bytes))
    }

    /// ipBlock counts of the throughput figures of contenders with rules.
    fn sizes(&self) -> Vec<usize> {
        self.throughput_keys(|f| (f.ip_blocks > 0).then_some(f.ip_blocks))
    }

    /// The distinct `key`s of the throughput figures, sorted.
    fn throughput_keys(&self, key: impl Fn(&Figure) -> Option<usize>) -> Vec<usize> {
        let keys: BTreeSet<usize> = self
            .figures
            .iter()
            .filter(|f| f.metric == "forwarded_pps")
            .filter_map(key)
            .collect();
        keys.into_iter().collect()
    }

    /// The contenders with a figure of `metric`, in the order of `Contender::ALL`.
    fn contenders_with(&self, metric: &str) -> Vec<&'static str> {
        (Contender::ALL.iter())
            .map(|c| c.name())
            .filter(|c| (self.figures.iter()).any(|f| f.contender == *c && f.metric == metric))
            .collect()
    }

    pub fn print_summary(&self) {
        let sizes = self.sizes();
        let contenders = self.contenders_with("forwarded_pps");
        for frame in self.frames() {
            println!("\nforwarded Mpps (median), {frame} B frames [gateway CPU, cores]");
            let mut head = format!("{:>10}", "ipBlocks");
            for c in &contenders {
                let _ = write!(head, " | {c:>26}");
            }
            println!("{head}");
            for s in &sizes {
                let mut line = format!("{s:>10}");
                for c in &contenders {
                    let cell = match self.value(c, *s, frame, "forwarded_pps") {
                        Some(v) => match self.value(c, *s, frame, "gateway_cpu") {
                            Some(cpu) => format!("{:.3} [{cpu:.2}]", v / 1e6),
                            None => format!("{:.3}", v / 1e6),
                        },
                        None => "-".into(),
                    };
                    let _ = write!(line, " | {cell:>26}");
                }
                println!("{line}");
            }
        }
        self.print_ratios();
        self.print_per_core();
        self.print_section(
            "policy changes (portcullis-xdp)",
            |f| f.metric.starts_with("change_") || f.metric.starts_with("survival_"),
            |f| {
                format!(
                    "  {:>8} ipBlocks  {:<40} {:.3} {}",
                    f.ip_blocks, f.metric, f.value, f.unit
                )
            },
        );
        self.print_section(
            "test-run ns/packet",
            |f| f.metric.starts_with("test_run_"),
            |f| {
                format!(
                    "  {:>8} ipBlocks  {:<32} {:.1}",
                    f.ip_blocks, f.metric, f.value
                )
            },
        );
        self.print_section(
            "verdict agreement with GatewayTables::allows",
            |f| f.metric == "verdict_agreement",
            |f| {
                format!(
                    "  {:>8} ipBlocks  {:<28} {:.3}",
                    f.ip_blocks, f.contender, f.value
                )
            },
        );
        if let Some(idle) = &self.idle {
            println!("\nidle flows (portcullis-xdp):\n  {}", idle.line());
        }
        println!(
            "\nload average (1, 5, 15 min) before {:?}, after {:?}",
            self.load_before,
            loadavg()
        );
        for n in &self.notes {
            println!("note: {n}");
        }
    }

    /// A titled block of one line per selected figure; nothing when no figure is selected.
    fn print_section(
        &self,
        title: &str,
        selected: impl Fn(&Figure) -> bool,
        line: impl Fn(&Figure) -> String,
    ) {
        let figures: Vec<&Figure> = self.figures.iter().filter(|f| selected(f)).collect();
        if !figures.is_empty() {
            println!("\n{title}:");
            for f in figures {
                println!("{}", line(f));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_is_utc_civil() {
        assert_eq!(stamp(0), "19700101T000000Z");
        assert_eq!(stamp(1_764_064_800), "20251125T100000Z");
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
