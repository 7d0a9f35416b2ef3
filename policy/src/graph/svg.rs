//! The graph drawn as a standalone SVG document with the [`Layout`]: namespaces as boxes (dashed
//! orange when they lack a default deny), pods inside (orange when no policy selects them),
//! external blocks as a column on the right, allowed edges as grey curves labelled with their
//! ports, and probes as dashed green (allow) or red (deny) curves. Elements carry `data-`
//! attributes (node ids, namespaces) that the HTML page's script uses.

use std::fmt::Write;

use super::layout::{Layout, NODE_HEIGHT};
use super::Graph;

const STYLE: &str = "
.ns-box { fill: #f4f6fa; stroke: #8a94a6; stroke-width: 1.5; }
.ns-box.open { stroke: #e07b00; stroke-dasharray: 6 4; }
.ns-title { font: bold 13px sans-serif; fill: #223; }
.ns-note { font: 11px sans-serif; fill: #b35f00; }
.node rect { fill: #fff; stroke: #445; stroke-width: 1.2; rx: 6; }
.node.unselected rect { fill: #fde7cf; stroke: #e07b00; }
.node.block rect { fill: #eef3ff; stroke: #3a5bbf; rx: 0; }
.node text { font: 12px sans-serif; fill: #111; }
.node .note { font: 10px sans-serif; fill: #b35f00; }
.edge path { fill: none; stroke: #7a8290; stroke-width: 1.3; }
.edge text, .probe text { font: 10px sans-serif; fill: #333; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
.probe path { fill: none; stroke-width: 2; stroke-dasharray: 5 3; }
.probe.allow path { stroke: #1a9a3a; }
.probe.deny path { stroke: #d02020; }
";

/// Escapes text for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The SVG document.
pub fn to_svg(graph: &Graph) -> String {
    let layout = Layout::of(graph);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" id="graph" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}">"#,
        w = layout.width,
        h = layout.height
    );
    let _ = writeln!(out, "<style>{STYLE}</style>");
    out.push_str(concat!(
        r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" "#,
        r#"markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" "#,
        r##"fill="#555"/></marker></defs>"##,
        "\n"
    ));
    draw_namespaces(graph, &layout, &mut out);
    draw_edges(graph, &layout, &mut out);
    out.push_str("</svg>\n");
    out
}

fn draw_namespaces(graph: &Graph, layout: &Layout, out: &mut String) {
    for namespace in &graph.namespaces {
        let Some(rect) = layout.namespaces.get(&namespace.name) else {
            continue;
        };
        let name = escape(&namespace.name);
        let open = if namespace.default_deny { "" } else { " open" };
        let _ = writeln!(
            out,
            r#"<g class="namespace" data-ns="{name}"><rect class="ns-box{open}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="10"/><text class="ns-title" x="{:.1}" y="{:.1}">{name}</text>"#,
            rect.x,
            rect.y,
            rect.width,
            rect.height,
            rect.x + 12.0,
            rect.y + 18.0
        );
        if !namespace.default_deny {
            let _ = writeln!(
                out,
                r#"<text class="ns-note" x="{:.1}" y="{:.1}">no default deny</text>"#,
                rect.x + 12.0,
                rect.y + 33.0
            );
        }
        for pod in &namespace.pods {
            let unselected = pod.policies.is_empty();
            let note = unselected.then_some("selected by no policy");
            let class = if unselected {
                "node pod unselected"
            } else {
                "node pod"
            };
            draw_node(
                layout,
                &pod.id,
                &pod.name,
                note,
                class,
                &namespace.name,
                out,
            );
        }
        out.push_str("</g>\n");
    }
    for block in &graph.blocks {
        let note = (!block.named_by_policy).then_some("probe address");
        draw_node(layout, &block.id, &block.label, note, "node block", "", out);
    }
}

fn draw_node(
    layout: &Layout,
    id: &str,
    label: &str,
    note: Option<&str>,
    class: &str,
    namespace: &str,
    out: &mut String,
) {
    let Some(rect) = layout.nodes.get(id) else {
        return;
    };
    let label_y = if note.is_some() {
        rect.y + 16.0
    } else {
        rect.y + NODE_HEIGHT / 2.0 + 4.0
    };
    let _ = write!(
        out,
        r#"<g class="{class}" data-id="{}" data-ns="{}"><title>{}</title><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/><text x="{:.1}" y="{label_y:.1}">{}</text>"#,
        escape(id),
        escape(namespace),
        escape(label),
        rect.x,
        rect.y,
        rect.width,
        rect.height,
        rect.x + 8.0,
        escape(label)
    );
    if let Some(note) = note {
        let _ = write!(
            out,
            r#"<text class="note" x="{:.1}" y="{:.1}">{note}</text>"#,
            rect.x + 8.0,
            rect.y + 31.0
        );
    }
    out.push_str("</g>\n");
}

fn draw_edges(graph: &Graph, layout: &Layout, out: &mut String) {
    let edges = graph
        .edges
        .iter()
        .map(|e| (&e.from, &e.to, "edge".to_string(), e.ports.to_string()));
    let probes = graph.probes.iter().map(|p| {
        let verdict = if p.allowed { "allow" } else { "deny" };
        let label = format!("probe {} {verdict}", p.port);
        (&p.from, &p.to, format!("probe {verdict}"), label)
    });
    for (from, to, class, label) in edges.chain(probes) {
        let Some(curve) = layout.curve(from, to) else {
            continue;
        };
        let _ = writeln!(
            out,
            r#"<g class="{class}" data-from="{}" data-to="{}"><path d="{}" marker-end="url(#arrow)"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text></g>"#,
            escape(from),
            escape(to),
            curve.path(),
            curve.label_at.0,
            curve.label_at.1,
            escape(&label)
        );
    }
}
