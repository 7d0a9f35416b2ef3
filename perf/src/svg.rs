//! The result plots: hand-written SVG line charts (log-x ipBlocks), no plotting crate.

use std::collections::BTreeMap;
use std::fmt::Write as _;

const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// A log-x line plot (x: ipBlocks) with one polyline per series and a legend.
pub fn plot(title: &str, ylabel: &str, series: &BTreeMap<String, Vec<(f64, f64)>>) -> String {
    let (w, h, l, r, t, b) = (860.0, 480.0, 70.0, 230.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> = series.values().flatten().copied().collect();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        (w - r + l) / 2.0,
        esc(title)
    );
    if pts.is_empty() {
        s.push_str("<text x=\"100\" y=\"100\">no data</text>\n</svg>\n");
        return s;
    }
    let xmin = pts
        .iter()
        .map(|p| p.0.max(1.0).log10())
        .fold(f64::MAX, f64::min);
    let mut xmax = pts
        .iter()
        .map(|p| p.0.max(1.0).log10())
        .fold(f64::MIN, f64::max);
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    let ymax = pts.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1 + 1e-9;
    let (pw, ph) = (w - l - r, h - t - b);
    let x = |v: f64| l + (v.max(1.0).log10() - xmin) / (xmax - xmin) * pw;
    let y = |v: f64| t + ph - v / ymax * ph;
    let _ = writeln!(
        s,
        "<rect x=\"{l}\" y=\"{t}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>"
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            l + pw,
            l - 6.0,
            y(v) + 4.0,
            fmt_tick(v),
            yy = y(v)
        );
    }
    let mut e = xmin.floor() as i32;
    while e as f64 <= xmax.ceil() {
        let v = 10f64.powi(e);
        if (v.log10() >= xmin - 1e-9) && (v.log10() <= xmax + 1e-9) {
            let _ = writeln!(
                s,
                "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{t}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                t + ph,
                t + ph + 16.0,
                fmt_tick(v),
                xx = x(v)
            );
        }
        e += 1;
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">ipBlocks (log scale)</text><text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">{}</text>",
        l + pw / 2.0,
        h - 10.0,
        t + ph / 2.0,
        t + ph / 2.0,
        esc(ylabel)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut sorted = pts.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = sorted
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for p in &sorted {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>{} {}: {:.3}</title></circle>",
                x(p.0),
                y(p.1),
                esc(name),
                p.0,
                p.1
            );
        }
        let ly = t + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - r + 10.0,
            w - r + 30.0,
            w - r + 36.0,
            ly + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
