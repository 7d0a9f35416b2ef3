//! The graph as Graphviz DOT: a cluster per namespace (dashed orange and labelled when it lacks a
//! default deny), pods as ellipses (orange when no policy selects them), external blocks as boxes,
//! allowed edges labelled with their ports, probes as dashed green (allow) or red (deny) edges.

use std::fmt::Write;

use super::Graph;

/// Text escaped for a DOT quoted string.
fn escaped(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A DOT quoted string.
fn quoted(text: &str) -> String {
    format!("\"{}\"", escaped(text))
}

pub fn to_dot(graph: &Graph) -> String {
    let mut out = String::from("digraph portcullis {\n  rankdir=LR;\n  node [shape=ellipse, fontname=\"sans-serif\"];\n  edge [fontname=\"sans-serif\", fontsize=10];\n");
    // Writing to a String cannot fail.
    for namespace in &graph.namespaces {
        let (label, style) = if namespace.default_deny {
            (namespace.name.clone(), "style=solid, color=gray40")
        } else {
            (
                format!("{} (no default deny)", namespace.name),
                "style=dashed, color=darkorange",
            )
        };
        let _ = writeln!(
            out,
            "  subgraph {} {{\n    label={};\n    {style};",
            quoted(&format!("cluster_{}", namespace.name)),
            quoted(&label)
        );
        for pod in &namespace.pods {
            let marks = if pod.policies.is_empty() {
                // `\n` is DOT's line break inside a label.
                format!(
                    "label=\"{}\\n(selected by no policy)\", style=filled, fillcolor=moccasin",
                    escaped(&pod.name)
                )
            } else {
                format!("label={}", quoted(&pod.name))
            };
            let _ = writeln!(out, "    {} [{marks}];", quoted(&pod.id));
        }
        out.push_str("  }\n");
    }
    for block in &graph.blocks {
        let _ = writeln!(
            out,
            "  {} [shape=box, label={}];",
            quoted(&block.id),
            quoted(&block.label)
        );
    }
    for edge in &graph.edges {
        let _ = writeln!(
            out,
            "  {} -> {} [label={}];",
            quoted(&edge.from),
            quoted(&edge.to),
            quoted(&edge.ports.to_string())
        );
    }
    for probe in &graph.probes {
        let (verdict, color) = if probe.allowed {
            ("allow", "green4")
        } else {
            ("deny", "red")
        };
        let _ = writeln!(
            out,
            "  {} -> {} [style=dashed, color={color}, fontcolor={color}, label={}];",
            quoted(&probe.from),
            quoted(&probe.to),
            quoted(&format!("probe {} {verdict}", probe.port))
        );
    }
    out.push_str("}\n");
    out
}
