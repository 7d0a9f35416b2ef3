//! A deterministic layout for the drawn graph: one column per namespace with its pods stacked
//! inside, the external blocks in a last column on the right, and edges as quadratic curves whose
//! bend depends on their direction (so A→B and B→A do not overlap).

use std::collections::BTreeMap;

use super::Graph;

const MARGIN: f64 = 20.0;
const COLUMN_WIDTH: f64 = 220.0;
const COLUMN_GAP: f64 = 110.0;
const HEADER: f64 = 44.0;
pub const NODE_HEIGHT: f64 = 38.0;
const NODE_GAP: f64 = 16.0;
const NODE_INSET: f64 = 16.0;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

impl Rect {
    fn center(&self) -> (f64, f64) {
        (self.x + self.width / 2.0, self.y + self.height / 2.0)
    }
}

/// A curve from `start` to `end` bent through `control`, with `label_at` its midpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Curve {
    pub start: (f64, f64),
    pub control: (f64, f64),
    pub end: (f64, f64),
    pub label_at: (f64, f64),
}

impl Curve {
    pub fn path(&self) -> String {
        format!(
            "M{:.1},{:.1} Q{:.1},{:.1} {:.1},{:.1}",
            self.start.0, self.start.1, self.control.0, self.control.1, self.end.0, self.end.1
        )
    }
}

pub struct Layout {
    /// Namespace name → its box.
    pub namespaces: BTreeMap<String, Rect>,
    /// Node id → its box.
    pub nodes: BTreeMap<String, Rect>,
    pub width: f64,
    pub height: f64,
}

impl Layout {
    pub fn of(graph: &Graph) -> Layout {
        let mut namespaces = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        let column = |index: usize| MARGIN + index as f64 * (COLUMN_WIDTH + COLUMN_GAP);
        let row = |index: usize| MARGIN + HEADER + index as f64 * (NODE_HEIGHT + NODE_GAP);
        let node_rect = |col: usize, index: usize| Rect {
            x: column(col) + NODE_INSET,
            y: row(index),
            width: COLUMN_WIDTH - 2.0 * NODE_INSET,
            height: NODE_HEIGHT,
        };
        let mut tallest = 0usize;
        for (col, namespace) in graph.namespaces.iter().enumerate() {
            for (index, pod) in namespace.pods.iter().enumerate() {
                nodes.insert(pod.id.clone(), node_rect(col, index));
            }
            tallest = tallest.max(namespace.pods.len());
            namespaces.insert(
                namespace.name.clone(),
                Rect {
                    x: column(col),
                    y: MARGIN,
                    width: COLUMN_WIDTH,
                    height: HEADER + namespace.pods.len() as f64 * (NODE_HEIGHT + NODE_GAP),
                },
            );
        }
        let mut columns = graph.namespaces.len();
        if !graph.blocks.is_empty() {
            for (index, block) in graph.blocks.iter().enumerate() {
                nodes.insert(block.id.clone(), node_rect(columns, index));
            }
            tallest = tallest.max(graph.blocks.len());
            columns += 1;
        }
        Layout {
            namespaces,
            nodes,
            width: column(columns.max(1)) - COLUMN_GAP + MARGIN,
            height: row(tallest) + MARGIN,
        }
    }

    /// The curve of an edge between two laid-out nodes; `None` when either is not drawn.
    pub fn curve(&self, from: &str, to: &str) -> Option<Curve> {
        let a = self.nodes.get(from)?;
        let b = self.nodes.get(to)?;
        let (ax, ay) = a.center();
        let (bx, by) = b.center();
        let (start, end) = if (ax - bx).abs() < f64::EPSILON {
            // Same column: leave and enter on the right side, bending outward.
            ((a.x + a.width, ay), (b.x + b.width, by))
        } else if ax < bx {
            ((a.x + a.width, ay), (b.x, by))
        } else {
            ((a.x, ay), (b.x + b.width, by))
        };
        let (dx, dy) = (end.0 - start.0, end.1 - start.1);
        let length = (dx * dx + dy * dy).sqrt().max(1.0);
        // Bend to the left of the direction of travel: opposite edges bend apart.
        let bend = 24.0 + length / 8.0;
        let mid = ((start.0 + end.0) / 2.0, (start.1 + end.1) / 2.0);
        let control = (mid.0 + dy / length * bend, mid.1 - dx / length * bend);
        let label_at = (
            0.25 * start.0 + 0.5 * control.0 + 0.25 * end.0,
            0.25 * start.1 + 0.5 * control.1 + 0.25 * end.1,
        );
        Some(Curve {
            start,
            control,
            end,
            label_at,
        })
    }
}
