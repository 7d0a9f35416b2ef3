//! Ratios between contenders per frame size and ipBlock count, in the JSON and the summary:
//! `ratios` of forwarded packets/s (what the README's ratio tables cite), and `ratios_per_core`
//! of forwarded packets per second of gateway CPU (`forwarded_per_core`) — the same pairs
//! re-based on the gateway's CPU, plus the AF_XDP contenders against their XDP counterparts and
//! every contender against `bare-redirect`. The two differ
//! where a contender leaves its gateway core partly idle (`bare-redirect`, limited by the sink on
//! two cores, runs it at about half): per core compares the work per packet, the rate what came
//! out.

use std::fmt::Write as _;

use serde::Serialize;

use super::Report;
use crate::contender::Contender;

/// Portcullis: new flows (XDP forwarding) and established flows.
const OURS: [&str; 2] = ["portcullis-xdp", "portcullis-xdp-established"];
/// What Portcullis is compared with.
const OTHERS: [&str; 6] = [
    "bare-pass",
    "bare-redirect",
    "nftables",
    "nftables-ct",
    "iptables-ipset",
    "iptables-linear",
];
/// The AF_XDP contenders and the XDP contender each is compared with per core (same traffic).
const ENGINES: [(&str, &str); 4] = [
    ("portcullis-afxdp", "portcullis-xdp"),
    ("portcullis-afxdp-established", "portcullis-xdp-established"),
    ("portcullis-hybrid", "portcullis-xdp"),
    (
        "portcullis-hybrid-established",
        "portcullis-xdp-established",
    ),
];
/// The XDP ceiling every contender is compared with per core.
const BASELINE: &str = "bare-redirect";
const PER_CORE: &str = "forwarded_per_core";

/// One ratio `a/b` of a metric at one frame size and ipBlock count (0: both rule-less).
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub ip_blocks: usize,
    pub frame_bytes: usize,
    pub ratio: String,
    pub value: f64,
}

impl Report {
    /// Forwarded-throughput ratios of Portcullis to the others.
    pub fn ratios(&self) -> Vec<Ratio> {
        self.portcullis_ratios("forwarded_pps")
    }

    /// Ratios of forwarded packets per gateway CPU-second: Portcullis to the others, the AF_XDP
    /// contenders to their XDP counterparts, then every other contender to `bare-redirect`
    /// (rule-less ones once per frame size, at ipBlocks 0).
    pub fn ratios_per_core(&self) -> Vec<Ratio> {
        let mut out = self.portcullis_ratios(PER_CORE);
        out.extend(self.engine_ratios(PER_CORE));
        for frame in self.frames() {
            let Some(base) = self.value(BASELINE, 0, frame, PER_CORE) else {
                continue;
            };
            for c in Contender::ALL {
                let name = c.name();
                if name == BASELINE || OURS.contains(&name) {
                    continue;
                }
                let sizes = if c.is_bare() { vec![0] } else { self.sizes() };
                for size in sizes {
                    if let Some(v) = self.value(name, size, frame, PER_CORE) {
                        out.push(Ratio {
                            ip_blocks: size,
                            frame_bytes: frame,
                            ratio: format!("{name}/{BASELINE}"),
                            value: v / base,
                        });
                    }
                }
            }
        }
        out
    }

    /// `metric` of each of `OURS` over each of `OTHERS`, per frame size and ipBlock count.
    fn portcullis_ratios(&self, metric: &str) -> Vec<Ratio> {
        let pairs = OURS
            .iter()
            .flat_map(|ours| OTHERS.map(|other| (*ours, other)));
        self.pair_ratios(metric, pairs)
    }

    /// `metric` of each AF_XDP contender over its XDP counterpart's (`ENGINES`).
    fn engine_ratios(&self, metric: &str) -> Vec<Ratio> {
        self.pair_ratios(metric, ENGINES)
    }

    /// `metric` of `a` over `b` for each pair, per frame size and ipBlock count where both
    /// have it.
    fn pair_ratios<'p>(
        &self,
        metric: &str,
        pairs: impl IntoIterator<Item = (&'p str, &'p str)> + Clone,
    ) -> Vec<Ratio> {
        let mut out = Vec::new();
        for frame in self.frames() {
            for size in self.sizes() {
                for (a, b) in pairs.clone() {
                    let (Some(x), Some(y)) = (
                        self.value(a, size, frame, metric),
                        self.value(b, size, frame, metric),
                    ) else {
                        continue;
                    };
                    out.push(Ratio {
                        ip_blocks: size,
                        frame_bytes: frame,
                        ratio: format!("{a}/{b}"),
                        value: x / y,
                    });
                }
            }
        }
        out
    }

    /// The forwarded-pps ratios, one line each.
    pub(super) fn print_ratios(&self) {
        println!("\nratios (forwarded pps, portcullis / other):");
        print_lines(&self.ratios());
    }

    /// Forwarded Mpps per gateway CPU-second of every contender with its ratio to
    /// `bare-redirect`'s, per frame size; then Portcullis's per-core ratios to the others.
    pub(super) fn print_per_core(&self) {
        let contenders = self.contenders_with(PER_CORE);
        if contenders.is_empty() {
            return;
        }
        for frame in self.frames() {
            let base = self.value(BASELINE, 0, frame, PER_CORE);
            println!(
                "\nforwarded Mpps per gateway core (forwarded_per_core, median) (x {BASELINE}'s), {frame} B frames"
            );
            let width = |c: &str| c.len().max(14);
            let mut head = format!("{:>10}", "ipBlocks");
            for c in &contenders {
                let _ = write!(head, " | {c:>w$}", w = width(c));
            }
            println!("{head}");
            for s in self.sizes() {
                let mut line = format!("{s:>10}");
                for c in &contenders {
                    let cell = match (self.value(c, s, frame, PER_CORE), base) {
                        (Some(v), Some(b)) => format!("{:.3} ({:.2}x)", v / 1e6, v / b),
                        (Some(v), None) => format!("{:.3}", v / 1e6),
                        (None, _) => "-".into(),
                    };
                    let _ = write!(line, " | {cell:>w$}", w = width(c));
                }
                println!("{line}");
            }
        }
        println!("\nratios per gateway core (forwarded_per_core, portcullis / other):");
        print_lines(&self.portcullis_ratios(PER_CORE));
        let engines = self.engine_ratios(PER_CORE);
        if !engines.is_empty() {
            println!("\nratios per gateway core (forwarded_per_core, AF_XDP engine / XDP):");
            print_lines(&engines);
        }
    }
}

fn print_lines(ratios: &[Ratio]) {
    for r in ratios {
        println!(
            "  {:>8} ipBlocks {:>5} B  {:<44} {:.2}",
            r.ip_blocks, r.frame_bytes, r.ratio, r.value
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Subject;

    fn per_core(report: &mut Report, contender: &str, ip_blocks: usize, value: f64) {
        let s = Subject::new(contender, ip_blocks, ip_blocks);
        report.push(
            s.figure("forwarded_pps", value / 2.0, "packets/s")
                .frame(64),
        );
        report.push(s.figure(PER_CORE, value, "packets/cpu-s").frame(64));
    }

    #[test]
    fn per_core_ratios_cover_every_contender_against_bare_redirect() {
        let mut r = Report::new(Vec::new(), &serde_json::json!({}));
        per_core(&mut r, "bare-redirect", 0, 4e6);
        per_core(&mut r, "bare-pass", 0, 1e6);
        per_core(&mut r, "portcullis-xdp", 10, 5e5);
        per_core(&mut r, "nftables", 10, 1e6);
        per_core(&mut r, "portcullis-afxdp", 10, 2.5e5);
        let find = |ratios: &[Ratio], name: &str| {
            ratios
                .iter()
                .find(|x| x.ratio == name)
                .map(|x| (x.ip_blocks, x.value))
        };
        let pc = r.ratios_per_core();
        assert_eq!(find(&pc, "portcullis-xdp/bare-redirect"), Some((10, 0.125)));
        assert_eq!(find(&pc, "portcullis-xdp/nftables"), Some((10, 0.5)));
        assert_eq!(find(&pc, "nftables/bare-redirect"), Some((10, 0.25)));
        assert_eq!(
            find(&pc, "portcullis-afxdp/portcullis-xdp"),
            Some((10, 0.5))
        );
        assert_eq!(
            find(&pc, "portcullis-afxdp/bare-redirect"),
            Some((10, 0.0625))
        );
        // No hybrid figure: no hybrid ratio.
        assert!(!pc.iter().any(|x| x.ratio.starts_with("portcullis-hybrid")));
        assert_eq!(find(&pc, "bare-pass/bare-redirect"), Some((0, 0.25)));
        assert_eq!(
            pc.iter()
                .filter(|x| x.ratio.starts_with("bare-pass/"))
                .count(),
            1
        );
        // The forwarded-pps ratios are the same pairs on the other metric.
        let pps = r.ratios();
        assert_eq!(find(&pps, "portcullis-xdp/nftables"), Some((10, 0.5)));
        assert!(find(&pps, "nftables/bare-redirect").is_none());
    }
}
